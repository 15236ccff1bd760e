"""Weight sources and exact loading: keras.applications HDF5 files and our `.weights.h5`.

keras.applications convs carry biases and its BN uses epsilon 1.001e-5; our v1 convs are
bias-free (torchvision's parameter counts). Both differences fold exactly into the BN
that follows each conv: moving_mean -= bias, moving_variance += 1.001e-5 - epsilon.
v2 convs that feed the residual stream directly keep their biases. Every shape is
checked before any variable is written, so a wrong file loads nothing.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import h5py
import keras
import numpy as np

from keras_resnet import specs
from keras_resnet.layers import ResidualBlock

# keras.applications' published ResNet files (keras/src/applications/resnet.py, resnet_v2.py).
KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
KERAS_APPLICATIONS_MD5 = {  # name: (with top, without top)
    "resnet50": ("2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626"),
    "resnet101": ("f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21"),
    "resnet152": ("100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
    "resnet50v2": ("3ef43a0b657b3be2300d5770ece849e0", "fac2f116257151a9d068a22e544a4917"),
    "resnet101v2": ("6343647c601c52e1368623803854d971", "c0ed64b8031c3730f411d2eb4eea35b5"),
    "resnet152v2": ("a49b44d1979771252814e80f8ec446f9", "ed17cf2e0169df9d443503ef94b23b33"),
}
PRETRAINED = {  # (depth, variant) -> keras.applications weights name
    (depth, variant): f"resnet{depth}{'v2' if variant == 'v2' else ''}"
    for depth in (50, 101, 152) for variant in ("v1", "v2")
}
KERAS_APPLICATIONS_BN_EPSILON = 1.001e-5

# Block sub-layer attribute -> keras.applications layer-name suffix, in load order
# (each conv before the BN that absorbs its bias).
_BLOCK_LAYER_NAMES = {
    "preact_bn": "preact_bn", "shortcut_conv": "0_conv", "shortcut_bn": "0_bn",
    "conv1": "1_conv", "bn1": "1_bn", "conv2": "2_conv", "bn2": "2_bn",
    "conv3": "3_conv", "bn3": "3_bn",
}


def available_pretrained() -> list[str]:
    return [f"depth={d}, variant={v!r}" for d, v in sorted(PRETRAINED)]


def is_native_file(source: str | os.PathLike) -> bool:
    return str(source).endswith(".weights.h5")


def resolve_variant(depth: int, variant: str | None, weights: str | os.PathLike | None) -> str | None:
    """The variant to build: keras.applications sources hold v1 or v2 weights only."""
    if weights is None or is_native_file(weights):
        return variant
    if weights == "imagenet":
        file_variant = "v1"
    else:
        file_variant = legacy_file_variant(weights)
    if variant is None:
        return file_variant
    if variant not in ("v1", "v2") or (weights != "imagenet" and variant != file_variant):
        raise ValueError(
            f"weights={str(weights)!r} holds keras.applications ResNet {file_variant} weights, "
            f"which do not fit variant={variant!r}. Pretrained weights exist for: "
            f"{'; '.join(available_pretrained())}.")
    return variant


def check_compatible(weights, *, depth: int, variant: str, spec: specs.ResNetSpec,
                     include_top: bool, num_classes: int) -> None:
    """Refuse, before building, a weight source that cannot fit the requested model."""
    if is_native_file(weights):
        _require_file(weights)
        return
    if weights != "imagenet":
        _require_file(weights)
    if (depth, variant) not in PRETRAINED:
        raise ValueError(
            f"No keras.applications weights for depth={depth}, variant={variant!r}. "
            f"Available: {'; '.join(available_pretrained())}.")
    default = specs.resnet_spec(depth, variant)
    if spec != default:
        raise ValueError(
            "Pretrained weights fit the plain architecture only: leave groups, width_per_group, "
            "se_ratio and shortcut at their defaults.")
    if include_top and num_classes != 1000:
        raise ValueError(
            f"weights={str(weights)!r} with include_top=True has 1000 classes, got "
            f"num_classes={num_classes}. Use include_top=False and add your own head.")


def _require_file(path) -> None:
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"Weights file {str(path)!r} not found. Pass weights=None, 'imagenet', a "
            "keras.applications ResNet .h5 file, or a .weights.h5 saved by keras_resnet.")


def preprocessing_mode(variant: str | None, weights) -> str:
    """The input normalization a weight source expects ("caffe", "tf" or "torch")."""
    if weights is None or is_native_file(weights):
        return "torch"  # ImageNet mean/std, this package's default for its own training
    return "tf" if variant == "v2" else "caffe"


def imagenet_weights_file(depth: int, variant: str, include_top: bool) -> str:
    """Fetch (or find in the Keras cache) keras.applications' file, checking its MD5.

    `KERAS_RESNET_WEIGHTS_URL` (e.g. "file:///mnt/mirror/") replaces the download base
    for mirrors and offline machines; the published MD5 is still enforced.
    """
    key = PRETRAINED[(depth, variant)]
    file_name = f"{key}_weights_tf_dim_ordering_tf_kernels{'' if include_top else '_notop'}.h5"
    base = os.environ.get("KERAS_RESNET_WEIGHTS_URL", KERAS_APPLICATIONS_URL)
    url = base.rstrip("/") + "/" + file_name
    try:
        return keras.utils.get_file(file_name, url, cache_subdir="models",
                                    file_hash=KERAS_APPLICATIONS_MD5[key][0 if include_top else 1])
    except Exception as err:  # network errors surface as several exception types
        raise OSError(
            f"Could not fetch ImageNet weights from {url} ({err}). Offline, copy that file "
            f"here and pass weights='<path to {file_name}>'.") from err


def load_weights(model: keras.Model, source, *, depth: int, variant: str, include_top: bool) -> None:
    """Load `source` ("imagenet" or a file) into `model` exactly, or raise and load nothing."""
    if source == "imagenet":
        source = imagenet_weights_file(depth, variant, include_top)
    if is_native_file(source):
        _load_native(model, source)
    else:
        _load_keras_applications(model, source, include_top=include_top)


def _read_legacy_h5(path) -> dict[str, list[np.ndarray]]:
    """{layer name: [arrays]} from a legacy Keras HDF5 weights (or whole-model) file."""
    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in group.attrs:
                raise ValueError(f"{str(path)!r} is not a legacy Keras HDF5 weights file "
                                 "(no layer_names); expected a keras.applications ResNet file.")
            out = {}
            for raw in group.attrs["layer_names"]:
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                names = group[name].attrs.get("weight_names", [])
                arrays = [np.asarray(group[name][w.decode() if isinstance(w, bytes) else w])
                          for w in names]
                if arrays:
                    out[name] = arrays
            return out
    except OSError as err:
        raise ValueError(f"Cannot read {str(path)!r} as an HDF5 weights file: {err}") from err


def legacy_file_variant(path) -> str:
    """"v2" if a keras.applications file is a pre-activation ResNet, else "v1"."""
    _require_file(path)
    names = _read_legacy_h5(path)
    return "v2" if any(n.endswith("_preact_bn") for n in names) else "v1"


def _targets(model: keras.Model) -> list[tuple[str, keras.layers.Layer]]:
    """(keras.applications layer name, our layer) for every layer that holds weights."""
    out = []
    for layer in model.layers:
        if isinstance(layer, ResidualBlock):
            out += [(f"{layer.name}_{suffix}", getattr(layer, attr))
                    for attr, suffix in _BLOCK_LAYER_NAMES.items()
                    if getattr(layer, attr, None) is not None]
        elif layer.weights:
            out.append((layer.name, layer))
    return out


def _mismatch(path, name: str, what: str) -> ValueError:
    return ValueError(
        f"Weights file {str(path)!r} does not fit this model at layer {name!r}: {what}. "
        "It was saved for another architecture (depth, variant, include_top or classes).")


def _load_keras_applications(model: keras.Model, path, *, include_top: bool) -> None:
    source = _read_legacy_h5(path)
    plan: list[tuple[keras.Variable, np.ndarray]] = []
    pending_bias: dict[str, np.ndarray] = {}  # BN name -> bias of the conv before it
    used = set()
    targets = _targets(model)
    target_names = {name for name, _ in targets}

    def put(variable, array, name):
        if tuple(variable.shape) != array.shape:
            raise _mismatch(path, name, f"file has shape {array.shape}, model {tuple(variable.shape)}")
        plan.append((variable, array))

    for name, layer in targets:
        if name not in source:
            raise _mismatch(path, name, "the file has no such layer")
        arrays = source[name]
        used.add(name)
        if isinstance(layer, keras.layers.BatchNormalization):
            if len(arrays) != 4:
                raise _mismatch(path, name, f"expected 4 BN arrays, file has {len(arrays)}")
            gamma, beta, mean, var = arrays
            mean = mean - pending_bias.pop(name, 0.0)
            var = var + (KERAS_APPLICATIONS_BN_EPSILON - layer.epsilon)
            if (var < 0).any():
                raise ValueError(
                    f"Layer {name!r}: bn_epsilon={layer.epsilon} is too large to fold exactly; "
                    f"build with bn_epsilon={KERAS_APPLICATIONS_BN_EPSILON}.")
            for variable, array in zip((layer.gamma, layer.beta, layer.moving_mean,
                                        layer.moving_variance), (gamma, beta, mean, var)):
                put(variable, array, name)
            continue
        put(layer.kernel, arrays[0], name)
        bias = arrays[1] if len(arrays) > 1 else None
        if layer.use_bias:
            if bias is None:
                raise _mismatch(path, name, "the model has a bias the file lacks")
            put(layer.bias, bias, name)
        elif bias is not None:
            bn_name = name.removesuffix("_conv") + "_bn"
            if not isinstance(layer, keras.layers.Conv2D) or bn_name not in target_names:
                raise _mismatch(path, name, "the file has a bias with no BN to fold it into")
            pending_bias[bn_name] = bias
    ignorable = set() if include_top else {"predictions"}
    extra = [n for n in source if n not in used and n not in ignorable]
    if extra:
        raise _mismatch(path, extra[0], "the file has this layer, the model does not")
    for variable, array in plan:
        variable.assign(array.astype(keras.backend.standardize_dtype(variable.dtype)))


def _weight_inventory(path) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """{top-level entry: [(variable path, shape)]} of a `.weights.h5`, optimizer excluded."""
    found: dict[str, list] = {}

    def visit(name, obj):
        parts = name.split("/")
        if isinstance(obj, h5py.Dataset) and parts[0] == "layers":
            found.setdefault("/".join(parts[:2]), []).append((name, obj.shape))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return {key: sorted(items) for key, items in found.items()}


def _file_keys(model: keras.Model) -> dict[str, str]:
    """{file entry: layer name}: Keras keys a model's layers by snake-cased class + counter."""
    counts: dict[str, int] = {}
    keys = {}
    for layer in model.layers:
        base = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2",
                      re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", type(layer).__name__)).lower()
        counts[base] = counts.get(base, -1) + 1
        keys[f"layers/{base}" + (f"_{counts[base]}" if counts[base] else "")] = layer.name
    return keys


def _load_native(model: keras.Model, path) -> None:
    """Load a `.weights.h5` after checking it holds exactly this model's variables."""
    with tempfile.TemporaryDirectory() as tmp:
        expected_path = os.path.join(tmp, "expected.weights.h5")
        model.save_weights(expected_path)
        expected = _weight_inventory(expected_path)
    try:
        found = _weight_inventory(path)
    except OSError as err:
        raise ValueError(f"Cannot read {str(path)!r} as a .weights.h5 file: {err}") from err
    names = _file_keys(model)
    for key in [*names, *found]:  # model order first, then entries only the file has
        if expected.get(key) != found.get(key):
            want = [shape for _, shape in expected.get(key, [])]
            got = [shape for _, shape in found.get(key, [])]
            raise _mismatch(path, names.get(key, key.removeprefix("layers/")),
                            f"model expects variables {want or 'none'}, file has {got or 'none'}")
    model.load_weights(path)
