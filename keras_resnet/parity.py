"""Parity of exported artifacts with the Keras model: sample images, runners, the report.

Every export is checked right after it is written, before it is moved into place: the
artifact and the Keras model see the same images, and the report gives max |Δprobability|,
top-1 agreement and (with labels) the accuracy of both. An artifact whose numbers cross the
`LIMITS` of its kind is broken, and the export fails. Top-1 agreement is checked whether or
not the images have labels; the exporter verifies quantized artifacts on real images only.
Images are preprocessed by `evaluation.preprocess`, as `evaluate`, `predict` and the
SavedModel's image-bytes signatures do.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import tensorflow as tf

from keras_resnet import data as data_lib
from keras_resnet import evaluation

# (max |Δp| allowed, min top-1 agreement required) per numeric kind.
LIMITS: dict[str, tuple[float | None, float | None]] = {
    "float32": (1e-3, None),
    "float16": (5e-2, None),
    "int8": (None, 0.80),
}
SYNTHETIC_IMAGES = 32


@dataclasses.dataclass
class Sample:
    """Images for a parity check: `raw` as decoded (uint8, any size) for the bytes
    signatures, `images` after the eval preprocessing (float32 NHWC pixels in [0, 255])."""

    raw: list[np.ndarray]
    images: np.ndarray
    labels: np.ndarray | None
    source: str


def load_sample(
    data: str,
    *,
    prep: evaluation.Preprocessing,
    count: int,
    data_dir: str | None = None,
    split: str = "test",
    seed: int = 0,
) -> Sample:
    """A seeded class-balanced sample of `count` images of a folder or TFDS dataset's
    `split` ("test": its evaluation split; "train": for calibration), preprocessed by `prep`."""
    if split == "train":
        splits = data_lib.load(data, data_dir=data_dir, max_train_samples=count, max_eval_samples=1, seed=seed)
        ds = cast("tf.data.Dataset", splits.train)
    else:
        splits = data_lib.load(data, data_dir=data_dir, max_eval_samples=count, seed=seed, include_train=False)
        ds = cast("tf.data.Dataset", splits.test)
    raw, labels = [], []
    for image, label in ds.take(count):
        raw.append(image.numpy().astype(np.uint8))
        labels.append(int(label))
    if not raw:
        raise data_lib.DataError(f"No images in the {split} split of {data}.")
    images = np.stack([prep(tf.constant(r)).numpy() for r in raw])
    return Sample(raw, images, np.asarray(labels), f"{splits.source} ({split}, {len(raw)} images)")


def synthetic_sample(size: tuple[int, int], channels: int = 3) -> Sample:
    """A fixed seeded batch of smooth random images (no labels)."""
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, (SYNTHETIC_IMAGES, 4, 4, channels)).astype(np.float32)
    images = tf.image.resize(coarse, size).numpy().round().clip(0, 255).astype(np.uint8)
    return Sample(list(images), images.astype(np.float32), None, f"synthetic ({SYNTHETIC_IMAGES} seeded images)")


def in_batches(fn: Callable[[np.ndarray], np.ndarray], images, batch_size: int = 64) -> np.ndarray:
    return np.concatenate([np.asarray(fn(images[i : i + batch_size])) for i in range(0, len(images), batch_size)])


def compare(name: str, kind: str, reference: np.ndarray, probabilities: np.ndarray, labels: np.ndarray | None) -> dict:
    """One report row; `ok` is False when the row crosses its kind's limits."""
    probabilities = np.asarray(probabilities, np.float64)
    reference = np.asarray(reference, np.float64)
    if probabilities.shape != reference.shape:
        return {
            "artifact": name,
            "kind": kind,
            "ok": False,
            "error": f"output shape {probabilities.shape} != Keras's {reference.shape}",
        }
    top1 = probabilities.argmax(-1)
    row: dict[str, Any] = {
        "artifact": name,
        "kind": kind,
        "images": len(reference),
        "max_abs_diff": float(np.abs(probabilities - reference).max()),
        "top1_agreement": float((top1 == reference.argmax(-1)).mean()),
    }
    if labels is not None:
        row["accuracy"] = float((top1 == labels).mean())
        row["keras_accuracy"] = float((reference.argmax(-1) == labels).mean())
    max_diff, min_agreement = LIMITS[kind]
    row["ok"] = bool(
        np.isfinite(probabilities).all()
        and (max_diff is None or row["max_abs_diff"] <= max_diff)
        and (min_agreement is None or row["top1_agreement"] >= min_agreement)
    )
    return row


