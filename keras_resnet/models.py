"""Compatibility with the old `keras-resnet` API (broadinstitute; used by keras-retinanet).

`ResNet50(inputs, blocks=None, include_top=True, classes=1000, freeze_bn=False)` builds on
an input tensor; without the top, the model's outputs are the stage outputs C2..C5.
These are v1 (stride on the bottleneck's first 1x1) models with that package's stem
(conv1 padded by 3, pool1 padding "same"), as it built them. `weights=path` loads its (and
keras-retinanet's) ImageNet `.h5` files exactly, with the stem padding they were trained
with, and keras.applications v1 files with keras.applications' stem. The models are
`ResNetModel`s: Keras's own `model.load_weights(path, by_name=True)`, as code written for
the old package calls it, loads those files exactly too, or raises and loads nothing.
"""

from __future__ import annotations

import os
from typing import cast

import keras

from keras_resnet import converters, specs
from keras_resnet.builder import build_from_spec
from keras_resnet.layers import register

# The old package's stem: conv1 after an explicit 3-pixel pad, pool1 padding "same".
OLD_STEM = {"conv1": "valid", "pool1": "same"}


@register
class ResNetModel(keras.Model):
    """A functional model whose `load_weights` reads the old package's files exactly.

    `model.load_weights(path, by_name=True)` on the old package's models matched its layer
    names; these models name layers as keras.applications does, so Keras's by-name loader
    would assign nothing and say nothing. Here every legacy `.h5` (keras-resnet,
    keras-retinanet, keras.applications) and `.weights.h5` goes through `converters.load`:
    each variable assigned once from the file, or an error and nothing assigned. `by_name`
    and `skip_mismatch` are accepted for the old call's sake; a file that does not fit is
    refused whatever they say.
    """

    def load_weights(self, filepath, skip_mismatch: bool = False, **kwargs) -> None:
        path = str(filepath)
        if path.endswith(".keras"):
            return super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
        checkpoint = converters.read(path)
        expected = (
            checkpoint.stem
            if checkpoint.layout == "keras_resnet"
            else {"conv1": "valid", "pool1": "valid"}
            if checkpoint.layout == "keras_applications"
            else stem_of(self)
        )
        if stem_of(self) != expected:
            raise ValueError(
                f"{path!r} was trained with a stem padding conv1 {expected['conv1']!r} and pool1 "
                f"{expected['pool1']!r}; this model pads them {stem_of(self)['conv1']!r} and "
                f"{stem_of(self)['pool1']!r}, so its outputs would differ. Build it with the file: "
                "keras_resnet.models.ResNet50(inputs, weights=path). Nothing was loaded."
            )
        converters.load(self, checkpoint)


# Legacy `.h5` full-model files (`model.save("x.h5")`, as keras-retinanet saves snapshots) name
# the model class without the package prefix `register` keys it by: register that name too.
keras.saving.get_custom_objects().setdefault("ResNetModel", ResNetModel)


def stem_of(model: keras.Model) -> dict[str, str]:
    """The padding of the stem's conv1 and pool1 as `converters.Checkpoint.stem` names it."""
    names = {layer.name: layer for layer in model.layers}
    conv_same = "conv1_conv" in names and names["conv1_conv"].padding == "same"
    pool_same = "pool1_pool" in names and names["pool1_pool"].padding == "same"
    return {"conv1": "same" if conv_same else "valid", "pool1": "same" if pool_same else "valid"}


