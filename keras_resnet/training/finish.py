"""The end of a run: averaged (EMA) weights with their BN statistics, the trained model in
float32, its scores on the test split, model.keras, the plots and the final metrics.json."""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import keras
import numpy as np

from keras_resnet import finetune, report, runs
from keras_resnet.config import RunConfig
from keras_resnet.training.inputs import Data, Feed
from keras_resnet.training.loop import BN_RECALIBRATION_BATCHES
from keras_resnet.training.modelling import recalibrate_batch_norm


def finalize_ema(model: keras.Model, config: RunConfig, feed: Feed) -> Iterable | None:
    """Swap the averages into `model` (`fit` does when it ends; a run resumed after its last
    epoch skips `fit`); returns the batches to re-estimate their BN statistics on (None: no
    EMA, or statistics that stay as they are: frozen ones, a linear probe's)."""
    t = config.train
    if not t.ema:
        return None
    model.optimizer.finalize_variable_values(model.trainable_variables)
    if t.bn_mode != "train" or not t.epochs:
        return None
    return itertools.islice(feed.training(max(t.epochs - 1, 0), max(t.epochs, 1)), BN_RECALIBRATION_BATCHES)


@dataclasses.dataclass(frozen=True)
class Trained:
    """What the phases leave: the model, its history, the batches that re-estimate BN
    statistics of averaged weights (`finalize_ema`), and this session's training time."""

    model: keras.Model
    recorder: runs.Recorder
    bn_batches: Iterable | None
    train_seconds: float


def save(folder: Path, config: RunConfig, data: Data, feed: Feed, trained: Trained, log: Callable[[str], None]) -> dict:
    """BN statistics for averaged weights, final evaluation, model.keras (float32 whatever
    the training precision), plots; returns metrics.json's content."""
    model, recorder, bn_batches = trained.model, trained.recorder, trained.bn_batches
    finetune.unfreeze_for_saving(model)
    final = finetune.recast(model, "float32")  # the trained model itself, computing in float32
    if bn_batches is not None:
        count = recalibrate_batch_norm(final, bn_batches)
        log(f"Re-estimated the BN statistics of the averaged (EMA) weights on {count} training batches.")
    splits = data.splits
    probs, mirrored, labels = report.predictions(final.predict_on_batch, feed.eval_batches, config.data.eval_flip_tta)
    scores = report.scores(probs, labels, splits.class_names, mirrored=mirrored)
    tmp = folder / "tmp-model.keras"
    final.save(tmp)
    os.replace(tmp, folder / "model.keras")
    title = f"{final.name} on {splits.source}"
    report.plot_curves(folder / "curves.png", recorder.history, title)
    if "confusion_matrix" in scores:
        report.plot_confusion(
            folder / "confusion_matrix.png",
            np.asarray(scores["confusion_matrix"]),
            splits.class_names,
            f"{title}\ntest accuracy {scores['accuracy']:.4f}",
        )
    metrics = recorder.write(status="complete", eval=scores, train_seconds_this_session=round(trained.train_seconds, 1))
    tta = f", with flip TTA {scores['flip_tta']['accuracy']:.4f}" if "flip_tta" in scores else ""
    log(
        f"Test accuracy {scores['accuracy']:.4f} (top-5 {scores['top5_accuracy']:.4f}){tta} "
        f"on {splits.num_test} images; run folder {folder}"
    )
    return metrics
