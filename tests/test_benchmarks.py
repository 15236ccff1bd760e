"""The GPU benchmark script runs end to end on this CPU (tiny sizes) on the JAX backend,
the backend it uses on a GPU box without TensorFlow."""

import json
import os
import subprocess
import sys

from conftest import ROOT


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
