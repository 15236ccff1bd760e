"""Residual blocks and their parts as serializable Keras layers (keras / keras.ops, plus
TensorFlow's fused kernel inside `BatchNormalization` on that backend only).

Registered names (``keras_resnet>BasicBlock`` ...) and sub-layer attribute names are a
stored-file contract: `.keras` and `.weights.h5` files key weights by them.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

PACKAGE = "keras_resnet"
register = keras.saving.register_keras_serializable(package=PACKAGE)

# Per-channel statistics in RGB order, on the [0, 255] pixel scale unless noted.
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # on [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)  # on [0, 1]
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
PREPROCESSING_MODES = ("caffe", "tf", "torch")
FUSED_MIN_EPSILON = 1.001e-5  # TensorFlow's fused kernel trains with max(epsilon, this)
# BN defaults of every model: keras.applications' epsilon, the smallest the fused kernel
# trains with as given; momentum 0.9 (Keras's 0.99 lags badly in short runs).
BN_EPSILON = FUSED_MIN_EPSILON
BN_MOMENTUM = 0.9
# Weight decay of every model and block (He et al. 2016's 1e-4); BN gamma/beta not decayed.
WEIGHT_DECAY = 1e-4
BN_WEIGHT_DECAY = 0.0


def channel_axis(data_format: str) -> int:
    return -1 if data_format == "channels_last" else 1


def l2(weight_decay: float) -> keras.regularizers.Regularizer | None:
    """Weight decay `wd` (SGD's meaning: gradient `wd * w`) as a Keras L2 penalty `wd/2 * w²`."""
    if weight_decay < 0:
        raise ValueError(f"Weight decay must be >= 0 (0 turns it off), got {weight_decay!r}.")
    return keras.regularizers.L2(weight_decay / 2) if weight_decay else None


def batch_norm(
    name: str,
    *,
    data_format: str,
    momentum: float,
    epsilon: float,
    weight_decay: float = BN_WEIGHT_DECAY,
    zero_gamma: bool = False,
    dtype=None,
) -> BatchNormalization:
    """The package's BN layer over the channel axis; `weight_decay` decays gamma/beta (see `l2`)."""
    return BatchNormalization(
        axis=channel_axis(data_format),
        momentum=momentum,
        epsilon=epsilon,
        gamma_initializer="zeros" if zero_gamma else "ones",
        gamma_regularizer=l2(weight_decay),
        beta_regularizer=l2(weight_decay),
        dtype=dtype,
        name=name,
    )


def preprocess_input(x: Any, mode: str = "caffe", data_format: str | None = None) -> Any:
    """Map RGB pixels in [0, 255] to what a model trained with `mode` expects.

    "caffe": RGB->BGR and ImageNet mean subtraction (keras.applications ResNet v1);
    "tf": scale to [-1, 1] (keras.applications ResNet v2); "torch": ImageNet mean/std.
    """
    if mode not in PREPROCESSING_MODES:
        raise ValueError(f"Unknown preprocessing mode {mode!r}; use one of {PREPROCESSING_MODES}.")
    data_format = data_format or keras.config.image_data_format()
    x = ops.convert_to_tensor(x)
    if "float" not in keras.backend.standardize_dtype(x.dtype):
        x = ops.cast(x, "float32")
    shape = (1, 1, 3) if data_format == "channels_last" else (3, 1, 1)
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "torch":
        mean = ops.reshape(ops.array([255 * m for m in IMAGENET_MEAN], x.dtype), shape)
        std = ops.reshape(ops.array([255 * s for s in IMAGENET_STD], x.dtype), shape)
        return (x - mean) / std
    x = ops.flip(x, axis=channel_axis(data_format))  # RGB -> BGR
    return x - ops.reshape(ops.array(CAFFE_BGR_MEAN, x.dtype), shape)


@register
class Preprocessing(layers.Layer):
    """`preprocess_input` as a layer, so a model can take raw RGB pixels in [0, 255]."""

    def __init__(self, mode: str = "torch", data_format: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(f"Unknown preprocessing mode {mode!r}; use one of {PREPROCESSING_MODES}.")
        self.mode = mode
        self.data_format = data_format or keras.config.image_data_format()

    def call(self, x):
        return preprocess_input(x, self.mode, self.data_format)

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode, "data_format": self.data_format}


@register
class DropPath(layers.Layer):
    """Stochastic depth: drops a whole residual branch per sample while training."""

    def __init__(self, rate: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath rate must be in [0, 1), got {rate!r}.")
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype))
        return x * mask / keep

    def get_config(self) -> dict:
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


