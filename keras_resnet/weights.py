"""Weight sources: registry tags, "imagenet", local files; downloads with hash checks.

`resolve()` turns `build()`'s arguments into a `Plan`: the architecture, the weight record
or file, every check that can be made before a download, the download itself and the read
file. `build()` then builds the plan and loads its checkpoint once (`converters.load`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import warnings
from typing import Any

import keras

from keras_resnet import converters, registry, specs
from keras_resnet.layers import BN_EPSILON
from keras_resnet.layers import preprocess_input as _preprocess_input

# A pretrained classifier's logits were trained for softmax; these keep its meaning.
CLASSIFIER_ACTIVATIONS = (None, "linear", "softmax")
_FILE_SUFFIXES = (".h5", ".hdf5", ".keras", ".safetensors", *converters.TORCH_SUFFIXES)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What `build()` builds and loads, decided and checked before building."""

    spec: specs.ResNetSpec
    depth: int
    variant: str
    name: str | None  # the registry name when built by name
    num_classes: int
    input_shape: tuple | None
    preprocessing: str
    bn_epsilon: float
    checkpoint: converters.Checkpoint | None


def resolve(
    model: int | str,
    *,
    variant: str | None,
    weights: str | os.PathLike | None,
    groups: int,
    width_per_group: int,
    se_ratio: float | None,
    shortcut: str | None,
    include_top: bool,
    num_classes: int | None,
    input_shape,
    input_tensor,
    classifier_activation,
    bn_epsilon: float | None,
) -> Plan:
    """Resolve a depth or registry name and a weight source into a checked `Plan`."""
    arch: dict[str, Any] = dict(groups=groups, width_per_group=width_per_group, se_ratio=se_ratio)
    entry = None
    if isinstance(model, str):
        entry = registry.get_model(model)
        if variant is not None or shortcut is not None or arch != dict(groups=1, width_per_group=64, se_ratio=None):
            raise ValueError(
                f"{model!r} names a fixed architecture: leave variant, groups, width_per_group, se_ratio "
                f"and shortcut unset, or build by depth, e.g. build({entry.depth}, "
                f"variant={entry.variant!r}, ...)."
            )
        depth, variant = entry.depth, entry.variant
        arch = dict(groups=entry.groups, width_per_group=entry.width_per_group, se_ratio=entry.se_ratio)
    else:
        depth = model
    record = _record(weights, depth, variant, entry)
    checkpoint = None
    if record is not None:
        variant = _check_record(record, depth, variant, arch, shortcut)
        _check_inputs(record, include_top, num_classes, input_shape, input_tensor, classifier_activation)
        _check_readable(record)
        checkpoint = converters.read(fetch(record, include_top))
    elif weights is not None:
        checkpoint = converters.read(weights)
        variant = _check_file(checkpoint, depth, variant, arch, shortcut)
    variant = variant or specs.default_variant(depth)
    spec = specs.resnet_spec(depth, variant, shortcut=shortcut, **arch)
    file_classes = checkpoint.num_classes if checkpoint is not None and include_top else None
    if num_classes is None:
        num_classes = file_classes or (10 if spec.stem == "cifar" else 1000)
    elif file_classes not in (None, num_classes):
        raise ValueError(
            f"weights={str(weights)!r} with include_top=True has {file_classes} classes, got "
            f"num_classes={num_classes}. Use include_top=False and add your own head."
        )
    if record is not None and include_top and input_shape is None and input_tensor is None:
        side = record.eval_size
        input_shape = (side, side, 3) if keras.config.image_data_format() == "channels_last" else (3, side, side)
    preprocessing = (
        record.preprocessing if record is not None else checkpoint.preprocessing if checkpoint is not None else "torch"
    )
    if bn_epsilon is None:
        bn_epsilon = checkpoint.bn_epsilon if checkpoint is not None and checkpoint.bn_epsilon else BN_EPSILON
    return Plan(
        spec,
        depth,
        variant,
        entry.name if entry else None,
        num_classes,
        input_shape,
        preprocessing,
        bn_epsilon,
        checkpoint,
    )


def _keras_applications_choices() -> str:
    return "; ".join(
        f"depth={registry.MODELS[w.model].depth}, variant={registry.MODELS[w.model].variant!r}"
        for w in registry.WEIGHTS.values()
        if w.source == "keras.applications"
    )


