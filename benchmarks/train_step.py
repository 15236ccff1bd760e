"""Training-step throughput: keras_resnet's default step against PyTorch and plain Keras.

Every contender trains the same architecture on the same number of in-memory images:

- "ours": what `keras-resnet train` compiles on this machine (the recipe's model, precision
  and XLA as the package picks them, fused BatchNormalization, tf.data input tuned as the
  package's pipelines are);
- "ours-float32": the same step in float32 (to separate the levers);
- "ours-eps1e-5" (ResNet-20): BN epsilon 1e-5, below the 1.001e-5 that TensorFlow's fused
  kernel trains with, so BN takes the unfused path;
- "plain" (ResNet-20): `compile(optimizer="sgd")` + `fit(x, y)` in float32 with Keras's
  stock BatchNormalization step;
- "torch-bf16", "torch-float32", "torch-compile-bf16": the step a PyTorch user writes
  (benchmarks/torch_reference.py: eager, bf16 autocast or float32, channels-last, SGD
  Nesterov with weight decay 5e-4, or `torch.compile`d), run in a child process because
  TensorFlow and torchvision crash in one process here.

`--model resnet20` is CIFAR ResNet-20 at 32 px, batch 128 (`cifar10-fast`);
`--model resnet50` is ResNet-50 v1.5 at 224 px, batch 32 (`imagenet-resnet50`). Rounds
alternate the contenders; each round times whole epochs after a warm-up epoch, and the
report gives best and median epochs (this machine stalls at random, so means mislead) and
the ratios of "ours" to each PyTorch contender.

    python benchmarks/train_step.py --images 10000 --rounds 3 --epochs 2
    python benchmarks/train_step.py --model resnet50 --images 256 --rounds 3 --epochs 1
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_resnet  # noqa: E402
from keras_resnet import data as data_lib, recipes, training  # noqa: E402
import ledger  # benchmarks/ledger.py: this run's record

MODELS = {
    "resnet20": {"recipe": "cifar10-fast", "size": 32, "classes": 10, "batch": 128, "torch": "r20-train"},
    "resnet50": {"recipe": "imagenet-resnet50", "size": 224, "classes": 1000, "batch": 32, "torch": "r50-train"},
}
TORCH_SCRIPT = Path(__file__).with_name("torch_reference.py")
TORCH = {"torch-bf16": ("bf16", False), "torch-float32": ("float32", False),
         "torch-compile-bf16": ("bf16", True)}


class TorchChild:
    """benchmarks/torch_reference.py in a child process: make steps, time epochs."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, str(TORCH_SCRIPT)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)

    @staticmethod
    def versions() -> dict:
        return json.loads(subprocess.run([sys.executable, str(TORCH_SCRIPT), "--info"], capture_output=True,
                                         text=True, check=True).stdout)

    def ask(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the PyTorch child died on {request}")
        return json.loads(line)

    def contender(self, name: str, make: str, images: int, batch: int):
        """A step `make` ("r20-train", "r50-train", "r50-infer") as `name` of `TORCH`:
        (run one timed epoch -> seconds, settings)."""
        precision, compiled = TORCH[name]
        reply = self.ask({"make": make, "name": name, "precision": precision, "compile": compiled,
                          "batch": batch, "images": images})
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return lambda: self.ask({"run": name, "epochs": 1})["seconds"][0], f"{precision}, compile={compiled}"


def ours(x, y, spec: dict, precision: str = "auto", bn_epsilon: float | None = None, callbacks=()):
    config = recipes.load(spec["recipe"])
    config["train"].update(batch_size=spec["batch"], precision=precision)
    if bn_epsilon is not None:
        config["model"]["bn_epsilon"] = bn_epsilon
    model, _, precision = training.build_compiled(
        config, num_classes=spec["classes"], image_size=(spec["size"],) * 2,
        normalization=((125.0,) * 3, (63.0,) * 3), steps_per_epoch=len(x) // spec["batch"])
    data = tf.data.Dataset.from_tensor_slices((x, np.eye(spec["classes"], dtype="float32")[y]))
    data = data_lib.prefetched(data.batch(spec["batch"], drop_remainder=True))
    return timed(lambda: model.fit(data, epochs=1, verbose=0, callbacks=list(callbacks))), precision


def plain(x, y, spec: dict):
    model = keras_resnet.build(20, weight_decay=0.0)  # same architecture, float32
    for layer in model._flatten_layers():  # and Keras's stock BatchNormalization step
        if isinstance(layer, keras_resnet.BatchNormalization):
            layer.fused = False
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return timed(lambda: model.fit(x, y, batch_size=spec["batch"], epochs=1, verbose=0)), "float32"


def timed(epoch):
    def run() -> float:
        start = time.perf_counter()
        epoch()
        return time.perf_counter() - start
    run()  # warm-up epoch: tracing and compilation
    return run


def ratios(ips: dict, stat) -> dict:
    return {f"ours/{name}": round(stat(ips["ours"]) / stat(v), 3) for name, v in ips.items()
            if name.startswith("torch")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet20")
    parser.add_argument("--images", type=int, default=10_000, help="images per epoch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per round and contender")
    parser.add_argument("--batch-size", type=int, help="default: 128 (resnet20), 32 (resnet50)")
    parser.add_argument("--contenders", help="comma-separated subset (default: all for the model)")
    args = parser.parse_args()
    spec = dict(MODELS[args.model], batch=args.batch_size or MODELS[args.model]["batch"])
    keras_names = ["ours", "ours-float32"] + (["ours-eps1e-5", "plain"] if args.model == "resnet20" else [])
    names = args.contenders.split(",") if args.contenders else keras_names + list(TORCH)
    unknown = set(names) - set(keras_names) - set(TORCH)
    if unknown or "ours" not in names:
        parser.error(f"--contenders: 'ours' plus any of {keras_names + list(TORCH)}; got {sorted(unknown)}")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.images, spec["size"], spec["size"], 3)).astype("float32")
    y = rng.integers(0, spec["classes"], args.images)
    makers = {"ours": lambda: ours(x, y, spec), "ours-float32": lambda: ours(x, y, spec, "float32"),
              "ours-eps1e-5": lambda: ours(x, y, spec, bn_epsilon=1e-5), "plain": lambda: plain(x, y, spec)}
    child = TorchChild() if set(names) & set(TORCH) else None
    contenders, settings, failed = {}, {}, {}
    for name in names:
        try:
            contenders[name], settings[name] = (makers[name]() if name in makers else
                                                child.contender(name, spec["torch"], args.images, spec["batch"]))
        except RuntimeError as error:  # torch.compile needs a C++ compiler: report, go on
            failed[name] = str(error)
    times = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, run in contenders.items():
            times[name] += [run() for _ in range(args.epochs)]
    images = args.images // spec["batch"] * spec["batch"]
    ips = {name: [images / t for t in ts] for name, ts in times.items()}
    versions = {"tensorflow": tf.__version__, "keras": keras.__version__}
    if child:
        versions["torch"] = child.versions()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "model": args.model, "batch": spec["batch"], "images_per_epoch": images,
        "versions": versions, "settings": settings, "failed": failed,
        "images_per_sec_best": {n: round(max(v), 1) for n, v in ips.items()},
        "images_per_sec_median": {n: round(statistics.median(v), 1) for n, v in ips.items()},
        "ratio_best": ratios(ips, max), "ratio_median": ratios(ips, statistics.median),
    }
    if "plain" in ips:
        result["ratio_best"]["ours/plain"] = round(max(ips["ours"]) / max(ips["plain"]), 3)
        result["ratio_median"]["ours/plain"] = round(statistics.median(ips["ours"]) / statistics.median(ips["plain"]), 3)
    print(json.dumps(result, indent=2))
    ledger.record("train_step", "training step img/s against plain Keras and PyTorch in the same run", figures=result)


if __name__ == "__main__":
    main()
