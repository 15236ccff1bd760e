"""Compile + fit + resume + the run folder.

A run folder holds: config.json (the full resolved recipe), metrics.json and history.csv
(rewritten after every epoch), checkpoints/ (the last two epochs, each written to a
temporary file and renamed), logs/ (TensorBoard), and at the end model.keras (the final
model, float32, taking RGB pixels in [0, 255] and returning probabilities), curves.png and
confusion_matrix.png.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_resnet import (augment as augment_lib, data as data_lib, distribute, finetune, recipes, registry,
                          report, schedules, specs)
from keras_resnet.builder import build

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
WORKER_PREFIX = "keras-resnet-worker-"
BN_RECALIBRATION_BATCHES = 100  # training batches that re-estimate BN statistics after EMA

# Plain `train()` / CLI flags and the recipe field each sets.
FLAG_FIELDS = {
    "depth": ("model", "depth"), "variant": ("model", "variant"), "data": ("data", "name"),
    "data_dir": ("data", "data_dir"), "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"), "max_train_samples": ("data", "max_train_samples"),
    "max_eval_samples": ("data", "max_eval_samples"), "seed": ("train", "seed"),
    "precision": ("train", "precision"), "lr": ("train", "lr"), "weights": ("model", "weights"),
}


class RunError(RuntimeError):
    """A run that cannot go on as asked (configuration clash, NaN loss); the message says why."""


# -- configuration ---------------------------------------------------------------------------

def resolve_config(recipe: str | None = None, overrides: Sequence[str] = (), **flags) -> dict:
    """Defaults <- recipe <- flags <- `section.field=value` overrides.

    Without a recipe, the recipe that fits the data is used: `cifar10-fast` for images of
    at most 64 pixels a side, else `imagenet-resnet50`; its schedule spans the --epochs given.
    """
    unknown = set(flags) - set(FLAG_FIELDS)
    if unknown:
        raise recipes.RecipeError(f"Unknown option(s) {sorted(unknown)}; valid: {sorted(FLAG_FIELDS)}.")
    layers = [{FLAG_FIELDS[k][0]: {FLAG_FIELDS[k][1]: v}} for k, v in flags.items() if v is not None]
    layers += [recipes.parse_override(o) for o in overrides]

    def assemble(name):
        config = recipes.load(name)
        for layer in layers:
            config = recipes.merge(config, layer, "override")
        return config

    if recipe:
        return _checked(assemble(recipe))
    config = assemble(None)
    side = data_lib.peek_image_side(config["data"]["name"], config["data"]["data_dir"] or None)
    return _checked(assemble("cifar10-fast" if side <= data_lib.MEMORY_MAX_SIDE else "imagenet-resnet50"))


def _checked(config: dict) -> dict:
    """`config` once the fields that only take some values are checked, so that a bad one
    fails before a run folder is touched (and without starting TensorFlow's runtime)."""
    m, t = config["model"], config["train"]
    try:
        specs.resnet_spec(m["depth"], m["variant"] or None, groups=m["groups"],
                          width_per_group=m["width_per_group"], se_ratio=m["se_ratio"] or None,
                          shortcut=m["shortcut"] or None)
    except ValueError as err:
        raise recipes.RecipeError(f"[model] {err}") from err
    choices = {"precision": ("auto", *PRECISIONS), "schedule": schedules.SCHEDULES}
    for key, allowed in choices.items():
        if t[key] not in allowed:
            raise recipes.RecipeError(f"train.{key} must be one of {', '.join(allowed)}; got {t[key]!r}.")
    if t["jit_compile"] not in ("auto", True, False):
        raise recipes.RecipeError(f"train.jit_compile must be 'auto', true or false, got {t['jit_compile']!r}.")
    if t["head_epochs"] and not m["weights"]:
        raise recipes.RecipeError("train.head_epochs trains a new head on pretrained weights: give "
                                  "--weights (model.weights), or set train.head_epochs=0.")
    record = registry.WEIGHTS.get(m["weights"])
    if record is not None:  # a published weight: its model, resolution and eval crop
        d = config["data"]
        if not all(d["image_size"]):
            d["image_size"] = [record.train_size, record.train_size]
        if not d["eval_crop_fraction"]:
            d["eval_crop_fraction"] = record.crop_pct
    if m["weights"] and t["head_epochs"] >= t["epochs"]:
        raise recipes.RecipeError(f"train.head_epochs ({t['head_epochs']}) must be below train.epochs "
                                  f"({t['epochs']}): the rest fine-tunes the whole network.")
    return config


def resolve_precision(setting: str) -> str:
    """"auto": bf16 on Ampere+ GPUs and on CPUs with native bf16, fp16 on older GPUs, else fp32."""
    if setting != "auto":
        if setting not in PRECISIONS:
            raise recipes.RecipeError(f"train.precision must be 'auto' or one of {PRECISIONS}, got {setting!r}.")
        return setting
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))
        return "mixed_bfloat16" if tuple(capability) >= (8, 0) else "mixed_float16"
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return "float32"
    return "mixed_bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


