"""Command-line paths that had no test: `recipes --show`, `summary --all --format markdown`
(the README's model table) and `benchmark --mode predict`, end to end in real subprocesses,
plus their bad inputs through `cli.main`."""

import json
import statistics
import tomllib

import pytest

from conftest import ROOT, cli
from keras_resnet import cli as cli_module, recipes


def _main(capsys, *argv):
    status = cli_module.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# -- recipes --show --------------------------------------------------------------------------

def test_recipes_show_prints_the_full_resolved_configuration():
    result = cli("recipes", "--show", "cifar10-fast", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    shown = json.loads(result.stdout)  # the whole stdout is one JSON document
    assert shown == recipes.load("cifar10-fast")
    # Full: every section and field of the defaults, not only what the file sets ...
    assert {s: set(f) for s, f in shown.items()} == {s: set(f) for s, f in recipes.DEFAULTS.items()}
    # ... resolved: the file's own values (read here straight from the TOML) over the defaults.
    with open(ROOT / "keras_resnet" / "recipes" / "cifar10-fast.toml", "rb") as f:
        raw = tomllib.load(f)
    for section, fields in raw.items():
        for key, value in fields.items():
            assert shown[section][key] == value, f"{section}.{key}"
    assert shown["recipe"]["name"] == "cifar10-fast"
    assert shown["model"]["se_ratio"] == recipes.DEFAULTS["model"]["se_ratio"]  # a default kept


def test_recipes_show_every_shipped_recipe_and_a_toml_path(tmp_path, capsys):
    for name in recipes.available():
        status, out, err = _main(capsys, "recipes", "--show", name)
        assert status == 0, err
        assert json.loads(out) == recipes.load(name)
    custom = tmp_path / "my-recipe.toml"
    custom.write_text("[train]\nepochs = 3\n\n[augment]\nerasing = 0.25\n")
    status, out, err = _main(capsys, "recipes", "--show", str(custom))
    assert status == 0, err
    shown = json.loads(out)
    assert shown["recipe"]["name"] == "my-recipe"  # the file's stem
    assert shown["train"]["epochs"] == 3 and shown["augment"]["erasing"] == 0.25
    defaults = recipes.load(None)
    assert shown["model"] == defaults["model"] and shown["data"] == defaults["data"]


@pytest.mark.parametrize("content, message", [
    ("[train]\nepoch = 3\n", "unknown field train.epoch; valid fields of [train]"),
    ("[train\nepochs = 3\n", "is not valid TOML"),
    ("[train]\nepochs = \"ten\"\n", "train.epochs must be a int"),
])
def test_recipes_show_of_a_bad_recipe_file_is_one_line(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.toml"
    bad.write_text(content)
    status, out, err = _main(capsys, "recipes", "--show", str(bad))
    assert status == 2 and out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("keras-resnet recipes: error: ") and message in err, err


# -- summary --all --format markdown: the README's table --------------------------------------

def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def test_summary_all_markdown_is_the_readme_model_table():
    from keras_resnet.summary import MODEL_TABLE

    result = cli("summary", "--all", "--format", "markdown", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = _table_rows(result.stdout)
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Models\n", 1)[1].split("\n## ", 1)[0]
    documented = _table_rows(section)
    assert printed[:2] == ["| model | input | trainable params | MACs |", "|---|---|---:|---:|"]
    assert len(printed) == len(MODEL_TABLE) + 2
    assert printed == documented  # row for row, number for number
    rows = {r.split(" | ")[0].lstrip("| "): r.strip("| ").split(" | ")[1:] for r in printed[2:]}
    assert list(rows) == [label for label, _ in MODEL_TABLE]
    # Independent reference: torchvision's published parameter counts and GFLOPS (= GMACs)
    # for the same architectures at 224x224 with 1000 classes.
    torchvision = {"ResNet-18 v1.5": ("11,689,512", "1.81 G"), "ResNet-34 v1.5": ("21,797,672", "3.66 G"),
                   "ResNet-50 v1.5": ("25,557,032", "4.09 G"), "ResNet-101 v1.5": ("44,549,160", "7.80 G"),
                   "ResNet-152 v1.5": ("60,192,808", "11.51 G"), "ResNeXt-50 32x4d": ("25,028,904", "4.23 G"),
                   "ResNeXt-101 32x8d": ("88,791,336", "16.41 G"), "Wide ResNet-50-2": ("68,883,240", "11.40 G")}
    for label, (params, macs) in torchvision.items():
        assert rows[label] == ["224×224", params, macs], label
    # He et al. (2016), CIFAR-10 table: ResNet-20 0.27M, 110 1.7M, 1202 19.4M parameters.
    for label, millions in (("CIFAR ResNet-20", 0.27), ("CIFAR ResNet-110", 1.7), ("CIFAR ResNet-1202", 19.4)):
        assert rows[label][0] == "32×32"
        assert round(int(rows[label][1].replace(",", "")) / 1e6, 2 if millions < 1 else 1) == millions


# -- benchmark --mode predict ------------------------------------------------------------------

def test_benchmark_predict_mode_times_inference_steps():
    # Depth 20 is the smallest depth the benchmark takes (it has no --variant; 8 is not a named depth).
    result = cli("benchmark", "--mode", "predict", "--depth", "20", "--batch-size", "8", "--steps", "2",
                 "--warmup", "1", "--rounds", "3", "--precision", "float32", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert (report["model"], report["mode"], report["batch_size"], report["steps"], report["rounds"]) == (
        "resnet20_cifar", "predict", 8, 2, 3)
    assert report["precision"] == "float32" and report["backend"] == "tensorflow"
    assert report["jit_compile"] is False  # "auto" on a CPU
    windows = report["window_seconds"]
    assert len(windows) == 3 and all(w > 0 for w in windows)  # every predict step was timed
    rates = [8 * 2 / w for w in windows]
    assert report["images_per_sec"] == pytest.approx(statistics.median(rates), rel=0.15)  # ms rounding
    assert report["worst_images_per_sec"] <= report["images_per_sec"] <= report["best_images_per_sec"]
    assert 0 < report["median_step_ms"] <= report["slowest_step_ms"]
    assert report["median_step_ms"] / 1000 <= max(windows)  # a step is part of a 2-step window


@pytest.mark.parametrize("argv, message", [
    (["benchmark", "--mode", "predict", "--depth", "8"], "Unknown depth 8. Valid: ImageNet depths"),
    (["benchmark", "--mode", "predict", "--depth", "20", "--precision", "fp8"], "train.precision"),
])
def test_benchmark_bad_input_is_one_line(capsys, argv, message):
    status, out, err = _main(capsys, *argv)
    assert status == 2 and out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("keras-resnet benchmark: error: ") and message in err, err


def test_benchmark_unknown_mode_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_module.main(["benchmark", "--mode", "eval"])
    assert exit_info.value.code == 2
    assert "argument --mode: invalid choice: 'eval' (choose from" in capsys.readouterr().err
