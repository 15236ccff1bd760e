"""The run folder: what `train` writes into it, and the reader that evaluation, export and
the CLI use.

A run folder holds config.json (the full resolved recipe), metrics.json and history.csv
(rewritten after every epoch), checkpoints/ (the newest two: at epoch ends and, inside an
epoch, every `train.checkpoint_every_steps` steps or `train.checkpoint_every_minutes`
minutes; each written to a temporary file, fsynced and renamed), logs/ (TensorBoard), and
at the end model.keras (the final model, float32, taking RGB pixels in [0, 255] and
returning probabilities), curves.png and confusion_matrix.png.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import keras

from keras_resnet import recipes, report

# What `train` writes into a run folder; --overwrite removes these and nothing else.
ENTRIES = ("config.json", "metrics.json", "history.csv", "checkpoints", "logs", "model.keras",
           "curves.png", "confusion_matrix.png", "tmp-model.keras", ".metrics.json.tmp",
           ".history.csv.tmp", ".config.json.tmp")


class RunError(RuntimeError):
    """A run that cannot go on as asked (configuration clash, NaN loss); the message says why."""


# -- the reader ------------------------------------------------------------------------------

def read_config(folder: Path) -> dict | None:
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
    return recipes.upgrade_saved(saved)


def read_metrics(folder: Path) -> dict:
    """metrics.json of the run folder `folder` ({} when there is none yet)."""
    return report.read_json(folder / "metrics.json") or {}


def context(model_path: str | os.PathLike | None) -> dict:
    """What the run folder beside a `train` model records: data, eval crop, class names.

    `crop` is the run's `data.eval_crop_fraction` (0.0: none) when the folder has a
    config.json, else None (no run configuration known)."""
    if model_path is None:
        return {}
    folder = Path(model_path).resolve().parent
    config = report.read_json(folder / "config.json")
    data = (config or {}).get("data", {})
    return {"data": data.get("name") or None, "data_dir": data.get("data_dir") or None,
            "crop": float(data.get("eval_crop_fraction") or 0.0) if config is not None else None,
            "class_names": read_metrics(folder).get("class_names"), "folder": folder}


def default_folder(recipe: str | None) -> Path:
    """Where `train` writes when no output is given: runs/<recipe name>."""
    return Path("runs") / (Path(recipe).stem if recipe else "default")


def summary(output: str | os.PathLike, metrics: dict) -> dict:
    """The few numbers of a finished run that the CLI prints."""
    return {"output": str(output), "epochs_completed": metrics["epochs_completed"],
            "eval": {k: v for k, v in metrics.get("eval", {}).items()
                     if k in ("accuracy", "top5_accuracy", "loss")}}


# -- starting, resuming, replacing -----------------------------------------------------------

def clear(folder: Path) -> None:
    """Remove what `train` wrote into `folder`; anything else (exports, notes) stays."""
    for name in ENTRIES:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def prepare(folder: Path, config: dict, overwrite: bool, log: Callable[[str], None]) -> str:
    """"new", "resume" or "complete"; refuses a different configuration unless `overwrite`.

    A run that stopped before its first checkpoint (a bad data path, a crash in epoch 1)
    holds nothing to resume, so a different configuration simply replaces its config.json.
    """
    saved = read_config(folder)
    if overwrite and saved is not None:
        clear(folder)
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
    return state(folder)


def state(folder: Path) -> str:
    """"complete" when the run in `folder` finished and saved its model, else "resume"."""
    complete = read_metrics(folder).get("status") == "complete" and (folder / "model.keras").exists()
    return "complete" if complete else "resume"


# -- what `fit` writes -----------------------------------------------------------------------

class Recorder(keras.callbacks.Callback):
    """Rewrites metrics.json and history.csv after every epoch: one continuous history."""

    def __init__(self, folder: Path, initial_epoch: int, extra: dict,
                 history_from: Path | None = None):
        """`history_from`: the run folder whose first `initial_epoch` epochs continue
        (default: `folder`; a non-chief worker reads the chief's). The lr recorded is the
        optimizer's at the end of each epoch (each phase has its own schedule)."""
        super().__init__()
        self.folder, self.extra = folder, extra
        previous = read_metrics(history_from or folder)
        self.history = {k: v[:initial_epoch] for k, v in previous.get("history", {}).items()}
        self.epochs_completed = initial_epoch

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
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
    """The run's whole state at the end of each finite epoch and, inside one, every
    `every_steps` steps and/or `every_minutes` minutes: model and optimizer (EMA and loss
    scale included), the metric totals of the epoch so far, the model's seed generators and
    the position (epoch, step). Temp file, fsync, rename; keeps the newest `keep`.

    `start(steps, step)` before each `fit`: the phase's steps per epoch and the steps already
    done in the first epoch of this `fit` (a resume inside an epoch); `fit` then runs that
    epoch's remaining steps, and the saved metric totals are added after its first step.
    """

    def __init__(self, folder: Path, keep: int = 2, every_steps: int = 0, every_minutes: float = 0.0,
                 batches: str = ""):
        """`batches`: what draws the training batches ("tf.data" or "NumPy"), kept in each
        file so that a resume can tell whether the rest of its epoch gets the same ones."""
        super().__init__()
        self.folder, self.keep, self.batches = folder, keep, batches
        self.every_steps, self.every_seconds = every_steps, 60.0 * every_minutes
        self.steps, self.offset, self.epoch, self.saved_metrics = 0, 0, 0, None
        self.last_step, self.last_time = 0, time.monotonic()
        folder.mkdir(parents=True, exist_ok=True)

    def start(self, steps: int, step: int = 0, saved_metrics: list | None = None) -> None:
        self.steps, self.offset, self.saved_metrics, self.last_step = steps, step, saved_metrics, step

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.saved_metrics is not None:
            # The first step of a resumed epoch: add the totals of the steps before the
            # checkpoint (Keras's metrics are built at the first step, and hold sums).
            for variable, value in zip(_metric_variables(self.model), self.saved_metrics, strict=True):
                variable.assign(variable + value)
            self.saved_metrics = None
        step = self.offset + batch + 1
        if step >= self.steps:
            return  # the epoch's end writes its own
        if ((self.every_steps and step - self.last_step >= self.every_steps)
                or (self.every_seconds and time.monotonic() - self.last_time >= self.every_seconds)):
            self._write(self.epoch, step, (logs or {}).get("loss"))

    def on_epoch_end(self, epoch, logs=None):
        self.offset = self.last_step = 0
        self._write(epoch + 1, 0, (logs or {}).get("loss"))

    def _write(self, epoch: int, step: int, loss) -> None:
        if loss is None or not math.isfinite(loss):
            return  # never replace a good checkpoint with a diverged one
        self.last_step, self.last_time = step, time.monotonic()
        name = f"epoch-{epoch:04d}" + (f"-step-{step:06d}" if step else "") + ".weights.h5"
        tmp = self.folder / f"tmp-{name}"
        self.model.save_weights(tmp)
        import h5py

        with h5py.File(tmp, "a") as f:
            state = f.create_group(RESUME_GROUP)
            state.attrs["epoch"], state.attrs["step"], state.attrs["batches"] = epoch, step, self.batches
            for group, variables in (("metrics", _metric_variables(self.model)),
                                     ("seeds", _seed_variables(self.model))):
                values = state.create_group(group)
                for k, variable in enumerate(variables):
                    values[str(k)] = keras.ops.convert_to_numpy(variable)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.folder / name)
        for old in checkpoints(self.folder)[self.keep:]:
            old.unlink()


