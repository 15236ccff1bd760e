"""Datasets -> `tf.data`: TFDS by name, image folders or `.npz` arrays, subsampling,
normalization stats.

A dataset is loaded as `Splits`: unbatched (uint8 HxWx3 image, int32 label) datasets plus
class names and counts. Small images (<= `MEMORY_MAX_SIDE`) are decoded once into memory;
larger ones are decoded per epoch (optionally with a file cache). Without TensorFlow, image
folders and `.npz` files load as `pydata.Arrays` instead (decoded into memory with Pillow),
and TFDS datasets are refused with the way to convert them once.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from keras_resnet import augment as augment_lib
from keras_resnet import layers, pydata
from keras_resnet.errors import DataError

try:
    import tensorflow as tf
except ImportError:  # JAX or PyTorch without TensorFlow: folders and arrays load as `pydata.Arrays`
    tf = None

# tf.data's autotuner is off (`prefetched`): maps run on every core, prefetch two batches.
PARALLEL_CALLS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
PREFETCH_BATCHES = 2
# ImageNet statistics on the [0, 255] scale, for data whose own statistics are not computed.
IMAGENET_MEAN = tuple(255 * m for m in layers.IMAGENET_MEAN)
IMAGENET_STD = tuple(255 * s for s in layers.IMAGENET_STD)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
EVAL_SPLIT_NAMES = ("test", "val", "validation")
MEMORY_MAX_SIDE = 64  # decode-once-into-memory for images up to this side


@dataclasses.dataclass
class Splits:
    train: tf.data.Dataset | pydata.Arrays
    test: tf.data.Dataset | pydata.Arrays
    class_names: list[str]
    num_train: int
    num_test: int
    image_size: tuple[int, int] | None  # fixed (H, W) when every image has it
    mean: tuple[float, ...]  # per-channel RGB statistics on [0, 255]
    std: tuple[float, ...]
    source: str
    skipped: list[str] = dataclasses.field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def stratified_subset(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Indices of a seeded random subset of `n`, drawn across all classes (round-robin)."""
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    order = [
        idx
        for rank in range(max(map(len, per_class)))
        for group in per_class
        if rank < len(group)
        for idx in [group[rank]]
    ]
    return np.sort(np.asarray(order[:n]))


# -- image folders -------------------------------------------------------------------------


def _pick_classes(available: list[str], classes: list[str] | None, source: str) -> list[int]:
    """Indices into `available` of the `classes` asked for, in their order (all by default)."""
    if not classes:
        return list(range(len(available)))
    unknown = [c for c in classes if c not in available]
    if unknown or len(set(classes)) != len(classes):
        raise DataError(
            f"data.classes {list(classes)}: {'unknown ' + str(unknown) if unknown else 'repeated names'}; "
            f"{source} has {available}."
        )
    return [available.index(c) for c in classes]


def _class_folders(split_dir: Path) -> list[str]:
    names = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not names:
        raise DataError(f"{split_dir} has no class folders: expected {split_dir}/<class>/<image>.jpg.")
    return names


def _list_split(split_dir: Path, class_names: list[str]) -> tuple[list[str], np.ndarray, list[str]]:
    paths, labels, skipped = [], [], []
    for label, name in enumerate(class_names):
        folder = split_dir / name
        images = []
        for f in sorted(folder.iterdir()) if folder.is_dir() else []:
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                images.append(f)
            elif f.is_file():
                skipped.append(str(f))
        if not images:
            raise DataError(
                f"Class folder {folder} has no JPEG/PNG images (classes must match across splits: {class_names})."
            )
        paths += [str(f) for f in images]
        labels += [label] * len(images)
    return paths, np.asarray(labels, np.int32), skipped


def decode_file(path: str | os.PathLike, channels: int = 3) -> np.ndarray:
    """One JPEG/PNG file as a uint8 HxWxC array, decoded as the `serving_bytes` signature
    decodes it: the package's one image decoder (`pydata.decode_files` is the same without
    TensorFlow). A missing or unreadable file is a `DataError` that names it."""
    try:
        encoded = tf.io.read_file(str(path))
        return tf.io.decode_image(encoded, channels=channels, expand_animations=False).numpy()
    except tf.errors.NotFoundError:
        raise DataError(f"Cannot read image {path}: no such file.") from None
    except tf.errors.OpError as err:
        first = (err.message or type(err).__name__).splitlines()[0]
        first = re.sub(r"\s*\[Op:.*$", "", re.sub(r"\{\{[^}]*\}\}\s*", "", first)).rstrip(". ")
        raise DataError(f"Cannot read image {path}: {first}. Pass JPEG or PNG files.") from None


