"""The Keras backend a run trains on: its accelerator, the precision and XLA setting "auto"
picks for it, and whether TensorFlow (tf.data, tf.distribute, TensorBoard, export) is here.

The only module that asks JAX, PyTorch or TensorFlow about devices.
"""

from __future__ import annotations

import functools
import importlib.util

import keras

from keras_resnet.errors import BackendError, RecipeError

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")  # train.precision, besides "auto"


def name() -> str:
    return keras.config.backend()


@functools.cache
def has_tensorflow() -> bool:
    """TensorFlow is importable (it feeds every backend through tf.data when it is)."""
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


def require_tensorflow(feature: str, instead: str = "") -> None:
    """Refuse `feature` with one line when TensorFlow is not installed."""
    if not has_tensorflow():
        raise BackendError(
            f"{feature} needs TensorFlow, which is not installed here: "
            f"pip install 'keras-resnet-family[tensorflow]'{'; or ' + instead if instead else ''}."
        )


def gpu_capability() -> tuple[int, int] | None:
    """The CUDA compute capability of the backend's first GPU; None without one."""
    backend = name()
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        if not gpus:
            return None
        major, _, minor = str(getattr(gpus[0], "compute_capability", "0.0")).partition(".")
        return int(major), int(minor or 0)
    if backend == "torch":
        import torch

        if not torch.cuda.is_available():
            return None
        capability = torch.cuda.get_device_capability(0)
        return int(capability[0]), int(capability[1])
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))
    return int(capability[0]), int(capability[1])


def accelerator() -> str | None:
    """ "gpu" or "tpu" when the backend's default device is one; None on a CPU."""
    if name() == "jax":
        import jax

        platform = jax.devices()[0].platform
        return platform if platform in ("gpu", "tpu") else None
    return "gpu" if gpu_capability() is not None else None


def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(setting: str) -> str:
    """ "auto": bf16 on Ampere+ GPUs and on CPUs with native bf16, fp16 on older GPUs, else
    float32, on every backend (on this project's bf16 CPU each backend's bf16 step measured
    faster than its float32 one: docs/training.md's backend table)."""
    if setting != "auto":
        if setting not in PRECISIONS:
            raise RecipeError(f"train.precision must be 'auto' or one of {PRECISIONS}, got {setting!r}.")
        return setting
    capability = gpu_capability()
    if capability is not None:
        return "mixed_bfloat16" if capability >= (8, 0) else "mixed_float16"
    return "mixed_bfloat16" if cpu_has_bf16() else "float32"


def resolve_jit(setting) -> bool:
    """ "auto": XLA on JAX always (without it Keras runs JAX op by op), on TensorFlow on
    GPUs only (on CPUs it measured slower for these models), never on PyTorch
    (`torch.compile`: see docs/training.md's backend table)."""
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise RecipeError(f"train.jit_compile must be 'auto', true or false, got {setting!r}.")
    backend = name()
    if backend == "jax":
        return True
    if backend == "torch":
        return False
    return gpu_capability() is not None


def enable_determinism() -> None:
    """Deterministic kernels (`train.deterministic`): TensorFlow's op determinism, PyTorch's
    deterministic algorithms; JAX on the CPU is deterministic as it is."""
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        import torch

        torch.use_deterministic_algorithms(True)
