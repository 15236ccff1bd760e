"""Recipe files (TOML, in `keras_resnet/recipes/`): loading, defaults, validation, overrides.

A recipe has sections [model], [data], [augment], [train]; every field has a default here
and any field can be overridden as `section.field=value` (a TOML value). 0 and "" mean
"not set" where a field is optional (TOML has no null).
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

from keras_resnet import augment, layers

RECIPE_DIR = Path(__file__).parent / "recipes"

DEFAULTS: dict[str, dict] = {
    "recipe": {"name": "", "description": ""},
    "model": {"depth": 20, "variant": "", "shortcut": "", "groups": 1, "width_per_group": 64,
              "se_ratio": 0.0, "drop_path_rate": 0.0, "zero_init_residual": False,
              "bn_momentum": layers.BN_MOMENTUM, "bn_epsilon": layers.BN_EPSILON, "sync_bn": False,
              "weights": "", "freeze_bn": False},
    "data": {"name": "cifar10", "data_dir": "", "cache_dir": "", "image_size": [0, 0], "classes": [],
             "eval_crop_fraction": 0.0, "eval_flip_tta": False, "max_train_samples": 0, "max_eval_samples": 0},
    "augment": dict(augment.DEFAULTS),
    "train": {"epochs": 30, "batch_size": 128, "lr": 0.1, "reference_batch": 128,
              "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4, "bn_weight_decay": 0.0,
              "schedule": "onecycle",
              "warmup_epochs": 0.0, "boundaries": [], "factor": 0.1, "pct_start": 0.25, "final_div": 100.0,
              "label_smoothing": 0.0, "precision": "auto", "jit_compile": "auto", "ema": False,
              "ema_momentum": 0.999, "seed": 0, "deterministic": False, "validate_every": 1,
              "steps_per_execution": 1, "head_epochs": 0, "backbone_lr_scale": 1.0},
}


# Allowed values of numeric fields: (test, what the error says it must be).
RANGES = {
    "epochs": (lambda v: v >= 1, "at least 1"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "reference_batch": (lambda v: v >= 1, "at least 1"),
    "steps_per_execution": (lambda v: v >= 1, "at least 1"),
    "lr": (lambda v: v > 0, "> 0"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "ema_momentum": (lambda v: 0 < v < 1, "in (0, 1)"),
    "bn_momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "bn_epsilon": (lambda v: v > 0, "> 0"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, ">= 0 (0 turns it off)"),
    "bn_weight_decay": (lambda v: v >= 0, ">= 0 (0 turns it off)"),
    "drop_path_rate": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "eval_crop_fraction": (lambda v: 0 <= v <= 1, "in (0, 1], or 0 for no crop"),
    "max_train_samples": (lambda v: v >= 0, ">= 0 (0: all)"),
    "max_eval_samples": (lambda v: v >= 0, ">= 0 (0: all)"),
    "validate_every": (lambda v: v >= 0, ">= 0 (0: never)"),
    "warmup_epochs": (lambda v: v >= 0, ">= 0"),
    "pct_start": (lambda v: 0 < v < 1, "in (0, 1)"),
    "final_div": (lambda v: v > 0, "> 0"),
    "factor": (lambda v: v > 0, "> 0"),
    "pad_crop": (lambda v: v >= 0, ">= 0"),
    "head_epochs": (lambda v: v >= 0, ">= 0 (0: no head-only phase)"),
    "backbone_lr_scale": (lambda v: v > 0, "> 0"),
    "classes": (lambda v: all(isinstance(c, str) and c for c in v), "a list of class names"),
    "erasing": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "scale": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "mixup": (lambda v: v >= 0, ">= 0 (0 turns it off)"),
    "cutmix": (lambda v: 0 <= v <= 1, "in [0, 1] (0 turns it off)"),
}


class RecipeError(ValueError):
    """An unknown recipe, section or field, or a value of the wrong type."""


def available() -> dict[str, str]:
    """{recipe name: description} of the recipes shipped with the package."""
    out = {}
    for path in sorted(RECIPE_DIR.glob("*.toml")):
        with open(path, "rb") as f:
            out[path.stem] = tomllib.load(f).get("recipe", {}).get("description", "")
    return out


def _check_value(section: str, key: str, value, default):
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
        raise RecipeError(f"{section}.{key} must be a {type(default).__name__} (like {default!r}), "
                          f"got {value!r}.")
    bounds = RANGES.get(key)
    if bounds and not bounds[0](value):
        raise RecipeError(f"{section}.{key} must be {bounds[1]}, got {value!r}.")
    return value


def merge(base: dict, overrides: dict, origin: str) -> dict:
    """`base` updated with `overrides`, refusing unknown sections/fields and wrong types."""
    out = copy.deepcopy(base)
    for section, fields in overrides.items():
        if section not in DEFAULTS or not isinstance(fields, dict):
            raise RecipeError(f"{origin}: unknown section [{section}]; valid: {sorted(DEFAULTS)}.")
        for key, value in fields.items():
            if key not in DEFAULTS[section]:
                raise RecipeError(f"{origin}: unknown field {section}.{key}; valid fields of "
                                  f"[{section}]: {sorted(DEFAULTS[section])}.")
            out[section][key] = _check_value(section, key, value, DEFAULTS[section][key])
    return out


def load(name_or_path: str | None) -> dict:
    """The full configuration: defaults, then the recipe (a shipped name or a .toml path)."""
    if not name_or_path:
        return copy.deepcopy(DEFAULTS)
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPE_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise RecipeError(f"Unknown recipe {name_or_path!r}; shipped recipes: {sorted(available())} "
                          "(or give a path to a .toml file).")
    with open(path, "rb") as f:
        try:
            fields = tomllib.load(f)
        except tomllib.TOMLDecodeError as err:
            raise RecipeError(f"Recipe {path} is not valid TOML: {err}") from err
    config = merge(DEFAULTS, fields, str(path))
    config["recipe"]["name"] = config["recipe"]["name"] or path.stem
    return config


def parse_override(text: str) -> dict:
    """"train.epochs=5" -> {"train": {"epochs": 5}} (values are TOML; bare words are strings)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise RecipeError(f"Override {text!r} must look like section.field=value (e.g. train.epochs=5).")
    key, raw = text.split("=", 1)
    section, field = key.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return {section: {field: value}}
