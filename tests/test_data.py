import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_resnet import data
from conftest import CIFAR_DIR, run_python, small_cifar_folder


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


def test_pipelines_run_without_the_autotuner_whose_wakeups_delay_every_iterators_end():
    splits = data.load(str(CIFAR_DIR), max_train_samples=100, max_eval_samples=40)
    train = data.train_pipeline(splits.train, num_examples=100, batch_size=32, epochs=1, seed=0,
                                image_size=(32, 32), fixed_size=True, initial_epoch=0)
    evals = data.eval_pipeline(splits.test, batch_size=32, image_size=(32, 32), fixed_size=True)
    for ds in (train, evals):
        assert ds.options().autotune.enabled is False
        assert len(list(ds)) in (3, 2)  # and they still run



@pytest.mark.parametrize("random_resized_crop", [False, True])
def test_a_pipeline_resumed_at_any_step_gives_the_same_augmented_batches(random_resized_crop):
    """Started at (epoch 1, step 2), the pipeline yields exactly the batches, random crops,
    flips and erasing included, that the whole run yields from there."""
    from keras_resnet import augment

    splits = data.load(str(CIFAR_DIR), max_train_samples=100, max_eval_samples=40)
    augmenter = augment.build_augmenter({"pad_crop": 4, "flip": True, "erasing": 0.5})
    kwargs = dict(num_examples=100, batch_size=16, epochs=2, seed=5, image_size=(24, 24) if random_resized_crop
                  else (32, 32), fixed_size=not random_resized_crop, augment=augmenter,
                  random_resized_crop=random_resized_crop)
    ds = splits.train.map(lambda x, y: (x, tf.one_hot(y, 10)))
    whole = list(data.train_pipeline(ds, initial_epoch=0, **kwargs))
    resumed = list(data.train_pipeline(ds, initial_epoch=1, initial_step=2, **kwargs))
    assert len(whole) == 12 and len(resumed) == 4  # 6 batches per epoch; 6 + 2 done before
    for (x, y), (rx, ry) in zip(whole[8:], resumed):
        np.testing.assert_array_equal(x.numpy(), rx.numpy())
        np.testing.assert_array_equal(y.numpy(), ry.numpy())
    assert not np.array_equal(whole[0][0].numpy(), whole[6][0].numpy())

def test_imagenet_style_eval_resize_and_center_crop():
    """A real image (a CIFAR-10 ship enlarged to 300x400), not a constant one: the shorter
    side goes to 224 / 0.875 = 256 (antialiased), then the center 224x224 is kept; without a
    crop it is a plain resize, and an image already at the size is left as it is."""
    src = tf.io.decode_jpeg(tf.io.read_file(str(sorted((CIFAR_DIR / "test" / "ship").glob("*.jpg"))[0])))
    image = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(src, (300, 400), method="bicubic")),
                                     0, 255), tf.uint8)
    assert float(tf.math.reduce_std(tf.cast(image, tf.float32))) > 20  # real content
    out = data.resize_eval(image, (224, 224), 0.875)
    assert out.shape == (224, 224, 3) and out.dtype == tf.float32
    # 300x400 -> 256x341 (400 * 256 / 300 = 341.3); the crop starts at (16, 58)
    resized = tf.image.resize(tf.cast(image, tf.float32), (256, 341), antialias=True).numpy()
    np.testing.assert_allclose(out.numpy(), resized[16:240, 58:282], atol=1e-3)
    squashed = tf.image.resize(tf.cast(image, tf.float32), (224, 224)).numpy()
    assert np.abs(out.numpy() - squashed).mean() > 5  # a crop, not a squash
    np.testing.assert_allclose(data.resize_eval(image, (64, 48), None).numpy(),
                               tf.image.resize(tf.cast(image, tf.float32), (64, 48)).numpy(), atol=1e-4)
    np.testing.assert_array_equal(data.resize_eval(src, (32, 32), None).numpy(), src.numpy())


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


TFDS_DIR = CIFAR_DIR.parent / "tensorflow_datasets"