class Composite(layers.Layer):
    """A layer made of nested layers whose `trainable` flags survive saving and loading.

    Keras restores `trainable=False` of a functional model's own layers from their configs,
    but not of layers nested inside a custom layer: `__init__`/`build` create those anew.
    So the config lists the nested layers that are frozen (`frozen`, by name), `build`
    freezes them again, and a frozen composite freezes the layers it builds. Without this,
    a frozen block or BN would train again after `load_model` (`.keras` or legacy `.h5`),
    and a legacy `.h5` file would not load (its weights are stored in trainable-first order).
    """

    def __init__(self, *, frozen: tuple[str, ...] | list[str] = (), **kwargs):
        super().__init__(**kwargs)
        self._frozen_on_load = tuple(frozen)

    def _nested(self) -> list[layers.Layer]:
        return list(self._flatten_layers(include_self=False))

    def _restore_frozen(self) -> None:
        """Call at the end of `build`, once every nested layer exists."""
        for layer in self._nested():
            if not self.trainable or layer.name in self._frozen_on_load:
                layer.trainable = False

    def get_config(self) -> dict:
        config = super().get_config()
        frozen = sorted(layer.name for layer in self._nested() if not layer.trainable)
        if self.trainable and frozen:
            config["frozen"] = frozen
        return config


@register
class SqueezeExcite(Composite):
    """Squeeze-and-excitation (Hu et al. 2018): channel gates from pooled features."""

    def __init__(
        self,
        channels: int,
        ratio: float = 1 / 16,
        weight_decay: float = WEIGHT_DECAY,
        data_format: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.channels, self.ratio, self.weight_decay = channels, ratio, weight_decay
        self.data_format = data_format or keras.config.image_data_format()
        squeezed = max(1, int(channels * ratio))
        conv = dict(
            kernel_size=1,
            kernel_initializer="he_normal",
            dtype=self.dtype_policy,
            kernel_regularizer=l2(weight_decay),
            data_format=self.data_format,
        )
        self.reduce = layers.Conv2D(squeezed, activation="relu", name="reduce", **conv)
        self.expand = layers.Conv2D(channels, activation="sigmoid", name="expand", **conv)

    def build(self, input_shape):
        spatial = (2, 3) if self.data_format == "channels_first" else (1, 2)
        pooled = tuple(1 if i in spatial else d for i, d in enumerate(input_shape))
        self.reduce.build(pooled)
        self.expand.build(self.reduce.compute_output_shape(pooled))
        self._restore_frozen()

    def call(self, x):
        spatial = (2, 3) if self.data_format == "channels_first" else (1, 2)
        return x * self.expand(self.reduce(ops.mean(x, axis=spatial, keepdims=True)))

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "channels": self.channels,
            "ratio": self.ratio,
            "weight_decay": self.weight_decay,
            "data_format": self.data_format,
        }


def _subsample(x, stride: int, data_format: str):
    """Every `stride`-th pixel. Channels-last takes it with a 1x1 average pool: the same values
    (NaN and infinities included; a max pool would turn NaN into the dtype's lowest value) and
    gradients, and 3-4x faster forward and backward than a strided slice on TensorFlow's CPU
    kernels (the training step's profile in benchmarks/README.md)."""
    if stride == 1:
        return x
    if data_format == "channels_last":
        return ops.average_pool(x, 1, stride, padding="valid", data_format=data_format)
    return x[:, :, ::stride, ::stride]