def resolve_jit(setting) -> bool:
    """"auto": XLA on GPUs (on CPUs it measured slower for these models)."""
    if setting == "auto":
        return bool(tf.config.list_physical_devices("GPU"))
    if isinstance(setting, bool):
        return setting
    raise recipes.RecipeError(f"train.jit_compile must be 'auto', true or false, got {setting!r}.")


def build_model(config: dict, *, num_classes: int, image_size: Sequence[int],
                normalization=None) -> keras.Model:
    """The recipe's model: from scratch with `normalization` (the data's mean, std) inside,
    or on `model.weights` with a new head (`finetune.build_pretrained`)."""
    m = config["model"]
    if m["weights"]:
        return finetune.build_pretrained(config, num_classes=num_classes, image_size=image_size)
    return build(
        m["depth"], variant=m["variant"] or None, num_classes=num_classes,
        input_shape=(*image_size, 3), normalization=normalization, groups=m["groups"],
        width_per_group=m["width_per_group"], se_ratio=m["se_ratio"] or None,
        shortcut=m["shortcut"] or None, drop_path_rate=m["drop_path_rate"],
        zero_init_residual=m["zero_init_residual"], weight_decay=config["train"]["weight_decay"],
        bn_weight_decay=config["train"]["bn_weight_decay"], bn_momentum=m["bn_momentum"],
        bn_epsilon=m["bn_epsilon"])


def compile_model(model: keras.Model, config: dict, steps_per_epoch: int,
                  phase: finetune.Phase | None = None) -> keras.optimizers.schedules.LearningRateSchedule:
    """SGD + the recipe's schedule, label-smoothed cross-entropy, top-1/top-5; returns the schedule.

    `phase`: the fine-tuning phase to set up (layers frozen as it asks, the backbone's steps
    scaled by `train.backbone_lr_scale` in the "all" phase); default: the run's first.
    """
    t = config["train"]
    phase = phase or finetune.phases(config)[0]
    finetune.set_trainable(model, phase, config["model"]["freeze_bn"])
    scaled = (finetune.backbone_variables(model)
              if config["model"]["weights"] and t["backbone_lr_scale"] != 1.0 else [])
    lr = schedules.scale_lr(t["lr"], t["batch_size"], t["reference_batch"])
    schedule = schedules.make_schedule(
        t["schedule"], lr=lr, steps_per_epoch=steps_per_epoch, epochs=t["epochs"],
        warmup_epochs=t["warmup_epochs"], boundaries=t["boundaries"], factor=t["factor"],
        pct_start=t["pct_start"], final_div=t["final_div"])
    optimizer = schedules.ScaledSGD(schedule, momentum=t["momentum"], nesterov=t["nesterov"],
                                    use_ema=t["ema"], ema_momentum=t["ema_momentum"],
                                    scaled_paths=[v.path for v in scaled],
                                    scale=t["backbone_lr_scale"])
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=t["label_smoothing"]),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                 keras.metrics.TopKCategoricalAccuracy(5, name="top5_accuracy")],
        jit_compile=resolve_jit(t["jit_compile"]),
        steps_per_execution=t["steps_per_execution"])
    return schedule


def build_compiled(config: dict, *, num_classes: int, image_size: Sequence[int], normalization,
                   steps_per_epoch: int) -> tuple[keras.Model, keras.optimizers.schedules.LearningRateSchedule, str]:
    """The model and compiled step `train` uses: (model, schedule, precision policy name).

    The mixed-precision policy applies while the layers are built; the caller's global
    policy is restored afterwards.
    """
    precision = resolve_precision(config["train"]["precision"])
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        model = build_model(config, num_classes=num_classes, image_size=image_size,
                            normalization=normalization)
        schedule = compile_model(model, config, steps_per_epoch)
    finally:
        keras.config.set_dtype_policy(previous)
    return model, schedule, precision


