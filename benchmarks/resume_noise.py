"""How far a resumed run lands from a run never stopped when `train.deterministic` is off,
against how far two uninterrupted runs land from each other (run-to-run noise).

    python benchmarks/resume_noise.py --data-dir ../shared/datasets/tensorflow_datasets \\
        --output /tmp/resume-noise

Three `keras-resnet train` processes of the same command (cifar10-fast, ResNet-20, a seeded
subset of CIFAR-10, a checkpoint every --every steps): A and B run through; C is killed with
SIGKILL as soon as the first in-epoch checkpoint of its second epoch is on disk and is
resumed by the same command. Prints, for A-B, A-C and B-C, the largest absolute weight
difference and the relative L2 distance of all weights, and each run's test accuracy; JSON
on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import ledger  # benchmarks/ledger.py: this run's record


def command(args, output: Path) -> list[str]:
    data = ["--data", "cifar10"] + (["--data-dir", args.data_dir] if args.data_dir else [])
    return [sys.executable, "-m", "keras_resnet.cli", "train", "--recipe", "cifar10-fast", *data,
            "--depth", "20", "--epochs", str(args.epochs), "--max-train-samples", str(args.images),
            "--set", f"train.checkpoint_every_steps={args.every}", "--set", "train.validate_every=0",
            "--output", str(output)]


def killed_then_resumed(args, output: Path) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(command(args, output), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = output / "checkpoints" / f"epoch-0001-step-{args.every:06d}.weights.h5"
    while not target.exists() and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if process.returncode != -signal.SIGKILL:
        sys.exit(f"the run ended (rc {process.returncode}) before {target.name} was written")
    subprocess.run(command(args, output), env=env, check=True, stdout=subprocess.DEVNULL)


def weights(output: Path) -> list[np.ndarray]:
    import keras

    import keras_resnet  # noqa: F401  (registers the layers)

    return [keras.ops.convert_to_numpy(v) for v in keras.models.load_model(output / "model.keras").weights]


def distance(a: list[np.ndarray], b: list[np.ndarray]) -> dict:
    diff = np.concatenate([(x - y).ravel() for x, y in zip(a, b)])
    norm = np.concatenate([x.ravel() for x in a])
    return {"max_abs": float(np.abs(diff).max()), "relative_l2": float(np.linalg.norm(diff) / np.linalg.norm(norm))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="TFDS data_dir holding cifar10 (default: TFDS's own)")
    parser.add_argument("--output", default="runs/resume-noise")
    parser.add_argument("--images", type=int, default=2560)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--every", type=int, default=10, help="steps between checkpoints")
    args = parser.parse_args()
    base = Path(args.output)
    for name in ("a", "b"):
        subprocess.run(command(args, base / name), check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    killed_then_resumed(args, base / "c")
    runs = {name: weights(base / name) for name in "abc"}
    accuracy = {name: json.loads((base / name / "metrics.json").read_text())["eval"]["accuracy"] for name in "abc"}
    result = {"images": args.images, "epochs": args.epochs, "accuracy": accuracy,
              "a_b": distance(runs["a"], runs["b"]), "a_c": distance(runs["a"], runs["c"]),
              "b_c": distance(runs["b"], runs["c"])}
    print("| pair | max abs weight difference | relative L2 distance |\n|---|---:|---:|")
    for pair, label in (("a_b", "A-B (both uninterrupted: noise)"), ("a_c", "A-C (C resumed)"),
                        ("b_c", "B-C (C resumed)")):
        print(f"| {label} | {result[pair]['max_abs']:.3g} | {result[pair]['relative_l2']:.3g} |")
    print(f"test accuracy: A {accuracy['a']:.4f}, B {accuracy['b']:.4f}, C {accuracy['c']:.4f}")
    print(json.dumps(result))
    ledger.record("resume_noise", "weights of uninterrupted and killed-and-resumed train runs", figures=result)


if __name__ == "__main__":
    main()