@register
class ZeroPadShortcut(layers.Layer):
    """CIFAR "option A" shortcut (He et al. 2016): subsample, zero-pad the new channels."""

    def __init__(self, filters: int, stride: int = 1, data_format: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.stride = filters, stride
        self.data_format = data_format or keras.config.image_data_format()

    def call(self, x):
        axis = channel_axis(self.data_format) % 4
        extra = self.filters - x.shape[axis]
        if extra < 0:
            raise ValueError(f"ZeroPadShortcut cannot shrink {x.shape[axis]} channels to {self.filters}.")
        x = _subsample(x, self.stride, self.data_format)
        pad = [[0, 0]] * 4
        pad[axis] = [extra // 2, extra - extra // 2]
        return ops.pad(x, pad)

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters, "stride": self.stride, "data_format": self.data_format}


class ResidualBlock(Composite):
    """Base of the residual blocks: shortcut, branch, SE, drop-path and the sum.

    Args:
        filters: base width (a bottleneck outputs `4 * filters` channels).
        stride: spatial downsampling of this block.
        shortcut: "projection", "avgpool" (ResNet-D) or "zeropad" (CIFAR option A); used
            only where the shape changes, identity otherwise.
        se_ratio: squeeze-excitation ratio, or None.
        drop_path_rate: stochastic-depth rate of this block.
        zero_init_residual: start the branch at zero (last BN gamma = 0), so the block
            begins as identity (Goyal et al. 2017).
        weight_decay: L2 on conv kernels (SGD weight-decay meaning; see `l2`).
        bn_weight_decay: the same on BN gamma/beta (0: not decayed, the usual choice).
        bn_momentum, bn_epsilon: BatchNormalization settings.
    """

    expansion = 1
    preact = False

    def __init__(
        self,
        filters: int,
        stride: int = 1,
        *,
        shortcut: str = "projection",
        se_ratio: float | None = None,
        drop_path_rate: float = 0.0,
        zero_init_residual: bool = False,
        weight_decay: float = WEIGHT_DECAY,
        bn_weight_decay: float = BN_WEIGHT_DECAY,
        bn_momentum: float = BN_MOMENTUM,
        bn_epsilon: float = BN_EPSILON,
        data_format: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters, self.stride, self.shortcut = filters, stride, shortcut
        self.se_ratio, self.drop_path_rate = se_ratio, drop_path_rate
        self.zero_init_residual, self.weight_decay = zero_init_residual, weight_decay
        self.bn_weight_decay = bn_weight_decay
        self.bn_momentum, self.bn_epsilon = bn_momentum, bn_epsilon
        self.data_format = data_format or keras.config.image_data_format()
        self.out_channels = filters * self.expansion

    # -- sub-layer factories -------------------------------------------------------------
    def _conv(
        self,
        filters: int,
        kernel: int,
        stride: int = 1,
        *,
        name: str,
        groups: int = 1,
        use_bias: bool = False,
        zero: bool = False,
    ) -> layers.Conv2D:
        # Strided 3x3 convs pad explicitly (see `_pad`), as keras.applications/torchvision.
        return layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding="same" if stride == 1 else "valid",
            groups=groups,
            use_bias=use_bias,
            data_format=self.data_format,
            kernel_initializer="zeros" if zero else "he_normal",
            kernel_regularizer=l2(self.weight_decay),
            dtype=self.dtype_policy,
            name=name,
        )

    def _bn(self, name: str, zero: bool = False) -> BatchNormalization:
        return batch_norm(
            name,
            data_format=self.data_format,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            weight_decay=self.bn_weight_decay,
            zero_gamma=zero,
            dtype=self.dtype_policy,
        )

    def _pad(self, stride: int, name: str) -> layers.ZeroPadding2D | None:
        return (
            layers.ZeroPadding2D(1, data_format=self.data_format, dtype=self.dtype_policy, name=name)
            if stride > 1
            else None
        )

    # -- structure -----------------------------------------------------------------------
    def build(self, input_shape):
        in_channels = input_shape[channel_axis(self.data_format)]
        self.shortcut_kind = self._shortcut_kind(in_channels)
        if self.shortcut_kind == "zeropad":
            self.shortcut_pad = ZeroPadShortcut(
                self.out_channels, self.stride, self.data_format, dtype=self.dtype_policy, name="shortcut_pad"
            )
        elif self.shortcut_kind in ("projection", "avgpool"):
            conv_stride = self.stride
            if self.shortcut_kind == "avgpool" and self.stride > 1:
                self.shortcut_pool = layers.AveragePooling2D(
                    self.stride,
                    self.stride,
                    padding="same",
                    data_format=self.data_format,
                    dtype=self.dtype_policy,
                    name="shortcut_pool",
                )
                conv_stride = 1
            self.shortcut_conv = self._conv(
                self.out_channels, 1, conv_stride, name="shortcut_conv", use_bias=self.preact
            )
            if not self.preact:
                self.shortcut_bn = self._bn("shortcut_bn")
        self._build_branch(in_channels)
        if self.se_ratio:
            self.se = SqueezeExcite(
                self.out_channels,
                self.se_ratio,
                self.weight_decay,
                self.data_format,
                dtype=self.dtype_policy,
                name="se",
            )
        if self.drop_path_rate:
            self.drop_path = DropPath(self.drop_path_rate, dtype=self.dtype_policy, name="drop_path")
        self._restore_frozen()

    def _shortcut_kind(self, in_channels: int) -> str:
        if in_channels == self.out_channels:
            return "identity" if self.stride == 1 else "subsample"
        if self.shortcut == "zeropad" and in_channels < self.out_channels:
            return "zeropad"
        return "avgpool" if self.shortcut == "avgpool" else "projection"

    def _build_branch(self, in_channels: int) -> None:
        raise NotImplementedError

    def _branch(self, x, training):
        raise NotImplementedError

    def _apply_shortcut(self, x, preact, training):
        kind = self.shortcut_kind
        if kind == "identity":
            return x
        if kind == "subsample":
            return _subsample(x, self.stride, self.data_format)
        if kind == "zeropad":
            return self.shortcut_pad(x)
        y = preact if self.preact else x
        if kind == "avgpool" and self.stride > 1:
            y = self.shortcut_pool(y)
        y = self.shortcut_conv(y)
        return y if self.preact else self.shortcut_bn(y, training=training)

    def call(self, x, training=None):
        preact = ops.relu(self.preact_bn(x, training=training)) if self.preact else x
        shortcut = self._apply_shortcut(x, preact, training)
        y = self._branch(preact, training)
        if self.se_ratio:
            y = self.se(y)
        if self.drop_path_rate:
            y = self.drop_path(y, training=training)
        y = shortcut + y
        return y if self.preact else ops.relu(y)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "filters": self.filters,
            "stride": self.stride,
            "shortcut": self.shortcut,
            "se_ratio": self.se_ratio,
            "drop_path_rate": self.drop_path_rate,
            "zero_init_residual": self.zero_init_residual,
            "weight_decay": self.weight_decay,
            "bn_weight_decay": self.bn_weight_decay,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "data_format": self.data_format,
        }


