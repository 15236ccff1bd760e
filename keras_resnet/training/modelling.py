"""The model a run trains and its compiled step: build (from scratch, or a pretrained
backbone with a new head), compile each phase (SGD, its schedule, loss, precision, XLA), and
re-estimate BN statistics."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import keras
import numpy as np

from keras_resnet import backends, finetune, schedules
from keras_resnet.builder import build, reinitialize
from keras_resnet.config import RunConfig
from keras_resnet.plan import Phase, phases


def build_model(
    config: RunConfig | dict, *, num_classes: int, image_size: Sequence[int], normalization=None
) -> keras.Model:
    """The recipe's model: from scratch with `normalization` (the data's mean, std) inside,
    or on `model.weights` with a new head (`finetune.build_pretrained`). New kernels are drawn
    from `train.seed` alike on every backend (`reinitialize`)."""
    config = RunConfig.of(config)
    kwargs = config.model.build_kwargs()
    if kwargs.pop("weights"):
        model = finetune.build_pretrained(config, num_classes=num_classes, image_size=image_size)
        reinitialize([model.get_layer(finetune.HEAD)], config.train.seed)
        return model
    model = build(num_classes=num_classes, input_shape=(*image_size, 3), normalization=normalization, **kwargs)
    reinitialize([model], config.train.seed)
    return model


def _schedule(config: RunConfig, phase: Phase) -> keras.optimizers.schedules.LearningRateSchedule:
    """The head phase's cosine from `train.head_lr`, or the recipe's schedule over phase "all"."""
    t = config.train
    if phase.name == "head":
        return schedules.WarmupCosine(schedules.scale_lr(t.head_lr, t.batch_size, t.reference_batch), phase.steps)
    return schedules.make_schedule(
        t.schedule,
        lr=schedules.scale_lr(t.lr, t.batch_size, t.reference_batch),
        steps_per_epoch=phase.steps,
        epochs=phase.end - phase.start,
        warmup_epochs=t.warmup_epochs,
        boundaries=t.boundaries,
        factor=t.factor,
        pct_start=t.pct_start,
        final_div=t.final_div,
    )


def compile_model(
    model: keras.Model, config: RunConfig | dict, steps_per_epoch: int, phase: Phase | None = None
) -> keras.optimizers.schedules.LearningRateSchedule:
    """SGD + the phase's schedule, label-smoothed cross-entropy, top-1/top-5; returns the schedule.

    `phase`: the phase to set up (default: the run's first). Each phase has a schedule of its
    own over its own steps, counted from 0: the head phase a cosine from `train.head_lr`, the
    "all" phase the recipe's schedule (the backbone's steps scaled by `train.backbone_lr_scale`
    when fine-tuning). Layers are frozen as the phase and `train.bn_mode` ask.
    """
    config = RunConfig.of(config)
    t = config.train
    phase = phase or phases(config, steps_per_epoch)[0]
    finetune.set_trainable(model, phase, t.bn_mode)
    scaled = (
        finetune.backbone_variables(model)
        if config.model.weights and phase.name == "all" and t.backbone_lr_scale != 1.0
        else []
    )
    schedule = _schedule(config, phase)
    optimizer = schedules.ScaledSGD(
        schedule,
        momentum=t.momentum,
        nesterov=t.nesterov,
        use_ema=t.ema,
        ema_momentum=t.ema_momentum,
        scaled_paths=[v.path for v in scaled],
        scale=t.backbone_lr_scale,
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=t.label_smoothing),
        metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.TopKCategoricalAccuracy(5, name="top5_accuracy"),
        ],
        jit_compile=backends.resolve_jit(t.jit_compile),
        steps_per_execution=t.steps_per_execution,
    )
    return schedule


def build_compiled(
    config: RunConfig | dict, *, num_classes: int, image_size: Sequence[int], normalization, steps_per_epoch: int
) -> tuple[keras.Model, keras.optimizers.schedules.LearningRateSchedule, str]:
    """The model and compiled step `train` uses: (model, schedule, precision policy name).

    The mixed-precision policy applies while the layers are built; the caller's global
    policy is restored afterwards.
    """
    config = RunConfig.of(config)
    precision = backends.resolve_precision(config.train.precision)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        model = build_model(config, num_classes=num_classes, image_size=image_size, normalization=normalization)
        schedule = compile_model(model, config, steps_per_epoch)
    finally:
        keras.config.set_dtype_policy(previous)
    return model, schedule, precision


def enter_phase(model: keras.Model, config: RunConfig, steps_per_epoch: int, phase: Phase, compiled: bool) -> None:
    """Freeze/unfreeze for `phase` and compile its optimizer and schedule (unless `compiled`:
    `build_compiled` set up the first phase), whose steps count from 0; a resume then loads
    the checkpoint's count. Every worker creates the same optimizer variables."""
    if not compiled:
        compile_model(model, config, steps_per_epoch, phase)
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(0)


def recalibrate_batch_norm(model: keras.Model, batches: Iterable) -> int:
    """Re-estimate the moving statistics of every trainable BN layer as the plain mean over
    `batches` ((images, labels) batches; forward passes in training mode, no weight update).

    Averaged (EMA) weights need this: Keras averages trainable variables only, so the moving
    statistics left in the model belong to the last raw weights. Returns the batch count.
    """
    bns = [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
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
