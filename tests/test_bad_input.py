"""Bad input at the command line: one line naming the problem and the fix, exit status 2,
nothing written. docs/bad-input.md lists every bad input the suite tries, with its test."""

import re

import pytest

from conftest import CIFAR_DIR, ROOT
from keras_resnet import cli

TRAIN = ["train", "--recipe", "cifar10-fast", "--data", str(CIFAR_DIR)]

# (case id, argv with {out} for a path that must not appear, what the one line must say)
CASES = [
    ("train-depth", [*TRAIN, "--depth", "21"], "Unknown depth 21. Valid: ImageNet depths"),
    ("train-variant", [*TRAIN, "--variant", "v3"], "Unknown variant 'v3'; use one of"),
    ("train-precision", [*TRAIN, "--precision", "fp8"], "train.precision must be one of auto, float32"),
    ("train-schedule", [*TRAIN, "--set", "train.schedule=step"], "train.schedule must be one of piecewise"),
    ("train-jit", [*TRAIN, "--set", "train.jit_compile=maybe"], "train.jit_compile must be 'auto', true or false"),
    ("train-override-form", [*TRAIN, "--set", "trainepochs=3"], "must look like section.field=value"),
    ("train-override-type", [*TRAIN, "--set", "train.epochs=abc"], "train.epochs must be a int"),
    ("train-override-section", [*TRAIN, "--set", "optim.lr=0.1"], "unknown section [optim]"),
    ("train-erasing", [*TRAIN, "--set", "augment.erasing=2.0"], "augment.erasing must be a probability in [0, 1]"),
    ("train-crop", [*TRAIN, "--set", "data.eval_crop_fraction=1.5"], "data.eval_crop_fraction must be in (0, 1]"),
    ("train-smoothing", [*TRAIN, "--set", "train.label_smoothing=1.0"], "train.label_smoothing must be in [0, 1)"),
    ("train-momentum", [*TRAIN, "--set", "train.momentum=1.5"], "train.momentum must be in [0, 1)"),
    ("train-unknown-recipe-file", ["train", "--recipe", "{out}.toml", "--data", str(CIFAR_DIR)],
     "Unknown recipe"),
    ("recipes-show-unknown", ["recipes", "--show", "cifar10-slow"], "Unknown recipe 'cifar10-slow'"),
    ("summary-no-depth", ["summary"], "summary needs --depth D"),
    ("benchmark-rounds", ["benchmark", "--rounds", "0"], "rounds must be at least 1, got 0"),
    ("benchmark-steps", ["benchmark", "--steps", "0"], "steps must be at least 1, got 0"),
    ("export-format", ["export", "m.keras", "--format", "pdf", "--output", "{out}"], "Unknown format 'pdf'"),
    ("export-quantize", ["export", "m.keras", "--format", "tflite", "--quantize", "int4", "--output", "{out}"],
     "Unknown quantization 'int4'"),
    ("export-quantize-format", ["export", "m.keras", "--format", "saved_model", "--quantize", "float16",
                                "--output", "{out}"], "--quantize applies to --format tflite"),
    ("export-int8-io", ["export", "m.keras", "--format", "tflite", "--quantize", "int8", "--int8-io", "int16",
                        "--output", "{out}"], "Unknown int8 I/O type 'int16'"),
    ("export-int8-calibration", ["export", "m.keras", "--format", "tflite", "--quantize", "int8",
                                 "--output", "{out}"], "needs calibration images: pass --calibration-data"),
    ("export-weights-name", ["export", "m.keras", "--format", "weights", "--output", "{out}.h5"],
     "must end in .weights.h5"),
    ("export-missing-model", ["export", "{out}/none.keras", "--format", "keras", "--output", "{out}.keras"],
     "not found"),
    ("predict-missing-model", ["predict", "{out}/none.keras", "cat.jpg"], "not found"),
    ("evaluate-missing-model", ["evaluate", "{out}/none.keras", "--data", str(CIFAR_DIR)], "not found"),
]


@pytest.mark.parametrize("case, argv, message", CASES, ids=[c[0] for c in CASES])
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, case, argv, message):
    out = tmp_path / "out"
    argv = [a.replace("{out}", str(out)) for a in argv]
    if argv[0] == "train":
        argv += ["--output", str(out)]
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith(f"keras-resnet {argv[0]}: error: "), err
    assert message in err, err
    assert "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written, not even a run folder


def test_the_bad_input_table_names_real_tests():
    """docs/bad-input.md: every row's test exists, every case above has its row, >= 40 rows."""
    table = (ROOT / "docs" / "bad-input.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| #")
            and not line.startswith("|--")]
    assert len(rows) >= 40
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    for row in rows:
        tests = re.findall(r"`(test_\w+)", row)
        assert tests, row
        for name in tests:
            assert f"def {name}(" in sources, f"{name} in docs/bad-input.md is not a test"
    for case, _, _ in CASES:
        assert f"[{case}]" in table, f"case {case} has no row in docs/bad-input.md"
