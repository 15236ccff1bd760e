"""`train`: a recipe, flags and overrides in; a run folder with model.keras, metrics and
plots out. Read top to bottom, it is the whole run; each step lives in a module of its own:
`inputs` (data and batches), `modelling` (the model and its compiled step), `loop` (the
phases, resumed where a crash left them), `finish` (the final model and scores)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras

from keras_resnet import backends, distribute, recipes, runfolder, runs
from keras_resnet.config import RunConfig
from keras_resnet.errors import RunError
from keras_resnet.plan import phases
from keras_resnet.training import finish, inputs, loop
from keras_resnet.training.modelling import build_compiled, build_model, compile_model, recalibrate_batch_norm

__all__ = ["build_compiled", "build_model", "compile_model", "recalibrate_batch_norm", "train"]


def train(
    recipe: str | None = None,
    *,
    output: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    strategy: str = "auto",
    tpu: str | None = None,
    extra_augment_layers: Sequence[Callable] = (),
    callbacks: Sequence[keras.callbacks.Callback] = (),
    log: Callable[[str], None] = print,
    verbose: int = 2,
    **flags,
) -> dict:
    """Train with `model.fit` into the run folder `output` (default `runfolder.default_folder`);
    returns metrics.json's content.

    Running the same call again resumes where the last checkpoint left off (or returns at
    once when the run is complete). `strategy` is one of `distribute.STRATEGIES` (`tpu`: its
    address); `batch_size` is global. `callbacks` (Keras callbacks) join the package's in
    every `fit`; one that stops training (EarlyStopping) ends the run as stopped (`RunError`),
    resumable by the same call. Under multi-worker, every worker runs the same call; only the
    chief writes `output`, the others work in a temporary folder they remove.
    `flags` are `flags.FLAG_FIELDS`: depth, variant, data, data_dir, epochs, batch_size,
    max_train_samples, max_eval_samples, seed, precision, lr, weights.
    """
    config = recipes.resolve(recipe, overrides, **flags)
    if config.recipe.picked:
        log(config.recipe.picked)
    strat = _strategy(strategy, tpu, config)
    inputs.refuse_unsupported(config, extra_augment_layers, not distribute.is_default(strat), distribute.shard(strat))
    run = runs.open_run(Path(output or runfolder.default_folder(recipe)), config, strat, overwrite, log)
    if run.complete:
        log(
            f"Run in {run.source} is already complete ({runfolder.read_metrics(run.source).get('epochs_completed')} "
            "epochs); nothing to do."
        )
        distribute.done(strat)
        return runfolder.read_metrics(run.source)
    try:
        with strat.scope(), distribute.multi_worker_fit(strat):
            data, feed, trained = _fit(config, run, extra_augment_layers, callbacks, log, verbose)
        if not run.chief:
            metrics = trained.recorder.write(status="complete (worker)")
        else:
            metrics = finish.save(run.folder, config, data, feed, trained, log)  # outside the strategy: one model
        distribute.done(strat)
        return metrics
    except Exception as err:
        advice = distribute.lost_contact(err, strat)
        if advice is None:
            raise
        peer = "worker" if distribute.is_multi_worker(strat) else "process"
        raise RunError(
            f"Lost contact with another {peer} ({type(err).__name__}: {str(err).splitlines()[0][:160]}). {advice}"
        ) from err
    finally:
        run.close()


def _strategy(name: str, tpu: str | None, config: RunConfig):
    """The distribution strategy, checked against the global batch before anything is written."""
    strat = distribute.make_strategy(name, tpu)
    distribute.check_batch(config.train.batch_size, strat)
    if distribute.is_multi_worker(strat):
        distribute.check_multi_worker_keras()  # before the run folder is touched
    return strat


def _fit(
    config: RunConfig,
    run: runs.Run,
    extra_augment_layers: Sequence[Callable],
    user_callbacks: Sequence[keras.callbacks.Callback],
    log: Callable[[str], None],
    verbose: int,
) -> tuple[inputs.Data, inputs.Feed, finish.Trained]:
    """Data, model, resume, batches, then every phase's `fit` under the strategy."""
    t, distributed = config.train, not distribute.is_default(run.strategy)
    keras.utils.set_random_seed(t.seed)
    if t.deterministic:
        backends.enable_determinism()
    data = inputs.load(config, log)
    if distributed and t.jit_compile == "auto" and backends.name() == "tensorflow":
        config = config.replace("train", jit_compile=False)  # XLA under tf.distribute: not verified
    model, _, precision = build_compiled(
        config,
        num_classes=data.splits.num_classes,
        image_size=data.image_size,
        normalization=(data.splits.mean, data.splits.std),
        steps_per_epoch=data.steps_per_epoch,
    )
    if t.sync_bn:
        distribute.synchronize_batch_norm(model)
    plan = phases(config, data.steps_per_epoch)
    position, phase = loop.restore(model, config, plan, data.steps_per_epoch, run, log)
    feed = inputs.feed(
        config,
        data,
        extra_augment_layers,
        distributed,
        distribute.shard(run.strategy),
        run.strategy.num_replicas_in_sync,
    )
    loop.warn_if_batches_change(position, feed, log)
    recorder = _recorder(run, position, data, feed, model, precision)
    log(
        f"Training {model.name} ({precision}, XLA {'on' if model.jit_compile else 'off'}, "
        f"{distribute.describe(run.strategy)}) on {data.splits.num_train} images of {data.splits.source}"
        f"{' (in accelerator memory)' if feed.on_device else ''}, {data.splits.num_classes} classes, "
        f"epochs {position.epoch + 1}-{plan[-1].end}, {data.steps_per_epoch} steps each."
    )
    checkpoint = runs.CrashSafeCheckpoint(
        run.folder / "checkpoints",
        every_steps=t.checkpoint_every_steps,
        every_minutes=t.checkpoint_every_minutes,
        batches=feed.drawn_by,
    )
    callbacks = [keras.callbacks.TerminateOnNaN(), recorder, checkpoint, *user_callbacks]
    if backends.has_tensorflow():  # Keras writes TensorBoard logs with tf.summary
        callbacks.append(keras.callbacks.TensorBoard(str(run.folder / "logs")))
    fitter = loop.Fitter(model, config, feed, callbacks, checkpoint, recorder, data.steps_per_epoch, log, verbose)
    started = time.time()
    fitter.fit_phases(plan, phase, position)
    loop.raise_if_stopped(fitter, plan[-1].end, run.folder)
    return data, feed, finish.Trained(model, recorder, finish.finalize_ema(model, config, feed), time.time() - started)


def _recorder(
    run: runs.Run, position: loop.Position, data: inputs.Data, feed: inputs.Feed, model: keras.Model, precision: str
) -> runs.Recorder:
    """The recorder of metrics.json: the history so far and what the run trains with."""
    splits = data.splits
    return runs.Recorder(
        run.folder,
        position.epoch,
        {
            "class_names": splits.class_names,
            "data": splits.source,
            "backend": backends.name(),
            "precision": precision,
            "jit_compile": bool(model.jit_compile),
            "data_on_device": feed.on_device,
            "num_train": splits.num_train,
            "num_test": splits.num_test,
            "strategy": distribute.describe(run.strategy),
        },
        history_from=run.source,
    )
