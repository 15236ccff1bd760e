"""One preprocessing for `evaluate`, `predict`, the SavedModel's image-bytes signatures and
the export parity check: the same file gives the same model input, and the same
probabilities, everywhere, following the run's `data.eval_crop_fraction`.

The expected model inputs are computed here from first principles (resize the shorter side
to 32 / crop, antialiased, then take the center), not with the package's function."""

import json
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_resnet  # noqa: F401  (registers the layers for keras.models.load_model)
from conftest import CIFAR_DIR, cli, last_line
from keras_resnet import evaluation, exporter, runs

CLASSES = sorted(p.name for p in (CIFAR_DIR / "test").iterdir())
CROP = 0.75
SIZES = [(72, 96), (100, 76), (90, 120)]  # non-square, larger than the 32x32 input, > 64 px


def expected_input(image, size=(32, 32), crop=CROP):
    """Shorter side to max(size) / crop (antialiased), then the centered `size` window."""
    h, w = image.shape[:2]
    scale = max(size) / crop / min(h, w)
    nh, nw = round(h * scale), round(w * scale)
    resized = tf.image.resize(tf.cast(image, tf.float32), (nh, nw), antialias=True).numpy()
    top, left = (nh - size[0]) // 2, (nw - size[1]) // 2
    return resized[top:top + size[0], left:left + size[1]]


def squashed_input(image, size=(32, 32)):
    return tf.image.resize(tf.cast(image, tf.float32), size).numpy()


def decode(path):
    return tf.io.decode_image(tf.io.read_file(str(path)), channels=3, expand_animations=False).numpy()


@pytest.fixture(scope="module")
def crop_run(trained_run, tmp_path_factory):
    """The trained run's model in a run folder whose config.json asks for a 0.75 center crop."""
    source = trained_run[0]
    folder = tmp_path_factory.mktemp("crop-run")
    for name in ("model.keras", "metrics.json"):
        shutil.copy(source / name, folder / name)
    config = json.loads((source / "config.json").read_text())
    assert config["data"]["eval_crop_fraction"] == 0.0  # the recipe's: no crop
    config["data"]["eval_crop_fraction"] = CROP
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def large_folder(tmp_path_factory):
    """CIFAR-10 images enlarged to assorted non-square sizes, as PNG and JPEG files."""
    root = tmp_path_factory.mktemp("large")
    for split, count in (("train", 1), ("test", 3)):
        for k, cls in enumerate(CLASSES):
            (root / split / cls).mkdir(parents=True)
            for i, src in enumerate(sorted((CIFAR_DIR / split / cls).glob("*.jpg"))[:count]):
                image = tf.image.resize(decode(src), SIZES[(i + k) % len(SIZES)], method="bicubic")
                image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
                encoded = tf.io.encode_png(image) if (i + k) % 2 else tf.io.encode_jpeg(image, quality=90)
                (root / split / cls / f"{i}.{'png' if (i + k) % 2 else 'jpg'}").write_bytes(encoded.numpy())
    return root


@pytest.fixture(scope="module")
def model(crop_run):
    return keras.models.load_model(crop_run / "model.keras")


def parse_predictions(stdout):
    """`path: name p, name p, ...` lines -> {path: [(name, p), ...]}."""
    parsed = {}
    for line in stdout.strip().splitlines():
        path, rest = line.rsplit(": ", 1)
        parsed[path] = [(item.rsplit(" ", 1)[0], float(item.rsplit(" ", 1)[1])) for item in rest.split(", ")]
    return parsed