# -- callbacks -------------------------------------------------------------------------------

class RunRecorder(keras.callbacks.Callback):
    """Rewrites metrics.json and history.csv after every epoch: one continuous history."""

    def __init__(self, folder: Path, initial_epoch: int, schedule, extra: dict,
                 history_from: Path | None = None):
        """`history_from`: the metrics.json whose first `initial_epoch` epochs continue
        (default: the folder's own; a non-chief worker reads the chief's)."""
        super().__init__()
        self.folder, self.schedule, self.extra = folder, schedule, extra
        previous = report.read_json(history_from or folder / "metrics.json") or {}
        self.history = {k: v[:initial_epoch] for k, v in previous.get("history", {}).items()}
        self.epochs_completed = initial_epoch

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        logs["lr"] = float(keras.ops.convert_to_numpy(self.schedule(self.model.optimizer.iterations)))
        for key in set(self.history) | set(logs):
            values = self.history.setdefault(key, [None] * self.epochs_completed)
            values.append(None if logs.get(key) is None else float(logs[key]))
        self.epochs_completed = epoch + 1
        self.write(status="running")

    def write(self, status: str, **more) -> dict:
        metrics = {"status": status, "epochs_completed": self.epochs_completed,
                   "history": self.history, **self.extra, **more}
        report.write_json(self.folder / "metrics.json", metrics)
        report.write_history_csv(self.folder / "history.csv", self.history)
        return metrics


