"""Real training on real CIFAR-10 subsets, through the CLI in real subprocesses."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from conftest import CIFAR_DIR, ROOT, SMALL, cli, last_line



@pytest.fixture(scope="module")
def run(trained_run):
    return trained_run


def test_training_learns_and_fills_the_run_folder(run):
    folder, result = run
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["epochs_completed"] == 4
    history = metrics["history"]
    assert len(history["loss"]) == len(history["lr"]) == 4
    assert history["loss"][-1] < history["loss"][0]
    assert history["val_loss"][0] is None and history["val_loss"][1] is not None  # every 2nd epoch
    assert metrics["eval"]["accuracy"] > 0.2  # chance is 0.1
    assert set(metrics["eval"]) >= {"accuracy", "top5_accuracy", "loss", "per_class_accuracy"}
    assert metrics["eval"]["flip_tta"]["accuracy"] > 0.2  # the recipe also evaluates with flip TTA
    assert metrics["class_names"][0] == "airplane"
    for name in ("config.json", "history.csv", "model.keras", "curves.png", "confusion_matrix.png"):
        assert (folder / name).is_file(), name
    assert (folder / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert list((folder / "logs").rglob("*tfevents*"))
    assert len(list((folder / "checkpoints").glob("epoch-*.weights.h5"))) == 2
    config = json.loads((folder / "config.json").read_text())
    assert config["model"]["depth"] == 8 and config["train"]["epochs"] == 4
    assert (folder / "history.csv").read_text().splitlines()[0].startswith("epoch,")


def test_saved_model_is_float32_and_takes_raw_pixels(run, cifar_images):
    folder, _ = run
    import keras_resnet  # noqa: F401

    model = keras.models.load_model(folder / "model.keras")
    assert model.dtype_policy.name == "float32"
    assert all(layer.dtype_policy.name == "float32" for layer in model.layers)
    assert model.get_layer("normalization") is not None
    probs = model.predict(cifar_images, verbose=0)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def test_same_command_on_a_complete_run_does_nothing(run):
    folder, _ = run
    before = (folder / "metrics.json").read_text()
    result = cli(*SMALL, "--lr", "0.8", "--epochs", "4", "--max-train-samples", "2000",
                 "--max-eval-samples", "500",
                 "--set", "train.validate_every=2", "--output", str(folder))
    assert result.returncode == 0 and "already complete" in result.stdout
    assert (folder / "metrics.json").read_text() == before


def test_different_configuration_is_refused(run):
    folder, _ = run
    result = cli(*SMALL, "--lr", "0.8", "--epochs", "5", "--max-train-samples", "2000",
                 "--max-eval-samples", "500",
                 "--output", str(folder))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "different configuration" in last_line(result) and "train.epochs" in last_line(result)
    assert "--overwrite" in last_line(result)


def test_a_start_that_failed_before_its_first_checkpoint_does_not_block_the_fix(tmp_path):
    folder = tmp_path / "out"
    rest = ["--epochs", "1", "--max-train-samples", "256", "--max-eval-samples", "100",
            "--set", "train.validate_every=0", "--output", str(folder)]
    typo = [str(tmp_path / "cifar") if a == str(CIFAR_DIR) else a for a in SMALL]
    failed = cli(*typo, *rest)
    assert failed.returncode == 2 and "does not exist" in last_line(failed)
    assert (folder / "config.json").is_file()  # the failed start had written its configuration
    fixed = cli(*SMALL, *rest)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert "stopped before its first checkpoint; starting anew" in fixed.stdout
    assert json.loads((folder / "config.json").read_text())["data"]["name"] == str(CIFAR_DIR)
    assert json.loads((folder / "metrics.json").read_text())["epochs_completed"] == 1


def test_evaluate_and_predict(run):
    folder, _ = run
    result = cli("evaluate", str(folder / "model.keras"), "--data", str(CIFAR_DIR),
                 "--max-eval-samples", "300", "--format", "json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert 0.2 < report["accuracy"] <= 1 and len(report["per_class_accuracy"]) == 10
    # predict prints model.predict's own top-3 (names, probabilities, order) for each file;
    # these 32x32 files are the model's input size and the run has no eval crop: no resize.
    import tensorflow as tf

    import keras_resnet  # noqa: F401  (registers the layers for load_model)

    images = [sorted((CIFAR_DIR / "test" / c).glob("*.jpg"))[i] for c, i in (("ship", 0), ("frog", 3))]
    result = cli("predict", str(folder / "model.keras"), *map(str, images), "--top-k", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    names = json.loads((folder / "metrics.json").read_text())["class_names"]
    model = keras.models.load_model(folder / "model.keras")
    pixels = np.stack([tf.io.decode_jpeg(p.read_bytes(), channels=3).numpy() for p in images])
    probs = model.predict(pixels.astype("float32"), verbose=0)
    assert len(lines) == len(images)
    for image, line, p in zip(images, lines, probs):
        path, rest = line.rsplit(": ", 1)
        printed = [item.rsplit(" ", 1) for item in rest.split(", ")]
        top = np.argsort(-p)[:3]
        assert path == str(image) and [n for n, _ in printed] == [names[i] for i in top], (line, p)
        np.testing.assert_allclose([float(q) for _, q in printed], p[top], atol=1.5e-4)


def test_flip_tta_averages_each_image_with_its_mirror(run):
    folder, _ = run
    from keras_resnet import data, evaluation

    model = keras.models.load_model(folder / "model.keras")
    splits = data.load_image_folder(CIFAR_DIR, max_train_samples=10, max_eval_samples=200)
    ds = data.eval_pipeline(splits.test, batch_size=64, image_size=(32, 32), fixed_size=True)
    x = np.concatenate([b.numpy() for b, _ in ds])
    y = np.concatenate([label.numpy() for _, label in ds])
    probs = (model.predict(x, verbose=0) + model.predict(x[:, :, ::-1], verbose=0)) / 2
    expected_loss = -np.mean(np.log(probs[np.arange(len(y)), y]))
    tta = evaluation.evaluate_model(model, ds, splits.class_names, flip_tta=True)
    plain = evaluation.evaluate_model(model, ds, splits.class_names)
    assert tta["loss"] == pytest.approx(expected_loss, rel=1e-4)
    assert tta["accuracy"] == np.mean(probs.argmax(1) == y)
    assert abs(tta["loss"] - plain["loss"]) > 1e-4  # the mirror really was a second view
    result = cli("evaluate", str(folder / "model.keras"), "--data", str(CIFAR_DIR),
                 "--max-eval-samples", "200", "--flip-tta", "--format", "json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["flip_tta"] is True and report["accuracy"] == pytest.approx(tta["accuracy"])


def test_evaluate_on_the_training_split(run):
    folder, _ = run
    from keras_resnet import data

    model = keras.models.load_model(folder / "model.keras")
    splits = data.load_image_folder(CIFAR_DIR, max_train_samples=300, max_eval_samples=10)
    x, y = (np.stack(a) for a in zip(*splits.train.as_numpy_iterator()))
    expected = np.mean(model.predict(x.astype("float32"), verbose=0).argmax(1) == y)
    result = cli("evaluate", str(folder / "model.keras"), "--data", str(CIFAR_DIR), "--split", "train",
                 "--max-eval-samples", "300", "--format", "json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["split"] == "train" and report["num_images"] == 300
    assert report["accuracy"] == pytest.approx(expected)


def test_weight_ema_saves_the_averaged_weights_with_their_own_bn_statistics(tmp_path):
    """Two deterministic runs that differ only in `train.ema`: the saved kernels are the moving
    average, not the last step, and the BN statistics are re-estimated for them. A run killed
    after its last checkpoint but before model.keras was written saves the same averages."""
    import keras_resnet  # noqa: F401  (registers the layers for loading)

    models = {}
    for ema in ("false", "true"):
        result = cli(*SMALL, "--epochs", "2", "--max-train-samples", "512", "--max-eval-samples", "100",
                     "--set", "train.deterministic=true", "--set", f"train.ema={ema}",
                     "--set", "train.ema_momentum=0.9", "--output", str(tmp_path / ema))
        assert result.returncode == 0, result.stderr[-3000:]
        assert ("Re-estimated the BN statistics" in result.stdout) == (ema == "true")
        models[ema] = keras.models.load_model(tmp_path / ema / "model.keras")
    plain, averaged = (models[k].get_layer("predictions").kernel.numpy() for k in ("false", "true"))
    assert not np.allclose(plain, averaged, atol=1e-4)
    plain_bn, averaged_bn = (models[k].get_layer("conv1_bn").moving_mean.numpy() for k in ("false", "true"))
    assert not np.allclose(plain_bn, averaged_bn, atol=1e-4)

    (tmp_path / "true" / "model.keras").unlink()  # as if killed just before writing it
    result = cli(*SMALL, "--epochs", "2", "--max-train-samples", "512", "--max-eval-samples", "100",
                 "--set", "train.deterministic=true", "--set", "train.ema=true",
                 "--set", "train.ema_momentum=0.9", "--output", str(tmp_path / "true"))
    assert result.returncode == 0 and "Resuming from epoch 3" in result.stdout, result.stderr[-3000:]
    again = keras.models.load_model(tmp_path / "true" / "model.keras").get_layer("predictions")
    np.testing.assert_allclose(again.kernel.numpy(), averaged, atol=1e-6)


def test_recalibrate_batch_norm_takes_the_mean_of_batch_statistics(cifar_images):
    import tensorflow as tf

    import keras_resnet as kr
    from keras_resnet import training

    model = kr.build(8, variant="cifar", normalization=([120.0] * 3, [64.0] * 3))
    batches = [cifar_images[:8], cifar_images[8:14], cifar_images[14:]]
    dataset = tf.data.Dataset.from_generator(
        lambda: ((b, np.zeros(len(b))) for b in batches),
        output_signature=(tf.TensorSpec([None, 32, 32, 3]), tf.TensorSpec([None])))
    conv = keras.Model(model.input, model.get_layer("conv1_conv").output)
    outputs = [conv(b).numpy().reshape(-1, 16).astype("float64") for b in batches]
    bn = model.get_layer("conv1_bn")
    assert training.recalibrate_batch_norm(model, dataset) == 3
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([o.mean(0) for o in outputs], 0),
                               rtol=1e-4, atol=1e-5)
    # The fused kernel keeps the unbiased batch variance.
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([o.var(0, ddof=1) for o in outputs], 0),
                               rtol=1e-3)
    assert bn.momentum == 0.9


def test_class_count_mismatch_is_refused(run, tmp_path):
    folder, _ = run
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for src in sorted((CIFAR_DIR / "test" / cls).glob("*.jpg"))[:3]:
                shutil.copy(src, tmp_path / split / cls)
    result = cli("evaluate", str(folder / "model.keras"), "--data", str(tmp_path))
    assert result.returncode == 2 and "10 classes, the data 2" in last_line(result)


def test_damaged_newest_checkpoint_falls_back_to_the_previous(run, tmp_path):
    folder, _ = run
    from keras_resnet import recipes, runs, training

    ckpt = tmp_path / "checkpoints"
    shutil.copytree(folder / "checkpoints", ckpt)
    newest = runs.checkpoints(ckpt)[0]
    newest.write_bytes(newest.read_bytes()[:1000])  # as if the disk lost the end of the file
    (ckpt / "tmp-epoch-0005.weights.h5").write_bytes(b"half-written")
    config = recipes.resolve("cifar10-fast", depth=8, variant="cifar", epochs=4, batch_size=64)
    model = training.build_model(config, num_classes=10, image_size=(32, 32))
    training.compile_model(model, config, steps_per_epoch=31)
    messages = []
    assert runs.restore_latest(model, ckpt, messages.append) == ((3, 0), None)  # epoch 3 done, no step
    assert "epoch-0004.weights.h5 is damaged" in messages[0]
    assert int(model.optimizer.iterations.numpy()) == 3 * 31
    assert not list(ckpt.glob("tmp-*"))


def test_sigkill_then_same_command_resumes(tmp_path):
    folder = tmp_path / "killed"
    args = [sys.executable, "-m", "keras_resnet.cli", *SMALL, "--epochs", "4", "--max-train-samples",
            "1000", "--max-eval-samples", "200", "--set", "train.validate_every=0",
            "--output", str(folder)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if json.loads((folder / "metrics.json").read_text())["epochs_completed"] >= 2:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    done = max(int(p.name[6:10]) for p in (folder / "checkpoints").glob("epoch-*.weights.h5"))

    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resuming from epoch {done + 1}" in result.stdout
    assert result.stdout.count("Epoch ") == 4 - done  # only the remaining epochs were trained
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["status"] == "complete" and len(metrics["history"]["loss"]) == 4
    # The step-based schedule went on where it stopped: lr at each epoch end is the
    # uninterrupted schedule's value after that many steps.
    from keras_resnet import recipes, training

    config = recipes.resolve("cifar10-fast", depth=8, variant="cifar", epochs=4, batch_size=64)
    model = training.build_model(config, num_classes=10, image_size=(32, 32))
    schedule = training.compile_model(model, config, steps_per_epoch=15)
    expected = [float(keras.ops.convert_to_numpy(schedule(15 * (e + 1)))) for e in range(4)]
    np.testing.assert_allclose(metrics["history"]["lr"], expected, rtol=1e-5)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    folder = tmp_path / "nan"
    result = cli(*SMALL, "--epochs", "3", "--max-train-samples", "640", "--max-eval-samples", "100",
                 "--set", "train.schedule='piecewise'", "--set", "train.boundaries=[1.0]",
                 "--set", "train.factor=1e12", "--set", "train.validate_every=0", "--output", str(folder))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "loss became NaN/inf in epoch 2" in last_line(result)
    assert [p.name for p in (folder / "checkpoints").glob("epoch-*")] == ["epoch-0001.weights.h5"]
    from test_robustness import strict_json

    metrics = strict_json((folder / "metrics.json").read_text())  # no bare NaN
    assert metrics["status"] == "failed" and "NaN/inf in epoch 2" in metrics["error"]
    assert metrics["history"]["loss"][1] is None


@pytest.mark.parametrize("args, message", [
    (["--data", "/nonexistent/cifar"], "does not exist"),
    (["--recipe", "cifar10-slow"], "Unknown recipe 'cifar10-slow'"),
    (["--set", "train.epoch=3"], "unknown field train.epoch"),
    (["--set", "model.weight_decay=-5e-4"], "model.weight_decay must be >= 0"),
    (["--data", "no_such_dataset_xyz"], "Unknown TFDS dataset 'no_such_dataset_xyz'"),
])
def test_cli_user_errors(tmp_path, args, message):
    result = cli("train", *args, "--output", str(tmp_path / "out"), timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert last_line(result).startswith("keras-resnet train: error:") and message in last_line(result)


def test_benchmark_prints_json():
    result = cli("benchmark", "--depth", "20", "--steps", "3", "--warmup", "1", "--batch-size", "16",
                 "--precision", "float32")
    assert result.returncode == 0, result.stderr[-2000:]
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["images_per_sec"] > 0 and stats["precision"] == "float32" and stats["mode"] == "train"


def test_seeded_deterministic_runs_repeat_exactly(tmp_path):
    common = [*SMALL, "--epochs", "1", "--max-train-samples", "320", "--max-eval-samples", "100",
              "--precision", "float32", "--set", "train.deterministic=true", "--set", "augment.rotation=5.0"]
    histories = []
    for name in ("a", "b"):
        result = cli(*common, "--output", str(tmp_path / name))
        assert result.returncode == 0, result.stderr[-2000:]
        histories.append(json.loads((tmp_path / name / "metrics.json").read_text())["history"])
    assert histories[0] == histories[1]


def test_large_images_stream_with_random_resized_crop_and_center_crop_eval(tmp_path):
    """Images over 64 px are decoded per epoch; no recipe given, so imagenet-resnet50's is used."""
    import tensorflow as tf

    root = tmp_path / "large"
    for split, per_class in (("train", 24), ("test", 8)):
        for k, cls in enumerate(("cat", "dog", "ship")):
            (root / split / cls).mkdir(parents=True)
            for i, src in enumerate(sorted((CIFAR_DIR / split / cls).glob("*.jpg"))[:per_class]):
                image = tf.io.decode_jpeg(tf.io.read_file(str(src)))
                size = (72 + 8 * (i % 3), 96 - 8 * (k % 2))  # assorted sizes
                big = tf.cast(tf.image.resize(image, size), tf.uint8)
                tf.io.write_file(str(root / split / cls / f"{i}.jpg"), tf.io.encode_jpeg(big))
    (root / "train" / "cat" / "bad.jpg").write_bytes(b"GIF89a not a jpeg")
    folder = tmp_path / "run"
    result = cli("train", "--data", str(root), "--depth", "18", "--epochs", "1", "--batch-size", "16",
                 "--set", "data.image_size=[64, 64]", "--output", str(folder))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Skipped 1 unreadable or non-image file(s)" in result.stdout and "bad.jpg" in result.stdout
    config = json.loads((folder / "config.json").read_text())
    assert config["recipe"]["name"] == "imagenet-resnet50"
    assert config["augment"]["random_resized_crop"] and config["data"]["eval_crop_fraction"] == 0.875
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["num_train"] == 72 and metrics["eval"]["num_images"] == 24
    import keras_resnet  # noqa: F401

    assert keras.models.load_model(folder / "model.keras").input_shape == (None, 64, 64, 3)


