"""The run configuration as typed, frozen dataclasses: one section each for [recipe], [model],
[data], [augment] and [train], every field with its default and, in its metadata, the values
it may take (`allowed`). This is the configuration's one vocabulary: `recipes` reads recipe
files, flags and overrides against it and checks each value once.

`RunConfig.to_dict()` is config.json; `RunConfig.from_dict` reads it back. Sections also
read like that dict (`config["train"]["lr"]`), for scripts written against it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from keras_resnet import backends, builder, layers, schedules
from keras_resnet.augment import AugmentConfig
from keras_resnet.errors import RecipeError
from keras_resnet.mapping import ReadsLikeDict

BN_MODES = {
    "train": "statistics and γ/β train (batch statistics in training mode)",
    "frozen_stats": "statistics re-estimated on the training images before phase 'all', then "
    "fixed (inference mode); γ/β train",
    "frozen": "statistics and γ/β fixed at the source's values",
}
# [model] fields whose `build()` default is None, and the TOML value that stands for it.
UNSET = {"variant": "", "shortcut": "", "se_ratio": 0.0, "weights": ""}


def setting(
    default: Any,
    test: Callable[[Any], bool] | None = None,
    must: str = "",
    *,
    choices: tuple = (),
    auto_or_bool: bool = False,
) -> Any:
    """A field with its default and what it allows: `test` (with `must`, the error's words
    for it), `choices`, or "auto"/true/false (`auto_or_bool`)."""
    meta = {"test": test, "must": must, "choices": choices, "auto_or_bool": auto_or_bool}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _build_default(name: str) -> Any:
    """`build()`'s default for [model] field `name`, in TOML form (`UNSET` for its None)."""
    default = inspect.signature(builder.build).parameters[name].default
    return UNSET[name] if default is None else default


@dataclasses.dataclass(frozen=True, eq=False)
class RecipeInfo(ReadsLikeDict):
    name: str = ""
    description: str = ""
    picked: str = ""  # what `train.pick_from_data` chose, and why


@dataclasses.dataclass(frozen=True, eq=False)
class ModelConfig(ReadsLikeDict):
    """`build()`'s keywords with `build()`'s defaults; depth 20 (`build()` requires one) and
    bn_epsilon `layers.BN_EPSILON` (its None means "the weights' own": a recipe trains)."""

    depth: int = 20
    variant: str = _build_default("variant")
    shortcut: str = _build_default("shortcut")
    groups: int = _build_default("groups")
    width_per_group: int = _build_default("width_per_group")
    se_ratio: float = _build_default("se_ratio")
    drop_path_rate: float = setting(_build_default("drop_path_rate"), lambda v: 0 <= v < 1, "in [0, 1)")
    zero_init_residual: bool = _build_default("zero_init_residual")
    weight_decay: float = setting(_build_default("weight_decay"), lambda v: v >= 0, ">= 0 (0 turns it off)")
    bn_weight_decay: float = setting(_build_default("bn_weight_decay"), lambda v: v >= 0, ">= 0 (0 turns it off)")
    bn_momentum: float = setting(_build_default("bn_momentum"), lambda v: 0 <= v < 1, "in [0, 1)")
    bn_epsilon: float = setting(layers.BN_EPSILON, lambda v: v > 0, "> 0")
    weights: str = _build_default("weights")

    def build_kwargs(self) -> dict:
        """The fields as `build()` keywords: the "not set" values (`UNSET`) become None."""
        return {k: None if k in UNSET and v == UNSET[k] else v for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True, eq=False)
class DataConfig(ReadsLikeDict):
    name: str = "cifar10"  # a TFDS name, an image folder or an .npz file
    data_dir: str = ""
    cache_dir: str = ""
    image_size: list[int] = setting([0, 0])  # [0, 0]: the images' own
    classes: list[str] = setting([], lambda v: all(isinstance(c, str) and c for c in v), "a list of class names")
    eval_crop_fraction: float = setting(
        -1.0, lambda v: v == -1 or 0 <= v <= 1, "in (0, 1], 0 for no crop, or -1 for the weight record's crop"
    )
    eval_flip_tta: bool = False
    max_train_samples: int = setting(0, lambda v: v >= 0, ">= 0 (0: all)")
    max_eval_samples: int = setting(0, lambda v: v >= 0, ">= 0 (0: all)")
    on_device: str | bool = setting("auto", auto_or_bool=True)


_POSITIVE = (lambda v: v > 0, "> 0")
_AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
_FRACTION = (lambda v: 0 <= v < 1, "in [0, 1)")