class CrashSafeCheckpoint(keras.callbacks.Callback):
    """Model + optimizer state after each finite epoch: temp file, fsync, rename; keeps two."""

    def __init__(self, folder: Path, keep: int = 2):
        super().__init__()
        self.folder, self.keep = folder, keep
        folder.mkdir(parents=True, exist_ok=True)

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or not math.isfinite(loss):
            return  # never replace a good checkpoint with a diverged one
        final = self.folder / f"epoch-{epoch + 1:04d}.weights.h5"
        tmp = self.folder / f"tmp-epoch-{epoch + 1:04d}.weights.h5"
        self.model.save_weights(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        for old in checkpoints(self.folder)[self.keep:]:
            old.unlink()


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, newest first."""
    return sorted(folder.glob("epoch-*.weights.h5"), reverse=True)


def damaged(path: Path) -> str | None:
    """Why the HDF5 file `path` is damaged (truncated, corrupt, unreadable data), or None
    if every dataset in it reads back whole."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda _, item: item[()] if isinstance(item, h5py.Dataset) else None)
    except Exception as err:  # h5py raises OSError, KeyError, RuntimeError... on bad bytes
        return f"{type(err).__name__}: {' '.join(str(err).split())[:120]}"
    return None


def restore_latest(model: keras.Model, folder: Path, log: Callable[[str], None],
                   clean: bool = True) -> int:
    """Load the newest checkpoint (weights + optimizer); returns its epoch (0: none).

    Only a damaged file falls back to the one before. A whole file that does not fit the
    model (the code or a version changed) stops the run with `RunError`, as does a folder
    whose every checkpoint is damaged: nothing is overwritten. `clean` removes half-written
    temporaries (only the folder's owner does).
    """
    for stale in folder.glob("tmp-*") if clean else ():
        stale.unlink(missing_ok=True)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    found = checkpoints(folder)
    for path in found:
        reason = damaged(path)
        if reason:
            log(f"Checkpoint {path.name} is damaged ({reason}); trying the previous one.")
            continue
        try:
            model.load_weights(path)
        except Exception as err:
            raise RunError(
                f"Checkpoint {path} is intact but does not fit this model ({type(err).__name__}: "
                f"{' '.join(str(err).split())[:200]}); it was left untouched. Resume with the "
                "keras-resnet version that wrote it, or start anew with another --output "
                "(or --overwrite).") from err
        return int(path.name.split("-")[1].split(".")[0])
    if found:
        raise RunError(f"Every checkpoint in {folder} is damaged ({', '.join(p.name for p in found)}); "
                       "they were left untouched. Start anew with another --output (or --overwrite).")
    return 0


# -- the run ---------------------------------------------------------------------------------

# What `train` writes into a run folder; --overwrite removes these and nothing else.
RUN_ENTRIES = ("config.json", "metrics.json", "history.csv", "checkpoints", "logs", "model.keras",
               "curves.png", "confusion_matrix.png", "tmp-model.keras", ".metrics.json.tmp",
               ".history.csv.tmp", ".config.json.tmp")


def _run_config(folder: Path) -> dict | None:
    """The configuration of the run folder `folder`; None when it is new or empty.
    Raises `RunError` for a folder that holds anything else: it is never written to."""
    if not folder.exists():
        return None
    if not folder.is_dir():
        raise RunError(f"--output {folder} is a file, not a run folder; choose a new folder.")
    if not any(folder.iterdir()):
        return None
    saved = report.read_json(folder / "config.json")
    if not isinstance(saved, dict) or set(saved) != set(recipes.DEFAULTS):
        raise RunError(f"--output {folder} is not empty and is not a keras-resnet run folder (it has "
                       "no keras-resnet config.json); nothing in it was changed. Choose a new or "
                       "empty folder.")
    return saved


def _clear_run(folder: Path) -> None:
    """Remove what `train` wrote into `folder`; anything else (exports, notes) stays."""
    for name in RUN_ENTRIES:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _prepare_folder(folder: Path, config: dict, overwrite: bool, log: Callable[[str], None]) -> str:
    """"new", "resume" or "complete"; refuses a different configuration unless `overwrite`.

    A run that stopped before its first checkpoint (a bad data path, a crash in epoch 1)
    holds nothing to resume, so a different configuration simply replaces its config.json.
    """
    saved = _run_config(folder)
    if overwrite and saved is not None:
        _clear_run(folder)
        saved = None
    if (saved is not None and saved != config
            and not checkpoints(folder / "checkpoints") and not (folder / "model.keras").exists()):
        log(f"{folder}: its earlier run stopped before its first checkpoint; starting anew with "
            "this configuration.")
        saved = None
    if saved is not None and saved != config:
        changed = sorted(f"{s}.{k}" for s in config for k in config[s]
                         if saved.get(s, {}).get(k) != config[s][k])
        raise RunError(f"{folder} holds a run with a different configuration (changed: "
                       f"{', '.join(changed[:6]) or 'sections'}); use another --output, or "
                       "--overwrite to replace it.")
    folder.mkdir(parents=True, exist_ok=True)
    if saved is None:
        report.write_json(folder / "config.json", config)
        return "new"
    metrics = report.read_json(folder / "metrics.json") or {}
    return "complete" if metrics.get("status") == "complete" and (folder / "model.keras").exists() else "resume"


def _one_hot(num_classes: int):
    return lambda x, y: (x, tf.one_hot(y, num_classes))


def train(recipe: str | None = None, *, output: str | os.PathLike = "runs/default",
          overrides: Sequence[str] = (), overwrite: bool = False, strategy: str = "auto",
          tpu: str | None = None, extra_augment_layers: Sequence[Callable] = (),
          log: Callable[[str], None] = print, verbose: int = 2, **flags) -> dict:
    """Train with `model.fit` into the run folder `output`; returns metrics.json's content.

    Running the same call again resumes after the last completed epoch (or returns at once
    when the run is complete). `strategy` is one of `distribute.STRATEGIES` (`tpu`: its
    address); `batch_size` is global. Under multi-worker, every worker runs the same call;
    only the chief writes `output`, the others work in a temporary folder they remove.
    `flags` are depth, variant, data, data_dir, epochs, batch_size, max_train_samples,
    max_eval_samples, seed, precision, lr.
    """
    config = resolve_config(recipe, overrides, **flags)
    strat = distribute.make_strategy(strategy, tpu)
    distribute.check_batch(config["train"]["batch_size"], strat)
    if distribute.is_multi_worker(strat):
        distribute.check_multi_worker_keras()  # before the run folder is touched
    chief = distribute.is_chief(strat)
    run_folder = Path(output)
    if chief:
        state = _prepare_folder(run_folder, config, overwrite, log)
    else:  # read the chief's folder, never write it
        metrics = report.read_json(run_folder / "metrics.json") or {}
        state = "complete" if metrics.get("status") == "complete" else "resume"
    distribute.agree(strat, int(state == "complete"), "whether the run is complete")
    if state == "complete":
        log(f"Run in {run_folder} is already complete ({config['train']['epochs']} epochs); nothing to do.")
        return report.read_json(run_folder / "metrics.json")
    if not chief:  # its own scratch folder; a killed worker's is removed by the next one
        report.remove_dead_temporaries(tempfile.gettempdir(), WORKER_PREFIX)
    folder = run_folder if chief else Path(tempfile.mkdtemp(prefix=f"{WORKER_PREFIX}{os.getpid()}-"))
    distributed = strat is not tf.distribute.get_strategy()
    try:
        with strat.scope(), distribute.multi_worker_fit(strat):
            fitted = _fit(config, folder, run_folder, state, strat, chief, distributed,
                          extra_augment_layers, log, verbose)
        if not chief:
            return fitted["recorder"].write(status="complete (worker)")
        return _finish(folder, **fitted, log=log)  # outside the strategy: one plain model
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
            tf.errors.AbortedError) as err:
        if not distribute.is_multi_worker(strat):
            raise
        raise RunError(f"Lost contact with another worker ({type(err).__name__}: "
                       f"{str(err).splitlines()[0][:160]}). Start every worker again with the same "
                       "command; training resumes from the chief's last checkpoint.") from err
    finally:
        if not chief:
            shutil.rmtree(folder, ignore_errors=True)