@register
class BasicBlock(ResidualBlock):
    """Two 3x3 convs (ResNet-18/34, CIFAR ResNets); post-activation (v1)."""

    def _build_branch(self, in_channels):
        self.pad1 = self._pad(self.stride, "pad1")
        self.conv1 = self._conv(self.filters, 3, self.stride, name="conv1")
        self.bn1 = self._bn("bn1")
        self.conv2 = self._conv(self.filters, 3, name="conv2")
        self.bn2 = self._bn("bn2", zero=self.zero_init_residual)

    def _branch(self, x, training):
        if self.pad1 is not None:
            x = self.pad1(x)
        x = ops.relu(self.bn1(self.conv1(x), training=training))
        return self.bn2(self.conv2(x), training=training)


@register
class BottleneckBlock(ResidualBlock):
    """1x1 reduce, 3x3 (grouped), 1x1 expand by 4; post-activation (v1 / v1.5).

    Args (beyond `ResidualBlock`):
        stride_on: "3x3" (v1.5, torchvision) or "1x1" (v1, keras.applications ResNet50).
        groups, width_per_group: torchvision's meaning; the 3x3 has
            `filters * width_per_group / 64 * groups` channels in `groups` groups.
    """

    expansion = 4

    def __init__(
        self,
        filters: int,
        stride: int = 1,
        *,
        stride_on: str = "3x3",
        groups: int = 1,
        width_per_group: int = 64,
        **kwargs,
    ):
        super().__init__(filters, stride, **kwargs)
        if stride_on not in ("1x1", "3x3"):
            raise ValueError(f"stride_on must be '1x1' or '3x3', got {stride_on!r}.")
        if groups < 1 or (filters * width_per_group) % 64:
            raise ValueError(
                f"groups={groups}, width_per_group={width_per_group} do not divide filters="
                f"{filters}: filters * width_per_group / 64 must be a whole number, groups >= 1."
            )
        self.stride_on, self.groups, self.width_per_group = stride_on, groups, width_per_group
        self.width = filters * width_per_group // 64 * groups

    def _build_branch(self, in_channels):
        s1, s3 = (self.stride, 1) if self.stride_on == "1x1" else (1, self.stride)
        self.conv1 = self._conv(self.width, 1, s1, name="conv1")
        self.bn1 = self._bn("bn1")
        self.pad2 = self._pad(s3, "pad2")
        self.conv2 = self._conv(self.width, 3, s3, name="conv2", groups=self.groups)
        self.bn2 = self._bn("bn2")
        self.conv3 = self._conv(
            self.out_channels, 1, name="conv3", use_bias=self.preact, zero=self.preact and self.zero_init_residual
        )
        if not self.preact:
            self.bn3 = self._bn("bn3", zero=self.zero_init_residual)

    def _branch(self, x, training):
        x = ops.relu(self.bn1(self.conv1(x), training=training))
        if self.pad2 is not None:
            x = self.pad2(x)
        x = ops.relu(self.bn2(self.conv2(x), training=training))
        x = self.conv3(x)
        return x if self.preact else self.bn3(x, training=training)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "stride_on": self.stride_on,
            "groups": self.groups,
            "width_per_group": self.width_per_group,
        }


