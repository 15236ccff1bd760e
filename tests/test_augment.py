"""Augmentation on real CIFAR-10 images: every recipe [augment] field must visibly change the
images, with the statistics its recipe value promises (an identity augmenter fails here)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_resnet import augment

OFF = {"flip": False}  # DEFAULTS turn flip on; the single-op tests turn it off


def _own_class_labels(n):
    """One class per image: a mixed label names the two source images and their weights."""
    return tf.one_hot(np.arange(n), n)


def _through_tf_data(fn, images, batches, labels=None):
    """`fn` mapped over `batches` copies of the batch inside tf.data, as `train` runs it:
    (stacked output images, stacked output labels, inputs repeated to match)."""
    labels = _own_class_labels(len(images)) if labels is None else labels
    ds = tf.data.Dataset.from_tensors((tf.constant(images), labels)).repeat(batches).enumerate().map(
        lambda step, xy: fn(xy[0], xy[1], augment.position_key(0, 0, 0, step)))
    outs = [(x.numpy(), y.numpy()) for x, y in ds]
    return (np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs]),
            np.tile(images, (batches, 1, 1, 1)))


def _check_image_contract(out, images):
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0 + 1e-3


# -- pad and crop --------------------------------------------------------------------------

def test_pad_crop_shifts_each_image_by_whole_pixels():
    images = tf.reshape(tf.range(8 * 32 * 32 * 3, dtype=tf.float32), (8, 32, 32, 3)) + 1.0
    out = augment.pad_crop(images, 4, augment.position_key(0)).numpy()
    assert out.shape == (8, 32, 32, 3)
    offsets = set()
    for original, shifted in zip(images.numpy(), out):
        # every non-zero pixel of the output is a pixel of the input (an integer shift)
        assert np.isin(shifted[shifted > 0], original).all()
        row, col = np.argwhere(shifted[..., 0] == original[16, 16, 0])[0]
        offsets.add((row - 16, col - 16))
        assert max(abs(row - 16), abs(col - 16)) <= 4
    assert len(offsets) > 1  # per-image offsets, not one per batch


def test_pad_crop_output_equals_the_zero_padded_real_image_shifted(cifar_images):
    """Each output is exactly a 32x32 window of the zero-padded input; the window offsets are
    spread uniformly over the 9x9 possible ones, independently per image."""
    fn = augment.build_augmenter({**OFF, "pad_crop": 4})
    out, _, images = _through_tf_data(fn, cifar_images, batches=10)
    _check_image_contract(out, images)
    padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)])
    offsets = []
    for k, shifted in enumerate(out):
        matches = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)
                   if np.array_equal(shifted, padded[k, 4 + dy:36 + dy, 4 + dx:36 + dx])]
        assert matches, f"output {k} is not a whole-pixel shift of its input"
        offsets.append(matches[0])
    offsets = np.array(offsets)
    assert np.abs(offsets).max() == 4  # the full padding is used
    assert len({tuple(o) for o in offsets}) >= 50  # ~74 of the 81 expected in 200 draws
    # uniform on -4..4: mean 0, mean |offset| 20/9 = 2.22
    assert np.all(np.abs(offsets.mean(axis=0)) < 0.6)
    assert 1.8 < np.abs(offsets).mean() < 2.7
    assert (offsets == 0).all(axis=1).mean() < 0.05  # nearly every image moves
    per_batch = offsets.reshape(10, 20, 2)
    assert all(len({tuple(o) for o in batch}) > 5 for batch in per_batch)  # per image, not per batch


# -- flip ----------------------------------------------------------------------------------

def test_flip_mirrors_about_half_of_the_real_images_exactly(cifar_images):
    assert not any(np.array_equal(x, x[:, ::-1]) for x in cifar_images)  # none is symmetric
    fn = augment.build_augmenter({"flip": True})
    out, _, images = _through_tf_data(fn, cifar_images, batches=10)
    _check_image_contract(out, images)
    same = np.array([np.array_equal(o, x) for o, x in zip(out, images)])
    mirrored = np.array([np.array_equal(o, x[:, ::-1]) for o, x in zip(out, images)])
    assert np.all(same ^ mirrored)  # each image untouched or mirrored exactly, nothing else
    assert 0.4 < mirrored.mean() < 0.6  # p = 0.5 over 200 draws (sd 0.035)
    per_batch = mirrored.reshape(10, 20)
    assert all(0 < row.sum() < 20 for row in per_batch)  # decided per image
    assert len({tuple(row) for row in per_batch}) == 10  # and anew for every batch


# -- zoom and rotation: recover each image's transform by search ---------------------------

def _best_fit(images, out, transforms, params):
    """For each image the parameter whose transform of the input best matches the output,
    and the mean absolute error at that parameter (pixel units)."""
    errors = []
    for t in transforms:
        warped = keras.ops.convert_to_numpy(keras.ops.image.affine_transform(
            tf.constant(images), tf.constant(np.tile(t, (len(images), 1)), tf.float32),
            interpolation="bilinear", fill_mode="constant"))
        errors.append(np.abs(warped - out).mean(axis=(1, 2, 3)))
    errors = np.stack(errors)  # (params, images)
    best = errors.argmin(axis=0)
    return np.asarray(params)[best], errors[best, np.arange(len(images))]


def _zoom(z, size=32):
    c = (size - 1) / 2.0
    return [z, 0, c * (1 - z), 0, z, c * (1 - z), 0, 0]


def _rotation(degrees, size=32):
    a, c = math.radians(degrees), (size - 1) / 2.0
    cos, sin = math.cos(a), math.sin(a)
    return [cos, -sin, c - cos * c + sin * c, sin, cos, c - sin * c - cos * c, 0, 0]


def test_scale_zooms_each_image_by_up_to_the_recipe_fraction(cifar_images):
    fn = augment.build_augmenter({**OFF, "scale": 0.1})
    out, _, images = _through_tf_data(fn, cifar_images, batches=3)
    _check_image_contract(out, images)
    changed = np.abs(out - images).mean(axis=(1, 2, 3)) > 1.0
    assert changed.mean() > 0.8
    zooms = np.round(np.arange(0.80, 1.2001, 0.005), 3)
    found, residual = _best_fit(images, out, [_zoom(z) for z in zooms], zooms)
    assert np.all(residual < 1.0)  # each output is its input zoomed (not noise, not a crop of another)
    assert found.min() >= 0.895 and found.max() <= 1.105  # scale 0.1: zoom factors in [0.9, 1.1]
    assert found.std() > 0.035  # uniform over [0.9, 1.1] has sd 0.058: not one zoom for all
    assert (found < 0.97).any() and (found > 1.03).any()  # both in and out


def test_rotation_turns_each_image_by_up_to_the_recipe_degrees(cifar_images):
    fn = augment.build_augmenter({**OFF, "rotation": 10.0})
    out, _, images = _through_tf_data(fn, cifar_images, batches=3)
    _check_image_contract(out, images)
    angles = np.arange(-20, 20.01, 0.25)
    found, residual = _best_fit(images, out, [_rotation(a) for a in angles], angles)
    assert np.all(residual < 1.0)
    assert np.abs(found).max() <= 10.25  # rotation 10.0: within +-10 degrees
    assert found.std() > 3.5  # uniform over [-10, 10] has sd 5.8: per image
    assert (found < -4).any() and (found > 4).any()
    # Past 6 degrees every corner pixel samples > 1.5 pixels outside the input: zero fill.
    turned = np.abs(found) > 6
    corners = out[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert turned.sum() > 10 and np.all(corners[turned] == 0)
    assert np.all(corners[np.abs(found) < 0.5].max(axis=(1, 2)) > 0)  # nearly upright: kept


# -- RandAugment and random erasing --------------------------------------------------------

def test_randaugment_changes_the_real_images_within_range(cifar_images):
    fn = augment.build_augmenter({**OFF, "randaugment": True})
    out, _, images = _through_tf_data(fn, cifar_images, batches=6)
    _check_image_contract(out, images)
    diff = np.abs(out - images).mean(axis=(1, 2, 3))
    assert (diff > 1.0).mean() > 0.8  # nearly every image is altered
    per_batch = diff.reshape(6, 20).mean(axis=1)
    assert len(np.unique(np.round(per_batch, 3))) == 6  # a fresh draw for every batch
    # Still the same pictures where the batch's two ops are photometric: each output then
    # correlates with its own input more than with the others'. (RandAugment picks its ops
    # per batch; its geometric ones at Keras's default magnitude, rotations up to 180
    # degrees and shifts up to half the image, can scramble a whole batch.)
    flat_out, flat_in = out.reshape(len(out), -1), images.reshape(len(images), -1)
    # (|r|: RandAugment's solarize may invert a whole batch)
    corr = np.abs(np.corrcoef(flat_out, flat_in)[: len(out), len(out):])
    matched = (corr.argmax(axis=1) == np.arange(len(out)) % 20).reshape(6, 20).mean(axis=1)
    assert (matched >= 0.9).sum() >= 2, matched  # noise in place of the images fails


def _erased_boxes(out, images):
    """Per image: None if untouched, else (top, left, height, width, fraction of the box changed)."""
    boxes = []
    for o, x in zip(out, images):
        changed = (o != x).any(axis=-1)
        if not changed.any():
            boxes.append(None)
            continue
        rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
        top, left, h, w = rows[0], cols[0], rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        boxes.append((top, left, h, w, changed[top:top + h, left:left + w].mean()))
    return boxes


@pytest.mark.parametrize("probability", [1.0, 0.5])
def test_random_erasing_probability_area_and_rectangles(cifar_images, probability):
    """`erasing` is the probability that an image gets one erased rectangle of 2-33 % of its area
    (Keras's default scale), filled with clipped noise."""
    fn = augment.build_augmenter({**OFF, "erasing": probability})
    out, _, images = _through_tf_data(fn, cifar_images, batches=10)
    _check_image_contract(out, images)
    boxes = _erased_boxes(out, images)
    erased = [b for b in boxes if b is not None]
    rate = len(erased) / len(boxes)
    if probability == 1.0:
        assert rate == 1.0, f"erasing=1.0 erased only {rate:.0%} of the images"
    else:
        assert abs(rate - probability) < 0.1, f"erasing={probability} erased {rate:.0%} of the images"
    for top, left, h, w, filled in erased:
        assert filled > 0.9  # the changed pixels fill their bounding box: a rectangle
        # each side is 32*sqrt(u), u in [0.02, 0.33] (+-1 pixel of rounding): 4..19 pixels
        assert 4 <= h <= 19 and 4 <= w <= 19
        assert 0.015 <= h * w / 1024 <= 0.36
    areas = np.array([h * w / 1024 for _, _, h, w, _ in erased])
    assert 0.11 < areas.mean() < 0.21  # E[sqrt(u1 u2)] = 0.16


# -- MixUp and CutMix ----------------------------------------------------------------------

def _mix_sources(labels):
    """(image index, weight) of the two largest label weights per image (own-class labels)."""
    order = np.argsort(-labels, axis=1)
    rows = np.arange(len(labels))
    return order[:, 0], labels[rows, order[:, 0]], order[:, 1], labels[rows, order[:, 1]]


def test_mixup_images_are_the_label_weighted_blend_of_two_real_images(cifar_images):
    fn = augment.build_augmenter({**OFF, "mixup": 0.2})
    out, labels, images = _through_tf_data(fn, cifar_images, batches=3)
    _check_image_contract(out, images)
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-5)
    i, wi, j, wj = _mix_sources(labels)
    for k in range(len(out)):
        blend = wi[k] * cifar_images[i[k]] + wj[k] * cifar_images[j[k]]
        np.testing.assert_allclose(out[k], blend, atol=0.05)
    mixed = wj > 1e-3
    assert mixed.mean() > 0.5 and len(np.unique(np.round(wi[mixed], 4))) > 10  # per-image weights


