"""Time to accuracy: the best test accuracy a shipped recipe reaches within a wall-time budget.

Each call runs one `keras-resnet train` process with the recipe's schedule stretched or
shrunk to `--epochs` (the one-cycle and step schedules span whatever epoch count is
given), times the whole process (start-up, data loading, training, final evaluation,
saving), and appends one JSON line to OUTPUT/results.jsonl:

    python benchmarks/time_to_accuracy.py --budget-min 15 --epochs 23 \
        --data-dir ../shared/datasets/tensorflow_datasets --output runs/tta

Pick `--epochs` from the per-epoch time of an earlier run on the same machine, leaving a
minute for start-up and evaluation; a run over its budget is recorded as such, never
dropped. `--set SECTION.FIELD=VALUE` (repeatable) tries a variant of the recipe, e.g.
`--set train.label_smoothing=0.1`; it goes into the run folder's name and the record.
`--table` prints every recorded run as the Markdown table in docs/results.md.
Run nothing else on the machine meanwhile: the wall time is the measurement.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
import ledger  # benchmarks/ledger.py: this run's record


def run(args) -> dict:
    variant = re.sub(r"[^\w.=-]", "_", "".join(f"-{item}" for item in args.set))  # a folder name
    folder = Path(args.output) / f"{Path(args.recipe).stem}-e{args.epochs}-s{args.seed}{variant}"
    command = ["train", "--recipe", args.recipe, "--epochs", str(args.epochs),
               "--seed", str(args.seed), "--output", str(folder)]
    for item in args.set:
        command += ["--set", item]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    start = time.perf_counter()  # the CLI of this interpreter's environment, as a user runs it
    done = subprocess.run([sys.executable, "-m", "keras_resnet.cli", *command])
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"train failed (exit {done.returncode}); nothing recorded.")
    metrics = json.loads((folder / "metrics.json").read_text())
    record = {
        "date": datetime.date.today().isoformat(), "budget_min": args.budget_min,
        "recipe": args.recipe, "set": args.set, "epochs": args.epochs, "seed": args.seed,
        "command": " ".join(["keras-resnet", *command]), "wall_s": round(wall, 1),
        "within_budget": wall <= 60 * args.budget_min,
        "top1": metrics["eval"]["accuracy"],
        "flip_tta_top1": metrics["eval"].get("flip_tta", {}).get("accuracy"),
        "data": metrics["data"], "precision": metrics["precision"],
        "machine": f"{os.cpu_count()} CPU cores, {ledger.cpu_model()}",
    }
    with open(Path(args.output) / "results.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


def table(output: str) -> str:
    records = [json.loads(line) for line in open(Path(output) / "results.jsonl")]
    lines = ["| date | budget | recipe | epochs | seed | wall time (whole process) | test top-1 | flip TTA |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in sorted(records, key=lambda r: (r["budget_min"], r["epochs"], r["seed"])):
        minutes, seconds = divmod(round(r["wall_s"]), 60)
        over = "" if r["within_budget"] else " (over budget)"
        tta = f"{100 * r['flip_tta_top1']:.2f} %" if r["flip_tta_top1"] is not None else "–"
        recipe = " ".join([f"`{r['recipe']}`", *(f"`{item}`" for item in r.get("set", []))])
        lines.append(f"| {r['date']} | {r['budget_min']:g} min | {recipe} | {r['epochs']} | {r['seed']} | "
                     f"{minutes} min {seconds} s{over} | {100 * r['top1']:.2f} % | {tta} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-min", type=float, help="the wall-time budget this run is for")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--recipe", default="cifar10-fast")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="a recipe override passed to train (repeatable), recorded with the run")
    parser.add_argument("--data-dir", help="TFDS data_dir (default: TFDS's own, downloads)")
    parser.add_argument("--output", default="runs/tta")
    parser.add_argument("--table", action="store_true", help="print the recorded runs as Markdown")
    args = parser.parse_args()
    if args.table:
        print(table(args.output))
        return
    if not args.budget_min or not args.epochs:
        parser.error("give --budget-min and --epochs (or --table)")
    Path(args.output).mkdir(parents=True, exist_ok=True)
    result = run(args)
    print(json.dumps(result))
    ledger.record("time_to_accuracy", f"one train process of {args.recipe} fitted to its epochs", figures=result)


if __name__ == "__main__":
    main()