def _decode_all(paths: list[str]) -> tuple[list[np.ndarray | None], list[str]]:
    """Decode every file once (threads), naming each that fails."""
    if tf is None:
        return pydata.decode_files(paths)

    def safe(path):
        try:
            return decode_file(path)
        except DataError:
            return None

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        images = list(pool.map(safe, paths, chunksize=256))
    return images, [p for p, img in zip(paths, images) if img is None]


def _has_image_header(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(8)
    return head.startswith(b"\xff\xd8\xff") or head.startswith(b"\x89PNG")


def _folder_split(paths, labels, *, in_memory: bool, cache_file: str | None):
    """(dataset, count, fixed size or None, skipped files, decoded array or None).

    In memory, every file is decoded now and the unreadable ones are named. Streamed,
    files without a JPEG/PNG header are named and left out now; a file that is damaged
    further in is dropped when it is read (with a warning), not a crash mid-epoch.
    """
    if in_memory:
        images, corrupt = _decode_all(paths)
        keep = [i for i, img in enumerate(images) if img is not None]
        kept = [img for img in images if img is not None]
        sizes = {img.shape[:2] for img in kept}
        if len(sizes) > 1:
            raise DataError(
                f"Images have different sizes {sorted(sizes)[:4]}; resize them to one size "
                "first, or give the size: --set 'data.image_size=[32, 32]'."
            )
        array = np.stack(kept) if kept else np.zeros((0, 1, 1, 3), np.uint8)
        ds = (
            pydata.Arrays(array, labels[keep])
            if tf is None
            else tf.data.Dataset.from_tensor_slices((array, labels[keep]))
        )
        return ds, len(keep), next(iter(sizes)) if sizes else None, corrupt, array

    def load(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return image, label

    good = [i for i, path in enumerate(paths) if _has_image_header(path)]
    bad = [paths[i] for i in sorted(set(range(len(paths))) - set(good))]
    ds = tf.data.Dataset.from_tensor_slices(([paths[i] for i in good], labels[good]))
    ds = ds.map(load, num_parallel_calls=PARALLEL_CALLS).ignore_errors(log_warning=True)
    if cache_file:
        ds = ds.cache(cache_file)
    return ds, len(good), None, bad, None


def image_size_from_header(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of a PNG or JPEG file read from its header in plain Python.

    Reading sizes this way leaves TensorFlow's runtime untouched, which multi-worker
    training needs (its collectives must be configured before the runtime starts).
    """
    with open(path, "rb") as f:
        head = f.read(26)
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            width, height = struct.unpack(">II", head[16:24])
            return height, width
        if head.startswith(b"\xff\xd8"):
            f.seek(2)
            while True:
                marker = f.read(2)
                if len(marker) < 2 or marker[0] != 0xFF:
                    break
                if marker[1] in (0xD8, 0x01) or 0xD0 <= marker[1] <= 0xD7:
                    continue  # markers without a length field
                length = struct.unpack(">H", f.read(2))[0]
                if 0xC0 <= marker[1] <= 0xCF and marker[1] not in (0xC4, 0xC8, 0xCC):
                    height, width = struct.unpack(">xHH", f.read(5))
                    return height, width
                f.seek(length - 2, 1)
    raise DataError(
        f"{path} is not a readable PNG or JPEG file (no image size in its header); remove it or convert it to PNG/JPEG."
    )


def _peek_side(path: str) -> int:
    return max(image_size_from_header(path))


def load_image_folder(
    root: str | os.PathLike,
    *,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
    include_train: bool = True,
    classes: list[str] | None = None,
) -> Splits:
    """`root/train/<class>/*.jpg` and `root/{test,val,validation}/<class>/*.jpg`.

    `include_train=False` lists the training split for its class names only (evaluation);
    `classes` keeps those class folders only, labelled 0.. in that order.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"Data folder {root} does not exist. Point --data at a folder with "
            "train/ and test/ (or val/) sub-folders of class folders."
        )
    train_dir = root / "train"
    eval_dir = next((root / n for n in EVAL_SPLIT_NAMES if (root / n).is_dir()), None)
    if not train_dir.is_dir() or eval_dir is None:
        raise DataError(
            f"{root} needs train/ and one of {'/'.join(EVAL_SPLIT_NAMES)}/ sub-folders, "
            "each holding one folder per class."
        )
    folders = _class_folders(train_dir)
    class_names = [folders[i] for i in _pick_classes(folders, classes, str(train_dir))]
    train_paths, train_labels, skipped = _list_split(train_dir, class_names)
    eval_paths, eval_labels, skipped_eval = _list_split(eval_dir, class_names)
    skipped += skipped_eval

    if not include_train:
        train_paths, train_labels = train_paths[:1], train_labels[:1]
    pick_train = stratified_subset(train_labels, max_train_samples, seed)
    pick_eval = stratified_subset(eval_labels, max_eval_samples, seed + 1)
    in_memory = tf is None or _peek_side(train_paths[0]) <= MEMORY_MAX_SIDE
    cache = (lambda split: os.path.join(cache_dir, f"{split}.tfcache")) if cache_dir else (lambda s: None)
    train, n_train, size, bad_train, train_array = _folder_split(
        [train_paths[i] for i in pick_train], train_labels[pick_train], in_memory=in_memory, cache_file=cache("train")
    )
    test, n_test, _, bad_test, _ = _folder_split(
        [eval_paths[i] for i in pick_eval], eval_labels[pick_eval], in_memory=in_memory, cache_file=cache("test")
    )
    skipped += bad_train + bad_test
    if n_train == 0 or n_test == 0:
        raise DataError(f"No readable images in {root} ({len(skipped)} files skipped).")
    mean, std = channel_stats(train_array) if train_array is not None else (IMAGENET_MEAN, IMAGENET_STD)
    return Splits(train, test, class_names, n_train, n_test, size, mean, std, source=f"folder:{root}", skipped=skipped)


# -- TFDS ----------------------------------------------------------------------------------


def _tfds_builder(name: str, data_dir: str | None):
    """TFDS's builder of `name`, prepared, with image/label features and a train and an eval
    split; one-line `DataError`s otherwise."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # DatasetNotFoundError and friends
        raise DataError(
            f"Unknown TFDS dataset {name!r} ({type(err).__name__}). Use a TFDS "
            "image-classification name (cifar10, cifar100, imagenette, ...) or "
            "--data <folder> for local images."
        ) from err
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise DataError(f"TFDS dataset {name!r} has no image/label features.")
    try:
        builder.download_and_prepare()
    except Exception as err:
        raise DataError(
            f"Could not fetch TFDS dataset {name!r} ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160]}). Offline, point --data at a local folder "
            "with train/ and test/ class folders, e.g. --data ../shared/datasets/"
            "cifar10-jpeg."
        ) from err
    splits = list(builder.info.splits)
    if "train" not in splits or not any(s in splits for s in EVAL_SPLIT_NAMES):
        raise DataError(f"TFDS dataset {name!r} needs a train split and one of {EVAL_SPLIT_NAMES}; it has {splits}.")
    return builder


@dataclasses.dataclass(frozen=True)
class _TfdsReader:
    """Reads one split of a prepared TFDS dataset: the classes kept (`remap`: TFDS label ->
    ours, -1 for a class left out), a seeded stratified subset."""

    builder: Any
    remap: np.ndarray
    subset_classes: bool
    read_config: Any

    def take(self, split: str, n: int | None, seed: int) -> tuple[tf.data.Dataset, int]:
        import tensorflow_datasets as tfds

        builder, remap = self.builder, self.remap
        ds = builder.as_dataset(split=split, as_supervised=True, read_config=self.read_config)
        total = builder.info.splits[split].num_examples
        if self.subset_classes:
            ds = ds.map(lambda image, label: (image, tf.gather(remap, tf.cast(label, tf.int32))))
        if (n is None or n >= total) and not self.subset_classes:
            return ds, total
        undecoded = builder.as_dataset(split=split, as_supervised=True, decoders={"image": tfds.decode.SkipDecoding()})
        labels = remap[np.fromiter((int(label) for _, label in tfds.as_numpy(undecoded)), np.int32)]
        keep = np.zeros(total, bool)
        chosen = np.flatnonzero(labels >= 0)
        keep[chosen[stratified_subset(labels[chosen], n, seed)]] = True
        mask = tf.constant(keep)
        ds = ds.enumerate().filter(lambda i, _: mask[i]).map(lambda _, example: example)
        return ds, int(keep.sum())


def load_tfds(
    name: str,
    *,
    data_dir: str | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
    include_train: bool = True,
    classes: list[str] | None = None,
) -> Splits:
    """A TFDS image-classification dataset by name (image/label features); `classes` keeps
    those classes only, labelled 0.. in that order."""
    import tensorflow_datasets as tfds

    builder = _tfds_builder(name, data_dir)
    features = builder.info.features
    eval_split = next(s for s in EVAL_SPLIT_NAMES if s in builder.info.splits)
    all_names = features["label"].names
    picked = _pick_classes(all_names, classes, f"TFDS {name!r}")
    remap = np.full(len(all_names), -1, np.int32)
    remap[picked] = np.arange(len(picked))

    shape = features["image"].shape
    size = tuple(shape[:2]) if None not in shape[:2] else None
    in_memory = bool(size and max(size) <= MEMORY_MAX_SIDE and include_train)
    # We cache small splits ourselves: TFDS's own autocache would be a second copy, and the
    # statistics sample below would read it partially (TensorFlow then discards it, warning).
    reader = _TfdsReader(builder, remap, bool(classes), tfds.ReadConfig(try_autocache=not in_memory))
    if include_train:
        train, n_train = reader.take("train", max_train_samples, seed)
    else:
        train, n_train = builder.as_dataset(split="train", as_supervised=True).take(0), 0
    test, n_test = reader.take(eval_split, max_eval_samples, seed + 1)
    cast = lambda image, label: (image, tf.cast(label, tf.int32))  # noqa: E731
    train, test = train.map(cast), test.map(cast)
    if in_memory:
        sample = np.stack([img for img, _ in tfds.as_numpy(train.take(10_000))])
        mean, std = channel_stats(sample)
        train, test = train.cache(), test.cache()  # after the partial read, so nothing discards it
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return Splits(
        train,
        test,
        [all_names[i] for i in picked],
        n_train,
        n_test,
        size,
        mean,
        std,
        source=f"tfds:{name}" + (f" ({len(picked)} classes)" if classes else ""),
    )


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel RGB mean and std of uint8 images, on the [0, 255] scale."""
    flat = images.reshape(-1, 3).astype(np.float64)
    return tuple(map(float, flat.mean(0))), tuple(map(float, flat.std(0)))


def require_tfds(data: str) -> None:
    """Refuse the TFDS dataset `data` where TensorFlow (which reads it) is not installed."""
    if tf is None:
        raise DataError(
            f"Reading the TFDS dataset {data!r} needs TensorFlow, which is not installed: pip install "
            "'keras-resnet-family[tensorflow]'. Convert it once where TensorFlow is (docs/training.md, 'Without "
            "TensorFlow') and pass the .npz, or pass an image folder: --data FOLDER."
        )


def is_folder(data: str) -> bool:
    """A path (it exists or looks like one) rather than a TFDS name."""
    return os.sep in data or data.startswith(".") or Path(data).exists()


def peek_image_side(data: str, data_dir: str | None = None) -> int:
    """The longer side of the dataset's images (one decoded file, or TFDS metadata)."""
    if data.endswith(".npz"):
        return max(pydata.npz_shape(data, "x_train")[1:3])
    if is_folder(data):
        first = next((f for f in sorted(Path(data, "train").glob("*/*")) if f.suffix.lower() in IMAGE_EXTENSIONS), None)
        if first is None:
            load_image_folder(data)  # raises the precise error about the layout
        return _peek_side(str(first))
    require_tfds(data)
    import tensorflow_datasets as tfds

    try:
        shape = tfds.builder(data, data_dir=data_dir).info.features["image"].shape
    except Exception as err:
        raise DataError(
            f"Unknown TFDS dataset {data!r} ({type(err).__name__}). Use a TFDS "
            "image-classification name or --data <folder> for local images."
        ) from err
    return max(shape[:2]) if None not in shape[:2] else 1 << 30


def count_train(
    data: str, data_dir: str | None = None, classes: list[str] | None = None, max_train_samples: int | None = None
) -> int:
    """How many training images `load` will give, without decoding any: files in the class
    folders, or TFDS's split size (times the share of `classes`, for balanced datasets)."""
    if data.endswith(".npz"):
        total = pydata.npz_shape(data, "x_train")[0]
        if classes:  # balanced, as for TFDS
            total = total * len(classes) // (int(np.load(data)["y_train"].max()) + 1)
        return min(total, max_train_samples) if max_train_samples else total
    if is_folder(data):
        train_dir = Path(data, "train")
        folders = _class_folders(train_dir) if train_dir.is_dir() else []
        names = [folders[i] for i in _pick_classes(folders, classes, str(train_dir))] if folders else []
        total = sum(1 for name in names for f in (train_dir / name).iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
    else:
        require_tfds(data)
        import tensorflow_datasets as tfds

        try:
            builder = tfds.builder(data, data_dir=data_dir)
            if "train" not in builder.info.splits:  # not prepared yet: as `load_tfds` would
                builder.download_and_prepare()
            total = builder.info.splits["train"].num_examples
            labels = builder.info.features["label"].names
        except Exception as err:
            raise DataError(
                f"Cannot read the size of TFDS dataset {data!r} ({type(err).__name__}); "
                "use --data <folder> for local images."
            ) from err
        if classes:
            total = total * len(_pick_classes(labels, classes, f"TFDS {data!r}")) // len(labels)
    return min(total, max_train_samples) if max_train_samples else total


def load_npz(
    path: str,
    *,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
    include_train: bool = True,
    classes: list[str] | None = None,
) -> Splits:
    """Arrays from a `.npz` (`pydata.load_npz`'s layout); classes are named "0", "1", ...;
    `classes` keeps those only, labelled 0.. in that order."""
    train, test = pydata.load_npz(path)
    available = [str(i) for i in range(int(max(train.labels.max(initial=0), test.labels.max(initial=0))) + 1)]
    picked = _pick_classes(available, classes, path)
    remap = np.full(len(available), -1, np.int32)
    remap[picked] = np.arange(len(picked))
    chosen = []
    for split, n, split_seed in (
        (train, max_train_samples if include_train else 1, seed),
        (test, max_eval_samples, seed + 1),
    ):
        labels = remap[split.labels]
        rows = np.flatnonzero(labels >= 0)
        rows = rows[stratified_subset(labels[rows], n, split_seed)]
        chosen.append(pydata.Arrays(split.images[rows], labels[rows]))
    train, test = chosen
    if not len(train.labels) or not len(test.labels):
        raise DataError(f"{path} has no images left in its train or test split (classes {classes}).")
    mean, std = channel_stats(train.images[:10_000])
    counts, size = (len(train.labels), len(test.labels)), tuple(train.images.shape[1:3])
    if tf is not None:
        train, test = (tf.data.Dataset.from_tensor_slices((a.images, a.labels)) for a in (train, test))
    return Splits(train, test, [available[i] for i in picked], *counts, size, mean, std, source=f"npz:{path}")


def load(data: str, **kwargs) -> Splits:
    """A `.npz` file, a folder path or a TFDS name."""
    if data.endswith(".npz"):
        kwargs.pop("data_dir", None), kwargs.pop("cache_dir", None)
        return load_npz(data, **kwargs)
    if is_folder(data):
        kwargs.pop("data_dir", None)
        return load_image_folder(data, **kwargs)
    require_tfds(data)
    kwargs.pop("cache_dir", None)
    return load_tfds(data, **kwargs)


# -- pipelines -------------------------------------------------------------------------------


def resize_eval(image, size: tuple[int, int], crop_fraction: float | None, interpolation: str = "bilinear"):
    """Resize the shorter side to size/crop_fraction, then center-crop `size` (ImageNet eval);
    without a crop, resize to `size` (a no-op at that size). `interpolation`: "bilinear" or
    "bicubic" (the resize a weight record's top-1 was measured with). The one eval resize:
    the run's own evaluation, `evaluate`, `predict`, the SavedModel's image-bytes signatures
    and the export parity check all reach it through `evaluation.preprocess`/`eval_pipeline`."""
    image = tf.cast(image, tf.float32)
    if crop_fraction:
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = tf.cast(max(size), tf.float32) / crop_fraction / tf.reduce_min(shape)
        resized = tf.cast(tf.round(shape * scale), tf.int32)
        image = tf.image.resize(image, resized, method=interpolation, antialias=True)
        return tf.image.resize_with_crop_or_pad(image, size[0], size[1])
    return tf.image.resize(image, size, method=interpolation) if image.shape[:2] != tuple(size) else image


def with_one_hot(ds: tf.data.Dataset, num_classes: int) -> tf.data.Dataset:
    """(image, label) pairs with one-hot float labels."""
    return ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)))