def _tree_state(root):
    """Every file and folder under `root` with its size and modification time."""
    return sorted((str(p.relative_to(root)), p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in [root, *root.rglob("*")])


def test_tfds_cifar10_from_the_prepared_data_dir():
    """The TFDS path on the real, lossless CIFAR-10 (TFDS's own prepared format): names, counts,
    dtypes, a stratified subset, the published pixel statistics, and a read-only data_dir."""
    before = _tree_state(TFDS_DIR)
    splits = data.load("cifar10", data_dir=str(TFDS_DIR), max_train_samples=2000, max_eval_samples=500, seed=0)
    assert splits.source == "tfds:cifar10"
    assert splits.class_names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                  "ship", "truck"]
    assert (splits.num_train, splits.num_test, splits.image_size) == (2000, 500, (32, 32))
    train = [(x.numpy(), y.numpy()) for x, y in splits.train]
    test_labels = np.array([int(y) for _, y in splits.test])
    image, label = train[0]
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3) and label.dtype == np.int32
    labels = np.array([y for _, y in train])
    assert len(train) == 2000 and np.bincount(labels, minlength=10).tolist() == [200] * 10
    assert len(test_labels) == 500 and np.bincount(test_labels, minlength=10).tolist() == [50] * 10
    # Real pixels: the training set's published per-channel mean and std (on [0, 1]) within
    # what a 2,000-image sample allows (standard error of the mean ~0.005).
    pixels = np.stack([x for x, _ in train]).reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(pixels.mean(axis=0), (0.4914, 0.4822, 0.4465), atol=0.012)
    np.testing.assert_allclose(pixels.std(axis=0), (0.2470, 0.2435, 0.2616), atol=0.012)
    # The normalization statistics the model gets are those of these images, on [0, 255].
    np.testing.assert_allclose(splits.mean, pixels.mean(axis=0) * 255, rtol=1e-6)
    np.testing.assert_allclose(splits.std, pixels.std(axis=0) * 255, rtol=1e-6)
    assert _tree_state(TFDS_DIR) == before  # nothing written into the shared folder


def test_tfds_full_splits_are_cached_whole_without_tensorflows_discard_warning():
    """The whole of CIFAR-10 from TFDS, as every real run reads it: the statistics sample must
    not read a cache partially (TensorFlow then discards it and warns at every run's start)."""
    script = ("from keras_resnet import data\n"
              f"s = data.load('cifar10', data_dir={str(TFDS_DIR)!r})\n"
              "print(s.num_train, s.num_test, sum(1 for _ in s.train), sum(1 for _ in s.test))\n")
    result = run_python(script, env={"TF_CPP_MIN_LOG_LEVEL": "0"}, timeout=600)  # warnings shown
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-4:] == ["50000", "10000", "50000", "10000"]
    assert "did not fully read the dataset being cached" not in result.stderr


def test_classes_keep_and_relabel_a_subset_of_a_folder(tmp_path):
    root = small_cifar_folder(tmp_path, ("cat", "dog", "frog"), per_class=4)
    splits = data.load(str(root), classes=["frog", "cat"])
    assert splits.class_names == ["frog", "cat"] and splits.num_train == 8 and splits.num_test == 8
    frog = data.decode_file(str(sorted((root / "train" / "frog").iterdir())[0]))
    labels = {int(label): [] for _, label in splits.train}
    for image, label in splits.train:
        labels[int(label)].append(image.numpy())
    assert sorted(labels) == [0, 1] and any(np.array_equal(frog, img) for img in labels[0])
    with pytest.raises(data.DataError, match=r"data.classes \['frog', 'horse'\]: unknown \['horse'\].*has \['cat', 'dog', 'frog'\]"):
        data.load(str(root), classes=["frog", "horse"])


def test_classes_keep_and_relabel_a_subset_of_tfds_cifar10():
    import tensorflow_datasets as tfds

    tfds_dir = str(TFDS_DIR)
    splits = data.load("cifar10", data_dir=tfds_dir, classes=["truck", "airplane"], include_train=False)
    assert splits.class_names == ["truck", "airplane"] and splits.num_test == 2000
    kept = {image.numpy().tobytes(): int(label) for image, label in splits.test}
    assert len(kept) == 2000 and sorted(set(kept.values())) == [0, 1]
    original = tfds.load("cifar10", split="test[:1000]", data_dir=tfds_dir, as_supervised=True)
    expected = {9: 0, 0: 1}  # truck, airplane -> their order in `classes`
    for image, label in tfds.as_numpy(original):
        assert kept.get(image.tobytes(), -1) == expected.get(int(label), -1)
