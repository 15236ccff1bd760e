"""Run-folder reports: metrics.json, history.csv and PNG plots, each written atomically."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove_dead_temporaries(directory: str | os.PathLike, prefix: str) -> None:
    """Remove `directory/<prefix><pid>-*` entries left by processes that no longer run
    (killed mid-write: SIGKILL, power loss)."""
    for stale in Path(directory).glob(f"{prefix}*"):
        try:
            os.kill(int(stale.name[len(prefix):].split("-")[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            continue


def strict(obj):
    """`obj` with every NaN/inf float (Python or NumPy) replaced by None, so that it is
    valid JSON for strict parsers (Python's json writes a bare `NaN` otherwise)."""
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def dumps(obj, **kwargs) -> str:
    """Strict JSON text of `obj` (see `strict`)."""
    return json.dumps(strict(obj), allow_nan=False, **kwargs)


def write_json(path, obj) -> None:
    write_atomic(path, dumps(obj, indent=2) + "\n")


def read_json(path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_history_csv(path, history: dict[str, list]) -> None:
    keys = sorted(history)
    rows = zip(*(history[k] for k in keys))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["epoch", *keys])
    for epoch, row in enumerate(rows, 1):
        writer.writerow([epoch, *("" if v is None else v for v in row)])
    write_atomic(path, buffer.getvalue())


def _figure(**kwargs):
    """A Matplotlib figure drawn by the Agg canvas: no pyplot, so the process's backend
    (a notebook's inline one, say) is left as it is."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def plot_curves(path, history: dict[str, list], title: str = "") -> None:
    """Loss, accuracy and learning rate per epoch (validation points where measured)."""
    panels = [("loss", "loss"), ("accuracy", "accuracy"), ("lr", "learning rate")]
    fig = _figure(figsize=(15, 4))
    axes = fig.subplots(1, 3)
    for ax, (key, label) in zip(axes, panels):
        for name, style in ((key, "-"), (f"val_{key}", "o--")):
            values = history.get(name)
            if values and any(v is not None for v in values):
                epochs = [i + 1 for i, v in enumerate(values) if v is not None]
                ax.plot(epochs, [v for v in values if v is not None], style,
                        label="test" if name.startswith("val_") else "train")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if len(ax.lines) > 1:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def plot_confusion(path, matrix: np.ndarray, class_names: list[str], title: str = "") -> None:
    """Row-normalized confusion matrix with class names (for up to 100 classes)."""
    n = len(class_names)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(6, 0.35 * n + 3)
    fig = _figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=90 if n > 10 else 45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, matrix[i, j], ha="center", va="center", fontsize=8,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
