"""The run configuration: recipe files (TOML, in `keras_resnet/recipes/`), their defaults,
validation and overrides, and `resolve`, which turns a recipe, flags and overrides into
the configuration a run folder records.

A recipe has sections [model], [data], [augment], [train]; every field has a default and
any field can be overridden as `section.field=value` (a TOML value). The [model] fields
are `build()`'s keywords with `build()`'s defaults. 0 and "" mean "not set" where a field
is optional (TOML has no null).
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Sequence
from pathlib import Path

from keras_resnet import data, plan, registry, specs
from keras_resnet.config import UNSET as UNSET  # re-exported: scripts read recipes.UNSET
from keras_resnet.config import ModelConfig, RunConfig, check_value, defaults
from keras_resnet.errors import RecipeError
from keras_resnet.flags import FLAG_FIELDS

RECIPE_DIR = Path(__file__).parent / "recipes"

DEFAULTS = defaults()  # config.json with every field at its default

# Fields that moved to another section; old recipes, overrides and run folders still read.
MOVED = {
    ("train", "weight_decay"): "model",
    ("train", "bn_weight_decay"): "model",
    ("model", "freeze_bn"): "train",
    ("model", "sync_bn"): "train",
}

# Fields that were replaced: the TOML value -> the fields of today, or an error's advice.
RENAMED = {("train", "freeze_bn"): lambda v: {"bn_mode": "frozen" if v else "train"}}
RETIRED = {
    ("train", "head_epochs"): "the head phase is measured in steps now: set train.head_steps "
    "(e.g. 2 x images / batch size)"
}


def available() -> dict[str, str]:
    """{recipe name: description} of the recipes shipped with the package."""
    out = {}
    for path in sorted(RECIPE_DIR.glob("*.toml")):
        with open(path, "rb") as f:
            out[path.stem] = tomllib.load(f).get("recipe", {}).get("description", "")
    return out


def merge(base: dict, overrides: dict, origin: str) -> dict:
    """`base` updated with `overrides`, refusing unknown sections/fields and wrong types."""
    out = copy.deepcopy(base)
    for section, fields in upgrade(overrides).items():
        if section not in DEFAULTS or not isinstance(fields, dict):
            raise RecipeError(f"{origin}: unknown section [{section}]; valid: {sorted(DEFAULTS)}.")
        for key, value in fields.items():
            if (section, key) in RETIRED:
                raise RecipeError(f"{origin}: {section}.{key} is gone: {RETIRED[section, key]}.")
            if key not in DEFAULTS[section]:
                raise RecipeError(
                    f"{origin}: unknown field {section}.{key}; valid fields of "
                    f"[{section}]: {sorted(DEFAULTS[section])}."
                )
            out[section][key] = check_value(section, key, value)
    return out


def load(name_or_path: str | None) -> dict:
    """The full configuration: defaults, then the recipe (a shipped name or a .toml path)."""
    if not name_or_path:
        return copy.deepcopy(DEFAULTS)
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPE_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise RecipeError(
            f"Unknown recipe {name_or_path!r}; shipped recipes: {sorted(available())} (or give a path to a .toml file)."
        )
    with open(path, "rb") as f:
        try:
            fields = tomllib.load(f)
        except tomllib.TOMLDecodeError as err:
            raise RecipeError(f"Recipe {path} is not valid TOML: {err}") from err
    config = merge(DEFAULTS, fields, str(path))
    config["recipe"]["name"] = config["recipe"]["name"] or path.stem
    return config


def parse_override(text: str) -> dict:
    """ "train.epochs=5" -> {"train": {"epochs": 5}} (values are TOML; bare words are strings)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise RecipeError(f"Override {text!r} must look like section.field=value (e.g. train.epochs=5).")
    key, raw = text.split("=", 1)
    section, field = key.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return {section: {field: value}}


def upgrade(config: dict) -> dict:
    """`config` (a recipe, an override or a saved config.json) with moved fields in their
    sections of today (`MOVED`)."""
    out = {section: dict(fields) if isinstance(fields, dict) else fields for section, fields in config.items()}
    for (section, key), target in MOVED.items():
        if isinstance(out.get(section), dict) and key in out[section]:
            out.setdefault(target, {})[key] = out[section].pop(key)
    for (section, key), convert in RENAMED.items():
        if isinstance(out.get(section), dict) and key in out[section]:
            out[section].update(convert(out[section].pop(key)))
    if isinstance(out.get("train"), dict) and out["train"].get("head_epochs") == 0:
        del out["train"]["head_epochs"]  # no head phase, as head_steps = 0 says today
    return out


def upgrade_saved(config: dict) -> dict:
    """A saved config.json in today's form: `upgrade`, then fields added since it was
    written at their defaults (which is what the run used)."""
    out = upgrade(config)
    return {
        section: {**DEFAULTS[section], **fields} if section in DEFAULTS and isinstance(fields, dict) else fields
        for section, fields in out.items()
    }


