"""Feature maps of a built ResNet, by the names keras.applications and keras-hub users know.

keras.applications' ResNets expose every block's output as a layer named
`conv{stage}_block{block}_out`; here each block is one layer, `conv{stage}_block{block}`,
so `feature_model(model, ["conv4_block6_out"])` maps those names onto our layers.
keras-hub backbones expose `backbone.pyramid_outputs`, the last feature map at each stride
keyed `"P{log2 stride}"`; `pyramid_outputs(model)` gives the same dict for any model of
this package (the builder also sets it as the model's `pyramid_outputs` attribute).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import keras

_BLOCK = re.compile(r"conv(\d+)_block(\d+)$")
_BLOCK_OUT = re.compile(r"conv(\d+)_block(\d+)_out$")


def _blocks(model: keras.Model) -> list[keras.layers.Layer]:
    """The residual block layers of `model`, in order."""
    return [layer for layer in model.layers if _BLOCK.match(layer.name)]


def pyramid_outputs(model: keras.Model) -> dict[str, keras.KerasTensor]:
    """The last feature map at each total stride, keyed "P{log2 stride}" (keras-hub's
    naming): "P2".."P5" for ImageNet ResNets, "P0".."P2" for CIFAR ones. Works on models
    loaded from files too; `keras.Model(model.inputs, pyramid_outputs(model))` is the
    multi-scale backbone an FPN head takes."""
    blocks = _blocks(model)
    if not blocks:
        raise ValueError(
            f"{model.name} has no conv{{stage}}_block{{n}} layers: pass a model built by keras_resnet.build()."
        )
    stride = 4 if any(layer.name == "pool1_pool" for layer in model.layers) else 1
    features = {}
    for block in blocks:
        stride *= block.stride
        features[stride] = block.output
    names = {layer.name for layer in model.layers}
    if "post_relu" in names:  # pre-activation nets: the last map after the final BN + ReLU
        features[stride] = model.get_layer("post_relu").output
    return {f"P{int(math.log2(s))}": t for s, t in features.items()}


def feature_tensor(model: keras.Model, name: str) -> keras.KerasTensor:
    """The tensor keras.applications calls `name` ("conv4_block6_out", "conv1_relu",
    "pool1_pool", ...), a pyramid key ("P4"), or any layer's output by its name."""
    match = _BLOCK_OUT.match(name)
    layer_names = [layer.name for layer in model.layers]
    if match and f"conv{match[1]}_block{match[2]}" in layer_names:
        return model.get_layer(f"conv{match[1]}_block{match[2]}").output
    if name in layer_names:
        return model.get_layer(name).output
    if re.fullmatch(r"P\d+", name) and _blocks(model):
        pyramid = pyramid_outputs(model)
        if name in pyramid:
            return pyramid[name]
    blocks = [layer.name for layer in _blocks(model)]
    outs = [f"{b}_out" for b in blocks]
    raise ValueError(
        f"{name!r} is not a tensor of {model.name}. Each residual block is one layer here, so "
        "keras.applications' names inside a block (such as conv4_block6_2_relu) have no tensor; "
        f"use a block output ({outs[0]} … {outs[-1]}), a pyramid key "
        f"({', '.join(pyramid_outputs(model))}), or a layer name ({', '.join(layer_names[:6])}, …)."
        if blocks
        else f"{name!r} is not a layer of {model.name}."
    )


def feature_model(model: keras.Model, names: Sequence[str]) -> keras.Model:
    """A model from `model`'s input to the named feature maps (a dict keyed by `names`),
    sharing `model`'s layers and weights. Names as in `feature_tensor`."""
    if isinstance(names, str):
        names = [names]
    inputs = model.input if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, {name: feature_tensor(model, name) for name in names}, name=f"{model.name}_features")
