"""`train` where TensorFlow is not installed: a real virtual environment made by the JAX
install of docs/training.md (`pip install ".[jax]"`), which brings no TensorFlow; image
folders and `.npz` arrays go through `pydata`. A second one, `pip install .` alone (no
backend), imports with one line naming the extras."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, small_cifar_folder
from test_resume import KILLER

ARGS = ["train", "--recipe", "cifar10-fast", "--depth", "8", "--variant", "cifar", "--epochs", "2",
        "--batch-size", "32", "--lr", "0.4", "--set", "train.validate_every=0"]


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    path = tmp_path_factory.mktemp("no-tensorflow") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    done = subprocess.run([*pip, "-e", f"{ROOT}[jax]"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return path


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "KERAS_BACKEND": "jax"}


def run(venv, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "keras-resnet"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, env=clean_env())


def test_the_environment_has_no_tensorflow(venv):
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import tensorflow"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'tensorflow'" in probe.stderr


def test_the_base_install_without_a_backend_names_the_extras(tmp_path):
    """`pip install .` brings Keras and no backend: importing the package says what to install."""
    path = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    done = subprocess.run([str(path / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "-e", str(ROOT)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "KERAS_BACKEND")}
    python = str(path / "bin" / "python")
    message = ("keras_resnet runs on Keras, whose backend here is tensorflow, which is not installed: pip "
               "install 'keras-resnet-family[tensorflow]', or install another backend's extra ([tensorflow], [jax] or "
               "[torch]) and set KERAS_BACKEND to it.")
    imported = subprocess.run([python, "-c", "import keras_resnet; print(keras_resnet.__version__)"],
                              capture_output=True, text=True, env=env, cwd=tmp_path)
    assert imported.returncode == 0 and imported.stdout.strip() == "0.1.0", imported.stderr[-2000:]
    for feature in ("build", "train", "export"):
        probe = subprocess.run([python, "-c", f"import keras_resnet; keras_resnet.{feature}"], capture_output=True,
                               text=True, env=env, cwd=tmp_path)
        assert probe.returncode != 0
        assert probe.stderr.strip().splitlines()[-1] == f"ImportError: keras_resnet.{feature}: {message}"
    cli = subprocess.run([str(path / "bin" / "keras-resnet"), "train", "--recipe", "cifar10-fast", "--output",
                          str(tmp_path / "run")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert cli.returncode == 2 and cli.stderr.strip().splitlines() == [f"keras-resnet train: error: {message}"]
    assert not (tmp_path / "run").exists()


def check_run(folder, result, source: str) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["epochs_completed"] == 2
    assert metrics["backend"] == "jax" and metrics["data"].startswith(source)
    assert {"config.json", "history.csv", "checkpoints", "model.keras", "curves.png"} <= {p.name for p in folder.iterdir()}
    assert metrics["eval"]["accuracy"] > 0.1 and "flip_tta" in metrics["eval"]  # 10 classes: chance
    return metrics


def test_train_from_an_image_folder(venv, tmp_path):
    data = small_cifar_folder(tmp_path / "data", per_class=40)
    result = run(venv, *ARGS, "--data", str(data), "--output", str(tmp_path / "run"))
    metrics = check_run(tmp_path / "run", result, "folder:")
    assert metrics["num_train"] == 400 and metrics["num_test"] == 400


def test_train_from_arrays_resumes_after_kill_and_refuses_what_needs_tensorflow(venv, tmp_path):
    from PIL import Image

    data = small_cifar_folder(tmp_path / "data", per_class=40)
    arrays = {}
    for split in ("train", "test"):
        files = sorted((data / split).glob("*/*.jpg"))
        classes = sorted({f.parent.name for f in files})
        arrays[f"x_{split}"] = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        arrays[f"y_{split}"] = np.array([classes.index(f.parent.name) for f in files])
    np.savez(tmp_path / "cifar.npz", **arrays)
    output = tmp_path / "run"
    args = [*ARGS, "--data", str(tmp_path / "cifar.npz"), "--output", str(output)]
    killed = subprocess.run([str(venv / "bin" / "python"), "-c", KILLER, *args], capture_output=True, text=True,
                            cwd=ROOT, timeout=600, env={**clean_env(), "KILL_AT": "batch:15"})
    assert killed.returncode == -9, killed.stderr[-2000:]  # epoch 2, step 3 (12 steps an epoch)
    resumed = run(venv, *args)
    assert "Resuming from epoch 2" in resumed.stdout
    metrics = check_run(output, resumed, "npz:")
    assert metrics["class_names"] == [str(i) for i in range(10)]

    refused = [run(venv, *ARGS, "--data", "cifar10", "--output", str(tmp_path / "tfds")),
               run(venv, "train", "--data", "cifar10", "--epochs", "1", "--output", str(tmp_path / "picked")),
               run(venv, *ARGS, "--data", str(tmp_path / "cifar.npz"), "--set", "augment.mixup=0.2",
                   "--output", str(tmp_path / "mixup")),
               run(venv, "evaluate", str(output / "model.keras"), "--data", str(data))]
    for result, named in zip(refused, ("Convert it once", "Convert it once", "augment.mixup needs TensorFlow",
                                       "keras-resnet evaluate needs TensorFlow")):
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert named in result.stderr.strip().splitlines()[-1]
    assert not any((tmp_path / name).exists() for name in ("tfds", "picked", "mixup"))  # refused up front
