import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_resnet import augment


def _batch(n=16):
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (n, 32, 32, 3)).astype("float32"))
    labels = tf.one_hot(np.arange(n) % 10, 10)
    return images, labels


def test_pad_crop_shifts_each_image_by_whole_pixels():
    images = tf.reshape(tf.range(8 * 32 * 32 * 3, dtype=tf.float32), (8, 32, 32, 3)) + 1.0
    out = augment.pad_crop(images, 4).numpy()
    assert out.shape == (8, 32, 32, 3)
    offsets = set()
    for original, shifted in zip(images.numpy(), out):
        # every non-zero pixel of the output is a pixel of the input (an integer shift)
        assert np.isin(shifted[shifted > 0], original).all()
        row, col = np.argwhere(shifted[..., 0] == original[16, 16, 0])[0]
        offsets.add((row - 16, col - 16))
        assert max(abs(row - 16), abs(col - 16)) <= 4
    assert len(offsets) > 1  # per-image offsets, not one per batch


@pytest.mark.parametrize("fields", [
    {"pad_crop": 4, "flip": True},
    {"scale": 0.1, "rotation": 10.0, "flip": True},
    {"randaugment": True, "erasing": 0.5},
    {"mixup": 0.2},
    {"cutmix": 1.0},
])
def test_augmenter_keeps_shape_dtype_and_range(fields):
    fn = augment.build_augmenter(fields, seed=1)
    images, labels = _batch()
    out_images, out_labels = fn(images, labels)
    assert out_images.shape == images.shape and out_images.dtype == tf.float32
    assert float(tf.reduce_min(out_images)) >= 0.0 and float(tf.reduce_max(out_images)) <= 255.0 + 1e-3
    assert out_labels.shape == labels.shape
    np.testing.assert_allclose(tf.reduce_sum(out_labels, -1).numpy(), 1.0, rtol=1e-5)
    if "mixup" in fields or "cutmix" in fields:
        assert not np.array_equal(out_labels.numpy(), labels.numpy())  # labels are mixed


def test_runs_inside_tf_data_and_takes_extra_layers():
    fn = augment.build_augmenter({"pad_crop": 4}, extra_layers=[keras.layers.RandomContrast(0.2)])
    ds = tf.data.Dataset.from_tensors(_batch()).map(fn)
    images, _ = next(iter(ds))
    assert images.shape == (16, 32, 32, 3)


def test_nothing_to_do_and_unknown_fields():
    assert augment.build_augmenter({"flip": False}) is None
    with pytest.raises(ValueError, match=r"Unknown augment field\(s\) \['rotate'\]"):
        augment.build_augmenter({"rotate": 5})


def test_a_keras_cv_layer_plugs_in():
    import keras_cv  # the `cv` extra (also in `test`)

    cutout = keras_cv.layers.RandomCutout(0.5, 0.5, seed=1)
    fn = augment.build_augmenter({"pad_crop": 4}, extra_layers=[cutout])
    images, labels = _batch()
    out, _ = next(iter(tf.data.Dataset.from_tensors((images + 1.0, labels)).map(fn)))
    assert out.shape == images.shape
    assert 0.05 < float(tf.reduce_mean(tf.cast(out == 0, tf.float32))) < 0.5  # patches cut out