@dataclasses.dataclass(frozen=True, eq=False)
class TrainConfig(ReadsLikeDict):
    epochs: int = setting(30, lambda v: v >= 0, "at least 1 (0: the head phase alone, a linear probe)")
    batch_size: int = setting(128, *_AT_LEAST_1)  # global, over every device
    lr: float = setting(0.1, *_POSITIVE)  # at `reference_batch`, scaled linearly with the batch
    reference_batch: int = setting(128, *_AT_LEAST_1)
    momentum: float = setting(0.9, *_FRACTION)
    nesterov: bool = False
    schedule: str = setting("onecycle", choices=schedules.SCHEDULES)
    warmup_epochs: float = setting(0.0, lambda v: v >= 0, ">= 0")
    boundaries: list[float] = setting([])  # piecewise: fractions of the run
    factor: float = setting(0.1, *_POSITIVE)
    pct_start: float = setting(0.25, lambda v: 0 < v < 1, "in (0, 1)")
    final_div: float = setting(100.0, *_POSITIVE)
    label_smoothing: float = setting(0.0, *_FRACTION)
    precision: str = setting("auto", choices=("auto", *backends.PRECISIONS))
    jit_compile: str | bool = setting("auto", auto_or_bool=True)
    ema: bool = False
    ema_momentum: float = setting(0.999, lambda v: 0 < v < 1, "in (0, 1)")
    seed: int = 0
    deterministic: bool = False
    validate_every: int = setting(1, lambda v: v >= 0, ">= 0 (0: never)")
    steps_per_execution: int = setting(1, *_AT_LEAST_1)
    head_steps: int = setting(0, lambda v: v >= 0, ">= 0 (0: no head-only phase)")
    head_lr: float = setting(0.1, *_POSITIVE)
    backbone_lr_scale: float = setting(1.0, *_POSITIVE)
    bn_mode: str = setting("train", choices=tuple(BN_MODES))
    pick_from_data: bool = False
    sync_bn: bool = False
    checkpoint_every_steps: int = setting(0, lambda v: v >= 0, ">= 0 (0: none by steps)")
    checkpoint_every_minutes: float = setting(5.0, lambda v: v >= 0, ">= 0 (0: none by time)")


SECTIONS: dict[str, type] = {
    "recipe": RecipeInfo,
    "model": ModelConfig,
    "data": DataConfig,
    "augment": AugmentConfig,
    "train": TrainConfig,
}


@dataclasses.dataclass(frozen=True, eq=False)
class RunConfig(ReadsLikeDict):
    """A run's whole configuration (what config.json holds)."""

    recipe: RecipeInfo = dataclasses.field(default_factory=RecipeInfo)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict]:
        """config.json's content."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: dict[str, dict]) -> RunConfig:
        """From a complete, checked dict (`recipes.resolve`, an upgraded config.json)."""
        return cls(**{name: SECTIONS[name](**config[name]) for name in SECTIONS})

    @classmethod
    def of(cls, config: RunConfig | dict) -> RunConfig:
        """`config` as a `RunConfig`: scripts may pass config.json's dict (complete, of today)."""
        return config if isinstance(config, RunConfig) else cls.from_dict(config)

    def replace(self, section: str, **fields: Any) -> RunConfig:
        """A copy with `fields` of `section` changed."""
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **fields)})


def defaults() -> dict[str, dict]:
    """Every field's default, as config.json would hold them."""
    return RunConfig().to_dict()


_DEFAULTS = defaults()  # what `check_value` compares types with


def fields(section: str) -> dict[str, dataclasses.Field]:
    """The fields of `section` by name (KeyError for an unknown section)."""
    return {f.name: f for f in dataclasses.fields(SECTIONS[section])}


def check_value(section: str, key: str, value: Any) -> Any:
    """`value` for `section.key` if its type and range allow it (ints become floats where the
    field is a float); `RecipeError` naming what it must be otherwise."""
    field = fields(section)[key]
    meta = field.metadata
    default = _DEFAULTS[section][key]
    if meta.get("auto_or_bool"):
        if not (value == "auto" or isinstance(value, bool)):
            raise RecipeError(f"{section}.{key} must be 'auto', true or false, got {value!r}.")
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise RecipeError(f"{section}.{key} must be a {type(default).__name__} (like {default!r}), got {value!r}.")
    if meta.get("choices") and value not in meta["choices"]:
        raise RecipeError(f"{section}.{key} must be one of {', '.join(meta['choices'])}; got {value!r}.")
    test = meta.get("test")
    if test is not None and not test(value):
        raise RecipeError(f"{section}.{key} must be {meta['must']}, got {value!r}.")
    return value
