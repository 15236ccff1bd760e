"""The input path without TensorFlow: images as numpy arrays, batched by Keras `PyDataset`s.

Where TensorFlow is installed, `data` builds tf.data pipelines and every backend takes them.
Where it is not, `train` reads image folders (decoded once with Pillow) and `.npz` arrays
into memory, and these datasets batch them with the CIFAR recipes' augmentations (pad-crop,
horizontal flip). As in `data.train_pipeline`, a batch depends on (seed, epoch, step) alone:
a run resumed at any step sees the batches the run that never stopped saw.

`DeviceTrainBatches` makes the same batches from a training set held in accelerator memory
(`data.on_device`, on every backend's tensors), for GPUs that NumPy batching would starve.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np

from keras_resnet.errors import DataError

# The augment fields this path implements; the others need tf.data (`data.train_pipeline`).
AUGMENTS = ("pad_crop", "flip")


@dataclasses.dataclass
class Arrays:
    """One split in memory: uint8 NHWC images and int32 labels."""

    images: np.ndarray
    labels: np.ndarray


def decode_files(paths: list[str], size: tuple[int, int] | None = None) -> tuple[list[np.ndarray | None], list[str]]:
    """Every file as a uint8 HxWx3 array (bilinear-resized to `size` if given; None where
    the file cannot be decoded), and the paths that could not."""
    from PIL import Image, UnidentifiedImageError

    def one(path):
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
                if size and image.size != (size[1], size[0]):
                    image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                return np.asarray(image, np.uint8)
        except (OSError, UnidentifiedImageError, ValueError):
            return None

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        images = list(pool.map(one, paths, chunksize=256))
    return images, [p for p, image in zip(paths, images) if image is None]


def load_npz(path: str | os.PathLike) -> tuple[Arrays, Arrays]:
    """(train, test) from a `.npz` holding x_train, y_train, x_test, y_test (the layout of
    `keras.datasets`): uint8 NHWC images, integer labels."""
    try:
        with np.load(path) as f:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f.files]
            if missing:
                raise DataError(
                    f"{path} lacks {', '.join(missing)}: an .npz for --data holds x_train, "
                    "y_train, x_test, y_test (uint8 NHWC images, integer labels)."
                )
            arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not a readable .npz file ({err}).") from err
    splits = []
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"].reshape(-1)
        if x.ndim != 4 or x.shape[-1] != 3 or len(x) != len(y) or x.dtype != np.uint8:
            raise DataError(
                f"{path}: x_{split} must be uint8 images of shape (N, H, W, 3) with one "
                f"label each; it is {x.dtype} {x.shape} with {len(y)} labels."
            )
        splits.append(Arrays(x, y.astype(np.int32)))
    return splits[0], splits[1]


def npz_shape(path: str | os.PathLike, key: str) -> tuple[int, ...]:
    """The shape of array `key` in a `.npz`, read from its header (nothing else loaded)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            return np.lib.format._read_array_header(f, version)[0]  # type: ignore[attr-defined]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(
            f"{path} is not an .npz holding {key} ({type(err).__name__}); an .npz for "
            "--data holds x_train, y_train, x_test, y_test."
        ) from err


