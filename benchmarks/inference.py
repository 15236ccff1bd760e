"""Inference throughput: keras_resnet ResNet-50 (224 px, batch 32) against PyTorch eager.

Contenders, on the same number of in-memory images, batch 32:

- "ours-predict-float32" / "ours-predict-bf16": `model.predict(x, batch_size=32)` of
  `keras_resnet.build(50)` built in float32 / under `mixed_bfloat16`;
- "ours-savedmodel": the float32 model exported by `keras_resnet.export(..., "saved_model")`,
  its `serving_default` signature called batch by batch (what TF Serving runs);
- "torch-float32" / "torch-bf16": torchvision's ResNet-50 in eager mode, channels-last,
  `inference_mode`, float32 or bf16 autocast (benchmarks/torch_reference.py, in a child
  process: TensorFlow and torchvision crash in one process here).

Rounds alternate the contenders after a warm-up pass each; the report gives the best and
median pass and the ratios of each of ours to PyTorch at the same precision.

    python benchmarks/inference.py --images 256 --rounds 3
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_resnet  # noqa: E402
from keras_resnet import exporter  # noqa: E402
from train_step import TorchChild  # noqa: E402
import ledger  # benchmarks/ledger.py: this run's record

BATCH = 32


def build(policy: str) -> keras.Model:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        return keras_resnet.build(50, input_shape=(224, 224, 3))
    finally:
        keras.config.set_dtype_policy(previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="images per timed pass")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    images = args.images // BATCH * BATCH
    x = np.random.default_rng(0).uniform(0, 255, (images, 224, 224, 3)).astype("float32")
    float32, bf16 = build("float32"), build("mixed_bfloat16")
    with tempfile.TemporaryDirectory() as tmp:
        saved = exporter.export(float32, "saved_model", Path(tmp) / "serving", name="resnet50",
                                log=lambda _: None)
        signature = tf.saved_model.load(saved["artifact"]).signatures["serving_default"]

        def serve():
            for i in range(0, images, BATCH):
                signature(images=tf.constant(x[i:i + BATCH]))["probabilities"].numpy()

        passes = {"ours-predict-float32": lambda: float32.predict(x, batch_size=BATCH, verbose=0),
                  "ours-predict-bf16": lambda: bf16.predict(x, batch_size=BATCH, verbose=0),
                  "ours-savedmodel": serve}
        child = TorchChild()
        for name in ("torch-float32", "torch-bf16"):
            passes[name] = child.contender(name, "r50-infer", images, BATCH)[0]

        def timed(run):
            start = time.perf_counter()
            seconds = run()
            return seconds if isinstance(seconds, float) else time.perf_counter() - start

        for name in ("ours-predict-float32", "ours-predict-bf16", "ours-savedmodel"):
            timed(passes[name])  # warm-up (the PyTorch child warmed up when it made its step)
        times = {name: [] for name in passes}
        for _ in range(args.rounds):
            for name, run in passes.items():
                times[name].append(timed(run))
    ips = {name: [images / t for t in ts] for name, ts in times.items()}
    same_precision = {"ours-predict-float32": "torch-float32", "ours-predict-bf16": "torch-bf16",
                      "ours-savedmodel": "torch-float32"}
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "model": "resnet50 224x224", "batch": BATCH, "images_per_pass": images,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "torch": child.versions()},
        "images_per_sec_best": {n: round(max(v), 1) for n, v in ips.items()},
        "images_per_sec_median": {n: round(statistics.median(v), 1) for n, v in ips.items()},
        "ratio_best": {f"{o}/{t}": round(max(ips[o]) / max(ips[t]), 3) for o, t in same_precision.items()},
        "ratio_median": {f"{o}/{t}": round(statistics.median(ips[o]) / statistics.median(ips[t]), 3)
                         for o, t in same_precision.items()},
    }
    print(json.dumps(result, indent=2))
    ledger.record("inference", "ResNet-50 inference: predict and the SavedModel against torchvision", figures=result)


if __name__ == "__main__":
    main()
