"""A run's inputs: the data's splits, refusals of what cannot feed this installation, and
the batches: tf.data pipelines, NumPy `PyDataset`s without TensorFlow, or the training set in
accelerator memory (`data.on_device`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from keras_resnet import augment as augment_lib
from keras_resnet import backends, pydata, registry
from keras_resnet import data as data_lib
from keras_resnet.config import RunConfig
from keras_resnet.errors import DataError, DistributeError, RecipeError

ON_DEVICE_MAX_BYTES = 4 << 30  # data.on_device "auto": the padded training images at most this


@dataclasses.dataclass(frozen=True)
class Data:
    """The splits a run trains on, at the model's input size."""

    splits: data_lib.Splits
    image_size: tuple[int, int]
    steps_per_epoch: int


def refuse_unsupported(
    config: RunConfig, extra_augment_layers: Sequence[Callable], distributed: bool, shard: tuple | None = None
) -> None:
    """Refuse, in one line and before the run folder is touched, what this installation
    cannot feed: tf.data's augmentations without TensorFlow or under --strategy multi-process,
    a forced `data.on_device`."""
    if shard:
        sharded = _tf_data_augmentations(config, extra_augment_layers)
        sharded += ["data.eval_crop_fraction"] * bool(config.data.eval_crop_fraction)
        sharded += ["train.ema"] * config.train.ema + ["train.bn_mode=frozen_stats"] * (
            config.train.bn_mode == "frozen_stats"
        )
        if sharded:
            raise DistributeError(
                "--strategy multi-process feeds each process its share of every batch from arrays in memory "
                "(pad-crop and flip only) and re-estimates no BN statistics; it cannot run with "
                f"{', '.join(sharded)}: turn them off, or train on one process (--strategy auto)."
            )
    if not backends.has_tensorflow():
        missing = _tf_data_augmentations(config, extra_augment_layers)
        missing += ["data.eval_crop_fraction"] * bool(config.data.eval_crop_fraction)
        name = config.data.name
        if not name.endswith(".npz") and not data_lib.is_folder(name):
            data_lib.require_tfds(name)
        if missing:
            backends.require_tensorflow(", ".join(missing), "turn it off")
    on_device_blockers(config, extra_augment_layers, distributed)


def _tf_data_augmentations(config: RunConfig, extra_augment_layers: Sequence[Callable]) -> list[str]:
    """The training augmentations that only the tf.data pipeline applies."""
    return [f"augment.{k}" for k in pydata.unsupported_augments(dataclasses.asdict(config.augment))] + [
        "extra_augment_layers"
    ] * bool(extra_augment_layers)


def on_device_blockers(
    config: RunConfig, extra_augment_layers: Sequence[Callable], distributed: bool, resize: bool = False
) -> list[str]:
    """What keeps the training set from accelerator memory (`data.on_device`); with
    `data.on_device = true`, refused in one line."""
    blockers = _tf_data_augmentations(config, extra_augment_layers)
    blockers += ["data.image_size (a resize)"] * resize
    blockers += ["--strategy (several devices)"] * distributed
    blockers += [f"the {backends.name()} backend (tf.data feeds it)"] * (backends.name() == "tensorflow")
    if blockers and config.data.on_device is True:
        raise RecipeError(
            f"data.on_device=true cannot be used with {', '.join(blockers)}: set "
            "data.on_device to 'auto' or false, or run on KERAS_BACKEND=jax or torch "
            "with pad-crop/flip augmentation only."
        )
    return blockers


def load(config: RunConfig, log: Callable[[str], None]) -> Data:
    """The splits `config.data` names, the input size, and the steps of an epoch."""
    t, d = config.train, config.data
    splits = data_lib.load(
        d.name,
        data_dir=d.data_dir or None,
        cache_dir=d.cache_dir or None,
        max_train_samples=d.max_train_samples or None,
        max_eval_samples=d.max_eval_samples or None,
        seed=t.seed,
        classes=d.classes or None,
    )
    if splits.skipped:
        log(
            f"Skipped {len(splits.skipped)} unreadable or non-image file(s): "
            f"{', '.join(splits.skipped[:5])}{' ...' if len(splits.skipped) > 5 else ''}"
        )
    image_size = tuple(d.image_size) if all(d.image_size) else splits.image_size
    if not image_size:
        raise DataError("Images vary in size: set data.image_size (e.g. --set 'data.image_size=[224, 224]').")
    steps_per_epoch = splits.num_train // t.batch_size
    if steps_per_epoch == 0:
        raise DataError(
            f"batch_size {t.batch_size} exceeds the {splits.num_train} training "
            "images; lower --batch-size or use more data."
        )
    return Data(splits, (int(image_size[0]), int(image_size[1])), steps_per_epoch)


def _on_device(config: RunConfig, data: Data, extra_augment_layers: Sequence[Callable], distributed: bool) -> bool:
    """`data.on_device`: false never; true always (a CPU too); "auto" on a GPU or TPU under
    JAX or PyTorch when only pad-crop/flip augment the data and the padded training images
    take at most `ON_DEVICE_MAX_BYTES`."""
    setting = config.data.on_device
    if setting is False:
        return False
    splits, (height, width) = data.splits, data.image_size
    blockers = on_device_blockers(config, extra_augment_layers, distributed, splits.image_size != data.image_size)
    if setting is True:
        return True
    pad = config.augment.pad_crop
    nbytes = splits.num_train * (height + 2 * pad) * (width + 2 * pad) * 3
    return not blockers and backends.accelerator() is not None and nbytes <= ON_DEVICE_MAX_BYTES


