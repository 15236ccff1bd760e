"""The run folder, written: starting, resuming or replacing a run (only the chief writes),
the recorder of metrics.json and history.csv, crash-safe checkpoints and restoring them.
`runfolder` reads it and describes its layout."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from keras_resnet import architecture, distribute, files
from keras_resnet.config import RunConfig
from keras_resnet.errors import RunError
from keras_resnet.runfolder import RESUME_GROUP, checkpoints, damaged, position, read_config, read_metrics, state

# The reader's functions, re-exported: `runs.where(folder)` and the like keep working.
from keras_resnet.runfolder import batches_of as batches_of
from keras_resnet.runfolder import context as context
from keras_resnet.runfolder import default_folder as default_folder
from keras_resnet.runfolder import summary as summary
from keras_resnet.runfolder import where as where

WORKER_PREFIX = "keras-resnet-worker-"
# What `train` writes into a run folder; --overwrite removes these and nothing else.
ENTRIES = (
    "config.json",
    "metrics.json",
    "history.csv",
    "checkpoints",
    "logs",
    "model.keras",
    "curves.png",
    "confusion_matrix.png",
    "tmp-model.keras",
    ".metrics.json.tmp",
    ".history.csv.tmp",
    ".config.json.tmp",
)


# -- starting, resuming, replacing -----------------------------------------------------------


def clear(folder: Path) -> None:
    """Remove what `train` wrote into `folder`; anything else (exports, notes) stays."""
    for name in ENTRIES:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def prepare(folder: Path, run_config: RunConfig | dict, overwrite: bool, log: Callable[[str], None]) -> str:
    """ "new", "resume" or "complete"; refuses a different configuration unless `overwrite`.

    A run that stopped before its first checkpoint (a bad data path, a crash in epoch 1)
    holds nothing to resume, so a different configuration simply replaces its config.json.
    """
    config = run_config.to_dict() if isinstance(run_config, RunConfig) else run_config
    saved = read_config(folder)
    if overwrite and saved is not None:
        clear(folder)
        saved = None
    if (
        saved is not None
        and saved != config
        and not checkpoints(folder / "checkpoints")
        and not (folder / "model.keras").exists()
    ):
        log(f"{folder}: its earlier run stopped before its first checkpoint; starting anew with this configuration.")
        saved = None
    if saved is not None and saved != config:
        changed = sorted(f"{s}.{k}" for s in config for k in config[s] if saved.get(s, {}).get(k) != config[s][k])
        raise RunError(
            f"{folder} holds a run with a different configuration (changed: "
            f"{', '.join(changed[:6]) or 'sections'}); use another --output, or "
            "--overwrite to replace it."
        )
    folder.mkdir(parents=True, exist_ok=True)
    if saved is None:
        files.write_json(folder / "config.json", config)
        return "new"
    return state(folder)


@dataclasses.dataclass(frozen=True)
class Run:
    """An opened run: `source` is the run folder, `folder` where this process writes (the
    run folder on the chief, a scratch folder on the other workers); `state` is "new",
    "resume" or "complete"."""

    source: Path
    folder: Path
    state: str
    chief: bool
    strategy: Any

    @property
    def complete(self) -> bool:
        return self.state == "complete"

    def close(self) -> None:
        """Remove a worker's scratch folder (the chief's run folder stays)."""
        if not self.chief:
            shutil.rmtree(self.folder, ignore_errors=True)


def open_run(folder: Path, config: RunConfig, strategy, overwrite: bool, log: Callable[[str], None]) -> Run:
    """Start, resume or find complete the run in `folder` (`prepare`); under multi-worker
    only the chief writes it, the others read it and work in a scratch folder of their own,
    and every worker agrees whether the run is complete."""
    chief = distribute.is_chief(strategy)
    if chief:
        state_now = prepare(folder, config, overwrite, log)
    else:  # read the chief's folder, never write it
        state_now = "complete" if read_metrics(folder).get("status") == "complete" else "resume"
    distribute.agree(strategy, int(state_now == "complete"), "whether the run is complete")
    if state_now == "complete" or chief:
        return Run(folder, folder, state_now, chief, strategy)
    files.remove_dead_temporaries(tempfile.gettempdir(), WORKER_PREFIX)  # a killed worker's
    scratch = Path(tempfile.mkdtemp(prefix=f"{WORKER_PREFIX}{os.getpid()}-"))
    return Run(folder, scratch, state_now, chief, strategy)


# -- what `fit` writes -----------------------------------------------------------------------


class Recorder(keras.callbacks.Callback):
    """Rewrites metrics.json and history.csv after every epoch: one continuous history."""

    def __init__(self, folder: Path, initial_epoch: int, extra: dict, history_from: Path | None = None):
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
        metrics = {
            "status": status,
            "epochs_completed": self.epochs_completed,
            "history": self.history,
            **self.extra,
            **more,
        }
        files.write_json(self.folder / "metrics.json", metrics)
        files.write_history_csv(self.folder / "history.csv", self.history)
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

    def __init__(
        self, folder: Path, keep: int = 2, every_steps: int = 0, every_minutes: float = 0.0, batches: str = ""
    ):
        """`batches`: what draws the training batches ("tf.data" or "NumPy"), kept in each
        file so that a resume can tell whether the rest of its epoch gets the same ones."""
        super().__init__()
        self.folder, self.keep, self.batches = folder, keep, batches
        self.every_steps, self.every_seconds = every_steps, 60.0 * every_minutes
        self.steps, self.offset, self.epoch = 0, 0, 0
        self.saved_metrics: list | None = None
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
        if (self.every_steps and step - self.last_step >= self.every_steps) or (
            self.every_seconds and time.monotonic() - self.last_time >= self.every_seconds
        ):
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
        architecture.mark(tmp, self.model)
        import h5py

        with h5py.File(tmp, "a") as f:
            state = f.create_group(RESUME_GROUP)
            state.attrs["epoch"], state.attrs["step"], state.attrs["batches"] = epoch, step, self.batches
            for group, variables in (
                ("metrics", _metric_variables(self.model)),
                ("seeds", _seed_variables(self.model)),
            ):
                values = state.create_group(group)
                for k, variable in enumerate(variables):
                    values[str(k)] = keras.ops.convert_to_numpy(variable)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.folder / name)
        for old in checkpoints(self.folder)[self.keep :]:
            old.unlink()


def _metric_variables(model: keras.Model) -> list:
    return [v for metric in model.metrics for v in metric.variables]


def _seed_variables(model: keras.Model) -> list:
    """The state of every seed generator in the model (e.g. DropPath's), which
    `save_weights` does not save."""
    return [
        layer.seed_generator.state
        for layer in model._flatten_layers()
        if isinstance(getattr(layer, "seed_generator", None), keras.random.SeedGenerator)
    ]


def restore_latest(
    model: keras.Model, folder: Path, log: Callable[[str], None], clean: bool = True
) -> tuple[tuple[int, int], list | None]:
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
                "(or --overwrite)."
            ) from err
        return position(path), metrics
    if found:
        raise RunError(
            f"Every checkpoint in {folder} is damaged ({', '.join(p.name for p in found)}); "
            "they were left untouched. Start anew with another --output (or --overwrite)."
        )
    return (0, 0), None


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