def crop_flip_indices(
    n: int, height: int, width: int, rng: np.random.Generator, pad: int, flip: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The rows (n, height) and columns (n, width) of each image's pad-crop (an offset per
    image into the zero-padded image) and horizontal flip (half the images, columns reversed)."""
    rows = np.broadcast_to(np.arange(height), (n, height))
    cols = np.broadcast_to(np.arange(width), (n, width))
    if pad:
        offsets = rng.integers(0, 2 * pad + 1, size=(n, 2))
        rows, cols = offsets[:, :1] + rows, offsets[:, 1:] + cols
    if flip:
        cols = np.where((rng.random(n) < 0.5)[:, None], cols[:, ::-1], cols)
    return rows, cols


def pad_images(images: np.ndarray, pad: int) -> np.ndarray:
    """NHWC `images` with `pad` zero pixels on every side."""
    return np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else images


class _Batches(keras.utils.PyDataset):
    """Iterable in order too (evaluation and BN re-estimation read batches with `for`)."""

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def share(rows: np.ndarray, shard: tuple[int, int]) -> np.ndarray:
    """Process `shard[0]`'s contiguous share of a global batch's `rows`, of `shard[1]` processes."""
    index, count = shard
    size = len(rows) // count
    return rows[index * size : (index + 1) * size]


class TrainBatches(_Batches):
    """Batches `first_step..` of epoch `first_epoch` through the last step of epoch
    `end_epoch - 1`, as one sequence (`model.fit` with `steps_per_epoch` reads it across
    epochs): each epoch shuffled with `seed + epoch`, each batch augmented with a generator
    seeded by (seed, epoch, step). Images float32 [0, 255], labels one-hot. With `shard` set
    to (process index, process count), each batch is this process's share of the global
    batch, drawn with the same generators: the processes together see the batches one
    process would."""

    shard: tuple[int, int] = (0, 1)

    def __init__(
        self,
        split: Arrays,
        *,
        num_classes: int,
        batch_size: int,
        seed: int,
        first_epoch: int,
        end_epoch: int,
        first_step: int = 0,
        augment: dict | None = None,
    ):
        super().__init__()
        self.split, self.num_classes, self.batch_size, self.seed = split, num_classes, batch_size, seed
        self.steps_per_epoch = len(split.labels) // batch_size
        self.start = first_epoch * self.steps_per_epoch + first_step
        self.end = end_epoch * self.steps_per_epoch
        augment = augment or {}
        self.pad, self.flip = int(augment.get("pad_crop", 0)), bool(augment.get("flip", False))
        self._order: tuple[int, np.ndarray] = (-1, np.arange(0))  # (epoch, its permutation)

    def __len__(self) -> int:
        return max(self.end - self.start, 0)

    def _batch(self, index: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Batch `index`'s image numbers and, when augmenting, their crop rows and columns."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        epoch, step = divmod(self.start + index, self.steps_per_epoch)
        if self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.split.labels)))
        pick = self._order[1][step * self.batch_size : (step + 1) * self.batch_size]
        if not (self.pad or self.flip):
            return share(pick, self.shard), None, None
        _, height, width, _ = self.split.images.shape
        rng = np.random.default_rng([self.seed, epoch, step, 1])
        rows, cols = crop_flip_indices(len(pick), height, width, rng, self.pad, self.flip)
        return share(pick, self.shard), share(rows, self.shard), share(cols, self.shard)

    def __getitem__(self, index: int):
        pick, rows, cols = self._batch(index)
        images = self.split.images[pick]
        if rows is not None and cols is not None:
            images = pad_images(images, self.pad)[
                np.arange(len(pick))[:, None, None], rows[:, :, None], cols[:, None, :]
            ]
        return images.astype(np.float32), one_hot(self.split.labels[pick], self.num_classes)


class DeviceTrainBatches(TrainBatches):
    """`TrainBatches` with the training set in accelerator memory: `images` and `labels`
    are `upload`'s tensors, and each batch is gathered, cropped and flipped there with
    `keras.ops`, so that the host sends only indices. The batches equal `TrainBatches`'s
    (the same draws from the same generators)."""

    def __init__(self, split: Arrays, uploaded: tuple, **kwargs):
        super().__init__(split, **kwargs)
        self.images, self.labels = uploaded

    def __getitem__(self, index: int):
        ops = keras.ops
        pick, rows, cols = self._batch(index)
        images = ops.take(self.images, pick, axis=0)
        if rows is not None and cols is not None:
            n, (_, padded_width, channels) = len(pick), self.images.shape[1:]
            rows = ops.broadcast_to(rows[:, :, None, None], (n, rows.shape[1], padded_width, channels))
            images = ops.take_along_axis(images, rows, axis=1)
            cols = ops.broadcast_to(cols[:, None, :, None], (n, rows.shape[1], cols.shape[1], channels))
            images = ops.take_along_axis(images, cols, axis=2)
        labels = ops.one_hot(ops.take(self.labels, pick, axis=0), self.num_classes)
        return ops.cast(images, "float32"), labels


def upload(split: Arrays, pad: int) -> tuple:
    """`split`'s images (zero-padded by `pad` for pad-crop) and labels as backend tensors on
    the default device, for `DeviceTrainBatches`."""
    return keras.ops.convert_to_tensor(pad_images(split.images, pad)), keras.ops.convert_to_tensor(split.labels)


class EvalBatches(_Batches):
    """The split in order, unaugmented, in batches (the last one smaller); with `shard`
    (process index, count), this process's share of each (the split must divide evenly)."""

    def __init__(self, split: Arrays, *, num_classes: int, batch_size: int, shard: tuple[int, int] = (0, 1)):
        super().__init__()
        self.split, self.num_classes, self.batch_size, self.shard = split, num_classes, batch_size, shard

    def __len__(self) -> int:
        return -(-len(self.split.labels) // self.batch_size)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        rows = share(
            np.arange(index * self.batch_size, min((index + 1) * self.batch_size, len(self.split.labels))), self.shard
        )
        return (self.split.images[rows].astype(np.float32), one_hot(self.split.labels[rows], self.num_classes))


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((len(labels), num_classes), np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def unsupported_augments(fields: dict) -> list[str]:
    """The recipe's augment fields that are on and that this path does not implement."""
    return [k for k, v in fields.items() if k not in AUGMENTS and v]