@dataclasses.dataclass(frozen=True)
class Feed:
    """The evaluation batches and the training batches of a run: `training(first_epoch,
    end_epoch, first_step)` passes over the training data from epoch `first_epoch`'s batch
    `first_step` to the end of epoch `end_epoch - 1` (the phase's epoch numbers)."""

    eval_batches: Any
    training: Callable[..., Any]
    on_device: bool
    drawn_by: str  # what draws the training batches: "tf.data" or "NumPy"
    validation: Any = None  # what `fit` validates on, when not `eval_batches` (a process's share)


def feed(
    config: RunConfig,
    data: Data,
    extra_augment_layers: Sequence[Callable],
    distributed: bool,
    shard: tuple[int, int] | None = None,
    replicas: int = 1,
) -> Feed:
    """The run's batches: tf.data where TensorFlow is installed, `pydata` PyDatasets of
    in-memory arrays where it is not, `pydata.DeviceTrainBatches` on the device; with
    `shard` (process index, count) of a JAX cluster, this process's share of every batch."""
    if shard:
        return _sharded_feed(config, data, shard, replicas)
    on_device = _on_device(config, data, extra_augment_layers, distributed)
    splits, image_size, batch = data.splits, data.image_size, config.train.batch_size
    if isinstance(splits.test, pydata.Arrays):
        if splits.image_size != image_size:
            backends.require_tensorflow("data.image_size (a resize)", "resize the images beforehand")
        eval_batches = pydata.EvalBatches(splits.test, num_classes=splits.num_classes, batch_size=batch)
    else:
        eval_batches = data_lib.eval_pipeline(
            data_lib.with_one_hot(splits.test, splits.num_classes),
            batch_size=batch,
            image_size=image_size,
            fixed_size=splits.image_size == image_size,
            crop_fraction=config.data.eval_crop_fraction or None,
            interpolation=registry.interpolation_for(config.model.weights),
        )
    if isinstance(splits.train, pydata.Arrays) or on_device:
        return Feed(eval_batches, _NumpyBatches(config, data, on_device), on_device, "NumPy")
    return Feed(eval_batches, _TfDataBatches(config, data, extra_augment_layers), False, "tf.data")


def _sharded_feed(config: RunConfig, data: Data, shard: tuple[int, int], replicas: int) -> Feed:
    """Batches for one process of a JAX cluster: its share of each global batch, drawn as one
    process would draw the whole (`pydata.TrainBatches`); the whole test set for process 0's
    final evaluation, and its share of it for the validation during training (every batch,
    the last too, split over all `replicas`: every device of every process)."""
    splits = data.splits
    if splits.image_size != data.image_size:
        raise DistributeError(
            "--strategy multi-process feeds arrays in memory at their own size: resize the images beforehand "
            "instead of data.image_size."
        )
    test = splits.test if isinstance(splits.test, pydata.Arrays) else data_lib.to_arrays(splits.test, splits.num_test)
    if config.train.validate_every and splits.num_test % replicas:
        raise DistributeError(
            f"The {splits.num_test} test images do not split evenly over the {replicas} devices for the validation "
            f"during training: set train.validate_every=0 (process 0 still scores the whole test set at the end), "
            f"or data.max_eval_samples to a multiple of {replicas}."
        )
    batch, classes = config.train.batch_size, splits.num_classes
    return Feed(
        pydata.EvalBatches(test, num_classes=classes, batch_size=batch),
        _NumpyBatches(config, data, False, shard),
        False,
        "NumPy",
        validation=pydata.EvalBatches(test, num_classes=classes, batch_size=batch, shard=shard),
    )


class _NumpyBatches:
    """`Feed.training` from arrays in memory, or uploaded to the accelerator; with `shard`,
    a process's share of each batch."""

    def __init__(self, config: RunConfig, data: Data, on_device: bool, shard: tuple[int, int] = (0, 1)):
        splits = data.splits
        self.config, self.classes, self.shard = config, splits.num_classes, shard
        self.train = (
            splits.train
            if isinstance(splits.train, pydata.Arrays)
            else data_lib.to_arrays(splits.train, splits.num_train)
        )
        self.uploaded = pydata.upload(self.train, config.augment.pad_crop) if on_device else None

    def __call__(self, first_epoch: int, end_epoch: int | None = None, first_step: int = 0):
        t = self.config.train
        kind, args = (
            (pydata.DeviceTrainBatches, (self.uploaded,)) if self.uploaded is not None else (pydata.TrainBatches, ())
        )
        batches = kind(
            self.train,
            *args,
            num_classes=self.classes,
            batch_size=t.batch_size,
            seed=t.seed,
            first_epoch=first_epoch,
            end_epoch=t.epochs if end_epoch is None else end_epoch,
            first_step=first_step,
            augment=dataclasses.asdict(self.config.augment),
        )
        batches.shard = self.shard
        return batches


class _TfDataBatches:
    """`Feed.training` as tf.data pipelines, augmented per batch."""

    def __init__(self, config: RunConfig, data: Data, extra_augment_layers: Sequence[Callable]):
        self.config, self.data = config, data
        fields = {k: v for k, v in dataclasses.asdict(config.augment).items() if k != "random_resized_crop"}
        self.augmenter = augment_lib.build_augmenter(fields, extra_layers=extra_augment_layers)

    def __call__(self, first_epoch: int, end_epoch: int | None = None, first_step: int = 0):
        t, splits, image_size = self.config.train, self.data.splits, self.data.image_size
        return data_lib.train_pipeline(
            data_lib.with_one_hot(splits.train, splits.num_classes),
            num_examples=splits.num_train,
            batch_size=t.batch_size,
            epochs=t.epochs if end_epoch is None else end_epoch,
            initial_epoch=first_epoch,
            initial_step=first_step,
            seed=t.seed,
            image_size=image_size,
            fixed_size=splits.image_size == image_size,
            augment=self.augmenter,
            random_resized_crop=self.config.augment.random_resized_crop,
        )
