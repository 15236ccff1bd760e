"""Fitting a run's phases: where a resume comes back in (phase, epoch, step), and `model.fit`
over each phase's epochs with the crash-safe checkpoint, the recorder and the user's
callbacks; what stopped a run that did not finish."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import keras

from keras_resnet import distribute, runfolder, runs
from keras_resnet.config import RunConfig
from keras_resnet.errors import RunError
from keras_resnet.plan import Phase, resume_phase
from keras_resnet.training.inputs import Feed
from keras_resnet.training.modelling import enter_phase, recalibrate_batch_norm

BN_RECALIBRATION_BATCHES = 100  # training batches that re-estimate BN statistics after EMA


@dataclasses.dataclass(frozen=True)
class Position:
    """Where training starts: `epoch` epochs done and `step` steps of the next; the saved
    metric totals of that epoch, and what drew its batches before (None: a fresh start)."""

    epoch: int = 0
    step: int = 0
    metrics: list | None = None
    drawn_by: str | None = None


def restore(
    model: keras.Model,
    config: RunConfig,
    plan: Sequence[Phase],
    steps_per_epoch: int,
    run: runs.Run,
    log: Callable[[str], None],
) -> tuple[Position, Phase]:
    """Set up the phase a resume comes back into and load the newest checkpoint into it (a
    checkpoint holds the optimizer of the phase that wrote it); a new run's first phase."""
    epoch, step, metrics, found = 0, 0, None, []
    phase = plan[0]
    if run.state == "resume":
        found = [p for p in runfolder.checkpoints(run.source / "checkpoints") if not runfolder.damaged(p)]
        epoch, step = runfolder.position(found[0]) if found else (0, 0)  # the one `restore_latest` loads
        phase = resume_phase(plan, epoch, step)
    enter_phase(model, config, steps_per_epoch, phase, compiled=phase is plan[0])
    if run.state == "resume":
        (epoch, step), metrics = runs.restore_latest(model, run.source / "checkpoints", log, clean=run.chief)
        if config.train.ema and not step and epoch == phase.end:
            # Written at the phase's last epoch end, before `fit` swapped the averages in.
            model.optimizer.finalize_variable_values(model.trainable_variables)
    epoch = distribute.agree(run.strategy, epoch, "the epoch to resume from")
    step = distribute.agree(run.strategy, step, "the step to resume from")
    if epoch or step:
        log(f"Resuming from epoch {epoch + 1}" + (f", step {step + 1}" if step else ""))
    return Position(epoch, step, metrics, runfolder.batches_of(found[0]) if found and step else None), phase


def warn_if_batches_change(position: Position, feed: Feed, log: Callable[[str], None]) -> None:
    """Say so when the rest of a resumed epoch is drawn by another path than its start."""
    if position.step and position.drawn_by not in (None, feed.drawn_by):
        log(
            f"Warning: the batches of epoch {position.epoch + 1} before step {position.step + 1} were drawn by "
            f"{position.drawn_by}, the rest are drawn by {feed.drawn_by} (TensorFlow installed or not, "
            "data.on_device): in another order, so this epoch sees some images twice and misses others. "
            "Resume where the run started for the same batches."
        )


