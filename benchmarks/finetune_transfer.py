"""Transfer learning, measured: pretrain on five CIFAR-10 classes, fine-tune on the other five
with the `finetune` recipe, and train from scratch on those five for the same wall time.

    python benchmarks/finetune_transfer.py --data-dir ../shared/datasets/tensorflow_datasets \\
        --output runs/transfer

Runs three `keras-resnet train` commands (printed before each runs) on the original
CIFAR-10 through TFDS and prints one JSON line: each run's command, wall time (whole
process) and test accuracy. The scratch run gets as many `cifar10-fast` epochs as fit in the
fine-tuning run's wall time, at the per-epoch time the pretraining run measured on the same
number of images. The same run folders resume if the script is run again.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

FIRST = ["airplane", "automobile", "bird", "cat", "deer"]
SECOND = ["dog", "frog", "horse", "ship", "truck"]


def run(args: list[str]) -> tuple[float, dict]:
    command = [sys.executable, "-m", "keras_resnet.cli", "train", *args]
    print("$ keras-resnet train " + " ".join(args), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    output = Path(args[args.index("--output") + 1])
    return seconds, json.loads((output / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="TFDS data_dir holding cifar10 (default: TFDS's own)")
    parser.add_argument("--output", default="runs/transfer")
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--finetune-epochs", type=int, default=8)
    args = parser.parse_args()
    base = Path(args.output)
    data = ["--data", "cifar10", "--depth", str(args.depth)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    classes = lambda names: ["--set", f"data.classes={json.dumps(names)}"]  # noqa: E731

    pre_seconds, pre = run(["--recipe", "cifar10-fast", *data, *classes(FIRST), "--epochs",
                            str(args.pretrain_epochs), "--output", str(base / "pretrain")])
    ft_seconds, ft = run(["--recipe", "finetune", "--weights", str(base / "pretrain" / "model.keras"),
                          *data, *classes(SECOND), "--set", "augment.pad_crop=4", "--epochs",
                          str(args.finetune_epochs), "--output", str(base / "finetune")])
    per_epoch = pre["train_seconds_this_session"] / args.pretrain_epochs
    scratch_epochs = max(1, math.floor(ft_seconds / per_epoch))
    sc_seconds, sc = run(["--recipe", "cifar10-fast", *data, *classes(SECOND), "--epochs",
                          str(scratch_epochs), "--output", str(base / "scratch")])
    rows = {name: {"wall_seconds": round(seconds, 1), "epochs": metrics["epochs_completed"],
                   "test_accuracy": metrics["eval"]["accuracy"],
                   "flip_tta_accuracy": metrics["eval"].get("flip_tta", {}).get("accuracy")}
            for name, seconds, metrics in (("pretrain (first five classes)", pre_seconds, pre),
                                           ("finetune (other five)", ft_seconds, ft),
                                           ("scratch (other five)", sc_seconds, sc))}
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
