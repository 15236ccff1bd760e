"""Compatibility with the old `keras-resnet` API (broadinstitute; used by keras-retinanet).

`ResNet50(inputs, blocks=None, include_top=True, classes=1000, freeze_bn=False)` builds on
an input tensor; without the top, the model's outputs are the stage outputs C2..C5.
The graph is the old package's, layer for layer and name for name (`conv1`, `bn_conv1`,
`res2a_branch2a`, `bn2a_branch2a`, ..., `fc1000`): v1 bottlenecks (stride on the first 1x1),
a projection shortcut in every stage's first block, conv1 after a 3-pixel pad and pool1
padding "same". So Keras's own `load_weights(path, by_name=True)` finds every backbone layer
of the old package's files even on an outer model built around the backbone, as
keras-retinanet does. `weights=path` and the models' own `load_weights` go through the
converters: keras-resnet and keras-retinanet `.h5` files (also those with biased convs or
Caffe's BN + Scale pairs), keras.applications v1 files (with keras.applications' stem) and
`.weights.h5` files of the same model, each variable assigned once or nothing assigned.
"""

from __future__ import annotations

import os

import keras

from keras_resnet import architecture, converters
from keras_resnet.layers import BatchNormalization, register

# The old package's stem: conv1 after an explicit 3-pixel pad, pool1 padding "same".
OLD_STEM = {"conv1": "valid", "pool1": "same"}
OLD_BN_EPSILON = 1e-5
# ResNet-101/152/200 numbered their blocks after the first (res4b1, res4b2, ...), as Caffe did.
NUMERICAL_DEEP = [False, True, True, False]


@register
class ResNetModel(keras.Model):
    """A functional model whose `load_weights` reads the old package's files exactly.

    Every legacy `.h5` (keras-resnet, keras-retinanet, keras.applications) and `.weights.h5`
    goes through `converters.load`: each variable assigned once from the file, or an error
    and nothing assigned. `by_name` and `skip_mismatch` are accepted for the old call's sake;
    a file that does not fit is refused whatever they say.
    """

    def load_weights(self, filepath, skip_mismatch: bool = False, **kwargs) -> None:
        if str(filepath).endswith(".keras"):
            return super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
        converters.load(self, converters.read(filepath))


# Legacy `.h5` full-model files (`model.save("x.h5")`, as keras-retinanet saves snapshots) name
# the model class without the package prefix `register` keys it by: register that name too.
keras.saving.get_custom_objects().setdefault("ResNetModel", ResNetModel)


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
    classifier_activation: str | None = "softmax",
    bn_epsilon: float | None = None,
) -> ResNetModel:
    """The old package's v1 ResNet on `inputs`: `blocks` repeats per stage of `block`
    ("basic" or "bottleneck"), its layer names (`numerical_names[stage]`: "res4b1" rather
    than "res4b"; all stages by default, as there, but ResNet50's), He-normal init and no
    weight decay, as it built them.

    `weights`: a keras-resnet 0.1/0.2 or keras-retinanet `.h5` file, a keras.applications
    v1 file, or a `.weights.h5` of this model; the stem (and the block names) follow the
    file. `trainable_bn=False` (keras-retinanet's keyword) is `freeze_bn=True`.
    """
    if block not in ("basic", "bottleneck"):
        raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}.")
    if trainable_bn is not None:
        if freeze_bn and trainable_bn:
            raise ValueError("freeze_bn=True and trainable_bn=True contradict each other; pass one of them.")
        freeze_bn = not trainable_bn
    checkpoint = converters.read(weights) if weights is not None else None
    stem = OLD_STEM
    if checkpoint is not None and checkpoint.layout == "keras_resnet":
        stem = checkpoint.stem
        numerical_names = [f"res{stage + 2}b1_branch2a" in checkpoint.layer_names for stage in range(len(blocks))]
    elif checkpoint is not None and checkpoint.layout == "keras_applications":
        stem = converters.KERAS_APPLICATIONS_STEM
    elif checkpoint is not None and checkpoint.layout == "native":
        stem, bn_epsilon = _recorded(checkpoint.path, stem, bn_epsilon)
    if numerical_names is None:  # the old package's default: "res3b1", ...; its ResNet50 passed all False
        numerical_names = [True] * len(blocks)
    epsilon = bn_epsilon or (checkpoint.bn_epsilon if checkpoint is not None else None) or OLD_BN_EPSILON
    graph = _Graph(freeze_bn, epsilon)
    x = graph.stem(inputs, stem)
    outputs = []
    for stage, repeats in enumerate(blocks):
        numerical = bool(numerical_names and numerical_names[stage])
        for index in range(repeats):
            x = graph.block(x, block, stage, index, numerical)
        outputs.append(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="pool5")(x)
        outputs = keras.layers.Dense(classes, activation=classifier_activation, name="fc1000")(x)
    depth = 2 + sum(blocks) * (2 if block == "basic" else 3)
    model = ResNetModel(inputs, outputs, name=name or f"resnet{depth}")
    if checkpoint is not None:
        converters.load(model, checkpoint)
    return model


