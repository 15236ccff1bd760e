"""`keras-resnet train` on JAX and PyTorch: the same run folder, resume after kill -9, the
accuracy of the TensorFlow backend, checkpoints and models that cross backends, and refusals
of what a backend cannot run. (Training without TensorFlow installed: test_without_tensorflow.py.)"""

import json

import pytest

from conftest import CIFAR_DIR, cli
from test_resume import killed_at

# ResNet-8, 3 epochs of 62 steps on 8,000 CIFAR-10 images, tested on all 10,000 (fewer made
# the comparison with TensorFlow a coin toss); a checkpoint every 20 steps. lr 0.8 learns
# most in so few steps.
ARGS = ["train", "--recipe", "cifar10-fast", "--data", str(CIFAR_DIR), "--depth", "8", "--variant", "cifar",
        "--epochs", "3", "--batch-size", "128", "--lr", "0.8", "--max-train-samples", "8000",
        "--set", "train.checkpoint_every_steps=20", "--set", "train.validate_every=0"]


def metrics(folder) -> dict:
    return json.loads((folder / "metrics.json").read_text())


@pytest.fixture(scope="module")
def tensorflow_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tf") / "run"
    result = cli(*ARGS, "--output", str(folder), env={"KERAS_BACKEND": "tensorflow"})
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


@pytest.fixture(scope="module", params=["jax", "torch"])
def killed_and_resumed(request, tmp_path_factory):
    """A run on `request.param` killed inside epoch 2 (after step 30 of 62; the checkpoint of
    step 20 is the newest), then resumed by the same command."""
    backend = request.param
    folder = tmp_path_factory.mktemp(backend) / "run"
    killed_at("batch:92", [*ARGS, "--output", str(folder)], backend)
    resumed = cli(*ARGS, "--output", str(folder), env={"KERAS_BACKEND": backend})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return backend, folder, resumed


def test_train_resumes_after_kill_writes_the_same_run_folder_and_learns_as_on_tensorflow(
        killed_and_resumed, tensorflow_run):
    backend, folder, resumed = killed_and_resumed
    assert "Resuming from epoch 2, step 21" in resumed.stdout
    ours, theirs = metrics(folder), metrics(tensorflow_run)
    assert {p.name for p in folder.iterdir()} == {p.name for p in tensorflow_run.iterdir()}
    assert ours["status"] == "complete" and ours["epochs_completed"] == 3
    assert (ours["backend"], theirs["backend"]) == (backend, "tensorflow")
    assert ours["jit_compile"] == (backend == "jax") and ours["precision"] == theirs["precision"]
    assert len(ours["history"]["loss"]) == 3 and ours["history"]["loss"][-1] < ours["history"]["loss"][0]
    assert "flip_tta" in ours["eval"] and len(ours["eval"]["per_class_accuracy"]) == 10
    accuracy, reference = ours["eval"]["accuracy"], theirs["eval"]["accuracy"]
    assert reference > 0.3, reference
    assert abs(accuracy - reference) <= 0.02, (backend, accuracy, reference)


def test_a_run_started_on_tensorflow_finishes_on_jax_and_its_model_exports_with_parity(tmp_path):
    folder = tmp_path / "run"
    args = ["train", "--recipe", "cifar10-fast", "--data", str(CIFAR_DIR), "--depth", "8", "--variant", "cifar",
            "--epochs", "2", "--batch-size", "64", "--max-train-samples", "640", "--max-eval-samples", "200",
            "--set", "train.validate_every=0", "--output", str(folder)]
    killed_at("epoch:1", args, "tensorflow")
    resumed = cli(*args, env={"KERAS_BACKEND": "jax"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from epoch 2" in resumed.stdout
    assert metrics(folder)["backend"] == "jax" and metrics(folder)["epochs_completed"] == 2
    exported = cli("export", str(folder / "model.keras"), "--format", "saved_model", "--output",
                   str(tmp_path / "serving"), "--verify-samples", "100", env={"KERAS_BACKEND": "tensorflow"})
    assert exported.returncode == 0, exported.stderr[-3000:]
    summary = json.loads(exported.stdout.strip().splitlines()[-1])
    assert summary["ok"], summary


@pytest.mark.parametrize("backend, strategy, named", [
    ("torch", "multi-worker", "KERAS_BACKEND=tensorflow"),
    ("jax", "tpu", "KERAS_BACKEND=tensorflow"),
    ("torch", "mirrored", "KERAS_BACKEND=jax"),
])
def test_a_strategy_a_backend_cannot_run_is_refused_in_one_line(tmp_path, backend, strategy, named):
    result = cli(*ARGS, "--strategy", strategy, "--output", str(tmp_path / "run"), env={"KERAS_BACKEND": backend})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and named in result.stderr.strip().splitlines()[-1], result.stderr
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


def test_jax_with_several_devices_trains_data_parallel_with_xla(tmp_path):
    folder = tmp_path / "run"
    result = cli(*ARGS[:ARGS.index("--epochs")], "--epochs", "1", "--batch-size", "64", "--max-train-samples", "256",
                 "--max-eval-samples", "128", "--output", str(folder),
                 env={"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "XLA on, DataParallel (2 devices)" in result.stdout
    assert metrics(folder)["strategy"] == "DataParallel (2 devices)"


@pytest.mark.parametrize("command", [["export", "m.keras", "--format", "tflite", "--output", "m.tflite"],
                                     ["evaluate", "m.keras", "--data", str(CIFAR_DIR)]])
def test_commands_that_run_through_tensorflow_name_its_backend_on_jax(command):
    result = cli(*command, env={"KERAS_BACKEND": "jax"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"Run KERAS_BACKEND=tensorflow keras-resnet {command[0]}" in result.stderr.strip().splitlines()[-1]
