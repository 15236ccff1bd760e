"""GPU training and inference speed: keras_resnet ResNet-50 and CIFAR ResNet-56, against
torchvision's ResNet-50 in the same run when PyTorch and torchvision are present.

- ResNet-50, 224x224, batch 256, synthetic data already on the device: training images/s
  with the package's defaults (mixed precision: bf16, or fp16 on pre-Ampere GPUs; XLA:
  always on JAX, `jit_compile` on TensorFlow) and inference images/s.
- CIFAR ResNet-56, batch 128: seconds per 50,000-image epoch (from the measured step rate).
- Peer: torchvision ResNet-50 in channels-last, bf16 autocast, `torch.compile`, the same
  SGD step; ratio ours/peer and MFU (one training image at 224x224 = 3 x 8.2 = 24.6 GFLOP).

Backend: whatever KERAS_BACKEND says (TensorFlow where installed; JAX on a box without it).
Prints one JSON object. On a CPU, `--steps 2 --batch-size 4 --image-size 64` is a smoke test.

    KERAS_BACKEND=jax python benchmarks/gpu.py --steps 30

`--cifar-train DATA` instead trains a CIFAR recipe end to end with `keras_resnet.train`
(default: `cifar10-fast` with ResNet-56) on DATA, a `.npz` or an image folder, so no
TensorFlow is needed; on a GPU under JAX or PyTorch the training set sits in GPU memory and
is augmented there (`data.on_device = "auto"`). The test set is scored after every epoch;
the JSON gives each epoch's accuracy and seconds since the call began (start-up, loading,
compilation included) and the time to each `--target` (default 93 %, about where He et al.'s
ResNet-56 ends, and 94 %, the figure GPU trainers compare), null where the run never got there. Make the `.npz` once where TensorFlow is installed
(docs/training.md, "Without TensorFlow"), then:

    KERAS_BACKEND=jax python benchmarks/gpu.py --cifar-train cifar10.npz --epochs 30
"""

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_resnet  # noqa: E402
import ledger  # benchmarks/ledger.py: this run's record

TRAIN_GFLOP_224 = 24.6  # per image: forward 8.2 GFLOP (4.1 GMACs) x 3
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L4": 121.0, "A10": 125.0, "T4": 65.0}


def device_info() -> tuple[str, str]:
    """(device name, kind: gpu|tpu|cpu) for the active backend."""
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return getattr(device, "device_kind", str(device)), device.platform
    if backend == "torch":
        import torch

        return (torch.cuda.get_device_name(0), "gpu") if torch.cuda.is_available() else (platform.processor(), "cpu")
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU"), "gpu"
    return platform.processor() or platform.machine(), "cpu"


def default_precision(name: str, kind: str) -> str:
    if kind == "cpu":
        return "float32"
    old = any(gpu in name for gpu in ("T4", "V100", "P100"))
    return "mixed_float16" if old else "mixed_bfloat16"


def ours(depth: int, *, batch: int, size: int, classes: int, steps: int, warmup: int, precision: str,
         predict: bool) -> dict:
    keras.mixed_precision.set_global_policy(precision)
    model = keras_resnet.build(depth, input_shape=(size, size, 3), num_classes=classes)
    keras.mixed_precision.set_global_policy("float32")
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(), jit_compile=True)
    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(rng.uniform(0, 255, (batch, size, size, 3)).astype("float32"))
    y = keras.ops.convert_to_tensor((np.arange(batch) % classes).astype("int32"))

    def rate(fn) -> float:
        for _ in range(warmup):
            fn()
        start = time.perf_counter()
        for _ in range(steps):
            fn()  # returns host values: each call waits for the device
        return batch * steps / (time.perf_counter() - start)

    result = {"model": model.name, "batch": batch, "image_size": size, "precision": precision,
              "train_images_per_s": rate(lambda: model.train_on_batch(x, y))}
    if predict:
        result["predict_images_per_s"] = rate(lambda: keras.ops.convert_to_numpy(model.predict_on_batch(x)))
    return result


