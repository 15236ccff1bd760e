"""Resume that loses nothing: real `keras-resnet train` processes killed with SIGKILL inside
an epoch, at an epoch boundary, while a checkpoint is being written and in each fine-tuning
phase, then resumed by the same command, end with weights bit-identical to a run never
stopped (`train.deterministic = true`), EMA and BN recalibration included.

The kill comes from inside the process, at an exact point (after step N, after an epoch's
checkpoint, after the Nth checkpoint's temporary file is written), so every path is tested
every time instead of by the timing of an outside kill."""

import json
import os
import subprocess
import sys

import keras
import numpy as np

from conftest import CIFAR_DIR, ROOT, cli
from keras_resnet import runs  # (importing the package registers the layers model.keras names)

# Runs `keras-resnet ARGV` and kills itself (SIGKILL) at KILL_AT: "batch:N" after its Nth
# training step, "epoch:N" after its Nth epoch-end checkpoint, "write:N" once the Nth
# checkpoint's temporary file is written (before the rename).
KILLER = r"""
import os, sys
import keras
from keras_resnet import cli, runs

point, count = os.environ["KILL_AT"].split(":")
seen = [0]

def after(method):
    def wrapped(*args, **kwargs):
        result = method(*args, **kwargs)
        seen[0] += 1
        if seen[0] == int(count):
            os.kill(os.getpid(), 9)
        return result
    return wrapped

if point == "batch":
    runs.CrashSafeCheckpoint.on_train_batch_end = after(runs.CrashSafeCheckpoint.on_train_batch_end)
elif point == "epoch":
    runs.CrashSafeCheckpoint.on_epoch_end = after(runs.CrashSafeCheckpoint.on_epoch_end)
else:
    keras.Model.save_weights = after(keras.Model.save_weights)
sys.exit(cli.main(sys.argv[1:]))
"""
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
FIVE = '["dog", "frog", "horse", "ship", "truck"]'


def killed_at(point: str, args: list[str], backend: str = "tensorflow") -> None:
    result = subprocess.run([sys.executable, "-c", KILLER, *args], cwd=ROOT, capture_output=True, text=True,
                            env={**ENV, "KILL_AT": point, "KERAS_BACKEND": backend}, timeout=600)
    assert result.returncode == -9, f"not killed at {point}: rc {result.returncode}\n{result.stderr[-2000:]}"


def final_weights(folder) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v) for v in keras.models.load_model(folder / "model.keras").weights]


def assert_identical(resumed, uninterrupted) -> None:
    ours, theirs = final_weights(resumed), final_weights(uninterrupted)
    assert len(ours) == len(theirs)
    different = [k for k, (a, b) in enumerate(zip(ours, theirs)) if not np.array_equal(a, b)]
    assert not different, f"{len(different)} of {len(ours)} variables differ from the uninterrupted run"
    history = [json.loads((f / "metrics.json").read_text())["history"]["loss"] for f in (resumed, uninterrupted)]
    assert history[0] == history[1]  # the resumed epochs' losses count the steps before the kill


def scratch_args(output) -> list[str]:
    """ResNet-8, 3 epochs of 10 steps, EMA, a checkpoint every 4 steps."""
    return ["train", "--recipe", "cifar10-fast", "--data", str(CIFAR_DIR), "--depth", "8", "--variant", "cifar",
            "--epochs", "3", "--batch-size", "32", "--max-train-samples", "320", "--max-eval-samples", "100",
            "--precision", "float32", "--set", "train.deterministic=true", "--set", "train.ema=true",
            "--set", "train.checkpoint_every_steps=4", "--set", "train.validate_every=0", "--output", str(output)]