def test_cutmix_pastes_a_rectangle_of_another_image_with_label_weight_equal_to_its_area(cifar_images):
    fn = augment.build_augmenter({**OFF, "cutmix": 1.0})
    out, labels, images = _through_tf_data(fn, cifar_images, batches=3)
    _check_image_contract(out, images)
    pasted_count = 0
    for k in range(len(out)):
        base = k % 20  # CutMix pastes into image k a box of another image of the batch
        others = labels[k].copy()
        others[base] = 0
        other = int(others.argmax())
        assert labels[k, base] + labels[k, other] == pytest.approx(1.0, abs=1e-5)  # two sources
        kept = (out[k] == cifar_images[base]).all(axis=-1)
        pasted = (out[k] == cifar_images[other]).all(axis=-1) & ~kept
        assert (kept | pasted).all()  # every pixel comes from one of the two images
        if labels[k, other] < 1e-6:
            assert kept.all()
            continue
        pasted_count += 1
        # label weight = pasted area: the box's sides are 32*sqrt(w) (to a pixel, Keras counts
        # the pixels inside a real-valued box)
        side = 32 * math.sqrt(labels[k, other])
        assert abs(pasted.mean() - labels[k, other]) <= (2 * side + 1) / 1024
        if side < 2 and not pasted.any():
            continue  # a box under 2 pixels a side may hold no pixel centre
        rows, cols = np.flatnonzero(pasted.any(axis=1)), np.flatnonzero(pasted.any(axis=0))
        assert pasted[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].mean() > 0.9  # a rectangle
    assert pasted_count > 30


