"""Multi-process JAX training (`--strategy multi-process`, or `auto` under Keras's
KERAS_DISTRIBUTION_* variables): real `keras-resnet train` processes on this machine, JAX on
the CPU, joined over localhost (gloo collectives), against one process with the same global
batch, seed and data."""

import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import keras_resnet  # noqa: F401  (registers the layers model.keras names)
from conftest import ROOT, cli, last_line, small_cifar_folder

PEER_TIMEOUT = 15  # seconds; KERAS_RESNET_PEER_TIMEOUT (long enough for a stall of this machine)
ARGS = ["train", "--recipe", "cifar10-fast", "--depth", "8", "--variant", "cifar", "--epochs", "3",
        "--batch-size", "32", "--seed", "3", "--lr", "0.02", "--set", "train.precision=float32", "--set", "train.validate_every=1",
        "--set", "train.checkpoint_every_steps=2", "--set", "train.checkpoint_every_minutes=0"]
# Runs `keras-resnet ARGV`; with KILL_AFTER_STEP=N, SIGKILLs itself after its Nth training step.
KILLER = r"""
import os, sys
from keras_resnet import cli, runs

after = int(os.environ.get("KILL_AFTER_STEP", "0"))
if after < 0:  # die right after joining the cluster, before any collective
    from keras_resnet import cluster
    original_join = cluster.join

    def join():
        joined = original_join()
        os.kill(os.getpid(), 9)
        return joined

    cluster.join = join
if after > 0:
    seen = [0]
    original = runs.CrashSafeCheckpoint.on_train_batch_end

    def on_train_batch_end(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen[0] += 1
        if seen[0] == after:
            os.kill(os.getpid(), 9)

    runs.CrashSafeCheckpoint.on_train_batch_end = on_train_batch_end
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """An `.npz` of 256 training and 64 test CIFAR-10 images (the arrays path shards)."""
    from PIL import Image

    folder = small_cifar_folder(tmp_path_factory.mktemp("images"), per_class=26)
    arrays = {}
    for split, count in (("train", 256), ("test", 64)):
        files = sorted((folder / split).glob("*/*.jpg"))
        classes = sorted({f.parent.name for f in files})
        files = [files[i] for i in np.random.default_rng(0).permutation(len(files))[:count]]
        arrays[f"x_{split}"] = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        arrays[f"y_{split}"] = np.array([classes.index(f.parent.name) for f in files])
    path = tmp_path_factory.mktemp("npz") / "cifar.npz"
    np.savez(path, **arrays)
    assert len(arrays["y_train"]) == 256 and len(arrays["y_test"]) == 64
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start(args, index: int, port: int, scratch, kill_after: int = 0) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "jax", "TMPDIR": str(scratch),
           "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"localhost:{port}", "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
           "KERAS_DISTRIBUTION_PROCESS_ID": str(index), "KERAS_RESNET_PEER_TIMEOUT": str(PEER_TIMEOUT),
           "KILL_AFTER_STEP": str(kill_after)}
    return subprocess.Popen([sys.executable, "-c", KILLER, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def two_processes(args, scratch, kill_after: int = 0, killed: int = 1) -> list[tuple[int, str, float]]:
    """Both processes to their end (process `killed` killing itself after step `kill_after`):
    [(return code, output, seconds after the first ended)]."""
    port = free_port()
    procs = [start(args, i, port, scratch, kill_after if i == killed else 0) for i in range(2)]
    ended, out = {}, {}
    deadline = time.time() + 600
    while len(ended) < 2 and time.time() < deadline:
        for i, p in enumerate(procs):
            if i not in ended and p.poll() is not None:
                ended[i] = time.time()
        time.sleep(0.2)
    for i, p in enumerate(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        out[i] = p.communicate()[0]
    first = min(ended.values())
    return [(procs[i].returncode, out[i], ended.get(i, float("inf")) - first) for i in range(2)]


def weights(folder) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v) for v in keras.models.load_model(folder / "model.keras").weights]


def one_process(args, local_devices: int = 1) -> subprocess.CompletedProcess:
    """A one-process cluster (`--strategy multi-process`): the same NumPy-drawn batches."""
    env = {"KERAS_BACKEND": "jax", "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"localhost:{free_port()}",
           "KERAS_DISTRIBUTION_NUM_PROCESSES": "1", "KERAS_DISTRIBUTION_PROCESS_ID": "0",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={local_devices}"}
    return cli(*args, "--strategy", "multi-process", env=env)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """The same run on two processes, on one process with one device, and on one process
    with two devices (the two processes' reduction order, without the second process)."""
    base = tmp_path_factory.mktemp("runs")
    scratch = base / "tmp"
    scratch.mkdir()
    two = two_processes([*ARGS, "--data", str(data), "--output", str(base / "two")], scratch)
    one = one_process([*ARGS, "--data", str(data), "--output", str(base / "one")])
    local = one_process([*ARGS, "--data", str(data), "--output", str(base / "local")], local_devices=2)
    return base, scratch, two, one, local


def largest_difference(a, b) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(weights(a), weights(b)))


