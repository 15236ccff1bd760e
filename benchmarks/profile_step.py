"""Where the CIFAR ResNet-20 training step's time goes: keras_resnet against PyTorch eager.

Ours: the default step (`train_step.py`'s "ours") traced with TensorFlow's profiler; its
per-op self times are summed by category. PyTorch: the eager bf16 step of
benchmarks/torch_reference.py under `torch.profiler`, in a child process. Both report
milliseconds per step by category and the step's wall time measured without the profiler
(ours: the median step; PyTorch: the median epoch over its steps).
TensorFlow runs independent ops side by side (inter-op parallelism), so its op times can
add up to more than the wall time; PyTorch eager runs one op at a time.

    python benchmarks/profile_step.py --steps 20
"""

import argparse
import collections
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import ledger  # benchmarks/ledger.py: this run's record

CATEGORIES = {  # first match wins; TensorFlow op types and aten op names
    "convolution": ("Conv2D", "convolution"),
    "batch norm": ("FusedBatchNorm", "batch_norm"),
    "ReLU (+ gradient)": ("Relu", "relu", "clamp_min", "threshold_backward"),
    "residual sum, shortcut, padding": ("AddV2", "AddN", "Pad", "Slice", "AvgPool", "aten::add", "constant_pad", "aten::slice"),
    "casts": ("Cast", "aten::to", "_to_copy", "copy_"),
    "input pipeline": ("Iterator", "Dataset"),
}
OPTIMIZER = ("scaled_sgd/", "Optimizer.")  # a TensorFlow op's name scope, a torch record_function
REGULARIZATION = ("Square",)  # the L2 losses (their gradients are Mul ops folded into "other")


def category(kind: str, name: str) -> str:
    if any(marker in name for marker in OPTIMIZER):
        return "optimizer"
    if any(marker in kind for marker in REGULARIZATION):
        return "regularization losses"
    return next((c for c, markers in CATEGORIES.items() if any(m in kind for m in markers)), "other")


def ours(steps: int) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    from keras_resnet.benchmarking import _StepTimer
    from train_step import MODELS, ours as make

    spec = MODELS["resnet20"]
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (steps * spec["batch"], 32, 32, 3)).astype("float32")
    timer = _StepTimer()
    run, precision = make(x, rng.integers(0, 10, len(x)), spec, callbacks=[timer])
    timer.times.clear()
    for _ in range(3):
        run()
    wall = statistics.median(timer.times)  # per step, without what a fit call adds around them
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        run()
        tf.profiler.experimental.stop()
        trace = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0]
        table, _ = plugin.xspace_to_tools_data([trace], "framework_op_stats", {})
    table = json.loads(table)[0]
    columns = [c["id"] for c in table["cols"]]
    split = collections.Counter()
    for row in table["rows"]:
        op = dict(zip(columns, (c.get("v") for c in row["c"])))
        if op["type"] != "IDLE":
            split[category(op["type"], op["operation"])] += op["total_self_time"] / 1e3 / steps
    return {"settings": precision, "wall_ms_per_step": wall * 1e3, "split": split}


def torch_child(steps: int) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from torch_reference import make

    epoch = make({"make": "r20-train", "precision": "bf16", "batch": 128, "images": steps * 128})
    epoch()
    wall = statistics.median(_seconds(epoch) for _ in range(3)) / steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        epoch()
    split = collections.Counter()
    for event in prof.events():
        parent, names = event.cpu_parent, [event.name]
        while parent is not None:
            names.append(parent.name)
            parent = parent.cpu_parent
        scope = "Optimizer." if any(n.startswith("Optimizer.") for n in names) else ""
        split[category(event.name, scope)] += event.self_cpu_time_total / 1e3 / steps
    print(json.dumps({"settings": f"bf16 eager, torch {torch.__version__}",
                      "wall_ms_per_step": wall * 1e3, "split": split}))


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps per profiled epoch")
    parser.add_argument("--torch-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_child:
        return torch_child(args.steps)
    result = {"date": time.strftime("%Y-%m-%d"), "ours": ours(args.steps)}
    child = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--torch-child"],
                           capture_output=True, text=True, check=True)
    result["torch"] = json.loads(child.stdout.strip().splitlines()[-1])
    print("| category | ours ms/step | PyTorch eager bf16 ms/step |\n|---|---:|---:|")
    names = sorted(set(result["ours"]["split"]) | set(result["torch"]["split"]),
                   key=lambda n: -result["ours"]["split"].get(n, 0))
    for name in names:
        print(f"| {name} | {result['ours']['split'].get(name, 0):.1f} | {result['torch']['split'].get(name, 0):.1f} |")
    for label in ("ours", "torch"):
        total = sum(result[label]["split"].values())
        print(f"{label}: ops {total:.1f} ms/step, wall {result[label]['wall_ms_per_step']:.1f} ms/step")
    print(json.dumps(result))
    ledger.record("profile_step", "where the ResNet-20 training step's time goes, ours and PyTorch's", figures=result)


if __name__ == "__main__":
    main()
