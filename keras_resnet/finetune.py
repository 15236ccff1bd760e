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

from collections.abc import Sequence
from pathlib import Path

import keras

from keras_resnet import architecture, registry
from keras_resnet.builder import build
from keras_resnet.config import RunConfig
from keras_resnet.layers import l2
from keras_resnet.plan import Phase
from keras_resnet.saving import load_model

HEAD = "predictions"


def set_trainable(model: keras.Model, phase: Phase, bn_mode: str) -> None:
    """Freeze and unfreeze `model`'s layers (nested ones included) as `phase` and `bn_mode`
    ask; layers frozen in the pretrained source stay frozen."""
    frozen: frozenset[int] = getattr(model, "source_frozen", frozenset())
    for layer in model._flatten_layers(include_self=False):  # parents before their children
        layer.trainable = layer.name == HEAD or (phase.name == "all" and id(layer) not in frozen)
        if isinstance(layer, keras.layers.BatchNormalization):
            if bn_mode == "frozen":
                layer.trainable = False
            if not hasattr(layer, "frozen_statistics") and bn_mode == "frozen_stats":
                raise ValueError(
                    f"train.bn_mode 'frozen_stats' needs keras_resnet's BatchNormalization; "
                    f"{layer.name} is a {type(layer).__name__}. Use bn_mode 'train' or 'frozen'."
                )
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


def build_pretrained(config: RunConfig | dict, *, num_classes: int, image_size: Sequence[int]) -> keras.Model:
    """The backbone `model.weights` gives, with a new `num_classes` head (see the module doc)."""
    config = RunConfig.of(config)
    arch = config.model.build_kwargs()
    depth, source = arch.pop("depth"), arch.pop("weights")
    arch.update(input_shape=(*image_size, 3), include_top=False, pooling="avg")
    frozen: frozenset = frozenset()
    if source.endswith(".keras"):
        pretrained = recast(
            load_model(source),
            keras.config.dtype_policy().name,
            weight_decay=config.model.weight_decay,
            input_shape=arch["input_shape"],
        )
        features = pooled_features(pretrained, source)
        inputs = pretrained.input
        frozen = frozenset(id(layer) for layer in pretrained._flatten_layers(include_self=False) if not layer.trainable)
        name = pretrained.name.removesuffix("_finetuned")
    else:
        if source in registry.WEIGHTS:  # a published weight names its architecture
            fixed = ("variant", "groups", "width_per_group", "se_ratio", "shortcut", "bn_epsilon")
            backbone = build(
                source.split(".", 1)[0],
                weights=source,
                include_preprocessing=True,
                **{k: v for k, v in arch.items() if k not in fixed},
            )
        else:  # a file: the recipe names the architecture, the file its BN epsilon
            backbone = build(depth, weights=source, include_preprocessing=True, **{**arch, "bn_epsilon": None})
        inputs, features, name = backbone.input, backbone.output, backbone.name
    mixed = keras.config.dtype_policy().name.startswith("mixed")
    outputs = keras.layers.Dense(
        num_classes,
        activation="softmax",
        name=HEAD,
        kernel_regularizer=l2(config.model.weight_decay),
        dtype="float32" if mixed else None,
    )(features)
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
        raise ValueError(
            f"The pretrained model {origin or model.name} has no 'predictions' layer and "
            "its output is not one feature map or vector: save a model with one output "
            "(build(..., include_top=False) or a classifier) to fine-tune it."
        )
    if len(output.shape) == 4:
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(output)
    return output


def recast(
    model: keras.Model, policy: str, weight_decay: float | None = None, input_shape: Sequence[int] | None = None
) -> keras.Model:
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
        id(new)
        for old, new in zip(model._flatten_layers(include_self=False), copy._flatten_layers(include_self=False))
        if id(old) in getattr(model, "source_frozen", frozenset())
    )
    return copy


def copy_weights(
    source: keras.Model, target: keras.Model, *, origin: str | Path = "", skip: Sequence[str] = (HEAD,)
) -> None:
    """Assign every variable of `target` (but those of the `skip` layers) from the variable of
    `source` at the same path, after checking that the two are the same architecture: the same
    layers with the same configuration (shortcut, SE, variant, groups, width) and the same
    variables with the same shapes, none left over on either side. Nothing is assigned unless
    every check passes."""
    where = origin or source.name
    fix = f"build the architecture of the pretrained model ({source.name}) or fine-tune it from its .keras file"
    theirs, ours = architecture.describe(source, skip), architecture.describe(target, skip)
    diff = architecture.difference(theirs, ours, source="the pretrained model")
    if diff:
        raise ValueError(f"The pretrained model {where} does not match: {diff}; {fix}.")
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
        raise ValueError(
            f"The pretrained model {where} has {len(by_path)} variable(s) this model lacks "
            f"({', '.join(sorted(by_path)[:3])}); {fix}."
        )
    for v, found in pairs:
        v.assign(found)