RESUME_GROUP = "keras_resnet_resume"  # in a checkpoint: the position and the state `save_weights` leaves out


def _metric_variables(model: keras.Model) -> list:
    return [v for metric in model.metrics for v in metric.variables]


def _seed_variables(model: keras.Model) -> list:
    """The state of every seed generator in the model (e.g. DropPath's), which
    `save_weights` does not save."""
    return [layer.seed_generator.state for layer in model._flatten_layers()
            if isinstance(getattr(layer, "seed_generator", None), keras.random.SeedGenerator)]


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, newest first."""
    return sorted(folder.glob("epoch-*.weights.h5"), key=position, reverse=True)


def position(path: Path) -> tuple[int, int]:
    """Where a checkpoint was written: (epochs completed, steps done in the next one).
    epoch-0007.weights.h5 -> (7, 0); epoch-0007-step-000050.weights.h5 -> (7, 50)."""
    parts = path.name.split(".")[0].split("-")
    return int(parts[1]), int(parts[3]) if len(parts) > 3 else 0


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
                   clean: bool = True) -> tuple[tuple[int, int], list | None]:
    """Load the newest checkpoint: weights, optimizer and the model's seed generators.
    Returns its `position` ((0, 0): none) and the epoch's saved metric totals (for
    `CrashSafeCheckpoint.start`; None for an epoch-end checkpoint or one without them).

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
            metrics = _restore_extra_state(model, path)
        except Exception as err:
            raise RunError(
                f"Checkpoint {path} is intact but does not fit this model ({type(err).__name__}: "
                f"{' '.join(str(err).split())[:200]}); it was left untouched. Resume with the "
                "keras-resnet version that wrote it, or start anew with another --output "
                "(or --overwrite).") from err
        return position(path), metrics
    if found:
        raise RunError(f"Every checkpoint in {folder} is damaged ({', '.join(p.name for p in found)}); "
                       "they were left untouched. Start anew with another --output (or --overwrite).")
    return (0, 0), None