def _record(weights, depth: int, variant: str | None, entry) -> registry.WeightRecord | None:
    """The weight record `weights` names, or None for no weights and for files."""
    if weights is None or os.path.exists(str(weights)):
        return None
    weights = str(weights)
    if weights == "imagenet":  # keras.applications' files, as keras.applications names them
        if variant not in (None, "v1", "v2"):
            raise ValueError(
                f"weights='imagenet' holds keras.applications ResNet v1 weights, which do not fit "
                f"variant={variant!r}. Pretrained weights exist for: {_keras_applications_choices()}. "
                "For others see keras_resnet.list_weights()."
            )
        tag = f"resnet{depth}_{variant or 'v1'}.keras_in1k"
        if tag not in registry.WEIGHTS:
            raise ValueError(
                f"No keras.applications weights for depth={depth}, variant={variant or 'v1'!r}. "
                f"Available: {_keras_applications_choices()}."
            )
        return registry.WEIGHTS[tag]
    if entry is not None and f"{entry.name}.{weights}" in registry.WEIGHTS:  # a bare tag after a name
        return registry.WEIGHTS[f"{entry.name}.{weights}"]
    if weights.endswith(_FILE_SUFFIXES) or os.sep in weights or "/" in weights:
        return None  # a file; `converters.read` says it is missing
    return registry.get_weights(weights)


def _check_record(
    record: registry.WeightRecord, depth: int, variant: str | None, arch: dict, shortcut: str | None
) -> str:
    """The variant to build for `record`, or a refusal if the architecture does not fit it."""
    entry = registry.MODELS[record.model]
    variant = variant or entry.variant
    fix = f"build({record.model!r}, weights={record.name!r}) builds it"
    if depth != entry.depth:
        raise ValueError(
            f"weights={record.name!r} hold a {record.model} (depth {entry.depth}), not depth={depth}; {fix}."
        )
    if variant != entry.variant:
        kind = f"keras.applications ResNet {entry.variant}" if record.source == "keras.applications" else record.model
        raise ValueError(f"weights={record.name!r} holds {kind} weights, which do not fit variant={variant!r}; {fix}.")
    own = dict(groups=entry.groups, width_per_group=entry.width_per_group, se_ratio=entry.se_ratio)
    if arch != own or shortcut is not None:
        plain = own == dict(groups=1, width_per_group=64, se_ratio=None)
        raise ValueError(
            f"weights={record.name!r} fit the {'plain ' if plain else ''}architecture of "
            f"{record.model} only: leave groups, width_per_group, se_ratio and shortcut at their defaults, "
            f"or {fix}."
        )
    return variant


def _check_file(
    checkpoint: converters.Checkpoint, depth: int, variant: str | None, arch: dict, shortcut: str | None
) -> str | None:
    """The variant a file's layout implies, or a refusal if it cannot fit."""
    path = checkpoint.path
    if checkpoint.layout == "keras_resnet":
        raise ValueError(
            f"{path!r} holds keras-resnet 0.x weights, whose stem pads conv1/pool1 as TensorFlow's 'same' "
            "does, unlike build(): load it with keras_resnet.models.ResNet50(inputs, weights=path) "
            "(or ResNet101/152), which builds that stem."
        )
    if checkpoint.layout == "torch" and checkpoint.torch_head == "linear":  # a CIFAR ResNet's state dict
        if variant not in (None, "cifar"):
            raise ValueError(
                f"{path!r} is a CIFAR ResNet's state dict (akamaster/pytorch_resnet_cifar10's layout), which holds "
                f"variant='cifar' networks, not variant={variant!r}."
            )
        return "cifar"
    if checkpoint.layout == "torch" and variant not in (None, "v1.5", "v1d"):
        raise ValueError(
            f"{path!r} is a torchvision/timm state dict, which holds v1.5 or ResNet-D (v1d) "
            f"networks, not variant={variant!r}."
        )
    if checkpoint.layout != "keras_applications":
        return variant
    file_variant = checkpoint.variant
    if variant not in (None, file_variant):
        raise ValueError(
            f"weights={path!r} holds keras.applications ResNet {file_variant} weights, which do "
            f"not fit variant={variant!r}. Pretrained weights exist for: "
            f"{_keras_applications_choices()}."
        )
    tag = f"resnet{depth}_{file_variant}.keras_in1k"
    if tag not in registry.WEIGHTS:
        raise ValueError(
            f"No keras.applications weights for depth={depth}, variant={file_variant!r}. "
            f"Available: {_keras_applications_choices()}."
        )
    return _check_record(registry.WEIGHTS[tag], depth, file_variant, arch, shortcut)


