import subprocess
import sys

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