@register
class PreActBasicBlock(BasicBlock):
    """Pre-activation basic block (He et al. 2016b): BN-ReLU before each conv.

    As in keras.applications' v2 models, the block's last conv and projection carry a
    bias (no BN follows them); zero-init starts the last conv's kernel at zero.
    """

    preact = True

    def _build_branch(self, in_channels):
        self.preact_bn = self._bn("preact_bn")
        self.pad1 = self._pad(self.stride, "pad1")
        self.conv1 = self._conv(self.filters, 3, self.stride, name="conv1")
        self.bn1 = self._bn("bn1")
        self.conv2 = self._conv(self.filters, 3, name="conv2", use_bias=True, zero=self.zero_init_residual)

    def _branch(self, x, training):
        if self.pad1 is not None:
            x = self.pad1(x)
        x = ops.relu(self.bn1(self.conv1(x), training=training))
        return self.conv2(x)


@register
class PreActBottleneckBlock(BottleneckBlock):
    """Pre-activation bottleneck, the layout of keras.applications `ResNet50V2`."""

    preact = True

    def _build_branch(self, in_channels):
        self.preact_bn = self._bn("preact_bn")
        super()._build_branch(in_channels)


@register
class BatchNormalization(layers.BatchNormalization):
    """Keras BatchNormalization with a fused training kernel and `freeze`.

    On the TensorFlow backend, training-mode calls on NHWC tensors run TensorFlow's fused
    kernel (`FusedBatchNormV3`, one op forward and one backward instead of Keras's chain of
    float32 element-wise ops; the speed-up is measured in benchmarks/README.md). The moving
    statistics follow the fused kernel's convention: batch variance with Bessel's correction,
    n/(n-1). Inference, other backends, masks, channels-first,
    synchronized (cross-replica) BN, `fused=False` and an epsilon below `FUSED_MIN_EPSILON`
    (the fused kernel silently raises it to that in training, while inference would use the
    given one) use Keras's own path. `freeze=True`
    (the old `keras-resnet` API) keeps the layer in inference mode and its weights fixed.
    `frozen_statistics = True` (set while fine-tuning, not saved) keeps it in inference mode
    with gamma/beta still trainable.
    """

    def __init__(self, freeze: bool = False, *args, fused: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.freeze = freeze
        self.fused = fused
        self.frozen_statistics = False
        if freeze:  # never the other way: a saved `trainable=False` stays
            self.trainable = False

    def call(self, inputs, training=None, mask=None):
        training = False if self.freeze or self.frozen_statistics else training
        if (
            training
            and self.trainable
            and self.fused
            and mask is None
            and not self.synchronized
            and not getattr(self, "renorm", False)
            and self.epsilon >= FUSED_MIN_EPSILON
            and keras.backend.backend() == "tensorflow"
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
        ):
            return self._fused_training_call(inputs)
        return super().call(inputs, training=training, mask=mask)

    def _fused_training_call(self, inputs):
        import tensorflow as tf  # only on the TensorFlow backend

        channels = inputs.shape[-1]
        scale = self.gamma.value if self.scale else tf.ones([channels])
        offset = self.beta.value if self.center else tf.zeros([channels])
        outputs, mean, variance, *_ = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            tf.cast(scale, "float32"),
            tf.cast(offset, "float32"),
            mean=self.moving_mean.value,
            variance=self.moving_variance.value,
            epsilon=self.epsilon,
            is_training=True,
            exponential_avg_factor=1.0 - self.momentum,
        )
        self.moving_mean.assign(mean)
        self.moving_variance.assign(variance)
        return tf.cast(outputs, self.compute_dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "freeze": self.freeze, "fused": self.fused}


BLOCKS: dict[tuple[str, bool], type[ResidualBlock]] = {
    ("basic", False): BasicBlock,
    ("bottleneck", False): BottleneckBlock,
    ("basic", True): PreActBasicBlock,
    ("bottleneck", True): PreActBottleneckBlock,
}
