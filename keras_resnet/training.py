"""Fitting: build and compile the recipe's model, `model.fit` it into a run folder (in
phases when fine-tuning, resuming after a crash), then the final evaluation and model.keras.

The configuration comes from `recipes.resolve`, the run folder's format from `runs`, the
scores from `evaluation`.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np

from keras_resnet import (augment as augment_lib, backends, data as data_lib, distribute, evaluation, finetune,
                          pydata, recipes, report, runs, schedules)
from keras_resnet.builder import build, reinitialize
from keras_resnet.runs import RunError

WORKER_PREFIX = "keras-resnet-worker-"
BN_RECALIBRATION_BATCHES = 100  # training batches that re-estimate BN statistics after EMA
ON_DEVICE_MAX_BYTES = 4 << 30  # data.on_device "auto": the padded training images at most this


# -- the model and its compiled step ---------------------------------------------------------

def build_model(config: dict, *, num_classes: int, image_size: Sequence[int],
                normalization=None) -> keras.Model:
    """The recipe's model: from scratch with `normalization` (the data's mean, std) inside,
    or on `model.weights` with a new head (`finetune.build_pretrained`). New kernels are drawn
    from `train.seed` alike on every backend (`reinitialize`)."""
    kwargs = recipes.build_kwargs(config)
    if kwargs.pop("weights"):
        model = finetune.build_pretrained(config, num_classes=num_classes, image_size=image_size)
        reinitialize([model.get_layer(finetune.HEAD)], config["train"]["seed"])
        return model
    model = build(num_classes=num_classes, input_shape=(*image_size, 3), normalization=normalization,
                  **kwargs)
    reinitialize([model], config["train"]["seed"])
    return model


def compile_model(model: keras.Model, config: dict, steps_per_epoch: int,
                  phase: finetune.Phase | None = None) -> keras.optimizers.schedules.LearningRateSchedule:
    """SGD + the phase's schedule, label-smoothed cross-entropy, top-1/top-5; returns the schedule.

    `phase`: the phase to set up (default: the run's first). Each phase has a schedule of its
    own over its own steps, counted from 0: the head phase a cosine from `train.head_lr`, the
    "all" phase the recipe's schedule (the backbone's steps scaled by `train.backbone_lr_scale`
    when fine-tuning). Layers are frozen as the phase and `train.bn_mode` ask.
    """
    t = config["train"]
    phase = phase or finetune.phases(config, steps_per_epoch)[0]
    finetune.set_trainable(model, phase, t["bn_mode"])
    scaled = (finetune.backbone_variables(model) if config["model"]["weights"] and phase.name == "all"
              and t["backbone_lr_scale"] != 1.0 else [])
    if phase.name == "head":
        schedule = schedules.WarmupCosine(
            schedules.scale_lr(t["head_lr"], t["batch_size"], t["reference_batch"]), phase.steps)
    else:
        schedule = schedules.make_schedule(
            t["schedule"], lr=schedules.scale_lr(t["lr"], t["batch_size"], t["reference_batch"]),
            steps_per_epoch=phase.steps, epochs=phase.end - phase.start,
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
        jit_compile=backends.resolve_jit(t["jit_compile"]),
        steps_per_execution=t["steps_per_execution"])
    return schedule


def build_compiled(config: dict, *, num_classes: int, image_size: Sequence[int], normalization,
                   steps_per_epoch: int) -> tuple[keras.Model, keras.optimizers.schedules.LearningRateSchedule, str]:
    """The model and compiled step `train` uses: (model, schedule, precision policy name).

    The mixed-precision policy applies while the layers are built; the caller's global
    policy is restored afterwards.
    """
    precision = backends.resolve_precision(config["train"]["precision"])
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        model = build_model(config, num_classes=num_classes, image_size=image_size,
                            normalization=normalization)
        schedule = compile_model(model, config, steps_per_epoch)
    finally:
        keras.config.set_dtype_policy(previous)
    return model, schedule, precision


# -- the run ---------------------------------------------------------------------------------

def train(recipe: str | None = None, *, output: str | os.PathLike | None = None,
          overrides: Sequence[str] = (), overwrite: bool = False, strategy: str = "auto",
          tpu: str | None = None, extra_augment_layers: Sequence[Callable] = (),
          callbacks: Sequence[keras.callbacks.Callback] = (), log: Callable[[str], None] = print,
          verbose: int = 2, **flags) -> dict:
    """Train with `model.fit` into the run folder `output` (default `runs.default_folder`);
    returns metrics.json's content.

    Running the same call again resumes after the last completed epoch (or returns at once
    when the run is complete). `strategy` is one of `distribute.STRATEGIES` (`tpu`: its
    address); `batch_size` is global. `callbacks` (Keras callbacks) join the package's in
    every `fit`; one that stops training (EarlyStopping) ends the run as stopped (`RunError`),
    resumable by the same call. Under multi-worker, every worker runs the same call; only the
    chief writes `output`, the others work in a temporary folder they remove.
    `flags` are depth, variant, data, data_dir, epochs, batch_size, max_train_samples,
    max_eval_samples, seed, precision, lr.
    """
    config = recipes.resolve(recipe, overrides, **flags)
    if config["recipe"]["picked"]:
        log(config["recipe"]["picked"])
    if not backends.has_tensorflow():
        _check_without_tensorflow(config, extra_augment_layers)
    strat = distribute.make_strategy(strategy, tpu)
    distribute.check_batch(config["train"]["batch_size"], strat)
    if distribute.is_multi_worker(strat):
        distribute.check_multi_worker_keras()  # before the run folder is touched
    _on_device_blockers(config, extra_augment_layers, not distribute.is_default(strat))
    chief = distribute.is_chief(strat)
    run_folder = Path(output or runs.default_folder(recipe))
    if chief:
        state = runs.prepare(run_folder, config, overwrite, log)
    else:  # read the chief's folder, never write it
        state = "complete" if runs.read_metrics(run_folder).get("status") == "complete" else "resume"
    distribute.agree(strat, int(state == "complete"), "whether the run is complete")
    if state == "complete":
        done = runs.read_metrics(run_folder).get("epochs_completed")
        log(f"Run in {run_folder} is already complete ({done} epochs); nothing to do.")
        return runs.read_metrics(run_folder)
    if not chief:  # its own scratch folder; a killed worker's is removed by the next one
        report.remove_dead_temporaries(tempfile.gettempdir(), WORKER_PREFIX)
    folder = run_folder if chief else Path(tempfile.mkdtemp(prefix=f"{WORKER_PREFIX}{os.getpid()}-"))
    distributed = not distribute.is_default(strat)
    try:
        with strat.scope(), distribute.multi_worker_fit(strat):
            fitted = _fit(config, folder, run_folder, state, strat, chief, distributed,
                          extra_augment_layers, callbacks, log, verbose)
        if not chief:
            return fitted["recorder"].write(status="complete (worker)")
        return _finish(folder, **fitted, log=log)  # outside the strategy: one plain model
    except distribute.LOST_CONTACT as err:
        if not distribute.is_multi_worker(strat):
            raise
        raise RunError(f"Lost contact with another worker ({type(err).__name__}: "
                       f"{str(err).splitlines()[0][:160]}). Start every worker again with the same "
                       "command; training resumes from the chief's last checkpoint.") from err
    finally:
        if not chief:
            shutil.rmtree(folder, ignore_errors=True)


def _fit(config: dict, folder: Path, run_folder: Path, state: str, strat, chief: bool,
         distributed: bool, extra_augment_layers, user_callbacks, log, verbose) -> dict:
    """Build, restore and `model.fit` under `strat`; returns what `_finish` needs."""
    t = config["train"]
    keras.utils.set_random_seed(t["seed"])
    if t["deterministic"]:
        backends.enable_determinism()
    splits, image_size = _load_data(config, log)
    steps_per_epoch = splits.num_train // t["batch_size"]
    if steps_per_epoch == 0:
        raise data_lib.DataError(f"batch_size {t['batch_size']} exceeds the {splits.num_train} training "
                                 "images; lower --batch-size or use more data.")

    if distributed and t["jit_compile"] == "auto" and backends.name() == "tensorflow":
        # XLA under tf.distribute strategies: not verified, off (JAX always compiles)
        config = {**config, "train": {**t, "jit_compile": False}}
    model, _, precision = build_compiled(
        config, num_classes=splits.num_classes, image_size=image_size,
        normalization=(splits.mean, splits.std), steps_per_epoch=steps_per_epoch)
    if t["sync_bn"]:
        distribute.synchronize_batch_norm(model)
    plan = finetune.phases(config, steps_per_epoch)
    total_epochs = plan[-1].end
    phase = plan[0]

    def enter(next_phase: finetune.Phase) -> None:
        """Freeze/unfreeze for `next_phase` and compile its optimizer and schedule, whose
        steps count from 0 (a resume then loads the checkpoint's count)."""
        nonlocal phase
        phase = next_phase
        if next_phase is not plan[0]:  # `build_compiled` set up the first; every worker agrees
            compile_model(model, config, steps_per_epoch, next_phase)
        model.optimizer.build(model.trainable_variables)  # every worker creates the same variables
        model.optimizer.iterations.assign(0)

    initial_epoch, initial_step, saved_metrics, batches_before = 0, 0, None, None
    if state == "resume":
        # A checkpoint holds the optimizer of the phase that wrote it: set that phase up first.
        found = [p for p in runs.checkpoints(run_folder / "checkpoints") if not runs.damaged(p)]
        epoch, step = runs.position(found[0]) if found else (0, 0)  # the one `restore_latest` loads
        batches_before = runs.batches_of(found[0]) if step else None
        enter(finetune.phase_of(plan, epoch if step else max(epoch - 1, 0)))
        (initial_epoch, initial_step), saved_metrics = runs.restore_latest(
            model, run_folder / "checkpoints", log, clean=chief)
        if t["ema"] and not initial_step and initial_epoch == phase.end:
            # Written at the phase's last epoch end, before `fit` swapped the averages in.
            model.optimizer.finalize_variable_values(model.trainable_variables)
    else:
        enter(phase)
    initial_epoch = distribute.agree(strat, initial_epoch, "the epoch to resume from")
    initial_step = distribute.agree(strat, initial_step, "the step to resume from")
    if initial_epoch or initial_step:
        log(f"Resuming from epoch {initial_epoch + 1}" + (f", step {initial_step + 1}" if initial_step else ""))
    on_device = _on_device(config, splits, image_size, extra_augment_layers, distributed)
    batches = "NumPy" if on_device or isinstance(splits.train, pydata.Arrays) else "tf.data"
    if initial_step and batches_before not in (None, batches):
        log(f"Warning: the batches of epoch {initial_epoch + 1} before step {initial_step + 1} were drawn by "
            f"{batches_before}, the rest are drawn by {batches} (TensorFlow installed or not, data.on_device): "
            "in another order, so this epoch sees some images twice and misses others. Resume where the "
            "run started for the same batches.")
    log(f"Training {model.name} ({precision}, XLA {'on' if model.jit_compile else 'off'}, "
        f"{distribute.describe(strat)}) on {splits.num_train} images of {splits.source}"
        f"{' (in accelerator memory)' if on_device else ''}, "
        f"{splits.num_classes} classes, epochs {initial_epoch + 1}-{total_epochs}, "
        f"{steps_per_epoch} steps each.")

    eval_ds, training_batches = _pipelines(config, splits, image_size, extra_augment_layers, on_device)
    recorder = runs.Recorder(folder, initial_epoch,
                           {"class_names": splits.class_names, "data": splits.source,
                            "backend": backends.name(), "precision": precision,
                            "jit_compile": bool(model.jit_compile), "data_on_device": on_device,
                            "num_train": splits.num_train,
                            "num_test": splits.num_test, "strategy": distribute.describe(strat)},
                           history_from=run_folder)
    checkpoint = runs.CrashSafeCheckpoint(folder / "checkpoints", every_steps=t["checkpoint_every_steps"],
                                          every_minutes=t["checkpoint_every_minutes"], batches=batches)
    callbacks = [keras.callbacks.TerminateOnNaN(), recorder, checkpoint, *user_callbacks]
    if backends.has_tensorflow():  # Keras writes TensorBoard logs with tf.summary
        callbacks.append(keras.callbacks.TensorBoard(str(folder / "logs")))

    def fit(batches, first: int, end: int, done: int = 0) -> None:
        """Epochs `first..end-1` of the current phase, the first from its step `done`."""
        checkpoint.start(phase.steps, done, saved_metrics if done else None)
        raw = []
        # `fit` swaps in the EMA weights when it ends: not yet, when the phase goes on.
        keep_raw = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: raw.extend(
            keras.ops.convert_to_numpy(v) for v in model.trainable_variables))
        model.fit(batches, epochs=end, initial_epoch=first, steps_per_epoch=phase.steps - done,
                  callbacks=callbacks + ([keep_raw] if done and t["ema"] else []), verbose=verbose,
                  shuffle=False, validation_data=eval_ds if t["validate_every"] else None,
                  validation_freq=max(t["validate_every"], 1))
        if raw and end < phase.end:
            for variable, value in zip(model.trainable_variables, raw):
                variable.assign(value)

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
        done = initial_step if first == initial_epoch else 0  # steps of epoch `first` done before a resume
        spe = steps_per_epoch
        if next_phase.name == "head":  # one pseudo-epoch of `steps` steps over passes of the data
            log(f"Phase 'head': {next_phase.steps} steps of the new head alone.")
            fit(training_batches(done // spe, math.ceil(next_phase.steps / spe), done % spe), first, first + 1, done)
            continue
        if len(plan) > 1:
            log(f"Phase 'all': epochs {first + 1}-{next_phase.end}.")
        if t["bn_mode"] == "frozen_stats" and first == next_phase.start and not done:
            count = recalibrate_batch_norm(model, itertools.islice(training_batches(0, 1), BN_RECALIBRATION_BATCHES))
            log(f"Re-estimated the BN statistics on {count} batches of the training images "
                "(bn_mode frozen_stats).")
        if done:  # the rest of the epoch a resume came back into, then the phase's whole epochs
            fit(training_batches(first - next_phase.start, first - next_phase.start + 1, done), first, first + 1, done)
            first += 1
            if first == next_phase.end or recorder.epochs_completed < first:
                continue
        fit(training_batches(first - next_phase.start), first, next_phase.end)
    losses = recorder.history.get("loss", [])
    kept = runs.checkpoints(folder / "checkpoints")
    kept = f"the last good checkpoint is kept ({kept[0] if kept else 'none'})"
    bad = next((i for i, v in enumerate(losses) if v is None or not math.isfinite(v)), None)
    stopped = None
    if bad is not None:
        stopped = (f"Training stopped: the loss became NaN/inf in epoch {bad + 1}; {kept}. "
                   "Lower train.lr or check the data.")
    elif recorder.epochs_completed < total_epochs:
        why = ("a callback stopped it (model.stop_training)" if model.stop_training
               else "the input ran out of data (unreadable images dropped?)")
        stopped = f"Training stopped after epoch {recorder.epochs_completed} of {total_epochs}: {why}; {kept}."
    if stopped:
        recorder.write(status="failed", error=stopped)
        raise RunError(stopped)
    bn_batches = None
    if t["ema"]:
        # `fit` swaps the averages in when it ends; a run resumed after its last epoch skips `fit`.
        model.optimizer.finalize_variable_values(model.trainable_variables)
        if t["bn_mode"] == "train" and t["epochs"]:  # frozen statistics, or a probe's, stay as they are
            bn_batches = itertools.islice(training_batches(max(t["epochs"] - 1, 0), max(t["epochs"], 1)),
                                          BN_RECALIBRATION_BATCHES)
    return dict(config=config, model=model, recorder=recorder, splits=splits, image_size=image_size,
                eval_ds=eval_ds, bn_batches=bn_batches, train_seconds=time.time() - started)


def _check_without_tensorflow(config: dict, extra_augment_layers: Sequence[Callable]) -> None:
    """Refuse, before the run folder is touched, what only the tf.data pipeline does."""
    missing = _tf_data_augmentations(config, extra_augment_layers)
    missing += ["data.eval_crop_fraction"] * bool(config["data"]["eval_crop_fraction"])
    name = config["data"]["name"]
    if not name.endswith(".npz") and not data_lib.is_folder(name):
        data_lib.require_tfds(name)
    if missing:
        backends.require_tensorflow(", ".join(missing), "turn it off")


def _tf_data_augmentations(config: dict, extra_augment_layers: Sequence[Callable]) -> list[str]:
    """The training augmentations that only the tf.data pipeline applies."""
    return ([f"augment.{k}" for k in pydata.unsupported_augments(config["augment"])]
            + ["extra_augment_layers"] * bool(extra_augment_layers))


def _on_device_blockers(config: dict, extra_augment_layers: Sequence[Callable], distributed: bool,
                        resize: bool = False) -> list[str]:
    """What keeps the training set from accelerator memory (`data.on_device`); with
    `data.on_device = true`, refused in one line before the run folder is touched."""
    blockers = _tf_data_augmentations(config, extra_augment_layers)
    blockers += ["data.image_size (a resize)"] * resize
    blockers += ["--strategy (several devices)"] * distributed
    blockers += [f"the {backends.name()} backend (tf.data feeds it)"] * (backends.name() == "tensorflow")
    if blockers and config["data"]["on_device"] is True:
        raise recipes.RecipeError(f"data.on_device=true cannot be used with {', '.join(blockers)}: set "
                                  "data.on_device to 'auto' or false, or run on KERAS_BACKEND=jax or torch "
                                  "with pad-crop/flip augmentation only.")
    return blockers


def _on_device(config: dict, splits: data_lib.Splits, image_size: tuple[int, int],
               extra_augment_layers: Sequence[Callable], distributed: bool) -> bool:
    """`data.on_device`: false never; true always (a CPU too); "auto" on a GPU or TPU under
    JAX or PyTorch when only pad-crop/flip augment the data and the padded training images
    take at most `ON_DEVICE_MAX_BYTES`."""
    setting = config["data"]["on_device"]
    if setting is False:
        return False
    blockers = _on_device_blockers(config, extra_augment_layers, distributed, splits.image_size != image_size)
    if setting is True:
        return True
    pad = config["augment"]["pad_crop"]
    nbytes = splits.num_train * (image_size[0] + 2 * pad) * (image_size[1] + 2 * pad) * 3
    return not blockers and backends.accelerator() is not None and nbytes <= ON_DEVICE_MAX_BYTES


def _pipelines(config: dict, splits: data_lib.Splits, image_size: tuple[int, int],
               extra_augment_layers: Sequence[Callable], on_device: bool) -> tuple:
    """The evaluation batches and `training_batches(first_epoch, end_epoch, first_step)`,
    the passes over the training data from epoch `first_epoch`'s batch `first_step` to the
    end of epoch `end_epoch - 1` (the phase's epoch numbers): tf.data pipelines where
    TensorFlow is installed, `pydata` PyDatasets of in-memory arrays where it is not, and
    `pydata.DeviceTrainBatches` when `on_device`."""
    t, d, classes = config["train"], config["data"], splits.num_classes
    if isinstance(splits.test, pydata.Arrays):
        if splits.image_size != image_size:
            backends.require_tensorflow("data.image_size (a resize)", "resize the images beforehand")
        eval_ds = pydata.EvalBatches(splits.test, num_classes=classes, batch_size=t["batch_size"])
    else:
        eval_ds = data_lib.eval_pipeline(
            data_lib.with_one_hot(splits.test, classes), batch_size=t["batch_size"], image_size=image_size,
            fixed_size=splits.image_size == image_size, crop_fraction=d["eval_crop_fraction"] or None)

    if isinstance(splits.train, pydata.Arrays) or on_device:
        train = splits.train if isinstance(splits.train, pydata.Arrays) else data_lib.to_arrays(
            splits.train, splits.num_train)
        uploaded = pydata.upload(train, config["augment"]["pad_crop"]) if on_device else None

        def training_batches(first_epoch: int, end_epoch: int = t["epochs"], first_step: int = 0):
            kind, args = (pydata.DeviceTrainBatches, (uploaded,)) if on_device else (pydata.TrainBatches, ())
            return kind(train, *args, num_classes=classes, batch_size=t["batch_size"], seed=t["seed"],
                        first_epoch=first_epoch, end_epoch=end_epoch, first_step=first_step,
                        augment=config["augment"])
        return eval_ds, training_batches

    augmenter = augment_lib.build_augmenter(
        {k: v for k, v in config["augment"].items() if k != "random_resized_crop"},
        extra_layers=extra_augment_layers)

    def training_batches(first_epoch: int, end_epoch: int = t["epochs"], first_step: int = 0):
        return data_lib.train_pipeline(
            data_lib.with_one_hot(splits.train, classes), num_examples=splits.num_train,
            batch_size=t["batch_size"], epochs=end_epoch, initial_epoch=first_epoch,
            initial_step=first_step, seed=t["seed"], image_size=image_size,
            fixed_size=splits.image_size == image_size, augment=augmenter,
            random_resized_crop=config["augment"]["random_resized_crop"])
    return eval_ds, training_batches


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


def _finish(folder: Path, config: dict, model: keras.Model, recorder: runs.Recorder,
            splits: data_lib.Splits, image_size, eval_ds, bn_batches, *,
            train_seconds: float, log: Callable[[str], None]) -> dict:
    """BN statistics for averaged weights, final evaluation, model.keras (float32 whatever
    the training precision), plots."""
    finetune.unfreeze_for_saving(model)
    final = finetune.recast(model, "float32")  # the trained model itself, computing in float32
    if bn_batches is not None:
        count = recalibrate_batch_norm(final, bn_batches)
        log(f"Re-estimated the BN statistics of the averaged (EMA) weights on {count} training batches.")
    probs, mirrored, labels = evaluation.predictions(final.predict_on_batch, eval_ds,
                                                     config["data"]["eval_flip_tta"])
    scores = evaluation.scores(probs, labels, splits.class_names, mirrored=mirrored)
    tmp = folder / "tmp-model.keras"
    final.save(tmp)
    os.replace(tmp, folder / "model.keras")
    title = f"{final.name} on {splits.source}"
    report.plot_curves(folder / "curves.png", recorder.history, title)
    if "confusion_matrix" in scores:
        report.plot_confusion(folder / "confusion_matrix.png", np.asarray(scores["confusion_matrix"]),
                              splits.class_names, f"{title}\ntest accuracy {scores['accuracy']:.4f}")
    metrics = recorder.write(status="complete", eval=scores,
                             train_seconds_this_session=round(train_seconds, 1))
    tta = f", with flip TTA {scores['flip_tta']['accuracy']:.4f}" if "flip_tta" in scores else ""
    log(f"Test accuracy {scores['accuracy']:.4f} (top-5 {scores['top5_accuracy']:.4f}){tta} "
        f"on {splits.num_test} images; run folder {folder}")
    return metrics


def recalibrate_batch_norm(model: keras.Model, batches) -> int:
    """Re-estimate the moving statistics of every trainable BN layer as the plain mean over
    `batches` ((images, labels) batches; forward passes in training mode, no weight update).

    Averaged (EMA) weights need this: Keras averages trainable variables only, so the moving
    statistics left in the model belong to the last raw weights. Returns the batch count.
    """
    bns = [layer for layer in model._flatten_layers()
           if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    momenta = [bn.momentum for bn in bns]
    frozen_statistics = [getattr(bn, "frozen_statistics", False) for bn in bns]
    for bn in bns:
        bn.moving_mean.assign(keras.ops.zeros(bn.moving_mean.shape, bn.moving_mean.dtype))
        bn.moving_variance.assign(keras.ops.ones(bn.moving_variance.shape, bn.moving_variance.dtype))
    count = 0
    try:
        for bn in bns:
            bn.frozen_statistics = False
        for count, (images, _) in enumerate(batches, 1):
            for bn in bns:  # weight 1/count for this batch: a running plain mean
                bn.momentum = 1.0 - 1.0 / count
            model(images if keras.ops.is_tensor(images) else np.asarray(images), training=True)
    finally:
        for bn, momentum, frozen in zip(bns, momenta, frozen_statistics):
            bn.momentum, bn.frozen_statistics = momentum, frozen
    return count