def test_killed_inside_an_epoch_at_its_end_and_during_a_write_then_resumed_gives_identical_weights(tmp_path):
    reference = cli(*scratch_args(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr[-2000:]
    run = tmp_path / "killed"
    args = scratch_args(run)
    killed_at("batch:6", args)  # epoch 1, step 6; the checkpoint of step 4 is the newest
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-0000-step-000004.weights.h5"]
    killed_at("epoch:1", args)  # resumes at epoch 1, step 5; killed right after epoch 1's checkpoint
    killed_at("write:2", args)  # resumes at epoch 2; writes step 4, dies writing step 8
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["epoch-0001-step-000004.weights.h5", "epoch-0001.weights.h5",
                           "tmp-epoch-0001-step-000008.weights.h5"]
    shown = cli("runs", "show", str(run))
    assert shown.returncode == 0, shown.stderr
    where = json.loads(shown.stdout)
    assert where["can_resume"] and where["resumes_at"] == {"epoch": 2, "step": 5}
    assert (where["status"], where["epochs_completed"], where["epochs"]) == ("running", 1, 3)
    resumed = cli(*args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming from epoch 2, step 5" in resumed.stdout and "Warning" not in resumed.stdout
    assert not list((run / "checkpoints").glob("tmp-*"))  # the half-written file is cleaned up
    assert_identical(run, tmp_path / "reference")
    done = runs.where(run)
    assert not done["can_resume"] and done["why"].startswith("the run is complete")
    (run / "model.keras").unlink()  # as if killed after the last epoch's checkpoint
    where = runs.where(run)
    assert where["can_resume"] and where["why"].startswith("every epoch is trained")


def test_a_resume_inside_an_epoch_whose_batches_another_pipeline_drew_says_so(tmp_path):
    """Each checkpoint records what drew the batches (tf.data here; NumPy without TensorFlow
    or with data.on_device): resuming inside an epoch under the other one warns that the
    rest of the epoch gets other batches."""
    import h5py

    run = tmp_path / "run"
    args = scratch_args(run)
    killed_at("batch:6", args)
    (newest,) = runs.checkpoints(run / "checkpoints")
    assert runs.batches_of(newest) == "tf.data"
    with h5py.File(newest, "a") as f:  # as if a run without TensorFlow had written it
        f[runs.RESUME_GROUP].attrs["batches"] = "NumPy"
    resumed = cli(*args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert ("Warning: the batches of epoch 1 before step 5 were drawn by NumPy, the rest are drawn by "
            "tf.data") in resumed.stdout


def finetune_args(weights, output) -> list[str]:
    """The shipped `finetune` on five other classes: 7 head steps, then 2 epochs of 5 steps
    with BN statistics re-estimated before them (frozen_stats), EMA, a checkpoint every 3."""
    return ["train", "--weights", str(weights), "--data", str(CIFAR_DIR), "--epochs", "2", "--batch-size", "64",
            "--max-train-samples", "320", "--max-eval-samples", "100", "--precision", "float32",
            "--set", f"data.classes={FIVE}", "--set", "train.head_steps=7", "--set", "train.bn_mode='frozen_stats'",
            "--set", "train.deterministic=true", "--set", "train.ema=true", "--set", "train.checkpoint_every_steps=3",
            "--set", "train.validate_every=0", "--output", str(output)]


def test_killed_in_each_fine_tuning_phase_then_resumed_gives_identical_weights(trained_run, tmp_path):
    pretrained = trained_run[0] / "model.keras"
    reference = cli(*finetune_args(pretrained, tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr[-2000:]
    assert "Re-estimated the BN statistics" in reference.stdout
    run = tmp_path / "killed"
    args = finetune_args(pretrained, run)
    killed_at("batch:5", args)  # head phase, step 5 (checkpoint at 3)
    killed_at("epoch:1", args)  # the head phase's end
    killed_at("batch:4", args)  # phase "all", epoch 2, step 4 (checkpoint at 3)
    where = runs.where(run)
    assert where["resumes_at"] == {"epoch": 2, "step": 4} and where["epochs"] == 3
    resumed = cli(*args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming from epoch 2, step 4" in resumed.stdout
    assert "Re-estimated the BN statistics" not in resumed.stdout  # done once, before the kill
    assert_identical(run, tmp_path / "reference")


def test_runs_show_explains_a_folder_that_cannot_resume(tmp_path):
    empty = cli("runs", "show", str(tmp_path))
    assert empty.returncode == 2
    assert "holds no run (no config.json)" in empty.stderr and "Traceback" not in empty.stderr
    run = tmp_path / "run"
    killed_at("batch:2", scratch_args(run))  # before the first checkpoint
    where = runs.where(run)
    assert not where["can_resume"] and where["why"].startswith("no checkpoint was written yet")
    assert where["checkpoints"] == [] and where["status"] == "started"
    killed_at("batch:5", scratch_args(run))
    (run / "checkpoints" / "epoch-0000-step-000004.weights.h5").write_bytes(b"not hdf5")
    where = runs.where(run)
    assert not where["can_resume"] and where["why"].startswith("every checkpoint is damaged")
    assert where["checkpoints"][0]["damaged"]
