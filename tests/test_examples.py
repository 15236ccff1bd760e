import json
import subprocess
import sys

import pytest

from conftest import CIFAR_DIR, ROOT


def run_example(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})


def test_seed_network_builds_and_trains_on_real_images():
    result = run_example("examples/seed_network.py", str(CIFAR_DIR))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "conv1_conv -> conv1_bn -> conv1_relu -> pool1_pad -> pool1_pool -> conv2_block1 -> " \
           "conv3_block1 -> avg_pool -> predictions" in result.stdout
    losses = [float(v) for v in result.stdout.split("loss per epoch: [")[1].split("]")[0].split(",")]
    assert losses[1] < losses[0]


def test_quickstart_runs():
    result = run_example("examples/quickstart.py")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "269,722 parameters" in result.stdout and "same predictions" in result.stdout


def test_notebook_runs_top_to_bottom_on_local_data(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "examples" / "train_cifar10.ipynb", as_version=4)
    parameters = notebook.cells[1]
    assert parameters.source.startswith("# Parameters")
    parameters.source = (f"BACKEND = 'jax'\nDATA = {str(CIFAR_DIR)!r}\nRECIPE = 'cifar10-fast'\nEPOCHS = 1\n"
                         f"MAX_TRAIN_SAMPLES = 512\nMAX_EVAL_SAMPLES = 200\n"
                         f"OUTPUT = {str(tmp_path / 'run')!r}\nINSTALL = False\nPACKAGE = ''")
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "resnet20_cifar 269,722 parameters" in outputs
    assert "max |Δp| between SavedModel and Keras (jax)" in outputs and "parity ok" in outputs
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["backend"] == "jax"

    # The install cell, with nothing to install from: it says so and stops.
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")  # the cell sets it; monkeypatch restores it
    with pytest.raises(SystemExit, match="Set PACKAGE in the parameters cell"):
        exec(notebook.cells[1].source.replace("INSTALL = False", "INSTALL = True") + "\n"
             + notebook.cells[2].source, {})


def test_python_and_folder_training_scripts(tmp_path):
    result = run_example("examples/train_python.py", str(CIFAR_DIR), "--epochs", "1",
                         "--max-train-samples", "256", "--max-eval-samples", "100",
                         "--output", str(tmp_path / "py"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test accuracy" in result.stdout and "after 1 epochs" in result.stdout
    result = run_example("examples/train_folder.py", str(CIFAR_DIR), "--epochs", "1",
                         "--max-train-samples", "256", "--max-eval-samples", "100",
                         "--output", str(tmp_path / "folder"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "airplane" in result.stdout


def test_finetune_job_from_a_keras_applications_file(tmp_path):
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    reference = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
    weights = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with h5py.File(weights, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    result = run_example("examples/finetune.py", str(CIFAR_DIR), "--weights", str(weights),
                         "--size", "64", "--epochs", "2", "--head-steps", "2", "--max-train-samples", "100",
                         "--output", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test accuracy" in result.stdout
