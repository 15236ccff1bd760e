"""Batch-level augmentation for `tf.data`, from a recipe's [augment] fields.

Keras 3 core preprocessing layers do the work (they run inside `tf.data` on any backend);
the CIFAR pad-and-crop is a per-image integer shift written here because Keras's
`RandomCrop` draws one offset per batch. Extra layers (e.g. keras-cv's) can be appended.

Every random draw comes from the batch's key (`position_key`: the run's seed, the epoch and
the step), never from a stream that advances call by call: a run resumed at any step
augments each batch exactly as the run that never stopped did, and parallel `map` calls
cannot change it. Keras 3 random layers (extra ones too) get keyed seed generators; extra
plain callables and layers with a generator of their own (keras-cv's) keep their own
randomness.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import keras

from keras_resnet.mapping import ReadsLikeDict

try:
    import tensorflow as tf
except ImportError:  # JAX or PyTorch without TensorFlow: `DEFAULTS` only (`pydata` augments)
    tf = None


def _allowed(test: Callable, must: str) -> dict:
    """A field's metadata: the values it allows (`config.check_value` reads it)."""
    return {"test": test, "must": must}


@dataclasses.dataclass(frozen=True, eq=False)
class AugmentConfig(ReadsLikeDict):
    """A recipe's [augment] section: each augmentation and its "off" value."""

    pad_crop: int = dataclasses.field(default=0, metadata=_allowed(lambda v: v >= 0, ">= 0"))  # zero padding
    # before a random crop back to size, in pixels (CIFAR: 4)
    flip: bool = True  # random horizontal flip
    scale: float = dataclasses.field(default=0.0, metadata=_allowed(lambda v: 0 <= v < 1, "in [0, 1)"))  # zoom
    rotation: float = 0.0  # random rotation by up to this many degrees
    randaugment: bool = False  # RandAugment (2 ops, magnitude 0.5)
    erasing: float = dataclasses.field(default=0.0, metadata=_allowed(lambda v: 0 <= v <= 1, "a probability in [0, 1]"))
    mixup: float = dataclasses.field(default=0.0, metadata=_allowed(lambda v: v >= 0, ">= 0 (0 turns it off)"))
    cutmix: float = dataclasses.field(
        default=0.0, metadata=_allowed(lambda v: 0 <= v <= 1, "in [0, 1] (0 turns it off)")
    )
    random_resized_crop: bool = False  # Inception-style crop (ImageNet); done per image in data.py


DEFAULTS = dataclasses.asdict(AugmentConfig())


def position_key(seed: int, *parts) -> tf.Tensor:
    """A stateless random key, shape [2]: `seed` folded with each of `parts` (integers or
    scalar tensors, e.g. a stream number, the epoch and the step)."""
    key = tf.constant([seed, 0], tf.int64)
    for part in parts:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(part, tf.int64))
    return key


class _KeyedSeeds(keras.random.SeedGenerator):
    """Seeds for a Keras random layer drawn from the key of the batch being augmented (set
    in `holder` before each call), salted per layer and per draw."""

    def __init__(self, holder: dict, salt: int):
        super().__init__(seed=salt)
        self._holder, self._salt = holder, salt

    def next(self, ordered=True):
        self._holder["draws"] += 1
        return tf.random.experimental.stateless_fold_in(
            self._holder["key"], self._salt * 1_000_003 + self._holder["draws"]
        )


def _key_layers(layers: Sequence[Callable], holder: dict) -> None:
    """Give every Keras random layer in `layers` (nested ones included) keyed seeds."""
    salt = 0
    for layer in layers:
        for inner in layer._flatten_layers() if isinstance(layer, keras.layers.Layer) else ():
            for attr in ("generator", "seed_generator"):
                if isinstance(getattr(inner, attr, None), keras.random.SeedGenerator):
                    salt += 1
                    setattr(inner, attr, _KeyedSeeds(holder, salt))


def pad_crop(images: tf.Tensor, pad: int, key: tf.Tensor) -> tf.Tensor:
    """Zero-pad `pad` pixels per side, then crop each image back at an offset drawn from `key`."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    offsets = tf.random.stateless_uniform([batch, 2], key, 0, 2 * pad + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(height)[None, :]
    cols = offsets[:, 1:] + tf.range(width)[None, :]
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(cropped, cols, axis=2, batch_dims=1)


def build_augmenter(
    fields: dict, *, extra_layers: Sequence[Callable] = ()
) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]] | None:
    """A function (float images [0, 255], one-hot labels, the batch's `position_key`) ->
    (images, labels), applied per batch; None when every field is off."""
    unknown = set(fields) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"Unknown augment field(s) {sorted(unknown)}; valid: {sorted(DEFAULTS)}.")
    f = {**DEFAULTS, **fields}
    if not 0 <= f["cutmix"] <= 1:  # Keras's CutMix refuses other factors with a message naming no field
        raise ValueError(
            f"augment.cutmix must be in [0, 1] (Keras CutMix's factor; 0 turns it off), got {f['cutmix']!r}."
        )
    image_layers: list[Callable] = []
    if f["flip"]:
        image_layers.append(keras.layers.RandomFlip("horizontal"))
    if f["scale"]:
        image_layers.append(keras.layers.RandomZoom(f["scale"], fill_mode="constant"))
    if f["rotation"]:
        image_layers.append(keras.layers.RandomRotation(f["rotation"] / 360.0, fill_mode="constant"))
    if f["randaugment"]:
        image_layers.append(keras.layers.RandAugment(value_range=(0, 255)))
    if f["erasing"]:
        # Keras's `factor=p` draws each image's probability from U(0, p) (a mean of p/2);
        # (p, p) makes `erasing` the probability itself.
        image_layers.append(keras.layers.RandomErasing(factor=(f["erasing"], f["erasing"]), value_range=(0, 255)))
    image_layers += list(extra_layers)
    mixers = []
    if f["mixup"]:
        mixers.append(keras.layers.MixUp(alpha=f["mixup"]))
    if f["cutmix"]:
        mixers.append(keras.layers.CutMix(factor=f["cutmix"]))
    pad = int(f["pad_crop"])
    if not (pad or image_layers or mixers):
        return None

    holder = {"key": None, "draws": 0}
    _key_layers(image_layers + mixers, holder)

    def augment(images, labels, key):
        holder["key"], holder["draws"] = key, 0
        if pad:
            images = pad_crop(images, pad, tf.random.experimental.stateless_fold_in(key, 0))
        for layer in image_layers:
            images = layer(images, training=True) if isinstance(layer, keras.layers.Layer) else layer(images)
        for mixer in mixers:
            out = mixer({"images": images, "labels": labels}, training=True)
            images, labels = out["images"], tf.cast(out["labels"], labels.dtype)
        return images, labels

    return augment
