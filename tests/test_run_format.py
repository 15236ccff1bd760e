"""Run folders and models written by the code before the restructure (commit 40c3f6c) keep
working: tests/data/run-40c3f6c is a run killed (SIGKILL) at epoch 2, step 4, by that code,
and uninterrupted-model.keras the model its uninterrupted run saved.

Made with that commit's `keras-resnet train` and the arguments below (`--output`, and a
SIGKILL after the 14th training step); only the newest checkpoint is kept. On the machine
that wrote it (AMD EPYC, TensorFlow 2.21) the resumed run's weights are bit-identical to the
uninterrupted run's; elsewhere other CPU kernels may round differently, so the comparison
allows float noise."""

import json
import os
import shutil

import keras
import numpy as np

from conftest import ROOT, cli
from keras_resnet import saving

FIXTURE = ROOT / "tests" / "data" / "run-40c3f6c"
ARGS = ["train", "--recipe", "cifar10-fast", "--data", "../shared/datasets/cifar10-jpeg", "--depth", "8",
        "--variant", "cifar", "--epochs", "3", "--batch-size", "32", "--max-train-samples", "320",
        "--max-eval-samples", "100", "--precision", "float32", "--set", "train.deterministic=true",
        "--set", "train.ema=true", "--set", "train.checkpoint_every_steps=4", "--set", "train.validate_every=0"]


def test_a_run_folder_written_before_the_restructure_resumes_to_its_uninterrupted_weights(tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(FIXTURE, folder, ignore=shutil.ignore_patterns("uninterrupted-model.keras"))
    shown = json.loads(cli("runs", "show", str(folder)).stdout)
    assert shown["can_resume"] and shown["resumes_at"] == {"epoch": 2, "step": 5}
    result = cli(*ARGS, "--output", str(folder))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from epoch 2, step 5" in result.stdout
    before = saving.load_model(FIXTURE / "uninterrupted-model.keras")  # a .keras saved by that code
    after = keras.models.load_model(folder / "model.keras")
    assert [v.path for v in before.weights] == [v.path for v in after.weights]
    worst = max(float(np.max(np.abs(keras.ops.convert_to_numpy(a) - keras.ops.convert_to_numpy(b))))
                for a, b in zip(before.weights, after.weights))
    assert worst < 1e-4, f"the resumed weights differ from the uninterrupted run's by up to {worst}"
    assert json.loads((folder / "config.json").read_text()) == json.loads((FIXTURE / "config.json").read_text())


def test_every_shipped_recipe_resolves_to_the_config_json_written_before_the_restructure():
    """tests/data/recipes-40c3f6c.json: what that commit's `recipes.resolve` gave for each
    shipped recipe (finetune with the flags recorded there), resolved from the repository
    root."""
    from keras_resnet import recipes

    before = json.loads((ROOT / "tests" / "data" / "recipes-40c3f6c.json").read_text())
    assert sorted(before["configs"]) == sorted(recipes.available())
    for name, config in before["configs"].items():
        flags = before["flags"].get(name, {})
        cwd = os.getcwd()
        try:
            os.chdir(ROOT)  # the recorded data path is relative to the repository root
            now = recipes.resolve(name, **flags).to_dict()
        finally:
            os.chdir(cwd)
        assert now == config, name