def table(rows: list[dict]) -> str:
    """The report as a small text table."""
    lines = [f"{'artifact':34s} {'images':>6s} {'max|Δp|':>9s} {'agree':>7s} {'acc':>7s} {'keras':>7s}  ok"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['artifact']:34s} error: {r['error']}")
            continue
        acc = f"{r['accuracy']:7.4f} {r['keras_accuracy']:7.4f}" if "accuracy" in r else f"{'-':>7s} {'-':>7s}"
        lines.append(
            f"{r['artifact']:34s} {r['images']:6d} {r['max_abs_diff']:9.2e} "
            f"{r['top1_agreement']:7.4f} {acc}  {'yes' if r['ok'] else 'NO'}"
        )
    return "\n".join(lines)


# -- runners -----------------------------------------------------------------------------------


def tflite_interpreter(model: str | os.PathLike | bytes, threads: int | None = None):
    """The LiteRT interpreter (`ai-edge-litert`), or `tf.lite.Interpreter` where it is absent."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    if isinstance(model, bytes):
        return Interpreter(model_content=model, num_threads=threads)
    return Interpreter(model_path=str(model), num_threads=threads)


def tflite_runner(path: str | os.PathLike, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A function images -> probabilities over a `.tflite` file with one input and one output
    (integer I/O is quantized and dequantized with the file's own parameters)."""
    interpreter = tflite_interpreter(path, threads)
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    batch: list[int | None] = [None]

    def run(images: np.ndarray) -> np.ndarray:
        if batch[0] != len(images):
            interpreter.resize_tensor_input(inp["index"], [len(images), *inp["shape"][1:]])
            interpreter.allocate_tensors()
            batch[0] = len(images)
        x = np.asarray(images, np.float32)
        if np.issubdtype(inp["dtype"], np.integer):
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        if np.issubdtype(out["dtype"], np.integer):
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y

    return run


def saved_model_rows(path: Path, sample: Sample, reference: np.ndarray, signatures: dict) -> list[dict]:
    """Load the SavedModel back and check each signature against the Keras probabilities."""
    loaded = tf.saved_model.load(str(path))
    rows = []
    tensor_fn = loaded.signatures["serving_default"]
    out = in_batches(lambda x: tensor_fn(images=tf.constant(x))["probabilities"], sample.images)
    rows.append(compare("saved_model:serving_default", "float32", reference, out, sample.labels))
    encoded = [tf.io.encode_png(r).numpy() for r in sample.raw]
    bytes_fn = loaded.signatures[signatures["bytes"]]
    out = in_batches(lambda b: bytes_fn(image_bytes=tf.constant(list(b)))["probabilities"], encoded)
    rows.append(compare(f"saved_model:{signatures['bytes']} (PNG)", "float32", reference, out, sample.labels))
    example_fn = loaded.signatures[signatures["example"]]
    examples = [
        tf.train.Example(
            features=tf.train.Features(
                feature={"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[e]))}
            )
        ).SerializeToString()
        for e in encoded
    ]
    out = in_batches(lambda b: example_fn(examples=tf.constant(list(b)))["probabilities"], examples)
    rows.append(compare(f"saved_model:{signatures['example']}", "float32", reference, out, sample.labels))
    return rows
