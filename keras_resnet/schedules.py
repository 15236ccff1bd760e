"""Step-based learning-rate schedules (serializable `LearningRateSchedule` subclasses)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
from keras import ops

from keras_resnet.layers import register


def scale_lr(lr: float, batch_size: int, reference_batch: int | None) -> float:
    """Linear scaling (Goyal et al. 2017): lr x batch_size / reference_batch."""
    return lr * batch_size / reference_batch if reference_batch else lr


def _warmup(step, warmup_steps: int, target):
    """Linear warmup from target/warmup_steps to target over `warmup_steps` steps."""
    return target * (step + 1.0) / float(warmup_steps)


@register
class WarmupPiecewise(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup, then piecewise constant: `values[i]` until `boundaries[i]` (steps)."""

    def __init__(self, boundaries: list[int], values: list[float], warmup_steps: int = 0):
        if len(values) != len(boundaries) + 1:
            raise ValueError("WarmupPiecewise needs len(values) == len(boundaries) + 1.")
        self.boundaries, self.values = list(boundaries), [float(v) for v in values]
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        lr = ops.convert_to_tensor(self.values[-1], "float32")
        for boundary, value in reversed(list(zip(self.boundaries, self.values))):
            lr = ops.where(step < boundary, value, lr)
        if self.warmup_steps:
            lr = ops.where(step < self.warmup_steps, _warmup(step, self.warmup_steps, lr), lr)
        return lr

    def get_config(self) -> dict:
        return {"boundaries": self.boundaries, "values": self.values, "warmup_steps": self.warmup_steps}


@register
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to `lr`, then cosine decay to `lr * alpha` at `total_steps`."""

    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0, alpha: float = 0.0):
        if total_steps <= warmup_steps:
            raise ValueError(f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps}).")
        self.lr, self.total_steps = float(lr), int(total_steps)
        self.warmup_steps, self.alpha = int(warmup_steps), float(alpha)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        progress = ops.clip((step - self.warmup_steps) / (self.total_steps - self.warmup_steps), 0.0, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        lr = self.lr * (self.alpha + (1.0 - self.alpha) * cosine)
        if self.warmup_steps:
            lr = ops.where(step < self.warmup_steps, _warmup(step, self.warmup_steps, self.lr), lr)
        return lr

    def get_config(self) -> dict:
        return {"lr": self.lr, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps, "alpha": self.alpha}


@register
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """One-cycle (Smith 2018), linear: lr/div_factor -> lr at `pct_start`, then -> lr/final_div."""

    def __init__(
        self, lr: float, total_steps: int, pct_start: float = 0.25, div_factor: float = 10.0, final_div: float = 100.0
    ):
        if not 0.0 < pct_start < 1.0:
            raise ValueError(f"pct_start must be in (0, 1), got {pct_start}.")
        self.lr, self.total_steps, self.pct_start = float(lr), int(total_steps), float(pct_start)
        self.div_factor, self.final_div = float(div_factor), float(final_div)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = self.pct_start * self.total_steps
        start, end = self.lr / self.div_factor, self.lr / self.final_div
        up = start + (self.lr - start) * step / peak
        down = self.lr + (end - self.lr) * ops.clip((step - peak) / (self.total_steps - peak), 0.0, 1.0)
        return ops.where(step < peak, up, down)

    def get_config(self) -> dict:
        return {
            "lr": self.lr,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "div_factor": self.div_factor,
            "final_div": self.final_div,
        }


SCHEDULES = ("piecewise", "cosine", "onecycle")


def make_schedule(
    kind: str,
    *,
    lr: float,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: float = 0.0,
    boundaries: list[float] | None = None,
    factor: float = 0.1,
    **kwargs,
) -> keras.optimizers.schedules.LearningRateSchedule:
    """A schedule from recipe fields; epoch-valued fields become steps.

    `boundaries` (piecewise) are epochs, or fractions of the run when all are < 1; the lr
    is multiplied by `factor` at each.
    """
    total = steps_per_epoch * epochs
    warmup = round(warmup_epochs * steps_per_epoch)
    if kind == "piecewise":
        marks = boundaries or []
        if marks and max(marks) < 1:
            marks = [m * epochs for m in marks]
        steps = [round(m * steps_per_epoch) for m in marks]
        return WarmupPiecewise(steps, [lr * factor**i for i in range(len(steps) + 1)], warmup)
    if kind == "cosine":
        return WarmupCosine(lr, total, warmup, kwargs.get("alpha", 0.0))
    if kind == "onecycle":
        return OneCycle(lr, total, **{k: kwargs[k] for k in ("pct_start", "div_factor", "final_div") if k in kwargs})
    raise ValueError(f"Unknown schedule {kind!r}; use one of {SCHEDULES}.")


@register
class ScaledSGD(keras.optimizers.SGD):
    """SGD whose steps for some variables are scaled by `scale` (fine-tuning's lower backbone
    learning rate). The gradients are scaled, which for SGD with (Nesterov) momentum is
    exactly the same as scaling those variables' learning rate; weight decay applied as an
    L2 loss is scaled with them, as a per-parameter learning rate would."""

    def __init__(self, *args, scaled_paths: Sequence[str] = (), scale: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.scaled_paths, self.scale = tuple(scaled_paths), scale

    def apply(self, grads, trainable_variables=None):
        variables = self._trainable_variables if trainable_variables is None else trainable_variables
        scaled = set(self.scaled_paths)
        grads = [g * self.scale if g is not None and v.path in scaled else g for g, v in zip(grads, variables)]
        return super().apply(grads, trainable_variables)

    def get_config(self) -> dict:
        return {**super().get_config(), "scaled_paths": list(self.scaled_paths), "scale": self.scale}
