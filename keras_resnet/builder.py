"""`build()` and the lower-level `build_from_spec()`: stem, stages, heads, feature maps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import layers

from keras_resnet import converters
from keras_resnet import weights as weights_lib
from keras_resnet.layers import (
    BLOCKS,
    BN_EPSILON,
    BN_MOMENTUM,
    BN_WEIGHT_DECAY,
    WEIGHT_DECAY,
    Preprocessing,
    batch_norm,
    channel_axis,
    l2,
)
from keras_resnet.specs import ResNetSpec

POOLINGS = (None, "avg", "max")


def build(
    depth: int | str,
    *,
    variant: str | None = None,
    num_classes: int | None = None,
    input_shape: tuple[int | None, ...] | None = None,
    input_tensor: keras.KerasTensor | None = None,
    include_top: bool = True,
    pooling: str | None = None,
    classifier_activation: str | None = "softmax",
    weights: str | None = None,
    include_preprocessing: bool = False,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    groups: int = 1,
    width_per_group: int = 64,
    se_ratio: float | None = None,
    shortcut: str | None = None,
    drop_path_rate: float = 0.0,
    zero_init_residual: bool = False,
    weight_decay: float = WEIGHT_DECAY,
    bn_weight_decay: float = BN_WEIGHT_DECAY,
    bn_momentum: float = BN_MOMENTUM,
    bn_epsilon: float | None = None,
    pyramid_outputs: bool = False,
    name: str | None = None,
) -> keras.Model:
    """Build a ResNet of the given depth, or a named one ("resnext50_32x4d", see `list_models()`).

    Depths 18/34/50/101/152/200 are the ImageNet family (variant "v1", "v1.5" (default),
    "v1d" or "v2"); 20/32/44/56/110/1202 (or any 6n+2 with variant="cifar") the CIFAR
    family of He et al. 2016 (32x32 input, 10 classes, option-A shortcuts by default;
    `shortcut="B"` for projections). A name fixes variant, groups, width_per_group and
    se_ratio.

    `weights` is None, a registry tag ("resnet50.tv2_in1k", see `list_weights()`; after a
    name, the bare tag "tv2_in1k" will do), "imagenet" (keras.applications' files; picks v1
    when no variant is given), or a file: a torchvision/timm state dict (.safetensors,
    .pth), a keras.applications HDF5 file, or a `.weights.h5` saved by this package.
    Everything is checked before a download; tags are downloaded and hash-checked once.
    A tag's classifier takes its record's resolution and defines the default input shape.
    With `include_preprocessing=True` the model takes RGB pixels in [0, 255] and applies
    the normalization its weights expect; otherwise feed `preprocess_input(x, weights=tag)`.
    `normalization=(mean, std)` (per RGB channel, on the [0, 255] scale, e.g. a dataset's
    statistics) puts that normalization inside the model instead.

    `weight_decay` is SGD's weight decay (applied as an L2 penalty of weight_decay/2 on
    conv and dense kernels); `bn_weight_decay` is the same for BN gamma/beta (default 0:
    not decayed; PyTorch reproductions often decay them too). `bn_epsilon` defaults to the
    weights' own (PyTorch's 1e-5) or else 1.001e-5. `pyramid_outputs=True`
    (with `include_top=False`) returns a model whose output is a dict of the last feature
    map at each stride, keyed "P{log2 stride}" ("P2".."P5" for ImageNet ResNets).
    """
    plan = weights_lib.resolve(
        depth,
        variant=variant,
        weights=weights,
        groups=groups,
        width_per_group=width_per_group,
        se_ratio=se_ratio,
        shortcut=shortcut,
        include_top=include_top,
        num_classes=num_classes,
        input_shape=input_shape,
        input_tensor=input_tensor,
        classifier_activation=classifier_activation,
        bn_epsilon=bn_epsilon,
    )
    model = build_from_spec(
        plan.spec,
        num_classes=plan.num_classes,
        input_shape=plan.input_shape,
        input_tensor=input_tensor,
        include_top=include_top,
        pooling=pooling,
        classifier_activation=classifier_activation,
        preprocessing=plan.preprocessing if include_preprocessing else None,
        normalization=normalization,
        drop_path_rate=drop_path_rate,
        zero_init_residual=zero_init_residual,
        weight_decay=weight_decay,
        bn_weight_decay=bn_weight_decay,
        bn_momentum=bn_momentum,
        bn_epsilon=plan.bn_epsilon,
        pyramid_outputs=pyramid_outputs,
        name=name or plan.name or default_name(plan.depth, plan.variant, plan.spec),
    )
    if plan.checkpoint is not None:
        converters.load(model, plan.checkpoint)
    return model


def reinitialize(layers_: Sequence[layers.Layer], seed: int) -> None:
    """Draw every kernel that a `VarianceScaling` initializer (He normal, Glorot uniform ...)
    filled again, from NumPy seeded with `seed`: the same initial weights on every backend.

    A Keras seed gives each backend different draws; `train` calls this so that a recipe's
    seed starts TensorFlow, JAX and PyTorch from one model. Sub-layers are included; other
    variables (zero-initialized kernels, BN) are left as they are.
    """
    rng = np.random.default_rng(seed)
    for layer in (sub for top in layers_ for sub in top._flatten_layers()):
        init = getattr(layer, "kernel_initializer", None)
        if isinstance(init, keras.initializers.VarianceScaling) and getattr(layer, "kernel", None) is not None:
            layer.kernel.assign(_variance_scaling(rng, init, tuple(layer.kernel.shape)))


def _variance_scaling(
    rng: np.random.Generator, init: keras.initializers.VarianceScaling, shape: tuple[int, ...]
) -> np.ndarray:
    """Keras's `VarianceScaling` draw (same fans, scale and distribution) with `rng`."""
    receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
    fan_in, fan_out = (shape[-2] * receptive, shape[-1] * receptive) if len(shape) > 1 else (shape[0],) * 2
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[init.mode]
    variance = init.scale / max(1.0, fan)
    if init.distribution == "uniform":
        limit = math.sqrt(3.0 * variance)
        return rng.uniform(-limit, limit, shape).astype("float32")
    if init.distribution == "untruncated_normal":
        return (rng.standard_normal(shape) * math.sqrt(variance)).astype("float32")
    values = rng.standard_normal(shape)  # truncated at 2 std, as Keras (std corrected for it)
    outside = np.abs(values) > 2.0
    while outside.any():
        values[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(values) > 2.0
    return (values * (math.sqrt(variance) / 0.87962566103423978)).astype("float32")


def default_name(depth: int, variant: str, spec: ResNetSpec) -> str:
    """E.g. "resnet50_v1.5", "resnext50_32x4d_v1.5", "wide_resnet50_2_v1.5", "resnet20_cifar"."""
    if spec.groups > 1:
        base = f"resnext{depth}_{spec.groups}x{spec.width_per_group}d"
    elif spec.width_per_group != 64:
        base = f"wide_resnet{depth}_{spec.width_per_group / 64:g}"
    else:
        base = f"resnet{depth}"
    return f"{'se_' if spec.se_ratio else ''}{base}_{variant}"


def _input_shape(input_shape, spec: ResNetSpec, include_top: bool, data_format: str) -> tuple:
    """Default and validate the input shape (channels where `data_format` puts them)."""
    if input_shape is None:
        side = 32 if spec.stem == "cifar" else (224 if include_top else None)
        return (side, side, 3) if data_format == "channels_last" else (3, side, side)
    input_shape = tuple(input_shape)
    last = data_format == "channels_last"
    order, example = (
        ("(height, width, channels)", "(224, 224, 3)") if last else ("(channels, height, width)", "(3, 224, 224)")
    )
    if len(input_shape) != 3 or input_shape[-1 if last else 0] is None:
        raise ValueError(
            f"input_shape must be {order} for image_data_format {data_format!r}, with the channel "
            f"count given, e.g. {example}; got {input_shape}."
        )
    spatial = input_shape[:2] if last else input_shape[1:]
    smallest = total_stride(spec)
    if any(s is not None and s < smallest for s in spatial):
        raise ValueError(
            f"input_shape {input_shape} is too small: this network downsamples by {smallest}, "
            f"so height and width must be at least {smallest}."
        )
    return input_shape


def total_stride(spec: ResNetSpec) -> int:
    stem = 1 if spec.stem == "cifar" else 4
    return stem * math.prod(stage.stride for stage in spec.stages)


def _stem(x, spec: ResNetSpec, conv_kwargs: dict, bn_kwargs: dict):
    data_format = conv_kwargs["data_format"]
    f = spec.stem_filters
    convs = {"imagenet": [(f, 7, 2)], "deep": [(f // 2, 3, 2), (f // 2, 3, 1), (f, 3, 1)], "cifar": [(f, 3, 1)]}[
        spec.stem
    ]
    for i, (filters, kernel, stride) in enumerate(convs, 1):
        prefix = "conv1" if len(convs) == 1 else f"conv1_{i}"
        last = i == len(convs)
        if stride > 1:
            x = layers.ZeroPadding2D(kernel // 2, data_format=data_format, name=f"{prefix}_pad")(x)
        # Pre-activation nets leave the stem's last BN-ReLU to the first block.
        x = layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding="valid" if stride > 1 else "same",
            use_bias=spec.preact and last,
            name=f"{prefix}_conv",
            **conv_kwargs,
        )(x)
        if not (spec.preact and last):
            x = batch_norm(f"{prefix}_bn", **bn_kwargs)(x)
            x = layers.Activation("relu", name=f"{prefix}_relu")(x)
    if spec.stem != "cifar":
        x = layers.ZeroPadding2D(1, data_format=data_format, name="pool1_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, data_format=data_format, name="pool1_pool")(x)
    return x


def _stages(x, spec: ResNetSpec, drop_path_rate: float, block_kwargs: dict) -> tuple:
    """The residual stages on `x`: the output and {total stride: the last feature map there}."""
    stride = 1 if spec.stem == "cifar" else 4
    features = {}
    block_index, last_index = 0, max(spec.num_blocks - 1, 1)
    for s, stage in enumerate(spec.stages):
        block_cls = BLOCKS[(stage.block, spec.preact)]
        extra: dict[str, Any] = (
            dict(stride_on=spec.stride_on, groups=spec.groups, width_per_group=spec.width_per_group)
            if stage.block == "bottleneck"
            else {}
        )
        for b in range(stage.repeats):
            strided = b == (stage.repeats - 1 if spec.stride_in_last_block else 0)
            block_stride = stage.stride if strided else 1
            x = block_cls(
                stage.filters,
                block_stride,
                shortcut=spec.shortcut,
                se_ratio=spec.se_ratio,
                drop_path_rate=drop_path_rate * block_index / last_index,
                name=f"conv{s + 2}_block{b + 1}",
                **block_kwargs,
                **extra,
            )(x)
            stride *= block_stride
            features[stride] = x
            block_index += 1
    return x, features


def _top(
    x,
    include_top: bool,
    pooling: str | None,
    num_classes: int,
    classifier_activation: str | None,
    weight_decay: float,
    data_format: str,
):
    """The classifier (`avg_pool`, `predictions`), a pooling, or the feature map itself."""
    if include_top:
        x = layers.GlobalAveragePooling2D(data_format=data_format, name="avg_pool")(x)
        # Under a mixed-precision policy the classifier still computes in float32.
        mixed = keras.config.dtype_policy().name.startswith("mixed")
        return layers.Dense(
            num_classes,
            activation=classifier_activation,
            kernel_regularizer=l2(weight_decay),
            dtype="float32" if mixed else None,
            name="predictions",
        )(x)
    if pooling == "avg":
        return layers.GlobalAveragePooling2D(data_format=data_format, name="avg_pool")(x)
    if pooling == "max":
        return layers.GlobalMaxPooling2D(data_format=data_format, name="max_pool")(x)
    return x


def build_from_spec(
    spec: ResNetSpec,
    *,
    num_classes: int = 1000,
    input_shape: tuple[int | None, ...] | None = None,
    input_tensor: keras.KerasTensor | None = None,
    include_top: bool = True,
    pooling: str | None = None,
    classifier_activation: str | None = "softmax",
    preprocessing: str | None = None,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    drop_path_rate: float = 0.0,
    zero_init_residual: bool = False,
    weight_decay: float = WEIGHT_DECAY,
    bn_weight_decay: float = BN_WEIGHT_DECAY,
    bn_momentum: float = BN_MOMENTUM,
    bn_epsilon: float = BN_EPSILON,
    pyramid_outputs: bool = False,
    name: str = "resnet",
) -> keras.Model:
    """Build a functional ResNet from a `ResNetSpec` (the named depths are presets of it).

    Layer names follow keras.applications: `conv1_conv`, `pool1_pool`, `conv{s}_block{b}`
    (one block layer each), `post_bn` (pre-activation nets), `avg_pool`, `predictions`.
    `preprocessing` ("caffe", "tf", "torch" or None) adds a normalization layer first;
    `normalization=(mean, std)` adds a `keras.layers.Normalization` with those statistics.
    """
    data_format = keras.config.image_data_format()
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
    if pyramid_outputs and include_top:
        raise ValueError("pyramid_outputs=True needs include_top=False (feature maps, no classifier).")
    if include_top and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}.")

    if input_tensor is not None:
        inputs = input_tensor
    else:
        inputs = keras.Input(_input_shape(input_shape, spec, include_top, data_format), name="images")
    x = inputs
    if normalization is not None:
        mean, std = normalization
        x = layers.Normalization(
            axis=channel_axis(data_format), mean=list(mean), variance=[s**2 for s in std], name="normalization"
        )(x)
    elif preprocessing:
        x = Preprocessing(preprocessing, name="preprocessing")(x)

    conv_kwargs = dict(kernel_initializer="he_normal", kernel_regularizer=l2(weight_decay), data_format=data_format)
    bn_kwargs = dict(data_format=data_format, momentum=bn_momentum, epsilon=bn_epsilon, weight_decay=bn_weight_decay)
    x = _stem(x, spec, conv_kwargs, bn_kwargs)

    block_kwargs = dict(
        zero_init_residual=zero_init_residual,
        weight_decay=weight_decay,
        bn_weight_decay=bn_weight_decay,
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
        data_format=data_format,
    )
    x, features = _stages(x, spec, drop_path_rate, block_kwargs)
    if spec.preact:
        x = batch_norm("post_bn", **bn_kwargs)(x)
        x = layers.Activation("relu", name="post_relu")(x)
        features[max(features)] = x
    pyramid = {f"P{int(math.log2(s))}": t for s, t in features.items()}
    outputs = (
        pyramid
        if pyramid_outputs
        else _top(x, include_top, pooling, num_classes, classifier_activation, weight_decay, data_format)
    )
    model = keras.Model(inputs, outputs, name=name)
    model.pyramid_outputs = pyramid  # keras-hub's contract (features.pyramid_outputs after a load)
    return model
