"""Weight files in other layouts -> this package's variables, checked before assigned.

Layouts (`Checkpoint.layout`):
- "torch": torchvision's and timm's ResNet state dicts (plain, ResNet-D, SE, ResNeXt,
  wide), from `.safetensors` (parsed here with NumPy) or `.pth`/`.pt` (PyTorch needed).
- "keras_applications": keras.applications ResNet/ResNetV2 legacy HDF5 files.
- "keras_resnet": keras-resnet 0.1/0.2 legacy HDF5 files, keras-retinanet's backbones
  (`conv1`, `bn_conv1`, `res2a_branch2a`, ...; Caffe-style `scale*` layers allowed).
- "native": `.weights.h5` saved by this package.

Every array is matched to a variable and shape-checked, and every entry of the file is
accounted for, before the first variable is written. What differs exactly is folded: a
conv bias into the following BN's moving mean, a different BN epsilon into the moving
variance, a separate scale layer into gamma and beta.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tempfile
import warnings
import zipfile
from typing import cast

import h5py
import keras
import numpy as np

from keras_resnet import architecture, registry, specs
from keras_resnet.layers import BottleneckBlock, ResidualBlock

TORCH_BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d
KERAS_APPLICATIONS_BN_EPSILON = 1.001e-5
KERAS_RESNET_BN_EPSILON = 1e-5  # keras-resnet >= 0.1 (earlier convs carried biases)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".th")  # what PyTorch files are usually called; read by content
# The first bytes of each file kind `read` tells apart (a legacy torch.save file is a pickle
# whose first object is torch's magic number, 0x1950a86a20f9469cfc6c).
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_SIGNATURE = b"PK\x03\x04"
_TORCH_LEGACY_SIGNATURE = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
# The classifier of each PyTorch layout: torchvision/timm's `fc`, the CIFAR ResNets' `linear`
# (akamaster/pytorch_resnet_cifar10).
_TORCH_HEADS = ("fc", "linear")

# safetensors dtype -> NumPy dtype (little-endian); BF16 is widened to float32.
_SAFETENSORS_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}
# Block sub-layer -> keras.applications suffix, in load order (each conv before its BN).
_KERAS_APPLICATIONS_NAMES = {
    "preact_bn": "preact_bn",
    "shortcut_conv": "0_conv",
    "shortcut_bn": "0_bn",
    "conv1": "1_conv",
    "bn1": "1_bn",
    "conv2": "2_conv",
    "bn2": "2_bn",
    "conv3": "3_conv",
    "bn3": "3_bn",
}
# Block sub-layer -> keras-resnet (Caffe) branch name, in load order.
_KERAS_RESNET_NAMES = {
    "shortcut_conv": "res{}_branch1",
    "shortcut_bn": "bn{}_branch1",
    "conv1": "res{}_branch2a",
    "bn1": "bn{}_branch2a",
    "conv2": "res{}_branch2b",
    "bn2": "bn{}_branch2b",
    "conv3": "res{}_branch2c",
    "bn3": "bn{}_branch2c",
}
# Stem layer -> torchvision/timm module (timm's deep stem is a Sequential).
_TORCH_STEM = {
    "conv1_conv": "conv1",
    "conv1_bn": "bn1",
    "conv1_1_conv": "conv1.0",
    "conv1_1_bn": "conv1.1",
    "conv1_2_conv": "conv1.3",
    "conv1_2_bn": "conv1.4",
    "conv1_3_conv": "conv1.6",
    "conv1_3_bn": "bn1",
}
_BLOCK_NAME = re.compile(r"conv(\d+)_block(\d+)$")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A weight file, read: its layout, arrays and what its BN layers were trained with.

    `arrays` is {key: array} for "torch" and {layer name: [arrays]} for the HDF5 layouts;
    `layer_names` lists every layer of an HDF5 file, weightless ones included; `stem` is
    the padding of keras-resnet's `conv1` and `pool1` ("same" or "valid").
    """

    path: str
    layout: str
    arrays: dict = dataclasses.field(repr=False)
    bn_epsilon: float | None
    layer_names: tuple[str, ...] = ()
    stem: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def variant(self) -> str | None:
        """The variant the file's layout implies (None: v1.5 or v1d, or any for native)."""
        if self.layout == "keras_applications":
            return "v2" if any(n.endswith("_preact_bn") for n in self.arrays) else "v1"
        return "v1" if self.layout == "keras_resnet" else None

    @property
    def preprocessing(self) -> str:
        """The `preprocess_input` mode the weights expect."""
        if self.layout == "keras_applications":
            return "tf" if self.variant == "v2" else "caffe"
        return "caffe" if self.layout == "keras_resnet" else "torch"

    @property
    def num_classes(self) -> int | None:
        """Classes of the file's classifier (None: no classifier, or not readable)."""
        if self.layout == "torch":
            array = self.arrays.get(f"{self.torch_head}.weight")
            return None if array is None else array.shape[0]
        head = {"keras_applications": "predictions", "keras_resnet": "fc1000"}
        array = self.arrays.get(head.get(self.layout))
        if array is None:
            return None
        return array[0].shape[-1]

    @property
    def torch_head(self) -> str:
        """The classifier's name in a PyTorch state dict: "linear" (CIFAR ResNets) or "fc"."""
        return "linear" if "linear.weight" in self.arrays else "fc"


