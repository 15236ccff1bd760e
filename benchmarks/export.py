"""Export quality and inference speed: Keras fp32 vs SavedModel vs TFLite fp32 vs TFLite int8.

Quality (`--model`, a trained `.keras`, and `--data`): every format is exported with
`keras_resnet.export` and verified on the whole evaluation split; the rows of the parity
reports are printed as one Markdown table.

Speed: single-image latency (median over `--repeats` calls after warm-up) and batch-32
throughput of each artifact, side by side in one process, for ResNet-20 (the trained model,
or an untrained one) and ResNet-50 (untrained, 224x224: speed does not depend on weights).
TFLite runs on the LiteRT interpreter with `--threads` threads.

    python benchmarks/export.py --model runs/cifar10-fast/model.keras \\
        --data ../shared/datasets/cifar10-jpeg --verify-samples 10000
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
from keras_resnet import evaluation, exporter, parity  # noqa: E402
import ledger  # benchmarks/ledger.py: this run's record


def quality(model_path: str, data: str, samples: int, calibration_steps: int, workdir: Path) -> list[dict]:
    common = dict(verify_data=data, verify_samples=samples, log=lambda _: None)
    rows = exporter.export(model_path, "saved_model", workdir / "serving", name="m", **common)["rows"]
    for quantize in ("none", "float16", "dynamic", "int8"):
        rows += exporter.export(model_path, "tflite", workdir / f"{quantize}.tflite", quantize=quantize,
                                calibration_data=data, calibration_steps=calibration_steps,
                                **common)["rows"]
    return rows


def timed(fn, batch, repeats: int) -> float:
    """Median seconds of fn(batch) after two warm-up calls."""
    fn(batch), fn(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(model: keras.Model, calibration: np.ndarray, threads: int, repeats: int, workdir: Path) -> list[dict]:
    size = model.input_shape[1:3]
    saved = exporter.export(model, "saved_model", workdir / "speed", name=model.name, log=lambda _: None)
    signature = tf.saved_model.load(saved["artifact"]).signatures["serving_default"]
    runners = {
        "Keras fp32 (model(x))": lambda x: model(x, training=False).numpy(),
        "Keras fp32 (predict_on_batch)": lambda x: model.predict_on_batch(x),
        "SavedModel serving_default": lambda x: signature(images=tf.constant(x))["probabilities"].numpy(),
    }
    for label, quantize in (("TFLite fp32", "none"), ("TFLite int8", "int8")):
        path = workdir / f"{model.name}-{quantize}.tflite"
        path.write_bytes(exporter.tflite_model(model, quantize, calibration))
        runners[label] = parity.tflite_runner(path, threads)
    rng = np.random.default_rng(0)
    one = rng.uniform(0, 255, (1, *size, 3)).astype("float32")
    batch = rng.uniform(0, 255, (32, *size, 3)).astype("float32")
    rows = []
    for label, run in runners.items():
        latency = timed(run, one, repeats)
        throughput = 32 / timed(run, batch, max(3, repeats // 10))
        rows.append({"model": model.name, "runtime": label, "latency_ms": latency * 1e3,
                     "batch32_images_per_s": throughput})
    base = {r["runtime"]: r["latency_ms"] for r in rows}
    for r in rows:
        r["speedup_vs_keras"] = base["Keras fp32 (model(x))"] / r["latency_ms"]
        r["speedup_vs_tflite_fp32"] = base["TFLite fp32"] / r["latency_ms"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="trained ResNet-20 .keras (default: an untrained one)")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/cifar10-jpeg"))
    parser.add_argument("--verify-samples", type=int, default=10000)
    parser.add_argument("--calibration-steps", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--skip-resnet50", action="store_true")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__}, "
          f"Keras {keras.__version__}, {time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.model:
            rows = quality(args.model, args.data, args.verify_samples, args.calibration_steps, workdir)
            print("\n| artifact | images | max abs Δp | top-1 agreement | accuracy | Keras accuracy |")
            print("|---|---:|---:|---:|---:|---:|")
            for r in rows:
                acc = (f"{r['accuracy']:.4f} | {r['keras_accuracy']:.4f}" if "accuracy" in r else "- | -")
                print(f"| {r['artifact']} | {r['images']} | {r['max_abs_diff']:.2e} | "
                      f"{r['top1_agreement']:.4f} | {acc} |")
        small = (exporter.load_model(args.model) if args.model
                 else keras_resnet.build(20, variant="cifar", num_classes=10, input_shape=(32, 32, 3)))
        models = [small]
        if not args.skip_resnet50:
            models.append(keras_resnet.build(50, input_shape=(224, 224, 3)))
        rows = []
        for model in models:
            size = tuple(model.input_shape[1:3])
            calibration = parity.load_sample(args.data, prep=evaluation.Preprocessing(size, evaluation.eval_crop(size)),
                                             count=100, split="train").images
            rows += speed(model, calibration, args.threads, args.repeats, workdir)
        print(f"\n| model | runtime ({args.threads} threads for TFLite) | 1-image latency ms | "
              "batch-32 images/s | × Keras | × TFLite fp32 |")
        print("|---|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['model']} | {r['runtime']} | {r['latency_ms']:.3f} | {r['batch32_images_per_s']:.0f} | "
                  f"{r['speedup_vs_keras']:.1f} | {r['speedup_vs_tflite_fp32']:.2f} |")
        print(json.dumps(rows))
        ledger.record("export", "TFLite and SavedModel latency and throughput against Keras", rows=rows)


if __name__ == "__main__":
    main()