def _fit(config: dict, folder: Path, run_folder: Path, state: str, strat, chief: bool,
         distributed: bool, extra_augment_layers, log, verbose) -> dict:
    """Build, restore and `model.fit` under `strat`; returns what `_finish` needs."""
    t, d = config["train"], config["data"]
    keras.utils.set_random_seed(t["seed"])
    if t["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    splits, image_size = _load_data(config, log)
    steps_per_epoch = splits.num_train // t["batch_size"]
    if steps_per_epoch == 0:
        raise data_lib.DataError(f"batch_size {t['batch_size']} exceeds the {splits.num_train} training "
                                 "images; lower --batch-size or use more data.")

    if distributed and t["jit_compile"] == "auto":  # XLA under strategies: not verified, off
        config = {**config, "train": {**t, "jit_compile": False}}
    model, schedule, precision = build_compiled(
        config, num_classes=splits.num_classes, image_size=image_size,
        normalization=(splits.mean, splits.std), steps_per_epoch=steps_per_epoch)
    if config["model"]["sync_bn"]:
        distribute.synchronize_batch_norm(model)
    plan = finetune.phases(config)
    phase = plan[0]

    def enter(next_phase: finetune.Phase) -> None:
        """Freeze/unfreeze for `next_phase` and compile its optimizer; a new phase's step
        count continues the run's, so the schedule goes on where it was."""
        nonlocal phase
        phase = next_phase
        if next_phase is not plan[0]:  # `build_compiled` set up the first; every worker agrees
            compile_model(model, config, steps_per_epoch, next_phase)
        model.optimizer.build(model.trainable_variables)  # every worker creates the same variables
        model.optimizer.iterations.assign(next_phase.start * steps_per_epoch)

    initial_epoch = 0
    if state == "resume":
        # A checkpoint holds the optimizer of the phase that wrote it: set that phase up first.
        found = checkpoints(run_folder / "checkpoints")
        written = int(found[0].name.split("-")[1].split(".")[0]) if found else 0
        enter(finetune.phase_of(plan, max(written - 1, 0)))
        initial_epoch = restore_latest(model, run_folder / "checkpoints", log, clean=chief)
    else:
        enter(phase)
    initial_epoch = distribute.agree(strat, initial_epoch, "the epoch to resume from")
    if initial_epoch:
        log(f"Resuming from epoch {initial_epoch + 1}")
    log(f"Training {model.name} ({precision}, XLA {'on' if model.jit_compile else 'off'}, "
        f"{distribute.describe(strat)}) on {splits.num_train} images of {splits.source}, "
        f"{splits.num_classes} classes, epochs {initial_epoch + 1}-{t['epochs']}, "
        f"{steps_per_epoch} steps each.")

    fixed = splits.image_size == image_size
    augmenter = augment_lib.build_augmenter(
        {k: v for k, v in config["augment"].items() if k != "random_resized_crop"},
        seed=t["seed"], extra_layers=extra_augment_layers)
    eval_ds = data_lib.eval_pipeline(
        splits.test.map(_one_hot(splits.num_classes)), batch_size=t["batch_size"],
        image_size=image_size, fixed_size=fixed, crop_fraction=d["eval_crop_fraction"] or None)

    recorder = RunRecorder(folder, initial_epoch, schedule,
                           {"class_names": splits.class_names, "data": splits.source,
                            "precision": precision, "num_train": splits.num_train,
                            "num_test": splits.num_test, "strategy": distribute.describe(strat)},
                           history_from=run_folder / "metrics.json")
    callbacks = [keras.callbacks.TerminateOnNaN(), recorder,
                 CrashSafeCheckpoint(folder / "checkpoints"),
                 keras.callbacks.TensorBoard(str(folder / "logs"))]

    def training_batches(first_epoch: int) -> tf.data.Dataset:
        return data_lib.train_pipeline(
            splits.train.map(_one_hot(splits.num_classes)), num_examples=splits.num_train,
            batch_size=t["batch_size"], epochs=t["epochs"], initial_epoch=first_epoch,
            seed=t["seed"], image_size=image_size, fixed_size=fixed, augment=augmenter,
            random_resized_crop=config["augment"]["random_resized_crop"])

    started = time.time()
    for next_phase in plan:  # a run resumed after its last epoch only evaluates
        losses = recorder.history.get("loss", [])
        if recorder.epochs_completed < next_phase.start or not all(
                v is not None and math.isfinite(v) for v in losses):
            break  # an earlier phase stopped (NaN loss, data ran out): reported below
        if next_phase.end <= initial_epoch:
            continue  # done before this resume
        if next_phase is not phase:
            enter(next_phase)
        first = max(initial_epoch, next_phase.start)
        if len(plan) > 1:
            log(f"Phase {next_phase.name!r}: epochs {first + 1}-{next_phase.end}.")
        model.fit(training_batches(first), epochs=next_phase.end, initial_epoch=first,
                  steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=verbose, shuffle=False,
                  validation_data=eval_ds if t["validate_every"] else None,
                  validation_freq=max(t["validate_every"], 1))
    losses = recorder.history.get("loss", [])
    kept = checkpoints(folder / "checkpoints")
    kept = f"the last good checkpoint is kept ({kept[0] if kept else 'none'})"
    bad = next((i for i, v in enumerate(losses) if v is None or not math.isfinite(v)), None)
    stopped = None
    if bad is not None:
        stopped = (f"Training stopped: the loss became NaN/inf in epoch {bad + 1}; {kept}. "
                   "Lower train.lr or check the data.")
    elif recorder.epochs_completed < t["epochs"]:
        stopped = (f"Training stopped after epoch {recorder.epochs_completed} of {t['epochs']}: "
                   f"the input ran out of data (unreadable images dropped?); {kept}.")
    if stopped:
        recorder.write(status="failed", error=stopped)
        raise RunError(stopped)
    bn_batches = None
    if t["ema"]:
        # `fit` swaps the averages in when it ends; a run resumed after its last epoch skips `fit`.
        model.optimizer.finalize_variable_values(model.trainable_variables)
        bn_batches = training_batches(t["epochs"] - 1).take(BN_RECALIBRATION_BATCHES)
    return dict(config=config, model=model, recorder=recorder, splits=splits, image_size=image_size,
                eval_ds=eval_ds, bn_batches=bn_batches, train_seconds=time.time() - started)


def _load_data(config: dict, log: Callable[[str], None]) -> tuple[data_lib.Splits, tuple[int, int]]:
    t, d = config["train"], config["data"]
    splits = data_lib.load(d["name"], data_dir=d["data_dir"] or None, cache_dir=d["cache_dir"] or None,
                           max_train_samples=d["max_train_samples"] or None,
                           max_eval_samples=d["max_eval_samples"] or None, seed=t["seed"],
                           classes=d["classes"] or None)
    if splits.skipped:
        log(f"Skipped {len(splits.skipped)} unreadable or non-image file(s): "
            f"{', '.join(splits.skipped[:5])}{' ...' if len(splits.skipped) > 5 else ''}")
    image_size = tuple(d["image_size"]) if all(d["image_size"]) else splits.image_size
    if not image_size:
        raise data_lib.DataError("Images vary in size: set data.image_size (e.g. --set 'data.image_size=[224, 224]').")
    return splits, image_size


def recalibrate_batch_norm(model: keras.Model, batches: tf.data.Dataset) -> int:
    """Re-estimate the moving statistics of every trainable BN layer as the plain mean over
    `batches` ((images, labels) batches; forward passes in training mode, no weight update).

    Averaged (EMA) weights need this: Keras averages trainable variables only, so the moving
    statistics left in the model belong to the last raw weights. Returns the batch count.
    """
    bns = [layer for layer in model._flatten_layers()
           if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.moving_mean.assign(keras.ops.zeros_like(bn.moving_mean))
        bn.moving_variance.assign(keras.ops.ones_like(bn.moving_variance))
    count = 0
    try:
        for count, (images, _) in enumerate(batches, 1):
            for bn in bns:  # weight 1/count for this batch: a running plain mean
                bn.momentum = 1.0 - 1.0 / count
            model(images, training=True)
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
    return count


def _finish(folder: Path, config: dict, model: keras.Model, recorder: RunRecorder,
            splits: data_lib.Splits, image_size, eval_ds, bn_batches: tf.data.Dataset | None, *,
            train_seconds: float, log: Callable[[str], None]) -> dict:
    """BN statistics for averaged weights, final evaluation, model.keras (float32 whatever
    the training precision), plots."""
    final = build_model(config, num_classes=splits.num_classes, image_size=image_size,
                        normalization=(splits.mean, splits.std))
    finetune.copy_weights(model, final, skip=())  # by path: frozen layers reorder get_weights()
    if bn_batches is not None:
        count = recalibrate_batch_norm(final, bn_batches)
        log(f"Re-estimated the BN statistics of the averaged (EMA) weights on {count} training batches.")
    probs, mirrored, labels = _predict(final, eval_ds, config["data"]["eval_flip_tta"])
    evaluation = scores(probs, labels, splits.class_names)
    if mirrored is not None:  # one pass gives both the single-view and the flip-TTA score
        tta = scores((probs + mirrored) / 2, labels, splits.class_names)
        evaluation["flip_tta"] = {k: tta[k] for k in ("accuracy", "top5_accuracy", "loss")}
    tmp = folder / "tmp-model.keras"
    final.save(tmp)
    os.replace(tmp, folder / "model.keras")
    title = f"{final.name} on {splits.source}"
    report.plot_curves(folder / "curves.png", recorder.history, title)
    if "confusion_matrix" in evaluation:
        report.plot_confusion(folder / "confusion_matrix.png", np.asarray(evaluation["confusion_matrix"]),
                              splits.class_names, f"{title}\ntest accuracy {evaluation['accuracy']:.4f}")
    metrics = recorder.write(status="complete", eval=evaluation,
                             train_seconds_this_session=round(train_seconds, 1))
    tta = (f", with flip TTA {evaluation['flip_tta']['accuracy']:.4f}" if "flip_tta" in evaluation else "")
    log(f"Test accuracy {evaluation['accuracy']:.4f} (top-5 {evaluation['top5_accuracy']:.4f}){tta} "
        f"on {splits.num_test} images; run folder {folder}")
    return metrics


def _predict(model: keras.Model, dataset: tf.data.Dataset, mirrored: bool
             ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Probabilities of each image (and of its horizontal mirror if `mirrored`), and labels."""
    plain, flipped, labels = [], [], []
    for images, y in dataset:
        plain.append(keras.ops.convert_to_numpy(model.predict_on_batch(images)))
        if mirrored:
            flipped.append(keras.ops.convert_to_numpy(model.predict_on_batch(tf.reverse(images, axis=[2]))))
        labels.append(np.argmax(y, -1) if y.shape.rank == 2 else y.numpy())
    flipped = np.concatenate(flipped).astype(np.float64) if mirrored else None
    return np.concatenate(plain).astype(np.float64), flipped, np.concatenate(labels).astype(np.int64)


def evaluate_model(model: keras.Model, dataset: tf.data.Dataset, class_names: Sequence[str], *,
                   flip_tta: bool = False) -> dict:
    """Top-1, top-5, cross-entropy, per-class accuracy and (<= 100 classes) confusion matrix.

    `dataset` yields (images, labels) batches (NHWC), labels as indices or one-hot. With
    `flip_tta`, each image's probabilities are the mean over it and its horizontal mirror.
    """
    probs, mirrored, labels = _predict(model, dataset, flip_tta)
    return scores((probs + mirrored) / 2 if flip_tta else probs, labels, class_names)


def scores(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict:
    """`evaluate_model`'s report from probabilities and integer labels."""
    n = len(class_names)
    if probs.shape[1] != n:
        raise data_lib.DataError(f"The model has {probs.shape[1]} classes, the data {n}: evaluate it "
                                 "on data with the classes it was trained on.")
    top5 = np.argsort(-probs, axis=1)[:, : min(5, n)]
    predictions = top5[:, 0]
    matrix = report.confusion_matrix(labels, predictions, n)
    per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    result = {
        "accuracy": float(np.mean(predictions == labels)),
        "top5_accuracy": float(np.mean((top5 == labels[:, None]).any(axis=1))),
        "loss": float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)))),
        "num_images": int(len(labels)),
        "per_class_accuracy": {name: float(a) for name, a in zip(class_names, per_class)},
    }
    if n <= 100:
        result["confusion_matrix"] = matrix.tolist()
    return result


