"""What a model computes, as data: {layer name: the configuration of what it computes} for
every layer that holds weights (names, precision, regularizers, initializers and training
flags left out). Two models with the same variables can still differ here (a v1 and a v1.5
ResNet: the stride sits in another conv of the same shape; a projection and a ResNet-D
shortcut), so weight files written by this package carry it and loads compare it."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import h5py
import keras

ATTRIBUTE = "keras_resnet_architecture"  # in a .weights.h5 file: this module's `describe`, as JSON

# Layer settings that are not the function a layer computes: names, flags, precision, what
# only training or initialization reads, and statistics that are variables of their own.
NOT_ARCHITECTURE = (
    "name",
    "trainable",
    "dtype",
    "frozen",
    "weight_decay",
    "bn_weight_decay",
    "kernel_regularizer",
    "bias_regularizer",
    "gamma_regularizer",
    "beta_regularizer",
    "drop_path_rate",
    "bn_momentum",
    "momentum",
    "zero_init_residual",
    "kernel_initializer",
    "gamma_initializer",
    "synchronized",
    "mean",
    "variance",
)


# Weightless layers described too: the old keras-resnet API's `pool1`, whose padding is all
# that tells its stem ("same") from keras.applications' ("valid", after `padding_pool1`).
DESCRIBED_WEIGHTLESS = ("pool1",)


def describe(model: keras.Model, skip: Sequence[str] = ()) -> dict[str, dict]:
    """{layer name: the config of what it computes} of `model`'s own layers that hold weights
    (and `DESCRIBED_WEIGHTLESS`; but the `skip` layers), as JSON would hold it."""
    described = {
        layer.name: {k: v for k, v in layer.get_config().items() if k not in NOT_ARCHITECTURE}
        for layer in model.layers
        if layer.name not in skip and (layer.weights or layer.name in DESCRIBED_WEIGHTLESS)
    }
    return json.loads(json.dumps(described, default=str))  # tuples as lists, as read back


def difference(theirs: dict[str, dict], ours: dict[str, dict], source: str = "the file") -> str | None:
    """The first layer where two descriptions differ and how ("layer 'x' differs in ..."), or
    None when they are the same. `theirs` is `source`'s (a file, a pretrained model)."""
    for name in sorted(set(theirs) | set(ours), key=lambda n: (n not in ours, n)):
        mine, other = ours.get(name), theirs.get(name)
        if mine == other:
            continue
        if other is None:
            return f"layer {name!r} is not in {source}"
        if mine is None:
            return f"layer {name!r} is not in this model"
        changed = [k for k in sorted(set(mine) | set(other)) if mine.get(k) != other.get(k)]
        return f"layer {name!r} differs in " + ", ".join(
            f"{k} ({other.get(k)!r} there, {mine.get(k)!r} here)" for k in changed
        )
    return None


def mark(path: str | os.PathLike, model: keras.Model) -> None:
    """Record `model`'s description in the HDF5 weight file `path` (written by `save_weights`)."""
    with h5py.File(path, "a") as f:
        f.attrs[ATTRIBUTE] = json.dumps(describe(model))


def marked(path: str | os.PathLike) -> dict[str, dict] | None:
    """The description recorded in the HDF5 file `path`; None in a file written without it."""
    with h5py.File(path, "r") as f:
        raw = f.attrs.get(ATTRIBUTE)
    return None if raw is None else json.loads(raw)