def ResNet(
    inputs: keras.KerasTensor,
    blocks,
    block: str = "bottleneck",
    include_top: bool = True,
    classes: int = 1000,
    freeze_bn: bool = False,
    name: str | None = None,
    weights: str | os.PathLike | None = None,
    trainable_bn: bool | None = None,
    numerical_names=None,
    **kwargs,
) -> keras.Model:
    """A v1 ResNet on `inputs` with `blocks` repeats per stage of `block` ("basic"/"bottleneck").

    `weights`: a keras-resnet 0.1/0.2 or keras-retinanet `.h5` file, a keras.applications
    v1 file, or a `.weights.h5` of this model. The old callers' keywords are accepted:
    `trainable_bn=False` (keras-retinanet's) is `freeze_bn=True`; `numerical_names` chose the
    old package's layer names ("res4b1" or "res4b") and has nothing to choose here, where
    layers are named as keras.applications names them.
    """
    if block not in specs.BLOCK_TYPES:
        raise ValueError(f"block must be one of {specs.BLOCK_TYPES}, got {block!r}.")
    if trainable_bn is not None:
        if freeze_bn and trainable_bn:
            raise ValueError("freeze_bn=True and trainable_bn=True contradict each other; pass one of them.")
        freeze_bn = not trainable_bn
    del numerical_names  # the old package's naming choice; see the docstring
    checkpoint = converters.read(weights) if weights is not None else None
    if checkpoint is not None and checkpoint.bn_epsilon:
        kwargs.setdefault("bn_epsilon", checkpoint.bn_epsilon)
    kind = cast(specs.BlockType, block)  # checked above
    stages = tuple(specs.StageSpec(kind, 64 * 2**i, n, 1 if i == 0 else 2) for i, n in enumerate(blocks))
    spec = specs.ResNetSpec(stages, stride_on="1x1")
    depth = 2 + sum(blocks) * (2 if block == "basic" else 3)
    model = build_from_spec(
        spec,
        num_classes=classes,
        input_tensor=inputs,
        include_top=include_top,
        pyramid_outputs=not include_top,
        name=name or f"resnet{depth}",
        **kwargs,
    )
    layout = checkpoint.layout if checkpoint is not None else None
    if layout != "keras_applications":  # keras.applications' stem is build()'s
        model = _keras_resnet_stem(
            model,
            inputs,
            checkpoint.stem if checkpoint is not None and layout == "keras_resnet" else OLD_STEM,
            checkpoint.path if checkpoint is not None else "",
        )
    if checkpoint is not None:
        converters.load(model, checkpoint)
    outputs = model.output
    if not include_top:
        outputs = [outputs[k] for k in sorted(outputs)]
    model = ResNetModel(inputs, outputs, name=model.name)
    if freeze_bn:
        for layer in model._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False  # Keras 3: a non-trainable BN runs in inference mode
    return model


def _keras_resnet_stem(model: keras.Model, inputs, stem: dict[str, str], path: str) -> keras.Model:
    """`model` with keras-resnet's stem: TensorFlow "same" padding in pool1 (and in conv1
    when `stem` says so), which pads one pixel less before than after on even sizes."""
    if stem["pool1"] != "same":
        raise ValueError(
            f"{path!r}: its pool1 pads {stem['pool1']!r}; keras-resnet's "
            "stem, the one this loader rebuilds, pads 'same'."
        )
    same_conv = stem["conv1"] == "same"

    def swap(layer):
        if layer.name == "pool1_pad" or (same_conv and layer.name == "conv1_pad"):
            return keras.layers.Identity(name=layer.name)
        if layer.name == "pool1_pool":
            return keras.layers.MaxPooling2D(3, 2, padding="same", data_format=layer.data_format, name=layer.name)
        if same_conv and layer.name == "conv1_conv":
            return keras.layers.Conv2D.from_config({**layer.get_config(), "padding": "same"})
        return layer

    return keras.models.clone_model(model, clone_function=swap, input_tensors=inputs)


def _preset(name: str, block: str, default_blocks: list[int]):
    def factory(inputs, blocks=None, include_top=True, classes=1000, freeze_bn=False, *args, **kwargs):
        return ResNet(inputs, blocks or default_blocks, block, include_top, classes, freeze_bn, *args, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"{name} (v1) on an input tensor, as the old keras-resnet API built it."
    return factory


ResNet18 = _preset("ResNet18", "basic", [2, 2, 2, 2])
ResNet34 = _preset("ResNet34", "basic", [3, 4, 6, 3])
ResNet50 = _preset("ResNet50", "bottleneck", [3, 4, 6, 3])
ResNet101 = _preset("ResNet101", "bottleneck", [3, 4, 23, 3])
ResNet152 = _preset("ResNet152", "bottleneck", [3, 8, 36, 3])
ResNet200 = _preset("ResNet200", "bottleneck", [3, 24, 36, 3])
# The old package's 2-D aliases.
ResNet2D18, ResNet2D34, ResNet2D50 = ResNet18, ResNet34, ResNet50
ResNet2D101, ResNet2D152, ResNet2D200 = ResNet101, ResNet152, ResNet200
