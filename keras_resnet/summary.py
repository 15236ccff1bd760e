"""Parameter and multiply-accumulate (MAC) counts, and the table of named models."""

from __future__ import annotations

import io
import math
from contextlib import redirect_stdout
from typing import Any

import keras

from keras_resnet.builder import build
from keras_resnet.files import dumps


def _all_layers(layer: keras.layers.Layer):
    for sub in layer._flatten_layers(include_self=False, recursive=False):
        yield sub
        yield from _all_layers(sub)


def count_macs(model: keras.Model) -> int:
    """MACs of one forward pass of one image: conv and dense layers (the usual convention).

    Needs a fixed input size. Convolutions count output positions x kernel area x input
    channels per group x output channels.
    """
    total = 0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            in_shape = layer.get_build_config()["input_shape"]
            out_shape = layer.compute_output_shape(in_shape)
            channels_last = layer.data_format == "channels_last"
            spatial = out_shape[1:3] if channels_last else out_shape[2:]
            if None in spatial:
                raise ValueError("count_macs needs a fixed input size; build with input_shape=(H, W, 3).")
            kernel = layer.kernel.shape  # (kh, kw, in / groups, out)
            total += math.prod(spatial) * kernel[0] * kernel[1] * kernel[2] * kernel[3]
        elif isinstance(layer, keras.layers.Dense):
            total += layer.kernel.shape[0] * layer.kernel.shape[1]
    return total


def count_params(model: keras.Model, trainable: bool = True) -> int:
    weights = model.trainable_weights if trainable else model.weights
    return sum(math.prod(w.shape) for w in weights)


def model_stats(model: keras.Model) -> dict:
    return {
        "name": model.name,
        "input_shape": list(model.input_shape[1:]),
        "trainable_params": count_params(model),
        "total_params": count_params(model, trainable=False),
        "macs": count_macs(model),
    }


# (label, build() keyword arguments) for the README's model table.
MODEL_TABLE: list[tuple[str, dict[str, Any]]] = [
    *[(f"ResNet-{d} {v}", {"depth": d, "variant": v}) for d in (18, 34, 50, 101, 152, 200) for v in ("v1.5",)],
    ("ResNet-50 v1 (keras.applications layout)", {"depth": 50, "variant": "v1"}),
    ("ResNet-50-D (v1d)", {"depth": 50, "variant": "v1d"}),
    ("ResNet-50 v2 (pre-activation)", {"depth": 50, "variant": "v2"}),
    ("ResNeXt-50 32x4d", {"depth": 50, "groups": 32, "width_per_group": 4}),
    ("ResNeXt-101 32x8d", {"depth": 101, "groups": 32, "width_per_group": 8}),
    ("Wide ResNet-50-2", {"depth": 50, "width_per_group": 128}),
    ("SE-ResNet-50", {"depth": 50, "se_ratio": 1 / 16}),
    *[(f"CIFAR ResNet-{d}", {"depth": d}) for d in (20, 32, 44, 56, 110, 1202)],
]


def report(
    depth: int | str | None = None,
    fmt: str = "text",
    *,
    all_models: bool = False,
    show_layers: bool = False,
    **build_kwargs,
) -> str:
    """Parameter and MAC counts of `build(depth, **build_kwargs)` (with `show_layers`, Keras's
    layer summary first), or with `all_models` of every model in `MODEL_TABLE`; `fmt` is
    "text", "json" or "markdown"."""
    layers = ""
    if all_models:
        rows = [(label, model_stats(build(**kwargs))) for label, kwargs in MODEL_TABLE]
    elif depth is None:
        raise ValueError("summary needs --depth D (e.g. --depth 50) or --all.")
    else:
        model = build(depth, **build_kwargs)
        rows = [(model.name, model_stats(model))]
        if show_layers:
            with redirect_stdout(io.StringIO()) as out:
                model.summary()
            layers = out.getvalue()
    if fmt == "json":
        return layers + dumps([{"model": label, **stats} for label, stats in rows], indent=2)
    if fmt == "markdown":
        lines = ["| model | input | trainable params | MACs |", "|---|---|---:|---:|"]
        for label, s in rows:
            side = "×".join(str(d) for d in s["input_shape"][:2])
            macs = f"{s['macs'] / 1e9:.2f} G" if s["macs"] >= 1e9 else f"{s['macs'] / 1e6:.1f} M"
            lines.append(f"| {label} | {side} | {s['trainable_params']:,} | {macs} |")
    else:
        lines = [
            f"{label}: input {tuple(s['input_shape'])}, {s['trainable_params']:,} trainable "
            f"parameters ({s['total_params']:,} total), {s['macs'] / 1e9:.3f} GMACs"
            for label, s in rows
        ]
    return layers + "\n".join(lines)
