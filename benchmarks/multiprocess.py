"""Not a speed benchmark: what `--strategy multi-process` changes in the weights a run ends
with. The same `keras-resnet train` run (JAX on the CPU, float32) three ways: two processes
joined over localhost (one CPU device each), one process on two CPU devices, and one process
on one device; all draw the same batches (NumPy, `--strategy multi-process`). Reports the
largest absolute weight difference between the final models, each run's loss history and
wall time, and writes its ledger record.

    python benchmarks/multiprocess.py --images ../shared/datasets/cifar10-jpeg --train 256 --test 64 --epochs 3
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import ledger  # benchmarks/ledger.py: this run's record

ROOT = Path(__file__).resolve().parents[1]


def npz_from_folder(folder: Path, train: int, test: int, out: Path) -> Path:
    """The first images of a train/test class folder (a fixed shuffle) as an `.npz`."""
    from PIL import Image

    arrays = {}
    for split, count in (("train", train), ("test", test)):
        files = sorted((folder / split).glob("*/*"))
        classes = sorted({f.parent.name for f in files})
        files = [files[i] for i in np.random.default_rng(0).permutation(len(files))[:count]]
        arrays[f"x_{split}"] = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        arrays[f"y_{split}"] = np.array([classes.index(f.parent.name) for f in files])
    np.savez(out, **arrays)
    return out


def launch(args: list[str], processes: int, local_devices: int, output: Path) -> tuple[list[int], float]:
    """`processes` train processes of one cluster; (their return codes, wall seconds)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    started = time.time()
    procs = []
    for index in range(processes):
        env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3",
               "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"localhost:{port}",
               "KERAS_DISTRIBUTION_NUM_PROCESSES": str(processes), "KERAS_DISTRIBUTION_PROCESS_ID": str(index),
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={local_devices}"}
        log = open(output.parent / f"{output.name}-{index}.log", "w")  # noqa: SIM115  (closed with the process)
        procs.append(subprocess.Popen([sys.executable, "-m", "keras_resnet.cli", *args, "--output", str(output),
                                       "--strategy", "multi-process"], cwd=ROOT, env=env,
                                      stdout=log, stderr=subprocess.STDOUT, text=True))
    codes = [p.wait() for p in procs]
    for index, code in enumerate(codes):
        if code:
            sys.exit(f"process {index} failed ({code}): {(output.parent / f'{output.name}-{index}.log').read_text()[-2000:]}")
    return codes, time.time() - started


def final_weights(folder: Path) -> list[np.ndarray]:
    import keras

    import keras_resnet  # noqa: F401  (registers the layers model.keras names)

    return [keras.ops.convert_to_numpy(v) for v in keras.models.load_model(folder / "model.keras").weights]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=str(ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"))
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--test", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", default="0.02")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="multiprocess-"))
    data = npz_from_folder(Path(args.images), args.train, args.test, work / "data.npz")
    train = ["train", "--recipe", "cifar10-fast", "--depth", "8", "--variant", "cifar", "--epochs", str(args.epochs),
             "--batch-size", str(args.batch_size), "--seed", "3", "--lr", args.lr, "--data", str(data),
             "--set", "train.precision=float32", "--set", "train.validate_every=1"]
    runs = {"two processes, one device each": (2, 1), "one process, two devices": (1, 2),
            "one process, one device": (1, 1)}
    rows, models = [], {}
    for name, (processes, devices) in runs.items():
        folder = work / name.replace(" ", "-").replace(",", "")
        _, seconds = launch(train, processes, devices, folder)
        history = json.loads((folder / "metrics.json").read_text())["history"]
        models[name] = final_weights(folder)
        rows.append({"run": name, "processes": processes, "devices": processes * devices,
                     "wall_seconds": round(seconds, 1), "loss": history["loss"], "val_accuracy": history["val_accuracy"]})
    reference = models["two processes, one device each"]
    scale = max(float(np.abs(w).max()) for w in reference)
    for row in rows:
        row["max_abs_weight_difference"] = max(float(np.abs(a - b).max()) for a, b in zip(models[row["run"]], reference))
    result = {"command": train, "largest_weight": scale, "rows": rows}
    print(json.dumps(result, indent=1))
    ledger.record("multiprocess", "final weights of the same run on two JAX processes, one process on two devices "
                  "and one process on one device (CPU, float32)", figures={"largest_weight": scale,
                                                                          "epochs": args.epochs,
                                                                          "train_images": args.train}, rows=rows)


if __name__ == "__main__":
    main()
