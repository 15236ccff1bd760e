"""Fine-tuning as a job: `train --recipe finetune --weights MODEL` on real CIFAR-10 images,
frozen parts that stay bit-identical (through a kill -9 and resume), the lower backbone
learning rate, and the run folder's export."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from conftest import CIFAR_DIR, ROOT, cli, last_line
from keras_resnet import finetune, plan as plan_lib, schedules

FIVE = '["dog", "frog", "horse", "ship", "truck"]'


def finetune_args(weights, output, *extra):
    """Fine-tune on 500 images of five other classes: 7 head steps (one history entry), then
    3 epochs of 7 steps (epochs 2-4)."""
    return ["train", "--recipe", "finetune", "--weights", str(weights), "--data", str(CIFAR_DIR),
            "--epochs", "3", "--max-train-samples", "500", "--max-eval-samples", "100",
            "--precision", "float32", "--set", f"data.classes={FIVE}", "--set", "train.head_steps=7",
            "--set", "train.validate_every=0", *extra, "--output", str(output)]


def backbone_arrays(path) -> dict[str, np.ndarray]:
    """Every variable of a model file's backbone (all but the head), by path."""
    model = keras.models.load_model(path)
    return {v.path: keras.ops.convert_to_numpy(v) for v in model.weights
            if not v.path.startswith("predictions/")}


@pytest.fixture(scope="module")
def killed_and_resumed(trained_run, tmp_path_factory):
    """Fine-tune the session's trained ResNet-8 on five other classes with BN frozen: killed
    (SIGKILL) in phase "all" once epoch 3's checkpoint is in place, then resumed to the end by
    the same command. Whatever the kill's timing, the folder is then what a kill right after
    that checkpoint leaves (later checkpoints and model.keras removed), so the resume starts
    at epoch 4 every time."""
    pretrained = trained_run[0] / "model.keras"
    output = tmp_path_factory.mktemp("finetune") / "run"
    args = [sys.executable, "-m", "keras_resnet.cli",
            *finetune_args(pretrained, output, "--set", "train.bn_mode='frozen'")]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    third = output / "checkpoints" / "epoch-0003.weights.h5"
    deadline = time.time() + 300
    while time.time() < deadline and not third.exists() and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert third.exists(), "the run did not reach epoch 3"
    for later in [*(output / "checkpoints").glob("*epoch-0004*"), *(output / "checkpoints").glob("*epoch-0003-step*"),
                  output / "model.keras"]:
        later.unlink(missing_ok=True)
    resumed = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return pretrained, output, resumed


def test_finetune_run_folder_is_complete_with_the_new_classes(killed_and_resumed):
    _, output, resumed = killed_and_resumed
    assert "Resuming from epoch 4" in resumed.stdout and resumed.stdout.count("Epoch ") == 1
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["status"] == "complete" and len(metrics["history"]["loss"]) == 4
    assert metrics["class_names"] == json.loads(FIVE)
    model = keras.models.load_model(output / "model.keras")
    assert model.output_shape == (None, 5) and model.name == "resnet8_cifar_finetuned"
    losses = metrics["history"]["loss"]
    assert losses[-1] < losses[0] and metrics["eval"]["num_images"] == 100  # it learned