def batches_of(path: Path) -> str | None:
    """What drew the batches of the run that wrote checkpoint `path` (None: not recorded)."""
    import h5py

    with h5py.File(path, "r") as f:
        if RESUME_GROUP not in f:
            return None
        return f[RESUME_GROUP].attrs.get("batches") or None


def _restore_extra_state(model: keras.Model, path: Path) -> list | None:
    """Seed generator states back into `model`; the saved metric totals of an in-epoch
    checkpoint. Checkpoints of older versions have neither."""
    import h5py

    with h5py.File(path, "r") as f:
        if RESUME_GROUP not in f:
            return None
        state = f[RESUME_GROUP]
        seeds = _seed_variables(model)
        if len(state["seeds"]) != len(seeds):
            raise ValueError(f"{len(state['seeds'])} seed generator states saved, {len(seeds)} in the model")
        for k, variable in enumerate(seeds):
            variable.assign(state["seeds"][str(k)][()])
        metrics = [state["metrics"][str(k)][()] for k in range(len(state["metrics"]))]
        return metrics if state.attrs["step"] else None


def where(folder: Path) -> dict:
    """Where the run in `folder` stands (`keras-resnet runs show`): its status, the epochs
    done, each checkpoint (position; intact, or why not) and whether the same `train`
    command resumes it, from where, or why not."""
    config = read_config(folder)
    if config is None:
        raise RunError(f"{folder} holds no run (no config.json); give the --output folder of a "
                       "`keras-resnet train` run.")
    metrics = read_metrics(folder)
    found = [{"file": p.name, "epochs_completed": position(p)[0], "step": position(p)[1],
              "damaged": damaged(p)} for p in checkpoints(folder / "checkpoints")]
    good = [c for c in found if c["damaged"] is None]
    head = 1 if config["model"]["weights"] and config["train"]["head_steps"] else 0  # one history entry
    shown = {"folder": str(folder), "status": metrics.get("status", "started"),
             "epochs_completed": metrics.get("epochs_completed", 0), "epochs": head + config["train"]["epochs"],
             "checkpoints": found}
    if metrics.get("error"):
        shown["error"] = metrics["error"]
    if state(folder) == "complete":
        return {**shown, "can_resume": False, "why": "the run is complete (model.keras saved); nothing to resume"}
    if good and good[0]["epochs_completed"] >= shown["epochs"]:
        return {**shown, "can_resume": True, "why": "every epoch is trained; the same `keras-resnet train` "
                                                     "command evaluates and saves the model"}
    if good:
        epoch, step = good[0]["epochs_completed"], good[0]["step"]
        return {**shown, "can_resume": True, "resumes_at": {"epoch": epoch + 1, "step": step + 1},
                "why": f"the same `keras-resnet train` command (or --output {folder}) resumes from {good[0]['file']}"}
    if found:
        return {**shown, "can_resume": False, "why": "every checkpoint is damaged; start anew with --overwrite "
                                                      "or another --output"}
    return {**shown, "can_resume": False, "why": "no checkpoint was written yet; the same command starts the "
                                                  "run again from its first step"}
