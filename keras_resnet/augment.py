"""Batch-level augmentation for `tf.data`, from a recipe's [augment] fields.

Keras 3 core preprocessing layers do the work (they run inside `tf.data` on any backend);
the CIFAR pad-and-crop is a per-image integer shift written here because Keras's
`RandomCrop` draws one offset per batch. Extra layers (e.g. keras-cv's) can be appended.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import tensorflow as tf

# Recipe fields and their "off" values.
DEFAULTS = {
    "pad_crop": 0,  # pixels of zero padding before a random crop back to size (CIFAR: 4)
    "flip": True,  # random horizontal flip
    "scale": 0.0,  # random zoom in/out by up to this fraction
    "rotation": 0.0,  # random rotation by up to this many degrees
    "randaugment": False,  # RandAugment (2 ops, magnitude 0.5)
    "erasing": 0.0,  # probability of random erasing
    "mixup": 0.0,  # MixUp alpha (0: off)
    "cutmix": 0.0,  # CutMix factor (0: off)
    "random_resized_crop": False,  # Inception-style crop (ImageNet); done per image in data.py
}


def pad_crop(images: tf.Tensor, pad: int) -> tf.Tensor:
    """Zero-pad `pad` pixels per side, then crop each image back at a random offset."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    offsets = tf.random.uniform([batch, 2], 0, 2 * pad + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(height)[None, :]
    cols = offsets[:, 1:] + tf.range(width)[None, :]
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(cropped, cols, axis=2, batch_dims=1)


def build_augmenter(fields: dict, *, seed: int = 0, extra_layers: Sequence[Callable] = ()
                    ) -> Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]] | None:
    """A function (float images [0, 255], one-hot labels) -> same, applied per batch."""
    unknown = set(fields) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"Unknown augment field(s) {sorted(unknown)}; valid: {sorted(DEFAULTS)}.")
    f = {**DEFAULTS, **fields}
    if not 0 <= f["cutmix"] <= 1:  # Keras's CutMix refuses other factors with a message naming no field
        raise ValueError(f"augment.cutmix must be in [0, 1] (Keras CutMix's factor; 0 turns it off), "
                         f"got {f['cutmix']!r}.")
    image_layers: list[Callable] = []
    if f["flip"]:
        image_layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if f["scale"]:
        image_layers.append(keras.layers.RandomZoom(f["scale"], fill_mode="constant", seed=seed + 1))
    if f["rotation"]:
        image_layers.append(keras.layers.RandomRotation(f["rotation"] / 360.0, fill_mode="constant",
                                                        seed=seed + 2))
    if f["randaugment"]:
        image_layers.append(keras.layers.RandAugment(value_range=(0, 255), seed=seed + 3))
    if f["erasing"]:
        # Keras's `factor=p` draws each image's probability from U(0, p) (a mean of p/2);
        # (p, p) makes `erasing` the probability itself.
        image_layers.append(keras.layers.RandomErasing(factor=(f["erasing"], f["erasing"]),
                                                       value_range=(0, 255), seed=seed + 4))
    image_layers += list(extra_layers)
    mixers = []
    if f["mixup"]:
        mixers.append(keras.layers.MixUp(alpha=f["mixup"], seed=seed + 5))
    if f["cutmix"]:
        mixers.append(keras.layers.CutMix(factor=f["cutmix"], seed=seed + 6))
    pad = int(f["pad_crop"])
    if not (pad or image_layers or mixers):
        return None

    def augment(images, labels):
        if pad:
            images = pad_crop(images, pad)
        for layer in image_layers:
            images = layer(images, training=True) if isinstance(layer, keras.layers.Layer) else layer(images)
        for mixer in mixers:
            out = mixer({"images": images, "labels": labels}, training=True)
            images, labels = out["images"], tf.cast(out["labels"], labels.dtype)
        return images, labels

    return augment
