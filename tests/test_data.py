import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_resnet import data
from conftest import CIFAR_DIR, small_cifar_folder


def test_image_folder_subset_is_seeded_stratified_and_not_sorted_prefix():
    splits = data.load(str(CIFAR_DIR), max_train_samples=200, max_eval_samples=50, seed=3)
    assert (splits.num_train, splits.num_test, splits.num_classes) == (200, 50, 10)
    assert splits.class_names[:3] == ["airplane", "automobile", "bird"]
    assert splits.image_size == (32, 32)
    labels = np.array([int(y) for _, y in splits.train])
    assert np.bincount(labels, minlength=10).tolist() == [20] * 10  # every class, evenly
    image, _ = next(iter(splits.train))
    assert image.dtype == tf.uint8 and image.shape == (32, 32, 3)
    assert all(20 < m < 240 for m in splits.mean) and all(20 < s < 120 for s in splits.std)


def test_subset_indices():
    labels = np.repeat(np.arange(10), 500)  # sorted by class, like a folder listing
    a, b = data.stratified_subset(labels, 100, 0), data.stratified_subset(labels, 100, 1)
    assert len(a) == 100 and np.bincount(labels[a]).tolist() == [10] * 10
    assert not np.array_equal(a, b) and not np.array_equal(a, np.arange(100))
    assert np.array_equal(a, data.stratified_subset(labels, 100, 0))


def test_non_image_and_corrupt_files_are_skipped_and_named(tmp_path):
    root = small_cifar_folder(tmp_path, ("cat", "dog"))
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    splits = data.load(str(root))
    assert splits.num_train == 12 and splits.class_names == ["cat", "dog"]
    assert sorted(p.rsplit("/", 1)[-1] for p in splits.skipped) == ["broken.jpg", "notes.txt"]


@pytest.mark.parametrize("make, match", [
    (lambda root: root / "missing", r"does not exist.*train/ and test/"),
    (lambda root: (root / "empty").mkdir() or root / "empty", r"needs train/ and one of test/val/validation/"),
    (lambda root: ((root / "noclass" / "train").mkdir(parents=True), (root / "noclass" / "test").mkdir(),
                   root / "noclass")[-1], r"has no class folders"),
])
def test_bad_folders_are_clear_errors(tmp_path, make, match):
    with pytest.raises(data.DataError, match=match):
        data.load(str(make(tmp_path)))


def test_class_folder_without_images(tmp_path):
    root = small_cifar_folder(tmp_path, ("cat", "dog"))
    for f in (root / "test" / "dog").iterdir():
        f.unlink()
    with pytest.raises(data.DataError, match=r"test/dog has no JPEG/PNG images"):
        data.load(str(root))


def test_unknown_tfds_name_is_a_clear_error():
    with pytest.raises(data.DataError, match=r"Unknown TFDS dataset 'no_such_dataset_xyz'.*--data <folder>"):
        data.load("no_such_dataset_xyz")


def test_pipelines_batch_shapes_and_epoch_order():
    splits = data.load(str(CIFAR_DIR), max_train_samples=100, max_eval_samples=40)
    kwargs = dict(num_examples=100, batch_size=32, epochs=2, seed=0, image_size=(32, 32), fixed_size=True)
    batches = list(data.train_pipeline(splits.train, initial_epoch=0, **kwargs))
    assert len(batches) == 6 and batches[0][0].shape == (32, 32, 32, 3) and batches[0][0].dtype == tf.float32
    # A resumed run (initial_epoch=1) sees epoch 2's order exactly.
    resumed = list(data.train_pipeline(splits.train, initial_epoch=1, **kwargs))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(batches[3:], resumed))
    assert not np.array_equal(batches[0][1], batches[3][1])
    evals = list(data.eval_pipeline(splits.test, batch_size=32, image_size=(32, 32), fixed_size=True))
    assert [b[0].shape[0] for b in evals] == [32, 8]


def test_imagenet_style_eval_resize_and_center_crop():
    image = tf.zeros((300, 400, 3), tf.uint8)
    out = data.resize_eval(image, (224, 224), 0.875)
    assert out.shape == (224, 224, 3) and out.dtype == tf.float32


def test_train_pipeline_holds_an_in_memory_split_once():
    """The pipeline's graph does not grow with the number of epochs (no per-epoch copies)."""
    keras.utils.set_random_seed(0)  # as `train` does: a global seed of 0
    splits = data.load(str(CIFAR_DIR), max_train_samples=200, max_eval_samples=20)
    kwargs = dict(num_examples=200, batch_size=32, initial_epoch=0, seed=0, image_size=(32, 32),
                  fixed_size=True)
    sizes = [len(data.train_pipeline(splits.train, epochs=e, **kwargs)._as_serialized_graph().numpy())
             for e in (2, 40)]
    assert sizes[0] > 200 * 32 * 32 * 3 and sizes[1] == sizes[0]
    # Epoch 2's order is the same whether the pipeline starts at epoch 1 or 2 (resume).
    full = [y.numpy().argmax(-1) for _, y in data.train_pipeline(
        splits.train.map(lambda x, y: (x, tf.one_hot(y, 10))), epochs=2, **kwargs)]
    resumed = [y.numpy().argmax(-1) for _, y in data.train_pipeline(
        splits.train.map(lambda x, y: (x, tf.one_hot(y, 10))), epochs=2, **{**kwargs, "initial_epoch": 1})]
    assert len(full) == 12 and all(np.array_equal(a, b) for a, b in zip(full[6:], resumed))