def build_kwargs(config: dict | RunConfig) -> dict:
    """[model] as `build()` keywords: the "not set" values (`UNSET`) become None."""
    model = config["model"]
    return (model if isinstance(model, ModelConfig) else ModelConfig(**model)).build_kwargs()


# -- resolution ------------------------------------------------------------------------------


def resolve(recipe: str | None = None, overrides: Sequence[str] = (), **flags) -> RunConfig:
    """Defaults <- recipe <- flags (`FLAG_FIELDS`) <- `section.field=value` overrides.

    Without a recipe, the recipe that fits the data is used: `finetune` with --weights,
    else `cifar10-fast` for images of at most 64 pixels a side, else `imagenet-resnet50`; its
    schedule spans the --epochs given. A recipe with `train.pick_from_data` (`finetune`) takes
    the values `plan.pick` chooses for the data between the recipe and the flags and
    overrides, which win; `recipe.picked` records the choice.
    """
    unknown = set(flags) - set(FLAG_FIELDS)
    if unknown:
        raise RecipeError(f"Unknown option(s) {sorted(unknown)}; valid: {sorted(FLAG_FIELDS)}.")
    layers = [{FLAG_FIELDS[k][0]: {FLAG_FIELDS[k][1]: v}} for k, v in flags.items() if v is not None]
    layers += [parse_override(o) for o in overrides]

    def assemble(name, picked=None):
        config = load(name)
        for layer in ([picked] if picked else []) + layers:
            config = merge(config, layer, "override")
        return config

    if not recipe:
        config = assemble(None)
        if config["model"]["weights"]:
            recipe = "finetune"
        else:
            side = data.peek_image_side(config["data"]["name"], config["data"]["data_dir"] or None)
            recipe = "cifar10-fast" if side <= data.MEMORY_MAX_SIDE else "imagenet-resnet50"
    config = assemble(recipe)
    if config["train"]["pick_from_data"]:
        picked = _picked(config)
        config = assemble(recipe, picked)
        t = config["train"]
        if t["warmup_epochs"] == picked["train"]["warmup_epochs"]:  # the rule, on the epochs run
            t["warmup_epochs"] = picked["train"]["warmup_epochs"] = min(2.0, 0.1 * t["epochs"])
        kept = [
            f"{s}.{k}={config[s][k]!r}"
            for s, fields in picked.items()
            if s != "recipe"
            for k, v in fields.items()
            if config[s][k] != v
        ]
        if kept:
            config["recipe"]["picked"] += f"; overridden: {', '.join(kept)}"
    return RunConfig.from_dict(check(config))


def _picked(config: dict) -> dict:
    """What `plan.pick` chooses for the data `config` names, as an override layer."""
    d, m = config["data"], config["model"]
    if not m["weights"]:
        check(config)  # refuses a fine-tuning recipe without weights, before the data is read
    num_train = data.count_train(d["name"], d["data_dir"] or None, d["classes"] or None, d["max_train_samples"] or None)
    record = registry.WEIGHTS.get(m["weights"])
    side = (
        max(d["image_size"])
        if all(d["image_size"])
        else record.eval_size
        if record
        else data.peek_image_side(d["name"], d["data_dir"] or None)
    )
    picked, why = plan.pick(num_train, side, config["train"]["batch_size"])
    return {**picked, "recipe": {"picked": why}}


def check(config: dict) -> dict:
    """`config` once the fields that depend on each other are checked (each value was checked
    as it was merged), so that a bad one fails before a run folder is touched; a published
    weight fills in its input size and eval crop."""
    m, t = build_kwargs(config), config["train"]
    try:
        specs.resnet_spec(
            m["depth"],
            m["variant"],
            groups=m["groups"],
            width_per_group=m["width_per_group"],
            se_ratio=m["se_ratio"],
            shortcut=m["shortcut"],
        )
    except ValueError as err:
        raise RecipeError(f"[model] {err}") from err
    if t["epochs"] == 0 and not (m["weights"] and t["head_steps"]):
        raise RecipeError(
            "train.epochs must be at least 1; 0 (a linear probe: the head phase alone) "
            "needs --weights and train.head_steps."
        )
    if t["pick_from_data"] and not m["weights"]:
        raise RecipeError(
            f"The {config['recipe']['name'] or 'fine-tuning'} recipe fine-tunes pretrained "
            "weights: give --weights (a .keras model, a weight tag or a file), or train "
            "from scratch with another recipe."
        )
    if t["head_steps"] and not m["weights"]:
        raise RecipeError(
            "train.head_steps trains a new head on pretrained weights: give "
            "--weights (model.weights), or set train.head_steps=0."
        )
    record = registry.WEIGHTS.get(m["weights"])
    d = config["data"]
    if record is not None:  # a published weight: its model, and the size its eval crop is for
        if not all(d["image_size"]):
            d["image_size"] = [record.eval_size, record.eval_size]
        if d["eval_crop_fraction"] == -1:
            d["eval_crop_fraction"] = record.crop_pct
    if d["eval_crop_fraction"] == -1:  # "the record's": none without one
        d["eval_crop_fraction"] = 0.0
    return config