def _check_inputs(
    record: registry.WeightRecord,
    include_top: bool,
    num_classes: int | None,
    input_shape,
    input_tensor,
    classifier_activation,
) -> None:
    """keras.applications' checks for pretrained weights, made before any download."""
    shape = tuple(input_tensor.shape[1:]) if input_tensor is not None else input_shape
    last = keras.config.image_data_format() == "channels_last"
    if shape is not None and len(shape) == 3 and shape[-1 if last else 0] not in (None, 3):
        raise ValueError(
            f"weights={record.name!r} take RGB images (3 channels); input_shape {tuple(shape)} has "
            f"{shape[-1 if last else 0]}. Convert the images to RGB, or train from weights=None."
        )
    if not include_top:
        return
    if num_classes not in (None, record.num_classes):
        raise ValueError(
            f"weights={record.name!r} with include_top=True has {record.num_classes} classes, got "
            f"num_classes={num_classes}. Use include_top=False and add your own head."
        )
    sides = sorted({record.train_size, record.eval_size})
    spatial = tuple(shape[:2] if last else shape[1:]) if shape is not None and len(shape) == 3 else None
    if spatial is not None and spatial not in {(s, s) for s in sides}:
        sizes = " or ".join(f"{s}x{s}" for s in sides)
        raise ValueError(
            f"weights={record.name!r} with include_top=True take {sizes} "
            f"images, got input_shape {tuple(shape)}. Use include_top=False for other sizes."
        )
    if classifier_activation not in CLASSIFIER_ACTIVATIONS:
        raise ValueError(
            f"classifier_activation={classifier_activation!r} does not fit weights={record.name!r}: "
            "their classifier was trained for softmax over its classes. Use 'softmax' or None "
            "(logits), or include_top=False and a head of your own."
        )


def _check_readable(record: registry.WeightRecord) -> None:
    """A .pth record needs PyTorch: say so before downloading it."""
    if record.needs_torch and importlib.util.find_spec("torch") is None:
        instead = (
            f"; or download timm's safetensors copy (no published hash), {record.safetensors_url}, and pass its path"
            if record.source in ("torchvision", "timm")
            else ""
        )
        suffix = record.url.rsplit(".", 1)[-1]
        raise ImportError(
            f"weights={record.name!r} is a PyTorch .{suffix} file, which needs PyTorch: pip install "
            f"'keras-resnet-family[torch]'{instead}."
        )


def fetch(record: registry.WeightRecord, include_top: bool = True) -> str:
    """Download (or find in the Keras cache) `record`'s file and check its published hash.

    `KERAS_RESNET_WEIGHTS_URL` (e.g. "file:///mnt/mirror/") replaces the download location
    with a mirror holding `record.file_name(include_top)`. A file whose hash does not
    match is removed; a record without a published hash loads with a warning.
    """
    url, expected = record.file(include_top)
    file_name = record.file_name(include_top)
    mirror = os.environ.get("KERAS_RESNET_WEIGHTS_URL")
    if mirror:
        url = mirror.rstrip("/") + "/" + file_name
    try:
        path = keras.utils.get_file(file_name, url, cache_subdir="models")
    except Exception as err:  # network errors surface as several exception types
        raise OSError(
            f"Could not fetch ImageNet weights {record.name} from {url} ({err}). Offline, copy that file here "
            f"and pass weights='<path to {file_name}>', or set KERAS_RESNET_WEIGHTS_URL to a mirror."
        ) from err
    algorithm = "md5" if expected is not None and len(expected) == 32 else "sha256"
    digest = _digest(path, algorithm)
    if expected is None:
        warnings.warn(
            f"{record.name}: {path} is unverified: its publisher states no hash (its SHA-256 is {digest}).",
            stacklevel=2,
        )
    elif not digest.startswith(expected):
        os.remove(path)
        raise OSError(
            f"Could not fetch ImageNet weights {record.name} from {url}: its {algorithm} hash is "
            f"{digest}, the published one {expected} (a corrupted or incomplete download). "
            "The file was removed; run again to download it anew."
        )
    return path


def _digest(path: str, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_weights(model: keras.Model, path: str | os.PathLike) -> None:
    """Load a weight file into a built model, exactly, or raise and load nothing."""
    converters.load(model, converters.read(path))


def preprocess_input(x, mode: str | None = None, data_format: str | None = None, *, weights: str | None = None):
    """Map RGB pixels in [0, 255] to what a model expects: `mode` ("caffe" (default),
    "tf", "torch"), or the normalization of the weight record `weights` names."""
    if weights is not None:
        wanted = "caffe" if weights == "imagenet" else registry.get_weights(weights).preprocessing
        if mode not in (None, wanted):
            raise ValueError(f"weights={weights!r} expect preprocessing mode {wanted!r}, not {mode!r}.")
        mode = wanted
    return _preprocess_input(x, mode or "caffe", data_format)
