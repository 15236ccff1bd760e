"""`benchmark`: images/s of the package's own compiled training or inference step."""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from keras_resnet import data, recipes, specs
from keras_resnet.config import RunConfig
from keras_resnet.training import build_compiled


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


def benchmark(
    depth: int = 20,
    *,
    mode: str = "train",
    batch_size: int = 128,
    steps: int = 50,
    warmup: int = 5,
    rounds: int = 5,
    precision: str = "auto",
    jit_compile="auto",
    num_classes: int | None = None,
) -> dict:
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
    for name, value, low in (
        ("batch_size", batch_size, 1),
        ("steps", steps, 1),
        ("warmup", warmup, 1),
        ("rounds", rounds, 1),
    ):
        if value < low:
            raise ValueError(f"{name} must be at least {low}, got {value}.")
    settings = {
        "model": {"depth": depth},
        "train": {"batch_size": batch_size, "precision": precision, "jit_compile": jit_compile},
    }
    config = RunConfig.from_dict(recipes.merge(recipes.load("cifar10-fast"), settings, "benchmark"))
    cifar = specs.resnet_spec(depth).stem == "cifar"
    size, classes = ((32, 32), 10) if cifar else ((224, 224), 1000)
    classes = num_classes or classes
    model, _, policy = build_compiled(
        config,
        num_classes=classes,
        image_size=size,
        normalization=((125.0,) * 3, (60.0,) * 3),
        steps_per_epoch=steps * rounds + warmup,
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch_size, *size, 3)).astype("float32")
    y = np.eye(classes, dtype="float32")[rng.integers(0, classes, batch_size)]
    ds = data.prefetched(tf.data.Dataset.from_tensors((x, y)).repeat())
    timer = _StepTimer()
    if mode == "train":
        model.fit(ds, steps_per_epoch=warmup, epochs=1, verbose=0)
        model.fit(ds, steps_per_epoch=steps * rounds, epochs=1, verbose=0, callbacks=[timer])
    else:
        images = ds.map(lambda a, b: a)
        model.predict(images, steps=warmup, verbose=0)
        model.predict(images, steps=steps * rounds, verbose=0, callbacks=[timer])
    windows = [sum(timer.times[i * steps : (i + 1) * steps]) for i in range(rounds)]
    cpu = [sum(timer.cpu_times[i * steps : (i + 1) * steps]) for i in range(rounds)]
    rates = sorted(batch_size * steps / w for w in windows)
    median = float(np.median(rates))
    return {
        "model": model.name,
        "mode": mode,
        "batch_size": batch_size,
        "steps": steps,
        "rounds": rounds,
        "precision": policy,
        "jit_compile": bool(model.jit_compile),
        "backend": keras.backend.backend(),
        "images_per_sec": round(median, 1),
        "best_images_per_sec": round(rates[-1], 1),
        "worst_images_per_sec": round(rates[0], 1),
        "spread": round((rates[-1] - rates[0]) / median, 3),
        "window_seconds": [round(w, 3) for w in windows],
        "window_cpu_cores": [round(c / w, 2) for c, w in zip(cpu, windows)],
        "median_step_ms": round(1000 * float(np.median(timer.times)), 2),
        "slowest_step_ms": round(1000 * max(timer.times), 2),
    }