# -- seeds, extra layers, the rest ---------------------------------------------------------

ALL_IMAGE_OPS = {"pad_crop": 4, "flip": True, "scale": 0.1, "rotation": 10.0, "randaugment": True,
                 "erasing": 0.5}


def test_each_batch_is_augmented_from_its_key_alone(cifar_images):
    """A batch's augmentation depends on its `position_key` (seed, epoch, step) and nothing
    else: the same key gives the same images in any order and in parallel `map` calls (what
    a resume at any step relies on); another step or seed gives others."""
    fn = augment.build_augmenter({**ALL_IMAGE_OPS, "mixup": 0.2})
    images, labels = tf.constant(cifar_images), _own_class_labels(len(cifar_images))

    def run(seed, steps):
        ds = tf.data.Dataset.from_tensor_slices(steps).map(
            lambda step: fn(images, labels, augment.position_key(seed, 0, 0, step)), num_parallel_calls=4)
        return {s: (x.numpy(), y.numpy()) for s, (x, y) in zip(steps, ds)}

    forward, backward, other = run(3, [0, 1, 2, 3]), run(3, [3, 2, 1, 0]), run(4, [0, 1, 2, 3])
    for step in range(4):
        np.testing.assert_array_equal(forward[step][0], backward[step][0])
        np.testing.assert_array_equal(forward[step][1], backward[step][1])
        assert not np.array_equal(forward[step][0], other[step][0])
    alone, _ = fn(images, labels, augment.position_key(3, 0, 0, 2))  # eagerly, outside tf.data
    np.testing.assert_array_equal(alone.numpy(), forward[2][0])
    assert not np.array_equal(forward[0][0], forward[1][0])  # steps differ within one run