def test_the_readme_main_command_trains_on_the_original_cifar10_through_tfds(tmp_path):
    """The README's main command, read from the README, on the original CIFAR-10 through
    TFDS (a small model and a 2,000-image subset so it runs in a test); then `evaluate` of
    its model on the same subset gives the run's own score, and on the whole test split
    reads all 10,000 images. Nothing is written into the shared data folder."""
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines()
                   if line.startswith('pip install ".[tensorflow]" && keras-resnet train'))
    args = command.split(" && keras-resnet ", 1)[1].split()
    assert args[:3] == ["train", "--recipe", "cifar10-fast"] and "--data-dir" in args
    data_dir = args[args.index("--data-dir") + 1]
    assert (ROOT / data_dir / "cifar10").is_dir(), data_dir  # relative to the checkout, as run
    args[args.index("--output") + 1] = str(tmp_path / "main")
    shared = sorted((str(p), p.stat().st_mtime_ns) for p in (ROOT / data_dir).rglob("*"))
    result = cli(*args, "--depth", "8", "--variant", "cifar", "--epochs", "2", "--batch-size", "64",
                 "--lr", "0.8", "--max-train-samples", "2000", "--max-eval-samples", "1000")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "main" / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["data"] == "tfds:cifar10"
    assert (metrics["num_train"], metrics["num_test"]) == (2000, 1000)
    assert metrics["eval"]["accuracy"] > 0.2 and metrics["class_names"][3] == "cat"
    model = str(tmp_path / "main" / "model.keras")
    same = cli("evaluate", model, "--data", "cifar10", "--data-dir", data_dir,
               "--max-eval-samples", "1000", "--format", "json")
    assert same.returncode == 0, same.stderr[-3000:]
    assert abs(json.loads(same.stdout)["accuracy"] - metrics["eval"]["accuracy"]) <= 0.002
    whole = cli("evaluate", model, "--data", "cifar10", "--data-dir", data_dir, "--format", "json")
    assert whole.returncode == 0, whole.stderr[-3000:]
    report = json.loads(whole.stdout)
    assert report["num_images"] == 10000 and report["accuracy"] > 0.2
    assert sorted((str(p), p.stat().st_mtime_ns) for p in (ROOT / data_dir).rglob("*")) == shared


def test_a_callback_that_stops_training_ends_the_run_as_stopped_by_it(tmp_path):
    import keras_resnet
    from keras_resnet.runs import RunError

    class StopAfterOneEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    with pytest.raises(RunError, match=r"after epoch 1 of 2: a callback stopped it \(model.stop_training\); "
                                       r"the last good checkpoint is kept \(.*epoch-0001.weights.h5\)"):
        keras_resnet.train("cifar10-fast", output=str(tmp_path / "run"), data=str(CIFAR_DIR), depth=8,
                           variant="cifar", epochs=2, batch_size=32, max_train_samples=64, max_eval_samples=32,
                           precision="float32", callbacks=[StopAfterOneEpoch()],
                           overrides=["train.validate_every=0"], log=lambda _: None, verbose=0)