def test_a_fine_tuned_model_fine_tunes_again(killed_and_resumed, tmp_path):
    """The fine-tuned model's input normalization comes along (it used to be dropped)."""
    _, output, _ = killed_and_resumed
    again = tmp_path / "again"
    result = cli("train", "--weights", str(output / "model.keras"), "--data", str(CIFAR_DIR), "--epochs", "1",
                 "--max-train-samples", "200", "--max-eval-samples", "50", "--precision", "float32",
                 "--set", 'data.classes=["cat", "dog"]', "--set", "train.head_steps=2", "--output", str(again),
                 timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("finetune picked for 200 images of 32 px at batch 64")
    first, second = keras.models.load_model(output / "model.keras"), keras.models.load_model(again / "model.keras")
    assert second.name == first.name and second.output_shape == (None, 2)
    np.testing.assert_array_equal(second.get_layer("normalization").mean, first.get_layer("normalization").mean)


def test_frozen_bn_statistics_and_weights_are_bit_identical_after_kill_and_resume(killed_and_resumed):
    pretrained, output, _ = killed_and_resumed
    before, after = backbone_arrays(pretrained), backbone_arrays(output / "model.keras")
    assert before.keys() == after.keys()
    bn = [k for k in before if k.split("/")[-1] in ("gamma", "beta", "moving_mean", "moving_variance")]
    convs = [k for k in before if k.endswith("kernel")]
    assert len(bn) == 4 * 7 and len(convs) == 7
    for key in bn:  # bn_mode "frozen": statistics and γ/β never move
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    assert all(not np.array_equal(after[k], before[k]) for k in convs)  # phase "all" trained them


def test_the_head_phase_leaves_the_whole_backbone_untouched(trained_run, tmp_path):
    from keras_resnet import training

    pretrained = trained_run[0] / "model.keras"
    output = tmp_path / "run"  # the head phase and 1 epoch: epoch 1's checkpoint ends the head phase
    result = cli(*finetune_args(pretrained, output)[:-2], "--epochs", "1", "--output", str(output),
                 timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Phase 'head': 7 steps of the new head alone." in result.stdout
    config = json.loads((output / "config.json").read_text())
    model = finetune.build_pretrained(config, num_classes=5, image_size=(32, 32))
    plan = plan_lib.phases(config, steps_per_epoch=7)
    training.compile_model(model, config, steps_per_epoch=7, phase=plan[0])
    model.optimizer.build(model.trainable_variables)  # the head phase's optimizer, as resume does
    model.load_weights(output / "checkpoints" / "epoch-0001.weights.h5")
    assert int(model.optimizer.iterations.numpy()) == 7
    before = backbone_arrays(pretrained)
    for v in model.weights:
        if not v.path.startswith("predictions/"):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), before[v.path], err_msg=v.path)
    assert [v.path for v in model.trainable_weights] == ["predictions/kernel", "predictions/bias"]
    metrics = json.loads((output / "metrics.json").read_text())
    assert len(metrics["history"]["loss"]) == 2 and metrics["history"]["lr"][0] == 0.0  # cosine to 0


def test_unfrozen_bn_moves_when_the_recipe_says_so(trained_run, tmp_path):
    pretrained = trained_run[0] / "model.keras"
    output = tmp_path / "run"
    result = cli(*finetune_args(pretrained, output, "--set", "train.bn_mode='train'")[:-2], "--epochs", "1",
                 "--output", str(output), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    before, after = backbone_arrays(pretrained), backbone_arrays(output / "model.keras")
    moving = [k for k in before if k.endswith("moving_mean")]
    assert moving and all(not np.array_equal(after[k], before[k]) for k in moving)


def test_a_linear_probe_trains_the_head_alone(trained_run, tmp_path):
    pretrained = trained_run[0] / "model.keras"
    output = tmp_path / "run"
    result = cli(*finetune_args(pretrained, output)[:-2], "--epochs", "0", "--output", str(output), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    before, after = backbone_arrays(pretrained), backbone_arrays(output / "model.keras")
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    assert json.loads((output / "metrics.json").read_text())["epochs_completed"] == 1


def test_finetuned_model_exports_like_any_other(killed_and_resumed, tmp_path):
    _, output, _ = killed_and_resumed
    result = cli("export", str(output / "model.keras"), "--format", "tflite",
                 "--output", str(tmp_path / "ft.tflite"), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])["rows"]
    assert rows[0]["top1_agreement"] == 1.0 and (tmp_path / "ft.tflite").stat().st_size > 0


def test_scaled_sgd_scales_the_steps_of_the_backbone_exactly():
    a, b = keras.Variable(np.ones(3, "float32"), name="a"), keras.Variable(np.ones(3, "float32"), name="b")
    opt = schedules.ScaledSGD(0.5, momentum=0.9, nesterov=True, scaled_paths=[a.path], scale=0.1)
    grads = [keras.ops.convert_to_tensor(np.array([1.0, -2.0, 3.0], "float32"))] * 2
    for _ in range(3):  # momentum accumulates: still exactly 0.1x for every step
        opt.apply(grads, [a, b])
    step_a = 1 - keras.ops.convert_to_numpy(a)
    step_b = 1 - keras.ops.convert_to_numpy(b)
    np.testing.assert_allclose(step_a, 0.1 * step_b, rtol=1e-6)
    assert schedules.ScaledSGD.from_config(opt.get_config()).scale == 0.1


@pytest.mark.parametrize("extra, message", [
    ([], "The finetune recipe fine-tunes pretrained weights: give --weights"),
    (["--weights", "missing.keras"], "Model file missing.keras not found."),
    (["--weights", "WRONG", "--epochs", "0"], "0 (a linear probe: the head phase alone) needs --weights and "
                                              "train.head_steps"),
])
def test_finetune_bad_input(trained_run, tmp_path, extra, message):
    args = ["train", "--recipe", "finetune", "--data", str(CIFAR_DIR), "--max-train-samples", "100",
            "--max-eval-samples", "50", "--set", "train.head_steps=0", "--output", str(tmp_path / "out"), *extra]
    args = [str(trained_run[0] / "model.keras") if a == "WRONG" else a for a in args]
    result = cli(*args, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert message in last_line(result)
