"""Shared fixtures: real CIFAR-10 images from ../shared, subprocess helpers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Under pytest-xdist (setup.cfg: two workers) each process gets its share of the cores:
# PyTorch's OpenMP threads spin-wait and ran 3.7x slower beside a second worker.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import pathlib
import subprocess
import sys
import tempfile

# The benchmark scripts the tests run write their ledger records here, not into the ledger.
os.environ.setdefault("KERAS_RESNET_LEDGER_DIR", tempfile.mkdtemp(prefix="keras-resnet-ledger-"))

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CIFAR_DIR = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"


# The longest files first (sequential seconds on 2 cores: 428, 279, 236, 116, 108, 99), so
# the two workers of `--dist loadfile` do not end on one long file.
SLOWEST_FILES = ("test_train_backends.py", "test_converters.py", "test_training.py", "test_benchmarks.py",
                 "test_multiprocess.py", "test_export.py", "test_resume.py")


# Files whose tests train, build PyTorch references, export or start processes of their own:
# `pytest -m "not slow"` leaves them out for a quick inner loop (CONTRIBUTING.md).
SLOW_FILES = (*SLOWEST_FILES, "test_finetune.py", "test_finetune_backbone.py", "test_distribute.py",
              "test_without_tensorflow.py", "test_robustness.py", "test_evaluation.py", "test_examples.py",
              "test_cifar_weights.py", "test_run_format.py", "test_registry.py", "test_cli.py", "test_cli_paths.py",
              "test_bad_input.py", "test_data.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file keeps its order
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def cifar_images() -> np.ndarray:
    """Twenty real CIFAR-10 test images (two per class) as float32 RGB in [0, 255]."""
    import tensorflow as tf

    if not CIFAR_DIR.is_dir():
        pytest.fail(f"The shared CIFAR-10 copy is missing at {CIFAR_DIR}.")
    files = [sorted((CIFAR_DIR / "test" / cls).glob("*.jpg"))[:2]
             for cls in sorted(p.name for p in (CIFAR_DIR / "test").iterdir())]
    images = [tf.io.decode_jpeg(tf.io.read_file(str(f)), channels=3).numpy()
              for pair in files for f in pair]
    return np.stack(images).astype("float32")


def small_cifar_folder(root: pathlib.Path, classes=None, per_class: int = 6) -> pathlib.Path:
    """A train/test image folder holding the first `per_class` shared CIFAR-10 images of
    each class in `classes` (default: all ten)."""
    import shutil

    classes = classes or sorted(p.name for p in (CIFAR_DIR / "train").iterdir())
    for split in ("train", "test"):
        for cls in classes:
            dest = root / split / cls
            dest.mkdir(parents=True)
            for src in sorted((CIFAR_DIR / split / cls).glob("*.jpg"))[:per_class]:
                shutil.copy(src, dest)
    return root


def run_python(code: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (for backends and environment variables)."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=ROOT)


SMALL = ["train", "--recipe", "cifar10-fast", "--data", str(CIFAR_DIR), "--depth", "8", "--variant", "cifar",
         "--batch-size", "64"]


def cli(*args, timeout=600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`keras-resnet ARGS` in a real subprocess (`env`: variables to add, e.g. KERAS_BACKEND)."""
    return subprocess.run([sys.executable, "-m", "keras_resnet.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A real run folder: ResNet-8 trained 4 epochs on 2,000 CIFAR-10 images by the CLI.

    lr 0.8 (0.4 at batch 64) learns more in 4 short epochs than the recipe's 0.1, so checks
    of "above chance" have a margin.
    """
    folder = tmp_path_factory.mktemp("runs") / "small"
    result = cli(*SMALL, "--lr", "0.8", "--epochs", "4", "--max-train-samples", "2000",
                 "--max-eval-samples", "500",
                 "--set", "train.validate_every=2", "--output", str(folder))
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, result
