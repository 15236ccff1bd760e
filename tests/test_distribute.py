"""tf.distribute on this CPU: MirroredStrategy over two logical CPUs, two real worker
processes with TF_CONFIG (training, a dying worker, resuming), JAX's DataParallel over two
virtual devices, and the bad inputs."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import CIFAR_DIR, ROOT, cli, last_line, run_python
from keras_resnet import distribute

TINY = ["train", "--recipe", "cifar10-fast", "--data", str(CIFAR_DIR), "--depth", "8", "--variant", "cifar",
        "--batch-size", "64", "--max-train-samples", "1024", "--max-eval-samples", "256",
        "--set", "train.validate_every=1", "--strategy", "multi-worker"]


@pytest.mark.parametrize("raw,message", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', 'TF_CONFIG needs "cluster"'),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}', '"host:port"'),
    ('{"cluster": {"worker": ["a:1"]}}', 'TF_CONFIG needs "task"'),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', '"task.type" \'ps\''),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}', '"task.index" 2'),
])
def test_malformed_tf_config_names_the_field(raw, message):
    with pytest.raises(distribute.DistributeError, match=message.replace("(", r"\(")):
        distribute.parse_tf_config(raw)


def test_strategy_user_errors(tmp_path):
    with pytest.raises(distribute.DistributeError, match="Unknown strategy 'horovod'"):
        distribute.make_strategy("horovod")
    start = time.time()
    with pytest.raises(distribute.DistributeError, match="found no TPU: pass --tpu"):
        distribute.make_strategy("tpu")
    assert time.time() - start < 10  # refused, not a hang
    for args, env, message in [
        (["--strategy", "mirrors"], {}, "Unknown strategy 'mirrors'"),
        (["--strategy", "multi-worker"], {}, "--strategy multi-worker needs TF_CONFIG"),
        (["--strategy", "multi-worker"], {"TF_CONFIG": '{"cluster": {"worker": ["a:1"]}, "task": {}}'},
         'TF_CONFIG needs "task"'),
    ]:
        result = subprocess.run([sys.executable, "-m", "keras_resnet.cli", *TINY[:-2], *args, "--output",
                                 str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT,
                                timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert message in last_line(result)


def test_mirrored_over_two_logical_cpus(tmp_path):
    result = run_python(f"""
import json, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras_resnet
from keras_resnet import distribute
common = dict(data={str(CIFAR_DIR)!r}, depth=8, variant="cifar", epochs=2, max_train_samples=1024,
              max_eval_samples=256, overrides=["model.sync_bn=true"], log=lambda _: None, verbose=0)
try:
    keras_resnet.train("cifar10-fast", output={str(tmp_path / "odd")!r}, strategy="mirrored", batch_size=63, **common)
except distribute.DistributeError as err:
    print("REFUSED", err)
m = keras_resnet.train("cifar10-fast", output={str(tmp_path / "mirrored")!r}, strategy="mirrored", batch_size=64, **common)
one = keras_resnet.train("cifar10-fast", output={str(tmp_path / "one")!r}, strategy="one-device", batch_size=64, **common)
print("RESULT", json.dumps({{"loss": m["history"]["loss"], "strategy": m["strategy"], "lr": m["history"]["lr"],
                            "one_lr": one["history"]["lr"], "one_strategy": one["strategy"]}}))
""", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REFUSED The global batch size 63 does not split over 2 replicas" in result.stdout
    out = json.loads(result.stdout.split("RESULT ")[1])
    assert out["strategy"] == "MirroredStrategy (2 replica(s))"
    assert len(out["loss"]) == 2 and out["loss"][1] < out["loss"][0] < 10
    # Same global batch semantics as one device: 1024 // 64 = 16 steps per epoch either way,
    # so the step-based schedule reached the same learning rates.
    assert out["one_strategy"] == "OneDeviceStrategy (1 replica(s))" and out["lr"] == out["one_lr"]


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(args, output, logs, tmpdir, ports):
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for index in range(len(ports)):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TMPDIR": str(tmpdir),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        with open(logs / f"worker{index}.log", "w") as log:  # stdout and stderr
            procs.append(subprocess.Popen([sys.executable, "-m", "keras_resnet.cli", *args, "--output",
                                           str(output)], cwd=ROOT, env=env, stdout=log,
                                          stderr=subprocess.STDOUT))
    return procs


def test_two_worker_processes_train_die_and_resume(tmp_path):
    output, tmpdir = tmp_path / "run", tmp_path / "tmp"
    tmpdir.mkdir()
    args = [*TINY, "--epochs", "4"]
    procs = start_workers(args, output, tmp_path, tmpdir, free_ports(2))
    log1 = tmp_path / "worker1.log"
    deadline = time.time() + 300
    while "Epoch 3/" not in log1.read_text() and time.time() < deadline:
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    procs[0].wait(timeout=120)
    assert time.time() - killed < 120  # no hang
    assert procs[0].returncode == 2
    assert "Lost contact with another worker" in (tmp_path / "worker0.log").read_text().strip().splitlines()[-1]

    procs = start_workers(args, output, tmp_path, tmpdir, free_ports(2))
    for p in procs:
        p.wait(timeout=600)
    logs = [(tmp_path / f"worker{index}.log").read_text() for index in range(2)]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:]
    assert all("Resuming from epoch 3" in log for log in logs)
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["status"] == "complete" and len(metrics["history"]["loss"]) == 4
    assert metrics["strategy"].endswith("(2 replica(s))") and metrics["history"]["val_loss"][3] is not None
    assert all(x == x for x in metrics["history"]["loss"])  # finite, no NaN
    assert (output / "model.keras").is_file() and (output / "curves.png").is_file()
    assert json.loads(logs[1].strip().splitlines()[-1])["eval"] == {}  # the worker wrote no results
    assert not list(tmpdir.glob("keras-resnet-worker-*"))  # the workers' scratch folders are gone


def test_jax_data_parallel_over_two_virtual_devices():
    result = run_python("""
import sys, numpy as np, jax, keras, keras_resnet
assert keras.backend.backend() == "jax" and len(jax.devices()) == 2
keras.distribution.set_distribution(keras.distribution.DataParallel())
model = keras_resnet.build(8, variant="cifar", num_classes=10)
model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
x = np.random.default_rng(0).uniform(0, 255, (64, 32, 32, 3)).astype("float32")
y = np.arange(64) % 10
history = model.fit(x, y, batch_size=16, epochs=3, verbose=0).history["loss"]
kernel = model.get_layer("conv1_conv").kernel.value
print(len(kernel.sharding.device_set), history[-1] < history[0], "tensorflow" in sys.modules)
""", env={"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["2", "True", "False"]
