"""Transfer learning for `train`: the pretrained model under a new head, the phases, and
the hyperparameters the `finetune` recipe picks from the data.

With `model.weights` set, `train` takes its backbone from the weights (`build_pretrained`):
a `.keras` model is used as it is — its layers up to the pooled features, with its input
normalization or preprocessing, BN epsilon, frozen layers and architecture (nothing in the
recipe has to match it); a published weight (`keras-resnet weights`) or a weight file goes
through `build(weights=...)` with the source's own preprocessing inside the model. A new
classifier (`predictions`) for the data's classes goes on top. Training runs in phases
(`phases`), each with its own schedule:

- "head": `train.head_steps` steps of the new head alone (every backbone layer frozen, so
  its BatchNormalization runs in inference mode), cosine from `train.head_lr`; it is one
  entry in the run's history;
- "all": `train.epochs` epochs of the whole network, warm-up and cosine from `train.lr`,
  the backbone's steps scaled by `train.backbone_lr_scale`. Layers frozen in the source
  `.keras` stay frozen.

`train.bn_mode` ("train", "frozen_stats", "frozen") says what BatchNormalization does in
phase "all" (`BN_MODES`). The model saved at the end is the trained model itself, in
float32 (`recast`), never a rebuild from the source.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import keras

from keras_resnet import recipes, registry
from keras_resnet.builder import build
from keras_resnet.layers import l2

HEAD = "predictions"
BN_MODES = {
    "train": "statistics and γ/β train (batch statistics in training mode)",
    "frozen_stats": "statistics re-estimated on the training images before phase 'all', then "
                    "fixed (inference mode); γ/β train",
    "frozen": "statistics and γ/β fixed at the source's values",
}


@dataclasses.dataclass(frozen=True)
class Phase:
    """Epochs [start, end) of one training phase ("head" or "all"), `steps` per epoch."""

    name: str
    start: int
    end: int
    steps: int


def phases(config: dict, steps_per_epoch: int) -> list[Phase]:
    """The phases of the run `config` describes: the head phase, when fine-tuning with
    `train.head_steps`, is one epoch of that many steps; then `train.epochs` of the whole
    network (none with `train.epochs = 0`: a linear probe)."""
    head = config["train"]["head_steps"] if config["model"]["weights"] else 0
    epochs = config["train"]["epochs"]
    first = [Phase("head", 0, 1, head)] if head else []
    return first + ([Phase("all", len(first), len(first) + epochs, steps_per_epoch)] if epochs else [])


def phase_of(plan: Sequence[Phase], epoch: int) -> Phase:
    """The phase that trains epoch index `epoch` (the last phase for the end of the run)."""
    return next((p for p in plan if p.start <= epoch < p.end), plan[-1])


def set_trainable(model: keras.Model, phase: Phase, bn_mode: str) -> None:
    """Freeze and unfreeze `model`'s layers (nested ones included) as `phase` and `bn_mode`
    ask; layers frozen in the pretrained source stay frozen."""
    frozen = getattr(model, "source_frozen", frozenset())
    for layer in model._flatten_layers(include_self=False):  # parents before their children
        layer.trainable = layer.name == HEAD or (phase.name == "all" and id(layer) not in frozen)
        if isinstance(layer, keras.layers.BatchNormalization):
            if bn_mode == "frozen":
                layer.trainable = False
            if not hasattr(layer, "frozen_statistics") and bn_mode == "frozen_stats":
                raise ValueError(f"train.bn_mode 'frozen_stats' needs keras_resnet's BatchNormalization; "
                                 f"{layer.name} is a {type(layer).__name__}. Use bn_mode 'train' or 'frozen'.")
            if hasattr(layer, "frozen_statistics"):
                layer.frozen_statistics = bn_mode == "frozen_stats"


def unfreeze_for_saving(model: keras.Model) -> None:
    """The flags a saved model keeps: trainable, but what the source froze; no frozen statistics."""
    set_trainable(model, Phase("all", 0, 1, 1), "train")


def backbone_variables(model: keras.Model) -> list:
    """The trainable variables outside the new head."""
    head = {id(v) for v in model.get_layer(HEAD).weights} if _has_head(model) else set()
    return [v for v in model.trainable_variables if id(v) not in head]


def _has_head(model: keras.Model) -> bool:
    return any(layer.name == HEAD for layer in model.layers)


# -- the model ---------------------------------------------------------------------------------

def build_pretrained(config: dict, *, num_classes: int, image_size: Sequence[int]) -> keras.Model:
    """The backbone `model.weights` gives, with a new `num_classes` head (see the module doc)."""
    arch = recipes.build_kwargs(config)
    depth, source = arch.pop("depth"), arch.pop("weights")
    arch.update(input_shape=(*image_size, 3), include_top=False, pooling="avg")
    frozen: frozenset = frozenset()
    if source.endswith(".keras"):
        from keras_resnet.evaluation import load_model

        pretrained = recast(load_model(source), keras.config.dtype_policy().name,
                            weight_decay=config["model"]["weight_decay"], input_shape=arch["input_shape"])
        features = pooled_features(pretrained, source)
        inputs = pretrained.input
        frozen = frozenset(id(layer) for layer in pretrained._flatten_layers(include_self=False)
                           if not layer.trainable)
        name = pretrained.name.removesuffix("_finetuned")
    else:
        if source in registry.WEIGHTS:  # a published weight names its architecture
            fixed = ("variant", "groups", "width_per_group", "se_ratio", "shortcut", "bn_epsilon")
            backbone = build(source.split(".", 1)[0], weights=source, include_preprocessing=True,
                             **{k: v for k, v in arch.items() if k not in fixed})
        else:  # a file: the recipe names the architecture, the file its BN epsilon
            backbone = build(depth, weights=source, include_preprocessing=True,
                             **{**arch, "bn_epsilon": None})
        inputs, features, name = backbone.input, backbone.output, backbone.name
    mixed = keras.config.dtype_policy().name.startswith("mixed")
    outputs = keras.layers.Dense(num_classes, activation="softmax", name=HEAD,
                                 kernel_regularizer=l2(config["model"]["weight_decay"]),
                                 dtype="float32" if mixed else None)(features)
    model = keras.Model(inputs, outputs, name=f"{name}_finetuned")
    model.source_frozen = frozen
    return model


def pooled_features(model: keras.Model, origin: str | Path = ""):
    """The tensor a classifier of `model` reads: the input of its `predictions` layer, or its
    output, pooled if it is a feature map."""
    if _has_head(model):
        return model.get_layer(HEAD).input
    output = model.output
    if not hasattr(output, "shape") or len(output.shape) not in (2, 4):
        raise ValueError(f"The pretrained model {origin or model.name} has no 'predictions' layer and "
                         "its output is not one feature map or vector: save a model with one output "
                         "(build(..., include_top=False) or a classifier) to fine-tune it.")
    if len(output.shape) == 4:
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(output)
    return output


def recast(model: keras.Model, policy: str, weight_decay: float | None = None,
           input_shape: Sequence[int] | None = None) -> keras.Model:
    """A copy of the functional `model` whose layers compute under `policy` (the classifier
    stays float32 under a mixed policy, as `build()` makes it), with every variable copied
    by path and the trainable flags kept; `weight_decay`, if given, replaces the decay of
    every kernel that has one (blocks' `weight_decay`, layers' L2 `kernel_regularizer`);
    `input_shape`, if given, is the copy's input shape (the layers are convolutional)."""
    mixed = policy.startswith("mixed")

    def clone(layer):
        config = layer.get_config()
        if "dtype" in config:
            config["dtype"] = "float32" if mixed and layer.name == HEAD else policy
        if config.get("synchronized"):  # cross-replica BN statistics: a setting of one run
            config["synchronized"] = False
        if weight_decay is not None:
            if "weight_decay" in config:
                config["weight_decay"] = weight_decay
            if config.get("kernel_regularizer") is not None:
                config["kernel_regularizer"] = keras.regularizers.serialize(l2(weight_decay)) if weight_decay else None
        return layer.__class__.from_config(config)

    inputs = keras.Input(tuple(input_shape), name=model.inputs[0].name) if input_shape else None
    if inputs is not None and isinstance(model.input, (list, tuple)):
        inputs = [inputs]
    clone_ = keras.models.clone_model(model, clone_function=clone, input_tensors=inputs)
    copy = keras.Model(clone_.input, clone_.output, name=model.name)  # uncompiled: no optimizer state
    copy_weights(model, copy, skip=())
    copy.source_frozen = frozenset(  # the same layers, found by position in the flattened lists
        id(new) for old, new in zip(model._flatten_layers(include_self=False),
                                    copy._flatten_layers(include_self=False))
        if id(old) in getattr(model, "source_frozen", frozenset()))
    return copy


