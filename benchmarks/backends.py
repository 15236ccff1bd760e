"""The recipe's training step on each Keras backend: TensorFlow, JAX and PyTorch, side by side.

Each contender is `keras-resnet benchmark`'s step (`benchmarking.benchmark`: the model,
optimizer and loss `train` compiles for `cifar10-fast`, fed by tf.data) in a fresh process
with KERAS_BACKEND set, at a given precision and XLA/`torch.compile` setting; "auto" is what
`train` picks on this machine (`backends.resolve_precision`, `backends.resolve_jit`). Rounds
alternate the contenders, so a stall of the machine hits them alike; the report gives each
one's best and median images/s over its rounds, and ratios to TensorFlow's auto step.

    python benchmarks/backends.py --depth 20 --rounds 3 --output benchmarks/backends_resnet20_DATE.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import ledger  # benchmarks/ledger.py: this run's record

# name: (backend, precision, jit_compile)
CONTENDERS = {
    "tensorflow-auto": ("tensorflow", "auto", "auto"),
    "tensorflow-float32": ("tensorflow", "float32", "auto"),
    "jax-auto": ("jax", "auto", "auto"),
    "jax-float32": ("jax", "float32", "auto"),
    "jax-no-jit": ("jax", "auto", False),
    "torch-auto": ("torch", "auto", "auto"),
    "torch-float32": ("torch", "float32", "auto"),
    "torch-compile": ("torch", "auto", True),
}
CHILD = """
import json, sys
from keras_resnet import benchmarking
depth, batch, steps, precision, jit = json.loads(sys.argv[1])
print(json.dumps(benchmarking.benchmark(depth, batch_size=batch, steps=steps, warmup=5, rounds=3,
                                        precision=precision, jit_compile=jit)))
"""


def run(name: str, depth: int, batch: int, steps: int) -> dict:
    backend, precision, jit = CONTENDERS[name]
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.time()
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps([depth, batch, steps, precision, jit])],
                          capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1][:300]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = round(time.time() - started, 1)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="steps per timed window (3 windows a process)")
    parser.add_argument("--rounds", type=int, default=3, help="processes per contender, alternating")
    parser.add_argument("--contenders", default=",".join(n for n in CONTENDERS if n != "jax-no-jit"),
                        help=f"comma-separated, from {', '.join(CONTENDERS)} (default: all but jax-no-jit, "
                             "which runs JAX op by op: minutes per window)")
    parser.add_argument("--output", help="JSON file for the results")
    args = parser.parse_args()
    names = args.contenders.split(",")
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contenders {unknown}; choose from {', '.join(CONTENDERS)}")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for round_ in range(args.rounds):
        for name in names:
            runs[name].append(run(name, args.depth, args.batch_size, args.steps))
            print(f"round {round_ + 1} {name}: {runs[name][-1].get('images_per_sec', runs[name][-1].get('error'))}",
                  file=sys.stderr)
    summary = {}
    for name, results in runs.items():
        good = [r for r in results if "error" not in r]
        if not good:
            summary[name] = {"error": results[0]["error"]}
            continue
        rates = [r["best_images_per_sec"] for r in good]
        summary[name] = {"precision": good[0]["precision"], "jit_compile": good[0]["jit_compile"],
                         "best_images_per_sec": max(rates),
                         "median_images_per_sec": round(statistics.median(r["images_per_sec"] for r in good), 1)}
    reference = summary.get("tensorflow-auto", {}).get("best_images_per_sec")
    for row in summary.values():
        if reference and "best_images_per_sec" in row:
            row["best_vs_tensorflow_auto"] = round(row["best_images_per_sec"] / reference, 3)
    out = {"date": time.strftime("%Y-%m-%d"), "machine": {"cpu": ledger.cpu_model(), "cores": os.cpu_count()},
           "depth": args.depth, "batch_size": args.batch_size, "steps": args.steps, "rounds": args.rounds,
           "summary": summary, "runs": runs}
    print("| contender | precision | XLA / compile | best img/s | median img/s | best vs TF auto |")
    print("|---|---|---|---:|---:|---:|")
    for name, row in summary.items():
        if "error" in row:
            print(f"| {name} | — | — | failed: {row['error'][:60]} | | |")
        else:
            print(f"| {name} | {row['precision']} | {row['jit_compile']} | {row['best_images_per_sec']:.0f} | "
                  f"{row['median_images_per_sec']:.0f} | {row.get('best_vs_tensorflow_auto', '')} |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(out, f, indent=1)
    ledger.record("backends", f"the cifar10-fast training step of ResNet-{args.depth} on each Keras backend",
                  figures=out, rows=[{"contender": k, **v} for k, v in summary.items()])


if __name__ == "__main__":
    main()