# -- reading -----------------------------------------------------------------------------
def read(path: str | os.PathLike) -> Checkpoint:
    """Read a weight file; its kind is told by its content, whatever its name (`file_kind`),
    and an HDF5 file's layout by its layer names."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Weights file {path!r} not found. Pass weights=None, a registry tag (see "
            "keras_resnet.list_weights()), 'imagenet', a .safetensors/.pth state dict, a "
            "keras.applications or keras-resnet .h5 file, or a .weights.h5 saved by keras_resnet."
        )
    kind = file_kind(path) or _kind_by_name(path)  # a damaged file: read as its name says, to say why
    if kind == "keras":
        raise ValueError(
            f"{path!r} is a whole Keras model (.keras), not a weight file: load it with "
            "keras.models.load_model, or fine-tune from it with `keras-resnet train --weights` (train(weights=...))."
        )
    if kind == "safetensors":
        return Checkpoint(path, "torch", _strip_prefix(read_safetensors(path)), TORCH_BN_EPSILON)
    if kind == "torch":
        return Checkpoint(path, "torch", _strip_prefix(_read_torch(path)), TORCH_BN_EPSILON)
    if kind == "hdf5" and not _is_legacy_h5(path):
        return Checkpoint(path, "native", {}, None)
    if kind == "hdf5":
        return _read_legacy_h5(path)
    raise ValueError(
        f"{path!r} is not a weight file this package reads (by its content: not HDF5, not a "
        "PyTorch torch.save file, not safetensors). Pass a .weights.h5 or .h5 Keras file, a "
        "PyTorch state dict (.pth, .pt, .th, .bin) or a .safetensors file."
    )


def file_kind(path: str) -> str | None:
    """ "hdf5", "torch" (torch.save: zip or legacy pickle), "keras" (a .keras zip),
    "safetensors", or None, from the file's content."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(_HDF5_SIGNATURE):
        return "hdf5"
    if head.startswith(_TORCH_LEGACY_SIGNATURE):
        return "torch"
    if head.startswith(_ZIP_SIGNATURE):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return "torch" if path.endswith(TORCH_SUFFIXES) else None  # truncated: as its name says
        return "keras" if "config.json" in names and "model.weights.h5" in names else "torch"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(path):
        return "safetensors"
    return None


def _kind_by_name(path: str) -> str | None:
    """The kind a file's name suggests, for a file whose content says none."""
    if path.endswith(".safetensors"):
        return "safetensors"
    if path.endswith(TORCH_SUFFIXES):
        return "torch"
    return "hdf5" if path.endswith((".h5", ".hdf5")) else None


