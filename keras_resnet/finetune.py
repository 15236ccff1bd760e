"""Transfer learning for `train`: a pretrained backbone under a new head, and the phases.

With `model.weights` set, `train` builds the recipe's architecture without its top, loads
the pretrained weights into it, and puts a new classifier (`predictions`) for the data's
classes on top. Training then runs in phases (`phases`):

- "head", epochs [0, `train.head_epochs`): only the new head trains; every backbone layer is
  frozen, so its BatchNormalization layers run in inference mode;
- "all", the remaining epochs: the whole network trains, the backbone's steps scaled by
  `train.backbone_lr_scale` (`schedules.ScaledSGD`).

`train.freeze_bn = true` keeps every BatchNormalization frozen (statistics and γ/β) in every
phase. Weight sources: a `.keras` model saved by this package (its input normalization and
BN epsilon come along), a published weight (`keras-resnet weights`: it names the model, and
`recipes.check` takes the input size and eval crop from its record), or a file `build(weights=...)`
loads (the source's own preprocessing goes inside the model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import keras

from keras_resnet import recipes, registry
from keras_resnet.builder import build
from keras_resnet.layers import l2

HEAD = "predictions"


@dataclasses.dataclass(frozen=True)
class Phase:
    """Epochs [start, end) of one training phase ("head" or "all")."""

    name: str
    start: int
    end: int


def phases(config: dict) -> list[Phase]:
    """The phases of the run `config` describes (one "all" phase without pretrained weights)."""
    head = config["train"]["head_epochs"] if config["model"]["weights"] else 0
    return ([Phase("head", 0, head)] if head else []) + [Phase("all", head, config["train"]["epochs"])]


def phase_of(plan: Sequence[Phase], epoch: int) -> Phase:
    """The phase that trains epoch index `epoch` (the last phase for the end of the run)."""
    return next((p for p in plan if p.start <= epoch < p.end), plan[-1])


def set_trainable(model: keras.Model, phase: Phase, freeze_bn: bool) -> None:
    """Freeze and unfreeze `model`'s layers as `phase` asks (nested layers included)."""
    for layer in model._flatten_layers(include_self=False):
        layer.trainable = phase.name == "all" or layer.name == HEAD
    if freeze_bn:
        for layer in model._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def backbone_variables(model: keras.Model) -> list:
    """The trainable variables outside the new head."""
    head = {id(v) for v in model.get_layer(HEAD).weights} if _has_head(model) else set()
    return [v for v in model.trainable_variables if id(v) not in head]


def _has_head(model: keras.Model) -> bool:
    return any(layer.name == HEAD for layer in model.layers)


def build_pretrained(config: dict, *, num_classes: int, image_size: Sequence[int]) -> keras.Model:
    """The recipe's architecture on `model.weights`, with a new `num_classes` head."""
    arch = recipes.build_kwargs(config)
    depth, source = arch.pop("depth"), arch.pop("weights")
    arch.update(input_shape=(*image_size, 3), include_top=False, pooling="avg")
    if source.endswith(".keras"):
        from keras_resnet.evaluation import load_model

        pretrained = load_model(source)
        epsilons = {layer.epsilon for layer in pretrained._flatten_layers()
                    if isinstance(layer, keras.layers.BatchNormalization)}
        arch["bn_epsilon"] = epsilons.pop() if len(epsilons) == 1 else arch["bn_epsilon"]
        backbone = build(depth, normalization=input_normalization(pretrained), **arch)
        copy_weights(pretrained, backbone, origin=source)
    elif source in registry.WEIGHTS:  # a published weight names its architecture
        fixed = ("variant", "groups", "width_per_group", "se_ratio", "shortcut", "bn_epsilon")
        backbone = build(source.split(".", 1)[0], weights=source, include_preprocessing=True,
                         **{k: v for k, v in arch.items() if k not in fixed})
    else:  # a file: the recipe names the architecture, the file its BN epsilon
        backbone = build(depth, weights=source, include_preprocessing=True,
                         **{**arch, "bn_epsilon": None})
    mixed = keras.config.dtype_policy().name.startswith("mixed")
    outputs = keras.layers.Dense(num_classes, activation="softmax", name=HEAD,
                                 kernel_regularizer=l2(arch["weight_decay"]),
                                 dtype="float32" if mixed else None)(backbone.output)
    return keras.Model(backbone.input, outputs, name=f"{backbone.name}_finetuned")


def input_normalization(model: keras.Model) -> tuple[list[float], list[float]] | None:
    """(mean, std) of the `normalization` layer a model trained by `train` holds, if any."""
    if not any(layer.name == "normalization" for layer in model.layers):
        return None
    config = model.get_layer("normalization").get_config()
    return list(config["mean"]), [v ** 0.5 for v in config["variance"]]


def copy_weights(source: keras.Model, target: keras.Model, *, origin: str | Path = "",
                 skip: Sequence[str] = (HEAD,)) -> None:
    """Assign every variable of `target` (but those of the `skip` layers) from the variable
    of `source` at the same path, after checking them all: nothing is assigned unless every
    one is there with the same shape."""
    by_path = {v.path: v for v in source.weights}
    pairs = []
    for v in target.weights:
        if v.path.split("/")[0] in skip:
            continue
        found = by_path.get(v.path)
        if found is None or tuple(found.shape) != tuple(v.shape):
            what = "has no" if found is None else f"has shape {tuple(found.shape)} for"
            raise ValueError(f"The pretrained model {origin or source.name} {what} {v.path} "
                             f"{tuple(v.shape)}: build the same architecture as the pretrained model "
                             f"(it is {source.name}; set --depth/--variant to match).")
        pairs.append((v, found))
    for v, found in pairs:
        v.assign(found)
