import json
import subprocess
import sys

from conftest import ROOT


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "keras_resnet.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_console_script_help():
    import pathlib

    exe = pathlib.Path(sys.executable).parent / "keras-resnet"  # installed with the package
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "summary" in result.stdout


def test_summary_prints_params_and_macs():
    result = run_cli("summary", "--depth", "50")
    assert result.returncode == 0, result.stderr
    assert "resnet50_v1.5" in result.stdout and "25,557,032 trainable" in result.stdout
    assert "4.089 GMACs" in result.stdout


def test_summary_json_for_cifar():
    result = run_cli("summary", "--depth", "20", "--format", "json")
    stats = json.loads(result.stdout)[0]
    assert stats["trainable_params"] == 269_722 and stats["input_shape"] == [32, 32, 3]


def test_user_errors_are_one_line_and_exit_2():
    for args, message in ((["summary", "--depth", "51"], "Unknown depth 51"),
                          (["summary"], "needs --depth"),
                          (["summary", "--depth", "18", "--groups", "32"], "basic-block networks")):
        result = run_cli(*args)
        assert result.returncode == 2, result
        assert "Traceback" not in result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("keras-resnet summary: error:") and message in last