def test_predict_serving_and_evaluate_see_the_same_input(crop_run, large_folder, model, tmp_path):
    files = [sorted((large_folder / "test" / c).iterdir())[i] for c, i in (("airplane", 0), ("automobile", 0), ("bird", 0))]
    raw = [decode(f) for f in files]
    assert {r.shape[:2] for r in raw} == set(SIZES) and {f.suffix for f in files} == {".png", ".jpg"}
    x = np.stack([expected_input(r) for r in raw])
    expected = model.predict(x, verbose=0)
    squashed = model.predict(np.stack([squashed_input(r) for r in raw]), verbose=0)
    assert np.abs(expected - squashed).max() > 1e-2  # the crop matters for these files

    # the one function, as the run configures it
    prep = evaluation.preprocessing_for(model, crop_run / "model.keras")
    assert (prep.size, prep.crop) == ((32, 32), CROP)
    np.testing.assert_allclose(np.stack([prep(r).numpy() for r in raw]), x, atol=1e-3)

    # predict: the printed top-3 are model.predict's own on that input, in order
    result = cli("predict", str(crop_run / "model.keras"), *map(str, files), "--top-k", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    printed = parse_predictions(result.stdout)
    for path, p in zip(files, expected):
        top = np.argsort(-p)[:3]
        assert [name for name, _ in printed[str(path)]] == [CLASSES[i] for i in top]
        np.testing.assert_allclose([q for _, q in printed[str(path)]], p[top], atol=1.5e-4)

    # the SavedModel's serving_bytes and tf_example signatures on the same files
    exporter.export(crop_run / "model.keras", "saved_model", tmp_path, name="m", verify_samples=20,
                    log=lambda _: None)
    loaded = tf.saved_model.load(str(tmp_path / "m" / "1"))
    encoded = [f.read_bytes() for f in files]
    served = loaded.signatures["serving_bytes"](image_bytes=tf.constant(encoded))["probabilities"]
    np.testing.assert_allclose(served.numpy(), expected, atol=1e-5)
    examples = [tf.train.Example(features=tf.train.Features(feature={"image/encoded": tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[e]))})).SerializeToString() for e in encoded]
    served = loaded.signatures["tf_example"](examples=tf.constant(examples))["probabilities"]
    np.testing.assert_allclose(served.numpy(), expected, atol=1e-5)


def test_evaluate_honours_the_run_eval_crop_fraction(crop_run, large_folder, model, tmp_path):
    files = [(f, CLASSES.index(f.parent.name)) for f in sorted((large_folder / "test").glob("*/*"))]
    labels = np.array([label for _, label in files])
    raw = [decode(f) for f, _ in files]

    def scores(inputs):
        probs = model.predict(np.stack(inputs), verbose=0).astype(np.float64)
        return float(np.mean(probs.argmax(1) == labels)), float(-np.mean(np.log(probs[np.arange(len(labels)), labels])))

    accuracy, loss = scores([expected_input(r) for r in raw])
    _, squashed_loss = scores([squashed_input(r) for r in raw])
    assert abs(loss - squashed_loss) > 1e-3  # the two preprocessings are told apart

    result = cli("evaluate", str(crop_run / "model.keras"), "--data", str(large_folder), "--format", "json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["num_images"] == len(files) == 30
    assert report["preprocessing"] == {"image_size": [32, 32], "crop_fraction": CROP, "interpolation": "bilinear"}
    assert report["loss"] == pytest.approx(loss, rel=1e-5) and report["accuracy"] == pytest.approx(accuracy)

    # the same model outside a run folder: no configuration, and 32 px is below the 128 px
    # default-crop side, so a plain resize
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(crop_run / "model.keras", bare / "model.keras")
    plain = evaluation.evaluate(bare / "model.keras", str(large_folder), batch_size=7)
    assert plain["preprocessing"] == {"image_size": [32, 32], "crop_fraction": None, "interpolation": "bilinear"}
    assert plain["loss"] == pytest.approx(squashed_loss, rel=1e-5)


def test_crop_rule_follows_the_run_configuration(tmp_path):
    """A run's setting wins, 0 included (no crop, even at 224 px); without a run folder,
    0.875 from 128 px up; an impossible setting is named."""
    assert evaluation.eval_crop((224, 224), 0.0) is None
    assert evaluation.eval_crop((32, 32), 0.5) == 0.5
    assert evaluation.eval_crop((224, 224), None) == 0.875 and evaluation.eval_crop((64, 64), None) is None
    (tmp_path / "config.json").write_text(json.dumps({"data": {"name": "cifar10", "eval_crop_fraction": 0.0}}))
    assert runs.context(tmp_path / "model.keras")["crop"] == 0.0
    assert runs.context(tmp_path / "elsewhere" / "model.keras")["crop"] is None
    with pytest.raises(evaluation.ModelError, match=r"eval_crop_fraction must be in \(0, 1\].*config.json"):
        evaluation.eval_crop((32, 32), 1.5)


def test_predict_and_evaluate_bad_inputs(crop_run, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    model = str(crop_run / "model.keras")
    missing = tmp_path / "missing.png"
    cases = [
        (["predict", model, str(text)], [f"Cannot read image {text}:", "Pass JPEG or PNG files."]),
        (["predict", model, str(missing)], [f"Cannot read image {missing}: no such file."]),
        (["predict", model, str(text), "--top-k", "0"], ["--top-k must be at least 1, not 0."]),
        (["evaluate", model, "--data", str(CIFAR_DIR), "--batch-size", "0"],
         ["--batch-size must be at least 1, not 0."]),
    ]
    for args, messages in cases:
        result = cli(*args, timeout=300)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        line = last_line(result)
        assert line.startswith(f"keras-resnet {args[0]}: error: "), line
        assert all(m in line for m in messages), line
