"""Scores and plots: probabilities -> top-1/top-5/loss/per-class accuracy and the confusion
matrix (NumPy, any backend), and the PNG plots of a run."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from keras_resnet.errors import DataError


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
                ax.plot(
                    epochs,
                    [v for v in values if v is not None],
                    style,
                    label="test" if name.startswith("val_") else "train",
                )
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
                ax.text(
                    j,
                    i,
                    matrix[i, j],
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black",
                )
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def predictions(predict, batches, mirrored: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Probabilities of every image of `batches` ((NHWC images, labels as indices or one-hot)
    batches) by `predict` (images -> probabilities), of each image's horizontal mirror if
    `mirrored` (else None), and the integer labels."""
    plain, flipped, labels = [], [], []
    for images, y in batches:
        images, y = np.asarray(images), np.asarray(y)  # what every backend's `predict` takes
        plain.append(keras.ops.convert_to_numpy(predict(images)))
        if mirrored:
            flipped.append(keras.ops.convert_to_numpy(predict(np.ascontiguousarray(images[:, :, ::-1]))))
        labels.append(np.argmax(y, -1) if y.ndim == 2 else y)
    classes = plain[0].shape[-1] if plain else 0

    def stack(parts):
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, classes))

    return (
        stack(plain),
        stack(flipped) if mirrored else None,
        np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64),
    )


def scores(
    probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str], *, mirrored: np.ndarray | None = None
) -> dict:
    """`evaluate_model`'s report from probabilities and integer labels; given the mirrored
    images' probabilities, also the flip-TTA top-1, top-5 and loss under "flip_tta"."""
    n = len(class_names)
    if probs.shape[1] != n:
        raise DataError(
            f"The model has {probs.shape[1]} classes, the data {n}: evaluate it "
            "on data with the classes it was trained on."
        )
    top5 = np.argsort(-probs, axis=1)[:, : min(5, n)]
    predicted = top5[:, 0]
    matrix = confusion_matrix(labels, predicted, n)
    per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    result = {
        "accuracy": float(np.mean(predicted == labels)),
        "top5_accuracy": float(np.mean((top5 == labels[:, None]).any(axis=1))),
        "loss": float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)))),
        "num_images": len(labels),
        "per_class_accuracy": {name: float(a) for name, a in zip(class_names, per_class)},
    }
    if n <= 100:
        result["confusion_matrix"] = matrix.tolist()
    if mirrored is not None:
        tta = scores((probs + mirrored) / 2, labels, class_names)
        result["flip_tta"] = {k: tta[k] for k in ("accuracy", "top5_accuracy", "loss")}
    return result
