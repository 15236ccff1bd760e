"""Transfer learning, measured: one source model on five CIFAR-10 classes, then the other five
classes at several training-set sizes, fine-tuned and from scratch.

    python benchmarks/finetune_transfer.py --data-dir ../shared/datasets/tensorflow_datasets \\
        --output runs/transfer --sizes 250 1000 5000 25000 --seeds 0 1 2

The source is `cifar10-fast`'s full schedule on the first five classes (airplane ...
deer). For each size N of the target (dog ... truck, a seeded stratified subset) and seed,
four arms, each a whole `keras-resnet train` process scored on all 5,000 target test images
(the scratch and probe arms skip the test scores during training, which change nothing):

- probe: the new head alone on the frozen source (`finetune`, `--epochs 0`), as many steps
  as the fine-tune takes in all;
- finetune: the shipped `finetune` recipe, nothing overridden;
- scratch-seen: `cifar10-fast` from scratch, with as many images seen as the fine-tune;
- scratch-full: `cifar10-fast` from scratch, its full 36-epoch schedule.

Seeds beyond the first run only where N <= --seeds-up-to. `--reverse` swaps source and
target classes (its own source model). Finished runs are not run again (each run folder
keeps its result.json), so the script can be run again after a crash or with more sizes,
seeds or arms; `--report` only tabulates what has finished. Writes results.csv (one row per
run), summary.csv and summary.md (mean and range per N and arm) and accuracy_vs_n.png into
--output/forward (or reverse) and prints the summary.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
import ledger  # benchmarks/ledger.py: this run's record

FIRST = ["airplane", "automobile", "bird", "cat", "deer"]
SECOND = ["dog", "frog", "horse", "ship", "truck"]
ARMS = ("probe", "finetune", "scratch-seen", "scratch-full")


def run(args: list[str]) -> dict:
    """`keras-resnet train ARGS`, or the finished run folder's result; wall time of the process."""
    output = Path(args[args.index("--output") + 1])
    done = output / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    print("$ keras-resnet train " + " ".join(args), flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "keras_resnet.cli", "train", *args], check=True)
    metrics = json.loads((output / "metrics.json").read_text())
    config = json.loads((output / "config.json").read_text())
    result = {"wall_seconds": round(time.perf_counter() - start, 1),
              "accuracy": metrics["eval"]["accuracy"], "num_test": metrics["eval"]["num_images"],
              "num_train": metrics["num_train"], "images_seen": images_seen(config, metrics["num_train"]),
              "picked": config["recipe"].get("picked", "")}
    done.write_text(json.dumps(result))
    return result


