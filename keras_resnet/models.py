"""Compatibility with the old `keras-resnet` API (broadinstitute; used by keras-retinanet).

`ResNet50(inputs, blocks=None, include_top=True, classes=1000, freeze_bn=False)` builds on
an input tensor; without the top, the model's outputs are the stage outputs C2..C5.
These are v1 (stride on the bottleneck's first 1x1) models, as that package built them.
`weights=path` loads that package's (and keras-retinanet's) ImageNet `.h5` files exactly,
rebuilding the stem with the padding they were trained with.
"""

from __future__ import annotations

import os

import keras

from keras_resnet import converters, specs
from keras_resnet.builder import build_from_spec


def ResNet(inputs: keras.KerasTensor, blocks, block: str = "bottleneck", include_top: bool = True,
           classes: int = 1000, freeze_bn: bool = False, name: str | None = None,
           weights: str | os.PathLike | None = None, **kwargs) -> keras.Model:
    """A v1 ResNet on `inputs` with `blocks` repeats per stage of `block` ("basic"/"bottleneck").

    `weights`: a keras-resnet 0.1/0.2 or keras-retinanet `.h5` file, a keras.applications
    v1 file, or a `.weights.h5` of this model.
    """
    if block not in specs.BLOCK_TYPES:
        raise ValueError(f"block must be one of {specs.BLOCK_TYPES}, got {block!r}.")
    checkpoint = converters.read(weights) if weights is not None else None
    if checkpoint is not None and checkpoint.bn_epsilon:
        kwargs.setdefault("bn_epsilon", checkpoint.bn_epsilon)
    stages = tuple(specs.StageSpec(block, 64 * 2**i, n, 1 if i == 0 else 2)
                   for i, n in enumerate(blocks))
    spec = specs.ResNetSpec(stages, stride_on="1x1")
    depth = 2 + sum(blocks) * (2 if block == "basic" else 3)
    model = build_from_spec(spec, num_classes=classes, input_tensor=inputs, include_top=include_top,
                            pyramid_outputs=not include_top, name=name or f"resnet{depth}", **kwargs)
    if checkpoint is not None:
        if checkpoint.layout == "keras_resnet":
            model = _keras_resnet_stem(model, inputs, checkpoint)
        converters.load(model, checkpoint)
    if not include_top:
        features = model.output
        model = keras.Model(inputs, [features[k] for k in sorted(features)], name=model.name)
    if freeze_bn:
        for layer in model._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False  # Keras 3: a non-trainable BN runs in inference mode
    return model


def _keras_resnet_stem(model: keras.Model, inputs, checkpoint: converters.Checkpoint) -> keras.Model:
    """`model` with keras-resnet's stem: TensorFlow "same" padding in pool1 (and in conv1
    from 0.2 on), which pads one pixel less before than after on even sizes."""
    if checkpoint.stem["pool1"] != "same":
        raise ValueError(f"{checkpoint.path!r}: its pool1 pads {checkpoint.stem['pool1']!r}; keras-resnet's "
                         "stem, the one this loader rebuilds, pads 'same'.")
    same_conv = checkpoint.stem["conv1"] == "same"

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
        return ResNet(inputs, blocks or default_blocks, block, include_top, classes, freeze_bn,
                      *args, **kwargs)
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