def peer(*, batch: int, size: int, steps: int, warmup: int, compile_model: bool) -> dict | None:
    """torchvision ResNet-50: channels-last, bf16 autocast, torch.compile (None if absent)."""
    try:
        import torch
        import torchvision
    except Exception:
        return None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = torchvision.models.resnet50().to(device, memory_format=torch.channels_last)
    step_model = torch.compile(model) if compile_model else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x = torch.rand(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
    y = torch.arange(batch, device=device) % 1000

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(step_model(x), y)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return {"model": f"torchvision resnet50 {torch.__version__}", "compiled": compile_model,
            "train_images_per_s": batch * steps / (time.perf_counter() - start)}


class EpochClock(keras.callbacks.Callback):
    """Seconds since `start` and test accuracy at the end of every epoch."""

    def __init__(self, start: float):
        super().__init__()
        self.start, self.epochs = start, []

    def on_epoch_end(self, epoch, logs=None):
        accuracy = (logs or {}).get("val_accuracy")
        self.epochs.append({"epoch": epoch + 1, "seconds": time.perf_counter() - self.start,
                            "accuracy": None if accuracy is None else float(accuracy)})


def cifar_train(args) -> dict:
    """One `keras_resnet.train` run, scored every epoch; the time to each of `args.target`."""
    start = time.perf_counter()
    clock = EpochClock(start)
    metrics = keras_resnet.train(
        args.recipe, output=args.output, overwrite=True, data=args.cifar_train, depth=args.depth, variant=args.variant,
        epochs=args.epochs, overrides=["train.validate_every=1", *args.set], callbacks=[clock],
        log=lambda line: print(line, file=sys.stderr), verbose=0)
    return {"recipe": args.recipe, "depth": args.depth, "variant": args.variant, "set": args.set, "data": args.cifar_train,
            "epochs": metrics["epochs_completed"], "precision": metrics["precision"],
            "jit_compile": metrics["jit_compile"], "data_on_device": metrics["data_on_device"],
            "wall_seconds": time.perf_counter() - start, "accuracy": metrics["eval"]["accuracy"],
            "flip_tta_accuracy": metrics["eval"].get("flip_tta", {}).get("accuracy"),
            "seconds_to": {f"{target:g}": next((e["seconds"] for e in clock.epochs
                                                 if (e["accuracy"] or 0) >= target), None)
                           for target in args.target},
            "per_epoch": clock.epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (compilation happens here)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--cifar-batch-size", type=int, default=128)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--peer", choices=("auto", "off"), default="auto")
    parser.add_argument("--no-torch-compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: by name)")
    cifar = parser.add_argument_group("--cifar-train: a CIFAR recipe end to end")
    cifar.add_argument("--cifar-train", metavar="DATA", help=".npz or image folder to train on")
    cifar.add_argument("--recipe", default="cifar10-fast")
    cifar.add_argument("--depth", type=int, default=56)
    cifar.add_argument("--variant", default="cifar", help="cifar (6n+2 depths) or an ImageNet variant")
    cifar.add_argument("--epochs", type=int, help="(default: the recipe's)")
    cifar.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    cifar.add_argument("--target", type=float, nargs="+", default=[0.93, 0.94], help="test accuracies to time")
    cifar.add_argument("--output", default="runs/gpu-cifar")
    args = parser.parse_args()

    name, kind = device_info()
    if args.cifar_train:
        summary = {"date": time.strftime("%Y-%m-%d"), "device": name, "kind": kind,
                   "backend": keras.config.backend(), "keras": keras.__version__, "cifar_train": cifar_train(args)}
        print(json.dumps(summary, indent=2))
        ledger.record("gpu", f"CIFAR ResNet training to accuracy on {name}", figures=summary)
        return
    precision = default_precision(name, kind) if args.precision == "auto" else args.precision
    common = dict(steps=args.steps, warmup=args.warmup, precision=precision)
    resnet50 = ours(50, batch=args.batch_size, size=args.image_size, classes=1000, predict=True, **common)
    resnet56 = ours(56, batch=args.cifar_batch_size, size=32, classes=10, predict=False, **common)
    resnet56["seconds_per_50k_epoch"] = 50_000 / resnet56["train_images_per_s"]
    summary = {"date": time.strftime("%Y-%m-%d"), "device": name, "kind": kind,
               "backend": keras.config.backend(), "keras": keras.__version__,
               "resnet50": resnet50, "cifar_resnet56": resnet56}
    gflop = TRAIN_GFLOP_224 * (args.image_size / 224) ** 2
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    if peak:
        resnet50["mfu"] = resnet50["train_images_per_s"] * gflop / (peak * 1e3)
    if args.peer == "auto":
        other = peer(batch=args.batch_size, size=args.image_size, steps=args.steps, warmup=args.warmup,
                     compile_model=not args.no_torch_compile)
        summary["peer"] = other or "PyTorch/torchvision not installed"
        if other:
            summary["ours_over_peer"] = resnet50["train_images_per_s"] / other["train_images_per_s"]
            if peak:
                other["mfu"] = other["train_images_per_s"] * gflop / (peak * 1e3)
    print(json.dumps(summary, indent=2))
    ledger.record("gpu", f"ResNet-50 and CIFAR ResNet-56 images/s on {name}", figures=summary)


if __name__ == "__main__":
    main()