def to_arrays(ds: tf.data.Dataset, count: int) -> pydata.Arrays:
    """A split of fixed-size images (`Splits.train`) in memory as `pydata.Arrays`."""
    images, labels = next(ds.batch(count).as_numpy_iterator())
    return pydata.Arrays(np.asarray(images, np.uint8), np.asarray(labels, np.int32))


def prefetched(ds: tf.data.Dataset) -> tf.data.Dataset:
    """The end of every pipeline: `PREFETCH_BATCHES` prefetched, tf.data's autotuner off (the
    maps use `PARALLEL_CALLS`).

    With the autotuner on, deleting an iterator waits for its next wake-up, which comes 5.11 s,
    10.23 s, 20.47 s... after the iterator was made: every `evaluate`, and `fit` at its end,
    returned up to seconds late (a `fit` of 4.2 s of steps returned after 5.11 s;
    benchmarks/README.md). Steps measured no faster with it on.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(PREFETCH_BATCHES).with_options(options)


def train_pipeline(
    ds: tf.data.Dataset,
    *,
    num_examples: int,
    batch_size: int,
    epochs: int,
    initial_epoch: int,
    seed: int,
    image_size: tuple[int, int],
    fixed_size: bool,
    augment=None,
    random_resized_crop: bool = False,
    initial_step: int = 0,
) -> tf.data.Dataset:
    """Epochs `initial_epoch..epochs-1` (the first from batch `initial_step`), each shuffled
    with seed `seed + epoch`, batched, augmented per batch, prefetched.

    A batch's images and every random draw of its augmentation depend on (seed, epoch,
    step) alone (`augment.position_key`), so a run resumed at any step sees what the run
    that never stopped saw. One `flat_map` over the epoch numbers, not a chain of per-epoch
    copies: an in-memory split is held once, whatever the number of epochs.
    """

    def one_epoch(epoch):
        # The order depends on the op-level seed alone. (With a graph-level seed of 0, as
        # `keras.utils.set_random_seed(0)` sets, TensorFlow cannot take a tensor op seed.)
        tf.compat.v1.get_default_graph().seed = None
        epoch_ds = ds.shuffle(min(num_examples, 50_000), seed=seed + epoch, reshuffle_each_iteration=False).enumerate()
        epoch_ds = epoch_ds.skip(
            tf.where(epoch == initial_epoch, tf.cast(initial_step * batch_size, tf.int64), tf.constant(0, tf.int64))
        )
        if random_resized_crop:
            epoch_ds = epoch_ds.map(
                lambda i, xy: (
                    i,
                    (_random_resized_crop(xy[0], image_size, augment_lib.position_key(seed, 1, epoch, i)), xy[1]),
                ),
                num_parallel_calls=PARALLEL_CALLS,
            )
        elif not fixed_size:
            epoch_ds = epoch_ds.map(
                lambda i, xy: (i, (resize_eval(xy[0], image_size, None), xy[1])), num_parallel_calls=PARALLEL_CALLS
            )
        return epoch_ds.batch(batch_size, drop_remainder=True).map(
            lambda i, xy: (xy[0], xy[1], augment_lib.position_key(seed, 0, epoch, i[0] // batch_size))
        )

    batches = tf.data.Dataset.range(initial_epoch, epochs).flat_map(one_epoch)
    augment = augment or (lambda x, y, key: (x, y))
    batches = batches.map(lambda x, y, key: augment(tf.cast(x, tf.float32), y, key), num_parallel_calls=PARALLEL_CALLS)
    return prefetched(batches)


def eval_pipeline(
    ds: tf.data.Dataset,
    *,
    batch_size: int,
    image_size: tuple[int, int],
    fixed_size: bool,
    crop_fraction: float | None = None,
    interpolation: str = "bilinear",
) -> tf.data.Dataset:
    if not fixed_size or crop_fraction:
        ds = ds.map(
            lambda x, y: (resize_eval(x, image_size, crop_fraction, interpolation), y),
            num_parallel_calls=PARALLEL_CALLS,
        )
    else:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=PARALLEL_CALLS)
    return prefetched(ds.batch(batch_size))


def _random_resized_crop(image, size, key, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Inception-style crop (random area and aspect, drawn from `key`), resized to `size`."""
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        tf.zeros([0, 0, 4], tf.float32),
        seed=key,
        min_object_covered=0.0,
        aspect_ratio_range=ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, crop_size)
    return tf.image.resize(tf.cast(crop, tf.float32), size, antialias=True)