@pytest.mark.parametrize("fields", [
    {"pad_crop": 4, "flip": True},
    {"scale": 0.1, "rotation": 10.0, "flip": True},
    {"randaugment": True, "erasing": 0.5},
    {"mixup": 0.2},
    {"cutmix": 1.0},
])
def test_augmenter_keeps_shape_dtype_and_range(fields, cifar_images):
    fn = augment.build_augmenter(fields)
    images, labels = tf.constant(cifar_images), tf.one_hot(np.arange(20) % 10, 10)
    out_images, out_labels = fn(images, labels, augment.position_key(1))
    assert out_images.shape == images.shape and out_images.dtype == tf.float32
    assert float(tf.reduce_min(out_images)) >= 0.0 and float(tf.reduce_max(out_images)) <= 255.0 + 1e-3
    changed = np.abs(out_images.numpy() - cifar_images).mean(axis=(1, 2, 3)) > 0
    assert changed.sum() >= 5  # an identity augmenter fails
    assert out_labels.shape == labels.shape
    np.testing.assert_allclose(tf.reduce_sum(out_labels, -1).numpy(), 1.0, rtol=1e-5)
    if "mixup" in fields or "cutmix" in fields:
        assert not np.array_equal(out_labels.numpy(), labels.numpy())  # labels are mixed