# Layer settings that are not the function a layer computes: names, flags, precision, and
# what only training or initialization reads.
_NOT_ARCHITECTURE = ("name", "trainable", "dtype", "frozen", "weight_decay", "bn_weight_decay",
                     "kernel_regularizer", "bias_regularizer", "gamma_regularizer", "beta_regularizer",
                     "drop_path_rate", "bn_momentum", "momentum", "zero_init_residual",
                     "kernel_initializer", "gamma_initializer", "synchronized")


def _architecture(model: keras.Model, skip: Sequence[str]) -> dict[str, dict]:
    """{layer name: the config of what it computes} of `model`'s own layers that hold weights."""
    return {layer.name: {k: v for k, v in layer.get_config().items() if k not in _NOT_ARCHITECTURE}
            for layer in model.layers if layer.name not in skip and layer.weights}


def copy_weights(source: keras.Model, target: keras.Model, *, origin: str | Path = "",
                 skip: Sequence[str] = (HEAD,)) -> None:
    """Assign every variable of `target` (but those of the `skip` layers) from the variable of
    `source` at the same path, after checking that the two are the same architecture: the same
    layers with the same configuration (shortcut, SE, variant, groups, width) and the same
    variables with the same shapes, none left over on either side. Nothing is assigned unless
    every check passes."""
    where = origin or source.name
    fix = f"build the architecture of the pretrained model ({source.name}) or fine-tune it from its .keras file"
    theirs, ours = _architecture(source, skip), _architecture(target, skip)
    for name in sorted(set(theirs) | set(ours), key=lambda n: (n not in ours, n)):
        if theirs.get(name) != ours.get(name):
            mine, other = ours.get(name), theirs.get(name)
            diff = ("is not in the pretrained model" if other is None else "is not in this model"
                    if mine is None else "differs in " + ", ".join(
                        f"{k} ({other.get(k)!r} there, {mine.get(k)!r} here)"
                        for k in sorted(set(mine) | set(other)) if mine.get(k) != other.get(k)))
            raise ValueError(f"The pretrained model {where} does not match: layer {name!r} {diff}; {fix}.")
    by_path = {v.path: v for v in source.weights if v.path.split("/")[0] not in skip}
    pairs = []
    for v in target.weights:
        if v.path.split("/")[0] in skip:
            continue
        found = by_path.pop(v.path, None)
        if found is None or tuple(found.shape) != tuple(v.shape):
            what = "has no" if found is None else f"has shape {tuple(found.shape)} for"
            raise ValueError(f"The pretrained model {where} {what} {v.path} {tuple(v.shape)}; {fix}.")
        pairs.append((v, found))
    if by_path:
        raise ValueError(f"The pretrained model {where} has {len(by_path)} variable(s) this model lacks "
                         f"({', '.join(sorted(by_path)[:3])}); {fix}.")
    for v, found in pairs:
        v.assign(found)