def images_seen(config: dict, num_train: int) -> int:
    """Training images a run's steps took: head steps plus whole epochs of full batches."""
    t = config["train"]
    head = t["head_steps"] if config["model"]["weights"] else 0
    return (head + t["epochs"] * (num_train // t["batch_size"])) * t["batch_size"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="TFDS data_dir holding cifar10 (default: TFDS's own)")
    parser.add_argument("--output", default="runs/transfer")
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000, 5000, 25000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seeds-up-to", type=int, default=5000, help="largest N run with every seed")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--reverse", action="store_true", help="source: the second five; target: the first")
    parser.add_argument("--report", action="store_true", help="run nothing: tabulate the finished runs")
    args = parser.parse_args()
    source_classes, target_classes = (SECOND, FIRST) if args.reverse else (FIRST, SECOND)
    base = Path(args.output) / ("reverse" if args.reverse else "forward")
    if args.report:
        found = sorted(base.glob("n*-seed*/*/result.json"),
                       key=lambda p: (int(p.parts[-3][1:].split("-")[0]), p.parts[-3], ARMS.index(p.parts[-2])))
        write(base, [{"n": int(p.parts[-3][1:].split("-seed")[0]), "seed": int(p.parts[-3].split("-seed")[1]),
                      "arm": p.parts[-2], **json.loads(p.read_text())} for p in found])
        return
    data = ["--data", "cifar10", "--depth", str(args.depth)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    classes = lambda names: ["--set", f"data.classes={json.dumps(names)}"]  # noqa: E731

    source = run(["--recipe", "cifar10-fast", *data, *classes(source_classes), "--output", str(base / "source")])
    print(f"source: {source['accuracy']:.4f} on {source['num_test']} test images, {source['wall_seconds']} s")
    weights = str(base / "source" / "model.keras")
    rows = []
    for n in args.sizes:
        for seed in args.seeds if n <= args.seeds_up_to else args.seeds[:1]:
            common = [*data, *classes(target_classes), "--max-train-samples", str(n), "--seed", str(seed)]
            folder = base / f"n{n}-seed{seed}"
            results = {"finetune": run(["--weights", weights, *common, "--output", str(folder / "finetune")])}
            seen = results["finetune"]["images_seen"]
            quiet = ["--set", "train.validate_every=0"]  # no test scores during training; the result is the same
            if "probe" in args.arms:
                results["probe"] = run(["--weights", weights, *common, *quiet, "--epochs", "0", "--set",
                                        f"train.head_steps={seen // 64}", "--output", str(folder / "probe")])
            if "scratch-seen" in args.arms:
                epochs = max(1, math.ceil(seen / (128 * max(1, n // 128))))
                results["scratch-seen"] = run(["--recipe", "cifar10-fast", *common, *quiet, "--epochs",
                                               str(epochs), "--output", str(folder / "scratch-seen")])
            if "scratch-full" in args.arms:
                results["scratch-full"] = run(["--recipe", "cifar10-fast", *common, *quiet,
                                               "--output", str(folder / "scratch-full")])
            rows += [{"n": n, "seed": seed, "arm": arm, **r} for arm, r in results.items() if arm in args.arms]
    write(base, rows)


def write(base: Path, rows: list[dict]) -> None:
    with open(base / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = []
    for n in sorted({r["n"] for r in rows}):
        for arm in ARMS:
            accs = [r["accuracy"] for r in rows if r["n"] == n and r["arm"] == arm]
            walls = [r["wall_seconds"] for r in rows if r["n"] == n and r["arm"] == arm]
            if accs:
                summary.append({"n": n, "arm": arm, "runs": len(accs), "mean": round(statistics.mean(accs), 4),
                                "min": min(accs), "max": max(accs),
                                "wall_seconds_mean": statistics.mean(walls)})  # rounded once, when shown
    with open(base / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    print(json.dumps(summary))
    ledger.record("finetune_transfer", "fine-tuning against training from scratch, by training-set size",
                  figures={"runs": rows}, rows=summary)
    (base / "summary.md").write_text(markdown(summary))
    print(markdown(summary))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in ARMS:
        points = [(s["n"], 100 * s["mean"], 100 * s["min"], 100 * s["max"]) for s in summary if s["arm"] == arm]
        if points:
            n, mean, low, high = zip(*points)
            ax.errorbar(n, mean, yerr=[[m - lo for m, lo in zip(mean, low)], [hi - m for m, hi in zip(mean, high)]],
                        marker="o", capsize=3, label=arm)
    ax.set_xscale("log")
    ax.set_xlabel("target training images (5 classes)")
    ax.set_ylabel("test accuracy, 5,000 images (%)")
    ax.set_title("ResNet-20, CIFAR-10: five classes to the other five")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(base / "accuracy_vs_n.png", dpi=120)


def markdown(summary: list[dict]) -> str:
    """One row per N: each arm's mean test accuracy (range over seeds) and mean wall time."""
    head = "| N | runs | " + " | ".join(ARMS) + " | fine-tune − scratch-full |\n"
    head += "|---:|---:|" + "---:|" * (len(ARMS) + 1) + "\n"
    rows = []
    for n in sorted({s["n"] for s in summary}):
        cells = {s["arm"]: s for s in summary if s["n"] == n}
        runs = max(c["runs"] for c in cells.values())

        def cell(arm):
            c = cells.get(arm)
            if c is None:
                return "not run"
            spread = f" ({100 * c['min']:.2f}–{100 * c['max']:.2f})" if c["runs"] > 1 else ""
            return f"{100 * c['mean']:.2f} %{spread}, {c['wall_seconds_mean']:.0f} s"

        gap = (f"{100 * (cells['finetune']['mean'] - cells['scratch-full']['mean']):+.2f} points"
               if "finetune" in cells and "scratch-full" in cells else "")
        rows.append(f"| {n:,} | {runs} | " + " | ".join(cell(a) for a in ARMS) + f" | {gap} |")
    return head + "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
