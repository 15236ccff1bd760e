"""Evaluation, prediction and serving share one preprocessing: image -> model input.

`preprocess(image, size, crop)` is the only path from a decoded image (uint8 HxWxC, any
size) to what a model takes (float32 HxWxC RGB pixels in [0, 255] at its input size):

- `crop` set (e.g. 0.875): resize the shorter side to max(size) / crop (antialiased), then
  center-crop `size` (ImageNet evaluation);
- `crop` None: resize to `size` (a no-op for an image already at `size`).

`size` is the model's input size; `crop` is the run's `data.eval_crop_fraction` from the
`config.json` beside `model.keras` (0: no crop), or, for a model outside a run folder,
0.875 for inputs of 128 px and up (`eval_crop`). The training run's own evaluation
(`data.eval_pipeline`), `evaluate`, `predict`, the SavedModel's `serving_bytes` and
`tf_example` signatures, and the export parity check all apply it, so one file gets one
model input everywhere.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, cast

import keras
import numpy as np

try:
    import tensorflow as tf
except ImportError:  # JAX or PyTorch without TensorFlow: `evaluate_model` only
    tf = None

from keras_resnet import data as data_lib
from keras_resnet import report, runfolder
from keras_resnet.errors import ModelError
from keras_resnet.saving import load_model

DEFAULT_CROP = 0.875
DEFAULT_CROP_FROM_SIDE = 128  # a model outside a run folder: crop from this input side up


# -- the model --------------------------------------------------------------------------------


class Layout:
    """Input size and channel order of a classifier, and its probabilities."""

    def __init__(self, model: keras.Model):
        if len(model.inputs) != 1 or len(model.outputs) != 1 or len(model.output_shape) != 2:
            raise ModelError(
                f"{model.name} has {len(model.inputs)} input(s) and outputs "
                f"{model.output_shape}; it needs one image input and one "
                "class-score output (build with include_top=True)."
            )
        shape = tuple(model.input_shape[1:])
        self.channels_first = shape[0] in (1, 3) and shape[-1] not in (1, 3)
        height, width, channels = (shape[1], shape[2], shape[0]) if self.channels_first else shape
        if None in (height, width, channels):
            raise ModelError(
                f"{model.name} has no fixed input size (input shape "
                f"{model.input_shape}). Rebuild it with one, e.g. "
                "build(..., input_shape=(224, 224, 3)), copy the weights with "
                "set_weights, and use that model."
            )
        self.size = (height, width)
        self.channels = channels
        self.num_classes = model.output_shape[-1]
        activation = getattr(model.layers[-1], "activation", None)
        self.softmax_inside = getattr(activation, "__name__", "") == "softmax"
        self._fn: Any = None  # `compiled`'s tf.function, and the model it wraps
        self._fn_model: keras.Model | None = None

    def probabilities(self, model: keras.Model, images: tf.Tensor) -> tf.Tensor:
        """NHWC pixels in [0, 255] -> float32 probabilities (softmax added for logit models).
        Traceable: the SavedModel's signatures call it too."""
        x = tf.transpose(images, [0, 3, 1, 2]) if self.channels_first else images
        out = tf.cast(model(x, training=False), tf.float32)
        return out if self.softmax_inside else tf.nn.softmax(out)

    def predict(self, model: keras.Model, images, batch_size: int = 64) -> np.ndarray:
        """`probabilities` of preprocessed NHWC images, in batches, as a numpy array."""
        fn = self.compiled(model)
        images = np.asarray(images, np.float32)
        out = [fn(tf.constant(images[i : i + batch_size])).numpy() for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

    def compiled(self, model: keras.Model):
        """`probabilities` of `model` as one tf.function (batches of any size)."""
        if self._fn is None or self._fn_model is not model:
            self._fn_model = model
            self._fn = tf.function(lambda x: self.probabilities(model, x), reduce_retracing=True)
        return self._fn


# -- the evaluation crop --------------------------------------------------------------------


def eval_crop(size: Sequence[int], configured: float | None = None) -> float | None:
    """The center-crop fraction of evaluation: the run's `configured` setting (0: none)
    when there is one, else 0.875 from 128 px up."""
    if configured is not None:
        if not 0 <= configured <= 1:
            raise ModelError(
                f"data.eval_crop_fraction must be in (0, 1] (0: no crop), not "
                f"{configured}; fix it in the run's config.json."
            )
        return float(configured) or None
    return DEFAULT_CROP if max(size) >= DEFAULT_CROP_FROM_SIDE else None


# -- the one preprocessing ---------------------------------------------------------------------


def preprocess(image, size: Sequence[int], crop: float | None, interpolation: str = "bilinear") -> tf.Tensor:
    """Decoded image (uint8 HxWxC, any size) -> float32 model input (`size` + C, RGB pixels
    in [0, 255]). Eager or traced (tf.data, SavedModel signatures) give the same numbers."""
    image = tf.convert_to_tensor(image)
    height, width = (int(s) for s in size)
    resized = data_lib.resize_eval(image, (height, width), crop, interpolation)
    return tf.ensure_shape(resized, [height, width, image.shape[-1] or 3])


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """`preprocess` with a model's size and its run's crop and interpolation bound; callable
    on one image."""

    size: tuple[int, int]
    crop: float | None
    channels: int = 3
    interpolation: str = "bilinear"

    def __call__(self, image) -> tf.Tensor:
        return preprocess(image, self.size, self.crop, self.interpolation)

    def describe(self) -> dict:
        return {"image_size": list(self.size), "crop_fraction": self.crop, "interpolation": self.interpolation}


def preprocessing_for(
    model: keras.Model, model_path: str | os.PathLike | None = None, context: dict | None = None
) -> Preprocessing:
    """The preprocessing of `model`: its input size, its run's eval crop, and the resize its
    weights' record names (bilinear where there is none)."""
    layout = Layout(model)
    context = runfolder.context(model_path) if context is None else context
    crop = eval_crop(layout.size, context.get("crop"))
    return Preprocessing(layout.size, crop, layout.channels, context.get("interpolation") or "bilinear")


# -- predict and evaluate ----------------------------------------------------------------------


def class_names(model_path: str | os.PathLike | None, count: int, context: dict | None = None) -> list[str]:
    """The run's class names when they fit the model, else "0", "1", ..."""
    names = (runfolder.context(model_path) if context is None else context).get("class_names")
    return list(names) if names and len(names) == count else [str(i) for i in range(count)]


def predict_files(
    model_path: str | os.PathLike, paths: Sequence[str | os.PathLike], top_k: int = 5, *, batch_size: int = 64
) -> list[dict]:
    """The top-k classes of each image file: [{"path", "top": [{"class", "index",
    "probability"}, ...]}], most probable first. Images go through `preprocess` with the
    model's run configuration, as in `evaluate` and the SavedModel's `serving_bytes`."""
    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1, not {top_k}.")
    if not paths:
        raise ValueError("Give at least one image file.")
    model = load_model(model_path)
    layout = Layout(model)
    context = runfolder.context(model_path)
    prep = preprocessing_for(model, context=context)
    names = class_names(model_path, layout.num_classes, context)
    images = np.stack([prep(data_lib.decode_file(p, layout.channels)).numpy() for p in paths])
    probs = layout.predict(model, images, batch_size)
    results = []
    for path, p in zip(paths, probs):
        top = np.argsort(-p, kind="stable")[:top_k]
        results.append(
            {"path": str(path), "top": [{"class": names[i], "index": int(i), "probability": float(p[i])} for i in top]}
        )
    return results


def evaluate(
    model_path: str | os.PathLike,
    data: str,
    *,
    split: str = "test",
    data_dir: str | None = None,
    max_samples: int | None = None,
    batch_size: int = 256,
    flip_tta: bool = False,
    seed: int = 0,
) -> dict:
    """Top-1, top-5, loss, per-class accuracy (and, for <= 100 classes, the confusion matrix)
    of a `.keras` model on `split` ("test" or "train", unaugmented) of a folder or TFDS
    dataset, its images preprocessed as the run's own evaluation did (`preprocess`)."""
    if split not in ("test", "train"):
        raise ValueError(f"Unknown split {split!r}; choose test or train.")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, not {batch_size}.")
    model = load_model(model_path)
    layout = Layout(model)
    prep = preprocessing_for(model, model_path)
    on_train = split == "train"
    # On the training split, the test split is read for nothing: keep it to one image.
    limit = {"max_train_samples": max_samples, "max_eval_samples": 1} if on_train else {"max_eval_samples": max_samples}
    splits = data_lib.load(data, data_dir=data_dir, include_train=on_train, seed=seed, **limit)
    ds = cast("tf.data.Dataset", splits.train if on_train else splits.test).map(
        lambda x, y: (prep(x), y), num_parallel_calls=data_lib.PARALLEL_CALLS
    )
    ds = data_lib.prefetched(ds.batch(batch_size))
    probs, mirrored, labels = report.predictions(layout.compiled(model), ds, flip_tta)
    if not len(labels):
        raise data_lib.DataError(f"No images in the {split} split of {splits.source}.")
    result = report.scores((probs + mirrored) / 2 if flip_tta else probs, labels, splits.class_names)
    result.update(split=split, flip_tta=flip_tta, data=splits.source, preprocessing=prep.describe())
    return result


def evaluate_model(
    model: keras.Model, dataset: tf.data.Dataset, class_names: Sequence[str], *, flip_tta: bool = False
) -> dict:
    """Top-1, top-5, cross-entropy, per-class accuracy and (<= 100 classes) confusion matrix.

    `dataset` yields (images, labels) batches (NHWC), labels as indices or one-hot. With
    `flip_tta`, each image's probabilities are the mean over it and its horizontal mirror.
    """
    probs, mirrored, labels = report.predictions(model.predict_on_batch, dataset, flip_tta)
    return report.scores((probs + mirrored) / 2 if flip_tta else probs, labels, class_names)


def format_report(result: dict, model_path: str | os.PathLike) -> str:
    """`evaluate`'s result as text: one summary line, then one line per class."""
    prep = result["preprocessing"]
    crop = f", center crop {prep['crop_fraction']}" if prep["crop_fraction"] else ""
    lines = [
        f"{model_path} on {result['data']} ({result['split']}): top-1 {result['accuracy']:.4f}, "
        f"top-5 {result['top5_accuracy']:.4f}, loss {result['loss']:.4f} ({result['num_images']} "
        f"images{', flip TTA' if result['flip_tta'] else ''}{crop})"
    ]
    lines += [f"  {name:20s} {acc:.4f}" for name, acc in result["per_class_accuracy"].items()]
    return "\n".join(lines)


def format_predictions(results: list[dict]) -> str:
    """`predict_files`'s result as text: one line per file, its classes and probabilities."""
    return "\n".join(
        f"{item['path']}: " + ", ".join(f"{t['class']} {t['probability']:.4f}" for t in item["top"]) for item in results
    )