def _recorded(path: str, stem: dict[str, str], epsilon: float | None) -> tuple[dict[str, str], float | None]:
    """The stem and BN epsilon an old-API `.weights.h5` written by this package records
    (`stem` and `epsilon` where it records none)."""
    recorded = architecture.marked(path) or {}
    if not {"conv1", "pool1", "bn_conv1"} <= set(recorded):
        return stem, epsilon
    padding = {"conv1": recorded["conv1"]["padding"], "pool1": recorded["pool1"]["padding"]}
    return padding, epsilon or recorded["bn_conv1"]["epsilon"]


class _Graph:
    """The old package's layers, named as it named them."""

    def __init__(self, freeze_bn: bool, epsilon: float):
        self.freeze_bn, self.epsilon = freeze_bn, epsilon
        self.axis = -1 if keras.config.image_data_format() == "channels_last" else 1

    def conv_bn(self, x, filters: int, kernel: int, stride: int, name: str, bn: str, padding: str = "valid"):
        x = keras.layers.Conv2D(
            filters, kernel, stride, padding=padding, use_bias=False, kernel_initializer="he_normal", name=name
        )(x)
        return BatchNormalization(freeze=self.freeze_bn, axis=self.axis, epsilon=self.epsilon, name=bn)(x)

    def stem(self, x, stem: dict[str, str]):
        if stem["conv1"] == "valid":
            x = keras.layers.ZeroPadding2D(3, name="padding_conv1")(x)
        x = self.conv_bn(x, 64, 7, 2, "conv1", "bn_conv1", padding=stem["conv1"])
        x = keras.layers.Activation("relu", name="conv1_relu")(x)
        if stem["pool1"] == "valid":
            x = keras.layers.ZeroPadding2D(1, name="padding_pool1")(x)
        return keras.layers.MaxPooling2D(3, 2, padding=stem["pool1"], name="pool1")(x)

    def block(self, x, kind: str, stage: int, index: int, numerical: bool):
        """Block `index` of `stage` (0-based): 3x3-3x3 ("basic") or 1x1-3x3-1x1 ("bottleneck")."""
        p = f"{stage + 2}{f'b{index}' if index and numerical else chr(ord('a') + index)}"
        filters, stride = 64 * 2**stage, 2 if index == 0 and stage > 0 else 1
        kernels = (3, 3) if kind == "basic" else (1, 3, 1)
        y = x
        for i, (branch, kernel) in enumerate(zip(("2a", "2b", "2c"), kernels)):
            if kernel == 3:
                y = keras.layers.ZeroPadding2D(1, name=f"padding{p}_branch{branch}")(y)
            out = filters * 4 if kind == "bottleneck" and branch == "2c" else filters
            y = self.conv_bn(y, out, kernel, stride if i == 0 else 1, f"res{p}_branch{branch}", f"bn{p}_branch{branch}")
            if i < len(kernels) - 1:
                y = keras.layers.Activation("relu", name=f"res{p}_branch{branch}_relu")(y)
        shortcut = x
        if index == 0:
            out = filters * 4 if kind == "bottleneck" else filters
            shortcut = self.conv_bn(x, out, 1, stride, f"res{p}_branch1", f"bn{p}_branch1")
        y = keras.layers.Add(name=f"res{p}")([y, shortcut])
        return keras.layers.Activation("relu", name=f"res{p}_relu")(y)


def _preset(name: str, block: str, default_blocks: list[int], numerical: list[bool] | None = None):
    def factory(inputs, blocks=None, include_top=True, classes=1000, freeze_bn=False, *args, **kwargs):
        kwargs.setdefault("numerical_names", numerical)
        return ResNet(inputs, blocks or default_blocks, block, include_top, classes, freeze_bn, *args, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"{name} (v1) on an input tensor, as the old keras-resnet API built it."
    return factory


ResNet18 = _preset("ResNet18", "basic", [2, 2, 2, 2])
ResNet34 = _preset("ResNet34", "basic", [3, 4, 6, 3])
ResNet50 = _preset("ResNet50", "bottleneck", [3, 4, 6, 3], [False] * 4)
ResNet101 = _preset("ResNet101", "bottleneck", [3, 4, 23, 3], NUMERICAL_DEEP)
ResNet152 = _preset("ResNet152", "bottleneck", [3, 8, 36, 3], NUMERICAL_DEEP)
ResNet200 = _preset("ResNet200", "bottleneck", [3, 24, 36, 3], NUMERICAL_DEEP)
# The old package's 2-D aliases.
ResNet2D18, ResNet2D34, ResNet2D50 = ResNet18, ResNet34, ResNet50
ResNet2D101, ResNet2D152, ResNet2D200 = ResNet101, ResNet152, ResNet200
