"""Defects found by using the package as other people do (issue 18), one test each."""

import json
import math
import shutil
import sys
import tomllib

import keras
import numpy as np
import pytest

from conftest import CIFAR_DIR, ROOT, SMALL, cli, run_python, small_cifar_folder
from keras_resnet import benchmarking, build, cli as cli_module, files, recipes, report, runs, training
from keras_resnet.layers import FUSED_MIN_EPSILON, BatchNormalization


def strict_json(text: str):
    """json.loads that refuses NaN/Infinity, as strict parsers (JavaScript, Go, jq) do."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def run_cli(capsys, *args) -> tuple[int, str]:
    """`keras-resnet ARGS` in this process: (exit status, stderr)."""
    status = cli_module.main(list(args))
    return status, capsys.readouterr().err


# 1. channels-first input shapes ----------------------------------------------------------------

@pytest.fixture
def channels_first():
    keras.config.set_image_data_format("channels_first")
    yield
    keras.config.set_image_data_format("channels_last")


def test_channels_first_input_shape_is_channels_height_width(channels_first):
    model = build(50, include_top=False, input_shape=(3, None, None))
    assert model.input_shape == (None, 3, None, None)
    assert model.output_shape == (None, 2048, None, None)
    model = build(18, include_top=False, input_shape=(3, 64, 96))
    assert model.output_shape == (None, 512, 2, 3)  # 64 and 96 are the spatial sides
    with pytest.raises(ValueError, match=r"\(channels, height, width\) for image_data_format "
                                         r"'channels_first'.*\(3, 224, 224\)"):
        build(18, include_top=False, input_shape=(None, None, 3))


# 2. multi-worker without a recipe --------------------------------------------------------------

def test_multi_worker_without_a_recipe_trains(tmp_path):
    from test_distribute import free_ports, start_workers

    data = small_cifar_folder(tmp_path / "data", per_class=8)
    output, tmpdir = tmp_path / "run", tmp_path / "tmp"
    tmpdir.mkdir()
    args = ["train", "--depth", "20", "--data", str(data), "--strategy", "multi-worker",
            "--epochs", "1", "--batch-size", "16", "--precision", "float32"]
    procs = start_workers(args, output, tmp_path, tmpdir, free_ports(2))
    for p in procs:
        p.wait(timeout=600)
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:]
    assert "Collective ops must be configured" not in logs[0] + logs[1]
    assert strict_json((output / "metrics.json").read_text())["strategy"].endswith("(2 replica(s))")


def test_image_size_is_read_from_the_header_without_tensorflow(tmp_path):
    from keras_resnet import data

    jpeg = next((CIFAR_DIR / "train" / "cat").glob("*.jpg"))
    assert data.image_size_from_header(jpeg) == (32, 32)
    png = tmp_path / "wide.png"
    import tensorflow as tf

    png.write_bytes(tf.io.encode_png(np.zeros((20, 48, 3), np.uint8)).numpy())
    assert data.image_size_from_header(png) == (20, 48)
    (tmp_path / "fake.jpg").write_bytes(b"not an image at all")
    with pytest.raises(data.DataError, match="not a readable PNG or JPEG"):
        data.image_size_from_header(tmp_path / "fake.jpg")
    # The folder path of peek_image_side leaves TensorFlow's runtime uninitialized.
    result = run_python(
        "from tensorflow.python.eager import context\n"
        "from keras_resnet import data\n"
        f"print(data.peek_image_side({str(CIFAR_DIR)!r}), context.context()._context_handle is None)")
    assert result.stdout.split() == ["32", "True"], result.stderr[-2000:]


# 3. --epochs -1 / 0 ----------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value, message", [
    ("--epochs", "-1", "train.epochs must be at least 1 (0: the head phase alone, a linear probe), got -1"),
    ("--epochs", "0", "train.epochs must be at least 1; 0 (a linear probe: the head phase alone) needs --weights"),
    ("--batch-size", "0", "train.batch_size must be at least 1"),
    ("--lr", "-0.1", "train.lr must be > 0"),
    ("--max-train-samples", "-5", "data.max_train_samples must be >= 0"),
])
def test_out_of_range_flags_are_one_line_and_write_nothing(tmp_path, capsys, flag, value, message):
    output = tmp_path / "out"
    status, err = run_cli(capsys, "train", "--recipe", "cifar10-fast", "--data", str(CIFAR_DIR),
                          flag, value, "--output", str(output))
    assert status == 2 and err.count("\n") == 1 and message in err
    assert err.startswith("keras-resnet train: error:")
    assert not output.exists()


# 4. --overwrite only replaces a run folder -----------------------------------------------------

def test_overwrite_refuses_a_folder_that_is_not_a_run_folder(tmp_path, capsys):
    photos = tmp_path / "photos"
    (photos / "2019").mkdir(parents=True)
    (photos / "2019" / "beach.jpg").write_bytes(b"\xff\xd8\xff precious")
    (photos / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        status, err = run_cli(capsys, "train", "--recipe", "cifar10-fast", "--data", str(CIFAR_DIR),
                              "--output", str(photos), *extra)
        assert status == 2 and "is not a keras-resnet run folder" in err and "nothing in it was changed" in err
    assert sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*")) == [
        "2019", "2019/beach.jpg", "notes.txt"]
    assert (photos / "2019" / "beach.jpg").read_bytes() == b"\xff\xd8\xff precious"


def test_overwrite_of_a_run_folder_removes_only_what_train_wrote(trained_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(trained_run[0], folder)
    (folder / "model.tflite").write_bytes(b"an export the user made")
    (folder / "README.txt").write_text("my notes")
    config = recipes.resolve("cifar10-fast", depth=8, variant="cifar", epochs=2)
    assert runs.prepare(folder, config, overwrite=True, log=print) == "new"
    assert sorted(p.name for p in folder.iterdir()) == ["README.txt", "config.json", "model.tflite"]
    assert json.loads((folder / "config.json").read_text()) == config


# 5. every JSON file is strict JSON -------------------------------------------------------------

def test_json_files_never_hold_bare_nan(tmp_path):
    files.write_json(tmp_path / "m.json", {"loss": [1.0, float("nan"), np.float32("inf")],
                                            "n": np.int64(3), "ok": float("-inf")})
    assert strict_json((tmp_path / "m.json").read_text()) == {"loss": [1.0, None, None], "n": 3,
                                                              "ok": None}


# 6. checkpoint restore: only a damaged file falls back -----------------------------------------

def _compiled(num_classes=10):
    config = recipes.resolve("cifar10-fast", depth=8, variant="cifar", epochs=4, batch_size=64)
    model = training.build_model(config, num_classes=num_classes, image_size=(32, 32))
    training.compile_model(model, config, steps_per_epoch=31)
    return model


def test_a_checkpoint_that_does_not_fit_stops_the_run_and_is_kept(trained_run, tmp_path):
    ckpt = tmp_path / "checkpoints"
    shutil.copytree(trained_run[0] / "checkpoints", ckpt)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    model = _compiled(num_classes=5)  # as after a code change: intact files, other shapes
    with pytest.raises(runs.RunError, match=r"intact but does not fit this model.*left untouched"):
        runs.restore_latest(model, ckpt, print)
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before


def test_every_checkpoint_damaged_stops_instead_of_starting_over(trained_run, tmp_path):
    ckpt = tmp_path / "checkpoints"
    shutil.copytree(trained_run[0] / "checkpoints", ckpt)
    for path in runs.checkpoints(ckpt):
        path.write_bytes(path.read_bytes()[:2000])
    names = sorted(p.name for p in ckpt.iterdir())
    messages = []
    with pytest.raises(runs.RunError, match="Every checkpoint in .* is damaged"):
        runs.restore_latest(_compiled(), ckpt, messages.append)
    assert len(messages) == 2 and sorted(p.name for p in ckpt.iterdir()) == names


def test_a_resume_with_checkpoints_that_do_not_fit_exits_2_and_overwrites_nothing(trained_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(trained_run[0], folder)
    (folder / "model.keras").unlink()  # as if it had been killed before the end
    metrics = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**metrics, "status": "running"}))
    newest = runs.checkpoints(folder / "checkpoints")[0]
    _compiled(num_classes=3).save_weights(newest)  # intact, of another architecture
    replaced = newest.read_bytes()
    result = cli(*SMALL, "--lr", "0.8", "--epochs", "4", "--max-train-samples", "2000",
                 "--max-eval-samples", "500", "--set", "train.validate_every=2",
                 "--output", str(folder), timeout=300)
    assert result.returncode == 2 and "does not fit this model" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert newest.read_bytes() == replaced and not (folder / "model.keras").exists()


# 7. the declared Python floor is the one the package runs on ----------------------------------

def test_declared_python_floor_has_every_module_the_package_imports():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    floor = tuple(int(x) for x in declared.removeprefix(">=").split("."))
    uses_tomllib = any("import tomllib" in p.read_text() for p in (ROOT / "keras_resnet").glob("*.py"))
    assert not uses_tomllib or floor >= (3, 11), (
        f"requires-python {declared}, but tomllib is new in Python 3.11")
    assert sys.version_info[:2] >= floor


# 11. global state is left as the user set it ---------------------------------------------------

def test_training_restores_the_users_dtype_policy():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        config = recipes.resolve("cifar10-fast", depth=8, variant="cifar", precision="float32")
        model, _, policy = training.build_compiled(config, num_classes=10, image_size=(32, 32),
                                                   normalization=None, steps_per_epoch=10)
        assert policy == "float32" and model.dtype_policy.name == "float32"
        assert keras.config.dtype_policy().name == "mixed_float16"
    finally:
        keras.config.set_dtype_policy("float32")


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    result = run_python(
        "import matplotlib\n"
        "from keras_resnet import report\n"
        f"report.plot_curves({str(tmp_path / 'c.png')!r}, {{'loss': [2.0, 1.0]}}, 't')\n"
        "print(matplotlib.get_backend())", env={"MPLBACKEND": "svg"})
    assert result.stdout.split()[-1] == "svg", result.stderr[-2000:]
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_keeps_tensorflow_errors_visible(capsys, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    assert run_cli(capsys, "recipes")[0] == 0
    import os

    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"  # 3 would hide C++ errors too


# 12. BN epsilon below the fused kernel's floor -------------------------------------------------

@pytest.mark.parametrize("epsilon", [1e-6, 1e-5, 1.001e-5, 1e-3])
def test_batch_norm_trains_with_the_epsilon_it_infers_with(epsilon):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((8, 4, 4, 3)) * 3e-3).astype("float32")  # variance ~ epsilon
    fused = BatchNormalization(epsilon=epsilon)
    plain = BatchNormalization(epsilon=epsilon, fused=False)
    y_fused = keras.ops.convert_to_numpy(fused(x, training=True))
    y_plain = keras.ops.convert_to_numpy(plain(x, training=True))
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y_plain, (x - mean) / np.sqrt(var + epsilon), rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(y_fused, y_plain, rtol=2e-3, atol=2e-4)


def test_default_batch_norm_epsilon_is_one_the_fused_kernel_trains_with():
    bns = [layer for layer in build(20)._flatten_layers() if isinstance(layer, BatchNormalization)]
    assert bns and all(bn.epsilon >= FUSED_MIN_EPSILON for bn in bns)
    assert recipes.DEFAULTS["model"]["bn_epsilon"] >= FUSED_MIN_EPSILON


# 14. the benchmark reports every window -------------------------------------------------------

def test_benchmark_reports_windows_best_median_and_spread():
    stats = benchmarking.benchmark(20, steps=3, warmup=1, rounds=4, batch_size=16, precision="float32")
    assert len(stats["window_seconds"]) == 4 and all(w > 0 for w in stats["window_seconds"])
    assert stats["worst_images_per_sec"] <= stats["images_per_sec"] <= stats["best_images_per_sec"]
    rates = sorted(16 * 3 / w for w in stats["window_seconds"])
    assert math.isclose(stats["images_per_sec"], (rates[1] + rates[2]) / 2, rel_tol=1e-2)
    assert stats["slowest_step_ms"] >= stats["median_step_ms"] > 0
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        benchmarking.benchmark(20, rounds=0)


def test_a_float32_model_loads_and_runs_under_a_mixed_global_policy(tmp_path, cifar_images):
    """Blocks build their sub-layers with the block's own dtype policy, not the global one
    (a fine-tuning run loads its float32 pretrained model while bf16 is set)."""
    model = build(50, se_ratio=0.25, variant="v1d", drop_path_rate=0.1, input_shape=(32, 32, 3))
    model.save(tmp_path / "m.keras")
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        loaded = keras.models.load_model(tmp_path / "m.keras")
    finally:
        keras.config.set_dtype_policy("float32")
    computing = [layer for layer in loaded._flatten_layers(include_self=False)
                 if not isinstance(layer, keras.layers.InputLayer)]
    assert {layer.dtype_policy.name for layer in computing} == {"float32"}
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(cifar_images[:2])),
                               keras.ops.convert_to_numpy(model(cifar_images[:2])), rtol=1e-5, atol=1e-6)