def _is_legacy_h5(path: str) -> bool:
    """A Keras 2 HDF5 file (layer_names at its root or under model_weights), not a Keras 3
    `.weights.h5`."""
    try:
        with h5py.File(path, "r") as f:
            return "layer_names" in f.attrs or ("model_weights" in f and "layer_names" in f["model_weights"].attrs)
    except OSError as err:
        raise ValueError(f"Cannot read {path!r} as an HDF5 weights file: {err}") from err


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """{name: array} of a `.safetensors` file, without PyTorch (format: 8-byte header
    length, JSON header of dtype/shape/byte offsets, then the data)."""

    def corrupt(detail: str) -> ValueError:
        return ValueError(f"{path!r} is truncated or corrupt ({detail}); download or save it again.")

    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise corrupt("shorter than the 8-byte header length")
    size = int.from_bytes(raw[:8], "little")
    if size > len(raw) - 8:
        raise corrupt(f"header of {size} bytes in a file of {len(raw)}")
    try:
        header = json.loads(raw[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise corrupt(f"unreadable header: {err}") from None
    if not isinstance(header, dict):
        raise corrupt("the header is not a JSON object")
    data = memoryview(raw)[8 + size :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            np_dtype = np.dtype(_SAFETENSORS_DTYPES[dtype])
        except (KeyError, TypeError, ValueError):
            raise corrupt(f"bad header entry for {name!r}") from None
        if not 0 <= begin <= end <= len(data) or end - begin != math.prod(shape) * np_dtype.itemsize:
            raise corrupt(f"tensor {name!r} needs bytes {begin}..{end} of {len(data)}")
        array = np.frombuffer(data, np_dtype, math.prod(shape), begin).reshape(shape)
        if dtype == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        out[name] = array
    return out


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"Reading {path!r} needs PyTorch: pip install 'keras-resnet-family[torch]' (or "
            "save the state dict as .safetensors, which loads without it)."
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, pickle and storage errors come as several types
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path!r} is truncated or corrupt, or not a PyTorch state dict ({detail}); download or save it again."
        ) from None
    for key in ("state_dict", "model"):  # training checkpoints wrap the state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} holds a {type(state).__name__}, not a state dict.")
    return {
        k: (v.float() if v.dtype == torch.bfloat16 else v).numpy()
        for k, v in state.items()
        if isinstance(v, torch.Tensor)
    }


def _strip_prefix(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop the "module." prefix DataParallel training adds to every key."""
    if arrays and all(k.startswith("module.") for k in arrays):
        return {k.removeprefix("module."): v for k, v in arrays.items()}
    return arrays


def _read_legacy_h5(path: str) -> Checkpoint:
    """A legacy Keras HDF5 weights (or whole-model) file, keras.applications or keras-resnet."""
    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in group.attrs:
                raise ValueError(
                    f"{path!r} is not a legacy Keras HDF5 weights file (no layer_names); "
                    "expected a keras.applications or keras-resnet ResNet file."
                )
            names = tuple(_text(n) for n in group.attrs["layer_names"])
            arrays = {}
            for name in names:
                weight_names = [_text(w) for w in group[name].attrs.get("weight_names", [])]
                if weight_names:
                    arrays[name] = [np.asarray(group[name][w]) for w in weight_names]
            config = f.attrs.get("model_config")
    except OSError as err:
        raise ValueError(f"Cannot read {path!r} as an HDF5 weights file: {err}") from err
    layers = _config_layers(config)
    if "conv1_conv" in names or any(n.endswith("_preact_bn") for n in names):
        return Checkpoint(path, "keras_applications", arrays, KERAS_APPLICATIONS_BN_EPSILON, names)
    if "bn_conv1" not in names:
        raise ValueError(
            f"{path!r} holds no ResNet layout this package reads: expected keras.applications "
            "layer names (conv1_conv, ...) or keras-resnet ones (conv1, bn_conv1, ...)."
        )
    epsilon = layers.get("bn_conv1", {}).get("epsilon")
    if epsilon is None:
        if len(arrays.get("conv1", [])) > 1:
            raise ValueError(
                f"{path!r} comes from keras-resnet before 0.1 (its convs carry biases) and does not "
                "record its BN epsilon; load it with that package and save it whole (model.save) first."
            )
        epsilon = KERAS_RESNET_BN_EPSILON
    stem = {
        "conv1": layers.get("conv1", {}).get("padding", "valid" if "padding_conv1" in names else "same"),
        "pool1": layers.get("pool1", {}).get("padding", "same"),
    }
    return Checkpoint(path, "keras_resnet", arrays, float(epsilon), names, stem)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _config_layers(config) -> dict[str, dict]:
    """{layer name: layer config} from a whole-model file's `model_config` ({} if none)."""
    if config is None:
        return {}
    try:
        layers = json.loads(_text(config))["config"]["layers"]
        return {layer["config"]["name"]: layer["config"] for layer in layers}
    except (ValueError, KeyError, TypeError):
        return {}


# -- matching a file to the registry ------------------------------------------------------
def _torch_signature(shapes: dict[str, tuple]) -> tuple | None:
    """What a torchvision/timm state dict says about its architecture."""
    if "layer1.0.conv1.weight" not in shapes:
        return None
    repeats = tuple(len({k.split(".")[1] for k in shapes if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    if "linear.weight" in shapes:  # a CIFAR ResNet: three stages of basic blocks, 16 channels first
        return ("cifar", repeats, shapes["conv1.weight"][0])
    bottleneck = "layer1.0.conv3.weight" in shapes
    conv2 = shapes["layer1.0.conv2.weight"] if bottleneck else (64, 64)
    se = shapes.get("layer1.0.se.fc1.weight")
    return (
        repeats,
        bottleneck,
        "conv1.0.weight" in shapes,
        conv2[0],
        conv2[0] // conv2[1],
        round(se[0] / se[1], 4) if se else None,
    )


def _entry_signature(entry: registry.ModelEntry) -> tuple | None:
    if entry.variant == "cifar":
        n = (entry.depth - 2) // 6
        return ("cifar", (n, n, n, 0), 16)
    if entry.variant not in ("v1.5", "v1d"):
        return None
    block, repeats = specs.IMAGENET_DEPTHS[entry.depth]
    bottleneck = block == "bottleneck"
    return (
        repeats,
        bottleneck,
        entry.variant == "v1d",
        entry.width_per_group * entry.groups if bottleneck else 64,
        entry.groups,
        round(entry.se_ratio, 4) if entry.se_ratio else None,
    )


def fitting_models(checkpoint: Checkpoint) -> list[str]:
    """Registry names whose architecture a torchvision/timm state dict fits."""
    if checkpoint.layout != "torch":
        return []
    signature = _torch_signature({k: v.shape for k, v in checkpoint.arrays.items()})
    return [
        name
        for name, entry in registry.MODELS.items()
        if signature is not None and _entry_signature(entry) == signature
    ]


# -- loading -----------------------------------------------------------------------------
Plan = list[tuple[keras.Variable, np.ndarray]]


def plan(model: keras.Model, checkpoint: Checkpoint) -> Plan:
    """(variable, array) for every variable of `model`, every entry of the file used:
    what `load` assigns, or the refusal naming the first mismatch. Not for "native"."""
    planner = (
        _old_api_plan
        if is_old_api(model)
        else {"torch": _torch_plan, "keras_applications": _keras_applications_plan, "keras_resnet": _keras_resnet_plan}[
            checkpoint.layout
        ]
    )
    pairs = planner(model, checkpoint)
    _check_covers(model, pairs, checkpoint.path)
    return pairs


def _check_covers(model: keras.Model, pairs: Plan, path: str) -> None:
    """Refuse a plan that leaves any variable of `model` unassigned, or assigns one twice."""
    counts: dict[int, int] = {}
    for variable, _ in pairs:
        counts[id(variable)] = counts.get(id(variable), 0) + 1
    missing = [v.path for v in model.weights if id(v) not in counts]
    twice = [v.path for v in model.weights if counts.get(id(v), 0) > 1]
    if missing or twice:
        what = (
            f"it has nothing for {len(missing)} of the model's {len(model.weights)} variables "
            f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})"
            if missing
            else f"it would assign {twice[0]} twice"
        )
        raise ValueError(
            f"Weights file {path!r} does not fit this model: {what}. It was saved for "
            "another architecture: build the one it holds (without se_ratio, with the "
            "file's variant and shortcut), or use weights saved for this one."
        )


def load(model: keras.Model, checkpoint: Checkpoint) -> None:
    """Load `checkpoint` into `model` exactly, or raise and assign nothing."""
    if checkpoint.layout == "native":
        _load_native(model, checkpoint.path)
        return
    for variable, array in plan(model, checkpoint):
        variable.assign(array.astype(keras.backend.standardize_dtype(variable.dtype), copy=False))


def _has_top(model: keras.Model) -> bool:
    return any(layer.name in ("predictions", "fc1000") for layer in model.layers)


def _blocks(model: keras.Model):
    """(stage, block index, layer) of every residual block, numbered as the layer names."""
    for layer in model.layers:
        match = _BLOCK_NAME.match(layer.name)
        if isinstance(layer, ResidualBlock) and match:
            yield int(match[1]), int(match[2]), layer


def _require_stride_on(model: keras.Model, checkpoint: Checkpoint, stride_on: str, what: str) -> None:
    """State dicts do not record where a bottleneck strides; the model must match the source."""
    for _, _, block in _blocks(model):
        if block.preact or (isinstance(block, BottleneckBlock) and block.stride_on != stride_on):
            kind = "pre-activation (v2)" if block.preact else f"strides on the {block.stride_on} (v1)"
            raise ValueError(
                f"{checkpoint.path!r} holds {what}, but this model {kind}: build a "
                f"matching variant or use weights saved for this one."
            )


def _fold_epsilon(variance: np.ndarray, source: float | None, layer, where: str) -> np.ndarray:
    variance = variance + (cast(float, source) - layer.epsilon)
    if (variance < 0).any():
        raise ValueError(
            f"{where}: bn_epsilon={layer.epsilon} is larger than the file's {source} by more "
            f"than a variance, so it cannot fold exactly; build with bn_epsilon={source}."
        )
    return variance


class _StateDictPlan:
    """Pairs of (variable, array) from a PyTorch state dict, checked key by key: a missing
    key, a wrong shape or a key left over is refused with the models the file does fit."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint, self.arrays, self.path = checkpoint, checkpoint.arrays, checkpoint.path
        self.plan: Plan = []
        self.used: set[str] = set()

    def refuse(self, key: str, what: str) -> ValueError:
        fits = fitting_models(self.checkpoint)
        hint = f"It fits: {', '.join(fits)}." if fits else "No registry model fits it."
        return ValueError(f"Weights file {self.path!r} does not fit this model at key {key!r}: {what}. {hint}")

    def take(self, key: str, variable, transform=lambda a: a, torch_shape=tuple) -> None:
        if key not in self.arrays:
            raise self.refuse(key, f"missing from the file (the model expects shape {torch_shape(variable.shape)})")
        array = transform(self.arrays[key])
        if array.shape != tuple(variable.shape):
            raise self.refuse(
                key, f"the file has shape {self.arrays[key].shape}, the model expects {torch_shape(variable.shape)}"
            )
        self.used.add(key)
        self.plan.append((variable, array))

    def conv(self, layer, key: str) -> None:
        self.take(f"{key}.weight", layer.kernel, lambda a: a.transpose(2, 3, 1, 0), lambda s: (s[3], s[2], s[0], s[1]))
        if layer.use_bias:
            self.take(f"{key}.bias", layer.bias)

    def bn(self, layer, key: str) -> None:
        self.take(f"{key}.weight", layer.gamma)
        self.take(f"{key}.bias", layer.beta)
        self.take(f"{key}.running_mean", layer.moving_mean)
        self.take(
            f"{key}.running_var",
            layer.moving_variance,
            lambda a: _fold_epsilon(a, self.checkpoint.bn_epsilon, layer, f"{self.path!r} at {key}"),
        )
        self.used.add(f"{key}.num_batches_tracked")

    def either(self, layer, key: str) -> None:
        (self.bn if isinstance(layer, keras.layers.BatchNormalization) else self.conv)(layer, key)

    def dense(self, layer, key: str) -> None:
        self.take(f"{key}.weight", layer.kernel, lambda a: a.T, lambda s: (s[1], s[0]))
        self.take(f"{key}.bias", layer.bias)

    def finish(self, ignored: set[str]) -> Plan:
        """The plan, once no key of the file is left unused (but `ignored` ones)."""
        extra = [
            k for k in self.arrays if k not in self.used and k not in ignored and not k.endswith("num_batches_tracked")
        ]
        if extra:
            raise self.refuse(extra[0], f"in the file (shape {self.arrays[extra[0]].shape}), not in this model")
        return self.plan


def _torch_block(planner: _StateDictPlan, layer, prefix: str) -> None:
    """One residual block's variables from torchvision's/timm's keys under `prefix`."""
    for attr in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3"):
        if getattr(layer, attr, None) is not None:
            planner.either(getattr(layer, attr), f"{prefix}.{attr}")
    if getattr(layer, "shortcut_conv", None) is not None:
        index = 1 if layer.shortcut_kind == "avgpool" else 0  # timm: (pool, conv, bn)
        planner.conv(layer.shortcut_conv, f"{prefix}.downsample.{index}")
        planner.bn(layer.shortcut_bn, f"{prefix}.downsample.{index + 1}")
    if getattr(layer, "se", None) is not None:
        planner.conv(layer.se.reduce, f"{prefix}.se.fc1")
        planner.conv(layer.se.expand, f"{prefix}.se.fc2")


def _torch_plan(model: keras.Model, checkpoint: Checkpoint) -> Plan:
    _require_stride_on(model, checkpoint, "3x3", "a torchvision/timm network (v1.5: strides on the 3x3)")
    planner = _StateDictPlan(checkpoint)
    head = checkpoint.torch_head
    blocks = {id(layer): (s, b) for s, b, layer in _blocks(model)}
    for layer in model.layers:
        if layer.name in _TORCH_STEM:
            planner.either(layer, _TORCH_STEM[layer.name])
        elif id(layer) in blocks:
            s, b = blocks[id(layer)]
            _torch_block(planner, layer, f"layer{s - 1}.{b - 1}")
        elif layer.name == "predictions":
            planner.dense(layer, head)
        elif layer.weights:
            raise planner.refuse(layer.name, "this layer has no counterpart in torchvision's or timm's layout")
    return planner.finish(set() if _has_top(model) else {f"{head}.weight", f"{head}.bias"})


def _keras_applications_targets(model: keras.Model) -> list[tuple[str, keras.layers.Layer]]:
    out = []
    for layer in model.layers:
        if isinstance(layer, ResidualBlock):
            out += [
                (f"{layer.name}_{suffix}", getattr(layer, attr))
                for attr, suffix in _KERAS_APPLICATIONS_NAMES.items()
                if getattr(layer, attr, None) is not None
            ]
        elif layer.weights:
            out.append((layer.name, layer))
    return out


def _require_projection_shortcuts(model: keras.Model, checkpoint: Checkpoint, what: str) -> None:
    """Legacy files hold strided 1x1 projections; an average-pooled (ResNet-D) shortcut has
    the same shapes but computes something else."""
    for _, _, block in _blocks(model):
        if getattr(block, "shortcut_kind", None) == "avgpool":
            raise ValueError(
                f"{checkpoint.path!r} holds {what} with strided 1x1 projection shortcuts, "
                f"but {block.name} pools before its projection (shortcut='avgpool'): "
                "build with the default shortcut."
            )


def _keras_applications_plan(model: keras.Model, checkpoint: Checkpoint) -> Plan:
    _require_projection_shortcuts(model, checkpoint, "keras.applications weights")
    if checkpoint.variant == "v1":
        _require_stride_on(model, checkpoint, "1x1", "keras.applications ResNet v1 weights (stride on the 1x1)")
    return _legacy_plan(model, checkpoint, _keras_applications_targets(model), "predictions")


def _keras_resnet_plan(model: keras.Model, checkpoint: Checkpoint) -> Plan:
    _require_stride_on(model, checkpoint, "1x1", "keras-resnet weights (v1: stride on the 1x1)")
    _require_projection_shortcuts(model, checkpoint, "keras-resnet weights")
    names = set(checkpoint.layer_names)
    stem = {"conv1_conv": "conv1", "conv1_bn": "bn_conv1", "predictions": "fc1000"}
    blocks = {id(layer): (s, b) for s, b, layer in _blocks(model)}
    targets = []
    for layer in model.layers:
        if id(layer) in blocks:
            s, b = blocks[id(layer)]
            letter = chr(ord("a") + b - 1)
            # ResNet-101/152 number their blocks after the first (res4b1, res4b2, ...), as Caffe did.
            block = next((c for c in (letter, f"b{b - 1}") if f"res{s}{c}_branch2a" in names), letter)
            targets += [
                (pattern.format(f"{s}{block}"), getattr(layer, attr))
                for attr, pattern in _KERAS_RESNET_NAMES.items()
                if getattr(layer, attr, None) is not None
            ]
        elif layer.weights:
            targets.append((stem.get(layer.name, layer.name), layer))
    return _legacy_plan(model, checkpoint, targets, "fc1000")


# -- the old keras-resnet API's models: its flat graph and layer names (keras_resnet.models) --
_OLD_BRANCH = re.compile(r"(res|bn)(\d)([a-z]|b\d+)_branch(1|2[abc])$")
_OLD_TO_APPLICATIONS = {"1": "0", "2a": "1", "2b": "2", "2c": "3"}
_OLD_STEM_TO_APPLICATIONS = {"conv1": "conv1_conv", "bn_conv1": "conv1_bn", "fc1000": "predictions"}
KERAS_APPLICATIONS_STEM = {"conv1": "valid", "pool1": "valid"}  # conv1 and pool1 after explicit pads


def is_old_api(model: keras.Model) -> bool:
    """Whether `model` is built as the old keras-resnet API built it (`bn_conv1`, `res2a_branch2a`, ...)."""
    return any(layer.name == "bn_conv1" for layer in model.layers)


def old_api_stem(model: keras.Model) -> dict[str, str]:
    """The padding of an old-API model's conv1 and pool1, as `Checkpoint.stem` names it."""
    return {name: model.get_layer(name).padding for name in ("conv1", "pool1")}


def _old_api_plan(model: keras.Model, checkpoint: Checkpoint) -> Plan:
    path = checkpoint.path
    if checkpoint.layout == "torch":
        raise ValueError(
            f"{path!r} holds a torchvision/timm network (v1.5: strides on the 3x3), but this model strides on the "
            "1x1 (the old keras-resnet API's v1): build it with keras_resnet.build(..., weights=path)."
        )
    if checkpoint.variant == "v2":
        raise ValueError(
            f"{path!r} holds keras.applications ResNet v2 weights; the old keras-resnet API builds v1 "
            "networks: build it with keras_resnet.build(depth, variant='v2', weights=path)."
        )
    expected = checkpoint.stem if checkpoint.layout == "keras_resnet" else KERAS_APPLICATIONS_STEM
    stem = old_api_stem(model)
    if stem != expected:
        raise ValueError(
            f"{path!r} was trained with a stem padding conv1 {expected['conv1']!r} and pool1 {expected['pool1']!r}; "
            f"this model pads them {stem['conv1']!r} and {stem['pool1']!r}, so its outputs would differ. Build it "
            "with the file: keras_resnet.models.ResNet50(inputs, weights=path). Nothing was loaded."
        )
    names = set(checkpoint.layer_names)
    targets = []
    for layer in model.layers:  # each conv before its BN, as _legacy_plan folds biases
        if isinstance(layer, keras.layers.Conv2D):
            bn = "bn_conv1" if layer.name == "conv1" else "bn" + layer.name[3:]
            targets += [(layer.name, layer), (bn, model.get_layer(bn))]
        elif isinstance(layer, keras.layers.Dense):
            targets.append((layer.name, layer))
    renamed = [(_old_api_file_name(name, checkpoint.layout, names), layer) for name, layer in targets]
    return _legacy_plan(model, checkpoint, renamed, "fc1000" if checkpoint.layout == "keras_resnet" else "predictions")


def _old_api_file_name(name: str, layout: str, names: set[str]) -> str:
    """The file's name for the old-API layer `name`: keras.applications', or keras-resnet's
    with the file's block numbering ("res4b1" or "res4b")."""
    match = _OLD_BRANCH.match(name)
    if match is None:
        return _OLD_STEM_TO_APPLICATIONS.get(name, name) if layout == "keras_applications" else name
    kind, stage, block, branch = match.groups()
    index = ord(block) - ord("a") if len(block) == 1 else int(block[1:])
    if layout == "keras_applications":
        suffix = "conv" if kind == "res" else "bn"
        return f"conv{stage}_block{index + 1}_{_OLD_TO_APPLICATIONS[branch]}_{suffix}"
    numerical = index > 0 and f"res{stage}b1_branch2a" in names  # the file's numbering of this stage
    return f"{kind}{stage}{f'b{index}' if numerical else chr(ord('a') + index)}_branch{branch}"


def _mismatch(path: str, name: str, what: str) -> ValueError:
    return ValueError(
        f"Weights file {path!r} does not fit this model at layer {name!r}: {what}. "
        "It was saved for another architecture (depth, variant, include_top or classes)."
    )


def _legacy_plan(model: keras.Model, checkpoint: Checkpoint, targets, head: str) -> Plan:
    """Plan for a legacy HDF5 file: `targets` lists (file layer name, our layer), each conv
    before the BN that absorbs its bias; "bn*" layers may have a "scale*" partner."""
    source, path = checkpoint.arrays, checkpoint.path
    plan: Plan = []
    used: set[str] = set()
    pending_bias = None  # bias of a conv whose bias-free counterpart feeds the next BN

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
            if len(arrays) not in (2, 4):
                raise _mismatch(path, name, f"expected 4 BN arrays (2 beside a scale layer), file has {len(arrays)}")
            channels = arrays[-1].shape
            gamma, beta = (arrays[0], arrays[1]) if len(arrays) == 4 else (np.ones(channels), np.zeros(channels))
            mean, variance = arrays[-2], arrays[-1]
            scale = "scale" + name[2:] if name.startswith("bn") else None
            if scale is not None and scale in source:  # Caffe's BatchNorm + Scale pair
                used.add(scale)
                s_gamma, s_beta = source[scale]
                gamma, beta = s_gamma * gamma, s_gamma * beta + s_beta
            if pending_bias is not None:
                mean, pending_bias = mean - pending_bias, None
            variance = _fold_epsilon(variance, checkpoint.bn_epsilon, layer, f"Layer {name!r}")
            for variable, array in zip(
                (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance), (gamma, beta, mean, variance)
            ):
                put(variable, np.asarray(array), name)
            continue
        if pending_bias is not None:
            raise _mismatch(path, name, "the file has a bias with no BN to fold it into")
        put(layer.kernel, arrays[0], name)
        bias = arrays[1] if len(arrays) > 1 else None
        if layer.use_bias:
            if bias is None:
                raise _mismatch(path, name, "the model has a bias the file lacks")
            put(layer.bias, bias, name)
        elif bias is not None:
            if not isinstance(layer, keras.layers.Conv2D):
                raise _mismatch(path, name, "the file has a bias with no BN to fold it into")
            pending_bias = bias
    if pending_bias is not None:
        raise _mismatch(path, targets[-1][0], "the file has a bias with no BN to fold it into")
    ignorable = set() if _has_top(model) else {head}
    extra = [n for n in source if n not in used and n not in ignorable]
    if extra:
        raise _mismatch(path, extra[0], "the file has this layer, the model does not")
    return plan


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
        base = re.sub(
            r"([a-z0-9])([A-Z])", r"\1_\2", re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", type(layer).__name__)
        ).lower()
        counts[base] = counts.get(base, -1) + 1
        keys[f"layers/{base}" + (f"_{counts[base]}" if counts[base] else "")] = layer.name
    return keys


def _load_native(model: keras.Model, path: str) -> None:
    """Load a `.weights.h5` after checking it holds exactly this model's variables."""
    with tempfile.TemporaryDirectory() as tmp:
        expected_path = os.path.join(tmp, "expected.weights.h5")
        model.save_weights(expected_path)
        expected = _weight_inventory(expected_path)
    try:
        found = _weight_inventory(path)
    except OSError as err:
        raise ValueError(f"Cannot read {path!r} as a .weights.h5 file: {err}") from err
    names = _file_keys(model)
    for key in [*names, *found]:  # model order first, then entries only the file has
        if expected.get(key) != found.get(key):
            want = [shape for _, shape in expected.get(key, [])]
            got = [shape for _, shape in found.get(key, [])]
            raise _mismatch(
                path,
                names.get(key, key.removeprefix("layers/")),
                f"model expects variables {want or 'none'}, file has {got or 'none'}",
            )
    _check_architecture(model, path)
    keras.Model.load_weights(model, path)  # Keras's own, also for the old API's subclass


def _check_architecture(model: keras.Model, path: str) -> None:
    """Refuse a `.weights.h5` whose recorded architecture is not `model`'s; warn, in one line,
    that a file without one (not written by this package) could only be checked by its
    variables' names and shapes."""
    recorded = architecture.marked(path)
    if recorded is None:
        warnings.warn(
            f"{path!r} does not record its architecture (saved by Keras's save_weights, not keras_resnet): only "
            "its variables' names and shapes were checked, which a v1 and a v1.5 ResNet (or a projection and a "
            "ResNet-D shortcut) share. Save weights with keras_resnet.save_weights(model, path) to have them "
            "checked.",
            stacklevel=3,
        )
        return
    diff = architecture.difference(recorded, architecture.describe(model))
    if diff:
        raise ValueError(
            f"Weights file {path!r} was saved from another architecture: {diff}. Nothing was loaded; build the "
            "architecture the file was saved from (same variant, shortcut, SE, groups, width)."
        )


def save_weights(model: keras.Model, path: str | os.PathLike) -> None:
    """`model.save_weights(path)` (a `.weights.h5`), with the architecture recorded, so that a
    load into another architecture with the same variables is refused."""
    model.save_weights(path)
    architecture.mark(path, model)
