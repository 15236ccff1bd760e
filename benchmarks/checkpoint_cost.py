"""What a checkpoint inside an epoch costs: the seconds of one `CrashSafeCheckpoint` write
(model, optimizer with its EMA copies, metric totals, seed states; temp file, fsync, rename)
against the seconds of the training steps around it, for the models of two shipped recipes.

    python benchmarks/checkpoint_cost.py --output /tmp/ckpt-cost

Each model is built and compiled as `train` builds it (the recipe's precision, optimizer and
EMA), then alternating rounds time `--steps` training steps of `fit` on in-memory images and
one checkpoint write into --output (the disk a run folder would be on); then the per-step
hook alone is timed over 10,000 calls. Prints, per model, the median step and write times,
the hook's time, the file size and the share of training time a checkpoint every N minutes
or every N steps costs (write / (interval + write); the default adds the hook's share);
JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_resnet import recipes, runs, training
import ledger  # benchmarks/ledger.py: this run's record

MODELS = {  # recipe -> (depth, image side, classes, batch)
    "cifar10-fast": (20, 32, 10, 128),
    "imagenet-resnet50": (50, 224, 1000, 32),
}


def measure(recipe: str, rounds: int, steps: int, folder: Path) -> dict:
    depth, side, classes, batch = MODELS[recipe]
    config = recipes.resolve(recipe, depth=depth, batch_size=batch)
    model, _, precision = training.build_compiled(config, num_classes=classes, image_size=(side, side),
                                                  normalization=None, steps_per_epoch=1000)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, side, side, 3)).astype("float32")
    y = np.eye(classes, dtype="float32")[rng.integers(0, classes, batch)]
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    checkpoint = runs.CrashSafeCheckpoint(folder / recipe)
    checkpoint.set_model(model)
    model.fit(data, steps_per_epoch=2, epochs=1, verbose=0)  # warm-up: compiled step, optimizer built
    step_seconds, write_seconds = [], []
    for k in range(rounds):
        start = time.perf_counter()
        model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
        step_seconds.append((time.perf_counter() - start) / steps)
        start = time.perf_counter()
        checkpoint._write(epoch=0, step=k + 1, loss=1.0)
        write_seconds.append(time.perf_counter() - start)
    size = runs.checkpoints(folder / recipe)[0].stat().st_size
    # The per-step hook (a clock read and two comparisons; `fit` already runs batch hooks in
    # step, for TerminateOnNaN), on the default 5-minute setting, between writes.
    hook = runs.CrashSafeCheckpoint(folder / "hook", every_minutes=5.0)
    hook.set_model(model)
    hook.start(steps=10**9)
    start = time.perf_counter()
    for call in range(10_000):
        hook.on_train_batch_end(call, {"loss": 1.0})
    hook_seconds = (time.perf_counter() - start) / 10_000
    step, write = statistics.median(step_seconds), statistics.median(write_seconds)
    share = lambda interval: write / (interval + write)  # noqa: E731
    return {"recipe": recipe, "model": model.name, "precision": precision, "batch": batch,
            "ema": config["train"]["ema"], "step_seconds_median": round(step, 4),
            "write_seconds_median": round(write, 4), "write_seconds_max": round(max(write_seconds), 4),
            "hook_microseconds": round(1e6 * hook_seconds, 2),
            "file_mb": round(size / 2**20, 1),
            "share_every_5_minutes": round(share(300.0) + hook_seconds / step, 5),
            "share_every_1_minute": round(share(60.0), 5),
            "share_every_100_steps": round(share(100 * step), 5),
            "steps_for_2_percent": int(np.ceil(write * 49 / step))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="folder for the checkpoints (default: a temporary one)")
    parser.add_argument("--recipes", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="training steps per round")
    args = parser.parse_args()
    folder = Path(args.output or tempfile.mkdtemp(prefix="ckpt-cost-"))
    results = [measure(r, args.rounds, args.steps, folder) for r in args.recipes]
    print("| recipe | model | step (median) | write (median / max) | hook per step | file | every 5 min (default) "
          "| every 1 min | every 100 steps | steps for 2 % |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['recipe']} | {r['model']} ({r['precision']}, batch {r['batch']}, EMA {r['ema']}) "
              f"| {r['step_seconds_median']:.3f} s | {r['write_seconds_median']:.3f} / {r['write_seconds_max']:.3f} s "
              f"| {r['hook_microseconds']} µs | {r['file_mb']} MB | {100 * r['share_every_5_minutes']:.2f} % "
              f"| {100 * r['share_every_1_minute']:.2f} % | {100 * r['share_every_100_steps']:.2f} % "
              f"| {r['steps_for_2_percent']} |")
    print(json.dumps(results))
    ledger.record("checkpoint_cost", "the seconds of one crash-safe checkpoint write, per recipe", rows=results)


if __name__ == "__main__":
    main()
