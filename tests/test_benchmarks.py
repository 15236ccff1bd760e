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