# -- the hyperparameters the `finetune` recipe picks --------------------------------------------

def pick(num_train: int, image_side: int, batch_size: int) -> tuple[dict, str]:
    """[train]/[augment]/[model] values for fine-tuning on `num_train` images of `image_side`
    pixels at (global) `batch_size`, and one line saying what was picked and why. The
    learning rates are for batch 64 (`reference_batch`); `train` scales them linearly.

    The rules (docs/training.md has the reasoning and the measurements behind them):
    - the head phase trains the new classifier alone for about two passes over the data
      (50-300 steps) before the backbone moves (LP-FT, Kumar et al. 2022: a trained head
      keeps the features from being distorted by a random one);
    - the whole network then trains for at least 30 epochs or 600 steps, whichever is more
      (BiT's HyperRule fixes steps, not epochs, for small sets);
    - the learning rate grows with the data, from 0.01 to scratch's 0.05 at batch 64
      (Li et al. 2020: the best fine-tuning rate rises as the target moves away from the
      source and grows), scaled linearly with the batch;
    - BN trains its statistics when a batch holds 16 or more images, and otherwise keeps
      them fixed after re-estimating them on the target images;
    - augmentation: pad-and-crop plus flip for small images, random-resized crop plus flip
      for large ones; weight decay 5e-4 (the CIFAR recipes') below 64 px, else 1e-4;
    - the test split is scored about six times in the run, not after every short epoch.
    """
    steps_per_epoch = max(1, num_train // batch_size)
    head_steps = int(min(300, max(50, 2 * steps_per_epoch)))
    epochs = int(max(30, math.ceil(600 / steps_per_epoch)))
    fraction = min(1.0, max(0.0, math.log10(max(num_train, 1) / 250) / math.log10(100)))
    lr_at_64 = 0.01 * (0.05 / 0.01) ** fraction  # 0.01 at 250 images, 0.05 from 25,000 on
    small = image_side <= 64
    picked = {
        "train": {"head_steps": head_steps, "head_lr": 0.1,
                  "epochs": epochs, "lr": round(lr_at_64, 4), "reference_batch": 64,
                  "backbone_lr_scale": 1.0, "warmup_epochs": min(2.0, 0.1 * epochs),  # of the epochs run
                  "bn_mode": "train" if batch_size >= 16 else "frozen_stats",
                  "validate_every": max(1, epochs // 6)},
        "augment": {"flip": True, "pad_crop": image_side // 8 if small else 0,
                    "random_resized_crop": not small},
        "model": {"weight_decay": 5e-4 if small else 1e-4},
    }
    t = picked["train"]
    why = (f"finetune picked for {num_train} images of {image_side} px at batch {batch_size}: "
           f"head {head_steps} steps at lr {t['head_lr']}, then {epochs} epochs at lr {t['lr']} "
           f"(both x batch/64) after a warm-up of 10 % of them (at most 2), bn_mode {t['bn_mode']}, "
           f"weight decay {picked['model']['weight_decay']:g}, "
           + ("pad-crop + flip" if small else "random-resized crop + flip"))
    return picked, why