class CountAndDim(keras.layers.Layer):
    """A real Keras layer that records every batch it augments (in variables, so calls inside
    a traced tf.data function count) and halves the pixel values (visible in the output)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = self.add_weight(shape=(), dtype="int64", initializer="zeros", trainable=False)
        self.images = self.add_weight(shape=(), dtype="int64", initializer="zeros", trainable=False)
        self.input_max = self.add_weight(shape=(), dtype="float32", initializer="zeros", trainable=False)

    def call(self, images):
        self.calls.assign_add(1)
        self.images.assign_add(tf.cast(tf.shape(images)[0], "int64"))
        self.input_max.assign(tf.maximum(self.input_max, tf.reduce_max(images)))
        return images * 0.5


def test_extra_layers_run_inside_tf_data_after_the_recipe_ops(cifar_images):
    counter = CountAndDim()
    fn = augment.build_augmenter({**OFF, "pad_crop": 4}, extra_layers=[counter])
    out, _, images = _through_tf_data(fn, cifar_images, batches=3)
    assert (int(counter.calls.numpy()), int(counter.images.numpy())) == (3, 60)
    assert float(counter.input_max.numpy()) == images.max()  # it saw the [0, 255] pixels
    assert out.max() == images.max() / 2  # its output is what the pipeline returns
    # ... and it ran after the pad-and-crop: its input held the crop's zero borders
    padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)]) * 0.5
    assert all(any(np.array_equal(o, p[4 + dy:36 + dy, 4 + dx:36 + dx])
                   for dy in range(-4, 5) for dx in range(-4, 5)) for o, p in zip(out, padded))


def test_train_applies_extra_augment_layers_to_every_training_batch(tmp_path):
    """`train(extra_augment_layers=...)` puts the layer into the training input pipeline:
    it sees exactly the training images of every step (and not the evaluation images)."""
    import keras_resnet
    from conftest import CIFAR_DIR

    counter = CountAndDim()
    metrics = keras_resnet.train("cifar10-fast", output=str(tmp_path / "run"), data=str(CIFAR_DIR), depth=8,
                                 variant="cifar", epochs=2, batch_size=32, max_train_samples=96,
                                 max_eval_samples=32, precision="float32", extra_augment_layers=[counter],
                                 overrides=["train.validate_every=0"], log=lambda _: None, verbose=0)
    assert metrics["status"] == "complete" and metrics["epochs_completed"] == 2
    # 2 epochs x 96 // 32 = 6 batches of 32 images
    assert (int(counter.calls.numpy()), int(counter.images.numpy())) == (6, 192)
    assert 200 < float(counter.input_max.numpy()) <= 255.0


def test_nothing_to_do_and_unknown_fields():
    assert augment.build_augmenter({"flip": False}) is None
    with pytest.raises(ValueError, match=r"Unknown augment field\(s\) \['rotate'\]"):
        augment.build_augmenter({"rotate": 5})
    # Keras's own CutMix error would name no recipe field
    with pytest.raises(ValueError, match=r"^augment.cutmix must be in \[0, 1\].*got 2.0"):
        augment.build_augmenter({"cutmix": 2.0})


def test_a_keras_cv_layer_plugs_in(cifar_images):
    import keras_cv  # the `cv` extra (also in `test`)

    cutout = keras_cv.layers.RandomCutout(0.5, 0.5, seed=1)  # zero patches up to half a side
    fn = augment.build_augmenter({**OFF}, extra_layers=[cutout])
    images = cifar_images + 1.0  # no zero pixels of its own
    out, _, images = _through_tf_data(fn, images, batches=2)
    assert out.shape == images.shape
    boxes = _erased_boxes(out, images)
    assert sum(b is not None for b in boxes) >= 30  # the extra layer ran on the images
    for o, x, box in zip(out, images, boxes):
        if box is not None:
            top, left, h, w, filled = box
            assert filled == 1.0 and not o[top:top + h, left:left + w].any()  # a zero rectangle
            assert h <= 17 and w <= 17