@dataclasses.dataclass
class Fitter:
    """`model.fit` over the phases of one run, from `position`."""

    model: keras.Model
    config: RunConfig
    feed: Feed
    callbacks: list
    checkpoint: runs.CrashSafeCheckpoint
    recorder: runs.Recorder
    steps_per_epoch: int
    log: Callable[[str], None]
    verbose: int

    def fit_phases(self, plan: Sequence[Phase], phase: Phase, position: Position) -> None:
        """Every phase not done before `position` (`phase`: the one set up); stops early where
        a phase stopped (NaN loss, data ran out, a callback): `stopped` says why."""
        for next_phase in plan:  # a run resumed after its last epoch only evaluates
            if self.recorder.epochs_completed < next_phase.start or not self._losses_finite():
                break  # an earlier phase stopped: reported by `stopped`
            if next_phase.end <= position.epoch:
                continue  # done before this resume
            if next_phase is not phase:
                enter_phase(self.model, self.config, self.steps_per_epoch, next_phase, compiled=False)
                phase = next_phase
            first = max(position.epoch, phase.start)
            done = position.step if first == position.epoch else 0  # steps of epoch `first` done before
            self._fit_phase(phase, first, done, position.metrics, announce=len(plan) > 1)

    def _fit_phase(self, phase: Phase, first: int, done: int, saved_metrics: list | None, announce: bool) -> None:
        """Phase `phase` from epoch `first`, step `done` (`saved_metrics`: the totals of the
        steps before)."""
        spe, t = self.steps_per_epoch, self.config.train
        if phase.name == "head":  # one pseudo-epoch of `steps` steps over passes of the data
            self.log(f"Phase 'head': {phase.steps} steps of the new head alone.")
            batches = self.feed.training(done // spe, math.ceil(phase.steps / spe), done % spe)
            self._fit(phase, batches, first, first + 1, done, saved_metrics)
            return
        if announce:
            self.log(f"Phase 'all': epochs {first + 1}-{phase.end}.")
        if t.bn_mode == "frozen_stats" and first == phase.start and not done:
            count = recalibrate_batch_norm(
                self.model, itertools.islice(self.feed.training(0, 1), BN_RECALIBRATION_BATCHES)
            )
            self.log(
                f"Re-estimated the BN statistics on {count} batches of the training images (bn_mode frozen_stats)."
            )
        if done:  # the rest of the epoch a resume came back into, then the phase's whole epochs
            epoch = first - phase.start
            self._fit(phase, self.feed.training(epoch, epoch + 1, done), first, first + 1, done, saved_metrics)
            first += 1
            if first == phase.end or self.recorder.epochs_completed < first:
                return
        self._fit(phase, self.feed.training(first - phase.start), first, phase.end)

    def _fit(
        self, phase: Phase, batches, first: int, end: int, done: int = 0, saved_metrics: list | None = None
    ) -> None:
        """Epochs `first..end-1` of `phase`, the first from its step `done`."""
        self.checkpoint.start(phase.steps, done, saved_metrics if done else None)
        raw: list = []
        # `fit` swaps in the EMA weights when it ends: not yet, when the phase goes on.
        keep_raw = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda *_: raw.extend(keras.ops.convert_to_numpy(v) for v in self.model.trainable_variables)
        )
        t = self.config.train
        self.model.fit(
            batches,
            epochs=end,
            initial_epoch=first,
            steps_per_epoch=phase.steps - done,
            callbacks=self.callbacks + ([keep_raw] if done and t.ema else []),
            verbose=self.verbose,
            shuffle=False,
            validation_data=self._validation() if t.validate_every else None,
            validation_freq=max(t.validate_every, 1),
        )
        if raw and end < phase.end:
            for variable, value in zip(self.model.trainable_variables, raw):
                variable.assign(value)

    def _validation(self):
        """What `fit` validates on: this process's share of the test set in a JAX cluster."""
        return self.feed.validation if self.feed.validation is not None else self.feed.eval_batches

    def _losses_finite(self) -> bool:
        return all(v is not None and math.isfinite(v) for v in self.recorder.history.get("loss", []))

    def stopped(self, total_epochs: int, folder: Path) -> str | None:
        """Why the run ended before `total_epochs` (NaN loss, no more data, a callback), or None."""
        losses = self.recorder.history.get("loss", [])
        kept = runfolder.checkpoints(folder / "checkpoints")
        kept_text = f"the last good checkpoint is kept ({kept[0] if kept else 'none'})"
        bad = next((i for i, v in enumerate(losses) if v is None or not math.isfinite(v)), None)
        if bad is not None:
            return (
                f"Training stopped: the loss became NaN/inf in epoch {bad + 1}; {kept_text}. "
                "Lower train.lr or check the data."
            )
        if self.recorder.epochs_completed < total_epochs:
            why = (
                "a callback stopped it (model.stop_training)"
                if self.model.stop_training
                else "the input ran out of data (unreadable images dropped?)"
            )
            return (
                f"Training stopped after epoch {self.recorder.epochs_completed} of {total_epochs}: {why}; {kept_text}."
            )
        return None


def raise_if_stopped(fitter: Fitter, total_epochs: int, folder: Path) -> None:
    """Record a run that ended early as failed and raise `RunError` with the reason."""
    reason = fitter.stopped(total_epochs, folder)
    if reason:
        fitter.recorder.write(status="failed", error=reason)
        raise RunError(reason)