def test_two_processes_train_the_run_one_process_trains(runs):
    base, scratch, two, one, local = runs
    for code, out, _ in two:
        assert code == 0, out[-3000:]
    for result in (one, local):
        assert result.returncode == 0, result.stderr[-3000:]
    assert "DataParallel (2 devices, 2 processes)" in two[0][1]
    # Only process 0 wrote the run folder; process 1's scratch folder is gone.
    assert sorted(p.name for p in (base / "two").iterdir()) == sorted(p.name for p in (base / "one").iterdir())
    assert list(scratch.iterdir()) == []
    # Two processes compute what one process over two devices computes; one device sums in
    # another order, and 24 steps of SGD carry that float32 noise into the weights.
    across_processes = largest_difference(base / "two", base / "local")
    reduction_order = largest_difference(base / "local", base / "one")
    print(f"max |weight difference|: two processes vs one process on two devices {across_processes:.3g}, "
          f"two devices vs one device {reduction_order:.3g}, two processes vs one device "
          f"{largest_difference(base / 'two', base / 'one'):.3g}")
    assert across_processes <= 1e-6 + 0.01 * reduction_order
    assert reduction_order <= 1e-2
    import json

    history = [json.loads((base / name / "metrics.json").read_text())["history"] for name in ("two", "one")]
    np.testing.assert_allclose(history[0]["loss"][0], history[1]["loss"][0], rtol=1e-5)


def test_a_process_killed_inside_an_epoch_stops_the_other_and_both_resume(runs, data, tmp_path):
    base, scratch, *_ = runs
    args = [*ARGS, "--data", str(data), "--output", str(tmp_path / "run")]
    (killed, _, _), (survivor, out, after) = two_processes(args, scratch, kill_after=11)[::-1]
    assert killed == -9
    # Process 0 learns it from its collectives (gloo: connection reset) or, where they would
    # wait, from the missing heartbeat; either way one line, exit code 3, within the timeout.
    assert survivor == 3 and after < PEER_TIMEOUT + 10, (survivor, after, out[-3000:])
    line = last_line_of(out)
    assert line.startswith("keras-resnet train: error: Lost contact with ") and line.endswith(
        "Start every process again with the same command: training resumes from process 0's last checkpoint."), line
    assert "Check failure stack trace" not in out and "Traceback" not in out
    again = two_processes(args, scratch)
    for code, err, _ in again:
        assert code == 0, err[-3000:]
    assert "Resuming from epoch 2, step 3" in again[0][1]
    for x, y in zip(weights(tmp_path / "run"), weights(base / "two")):
        np.testing.assert_array_equal(x, y)  # the same batches, the same arithmetic: bit-identical here


def test_a_process_lost_outside_any_collective_is_noticed_by_the_heartbeat(data, tmp_path):
    """Killed right after joining: process 0 waits in its first collective, which would wait
    on; the watch thread sees the heartbeat stop and ends it in one line."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    args = [*ARGS, "--data", str(data), "--output", str(tmp_path / "run")]
    (killed, _, _), (survivor, out, after) = two_processes(args, scratch, kill_after=-1)[::-1]
    assert killed == -9 and survivor == 3, out[-3000:]
    assert PEER_TIMEOUT - 1 < after < PEER_TIMEOUT + 10
    assert last_line_of(out) == (f"keras-resnet train: error: Lost contact with process 1 (no heartbeat for "
                                 f"{PEER_TIMEOUT} s). Start every process again with the same command: training "
                                 "resumes from process 0's last checkpoint.")


def last_line_of(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_what_cannot_work_on_jax_is_refused_in_one_line_by_every_process(data, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    for extra, message in (
        (["--batch-size", "33"], "keras-resnet train: error: The global batch size 33 does not split over 2 replicas; "
                                 "use a multiple of 2 (e.g. 32 or 34)."),
        (["--set", "augment.mixup=0.2"], "keras-resnet train: error: --strategy multi-process feeds each process its "
                                         "share of every batch from arrays in memory (pad-crop and flip only) and "
                                         "re-estimates no BN statistics; it cannot run with augment.mixup: turn them "
                                         "off, or train on one process (--strategy auto)."),
    ):
        args = [*ARGS, "--data", str(data), "--output", str(tmp_path / "run"), "--strategy", "multi-process", *extra]
        for code, out, _ in two_processes(args, scratch):
            assert code == 2 and last_line_of(out) == message, out[-2000:]
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("backend, message", [
    ("tensorflow", "--strategy multi-process joins a JAX cluster: set KERAS_BACKEND=jax on every process, or on "
                   "TensorFlow use --strategy multi-worker (tf.distribute, TF_CONFIG)."),
    ("torch", "--strategy multi-process joins a JAX cluster; this is torch. Set KERAS_BACKEND=jax on every process, "
              "or on TensorFlow use --strategy multi-worker (tf.distribute, TF_CONFIG)."),
])
def test_other_backends_are_refused_naming_what_works(data, tmp_path, backend, message):
    result = cli(*ARGS, "--data", str(data), "--output", str(tmp_path / "run"), "--strategy", "multi-process",
                 env={"KERAS_BACKEND": backend})
    assert result.returncode == 2 and last_line(result) == f"keras-resnet train: error: {message}", result.stderr
    assert not (tmp_path / "run").exists()