class _StepTimer(keras.callbacks.Callback):
    """Wall time and this process's CPU time of every training/predict step."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self._start = self._cpu_start = 0.0

    def _begin(self, batch, logs=None):
        self._start, self._cpu_start = time.perf_counter(), time.process_time()

    def _end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)
        self.cpu_times.append(time.process_time() - self._cpu_start)

    on_train_batch_begin = on_predict_batch_begin = _begin
    on_train_batch_end = on_predict_batch_end = _end


def benchmark(depth: int = 20, *, mode: str = "train", batch_size: int = 128, steps: int = 50,
              warmup: int = 5, rounds: int = 5, precision: str = "auto", jit_compile="auto",
              num_classes: int | None = None) -> dict:
    """Images/s of the package's own compiled `fit` (or `predict`) step on synthetic data.

    After `warmup` steps, `rounds` windows of `steps` steps each are timed in one run,
    step by step. One window can lose whole seconds to a stall of the machine, so the
    result reports every window and their best, median and spread (`images_per_sec` is
    the median), plus the slowest single step. `window_cpu_cores` is the process's CPU
    time over wall time per window: a slow window with fewer busy cores waited for CPUs
    (other processes, the host), one with as many did more work per step.
    """
    if mode not in ("train", "predict"):
        raise ValueError(f"mode must be 'train' or 'predict', got {mode!r}.")
    for name, value, low in (("batch_size", batch_size, 1), ("steps", steps, 1),
                             ("warmup", warmup, 1), ("rounds", rounds, 1)):
        if value < low:
            raise ValueError(f"{name} must be at least {low}, got {value}.")
    config = recipes.load("cifar10-fast")
    config["model"]["depth"] = depth
    config["train"].update(batch_size=batch_size, precision=precision, jit_compile=jit_compile)
    cifar = specs.resnet_spec(depth).stem == "cifar"
    size, classes = ((32, 32), 10) if cifar else ((224, 224), 1000)
    classes = num_classes or classes
    model, _, policy = build_compiled(config, num_classes=classes, image_size=size,
                                      normalization=((125.0,) * 3, (60.0,) * 3),
                                      steps_per_epoch=steps * rounds + warmup)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch_size, *size, 3)).astype("float32")
    y = np.eye(classes, dtype="float32")[rng.integers(0, classes, batch_size)]
    ds = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(tf.data.AUTOTUNE)
    timer = _StepTimer()
    if mode == "train":
        model.fit(ds, steps_per_epoch=warmup, epochs=1, verbose=0)
        model.fit(ds, steps_per_epoch=steps * rounds, epochs=1, verbose=0, callbacks=[timer])
    else:
        images = ds.map(lambda a, b: a)
        model.predict(images, steps=warmup, verbose=0)
        model.predict(images, steps=steps * rounds, verbose=0, callbacks=[timer])
    windows = [sum(timer.times[i * steps:(i + 1) * steps]) for i in range(rounds)]
    cpu = [sum(timer.cpu_times[i * steps:(i + 1) * steps]) for i in range(rounds)]
    rates = sorted(batch_size * steps / w for w in windows)
    median = float(np.median(rates))
    return {"model": model.name, "mode": mode, "batch_size": batch_size, "steps": steps,
            "rounds": rounds, "precision": policy, "jit_compile": bool(model.jit_compile),
            "backend": keras.backend.backend(), "images_per_sec": round(median, 1),
            "best_images_per_sec": round(rates[-1], 1), "worst_images_per_sec": round(rates[0], 1),
            "spread": round((rates[-1] - rates[0]) / median, 3),
            "window_seconds": [round(w, 3) for w in windows],
            "window_cpu_cores": [round(c / w, 2) for c, w in zip(cpu, windows)],
            "median_step_ms": round(1000 * float(np.median(timer.times)), 2),
            "slowest_step_ms": round(1000 * max(timer.times), 2)}
