"""tf.distribute on this CPU: MirroredStrategy over two logical CPUs, two real worker
processes with TF_CONFIG (training, a dying worker, resuming), JAX's DataParallel over two
virtual devices, and the bad inputs."""

import json
import re
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import CIFAR_DIR, ROOT, last_line, run_python
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
              max_eval_samples=256, overrides=["train.sync_bn=true"], log=lambda _: None, verbose=0)
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


# -- strategy choice, synchronized BN, the multi-worker refusal ------------------------------

def test_auto_strategy_on_this_cpu_machine(monkeypatch):
    """No TF_CONFIG cluster, no TPU, at most one GPU: `auto` is TensorFlow's default strategy (one
    replica, no distribution); a TF_CONFIG naming a single worker does not make it multi-worker."""
    import tensorflow as tf

    assert len(tf.config.list_logical_devices("GPU")) <= 1  # auto mirrors over 2+ GPUs only
    for name in ("TF_CONFIG", "TPU_NAME", "COLAB_TPU_ADDR"):
        monkeypatch.delenv(name, raising=False)
    strategy = distribute.make_strategy("auto")
    assert strategy is tf.distribute.get_strategy()
    assert distribute.describe(strategy) == "default strategy (1 replica(s))"
    assert distribute.is_chief(strategy) and not distribute.is_multi_worker(strategy)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert distribute.make_strategy("auto") is tf.distribute.get_strategy()


TWO_CPU_SCRIPT = """
import json, sys, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, keras_resnet
from keras_resnet import distribute
folder = sys.argv[1]
x = np.load(folder + "/images.npy")
auto, strategy = distribute.make_strategy("auto"), distribute.make_strategy("mirrored")
report = {"auto": distribute.describe(auto), "auto_is_default": auto is tf.distribute.get_strategy(),
          "mirrored": distribute.describe(strategy)}
for sync in (True, False):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = keras_resnet.build(8, variant="cifar", num_classes=10)
        count = distribute.synchronize_batch_norm(model) if sync else 0
        model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy", jit_compile=False)
    bn = model.get_layer("conv1_bn")
    features = keras.Model(model.input, bn.input).predict(x, verbose=0)  # what the step normalizes
    model.fit(x, np.arange(len(x)) % 10, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    name = "sync" if sync else "plain"
    np.savez(f"{folder}/{name}.npz", features=features,
             mean=np.stack([v.numpy() for v in strategy.experimental_local_results(bn.moving_mean.value)]),
             var=np.stack([v.numpy() for v in strategy.experimental_local_results(bn.moving_variance.value)]))
    bns = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    report[name] = {"count": count, "synchronized": [l.synchronized for l in bns], "momentum": bn.momentum}
print("REPORT", json.dumps(report))
"""


@pytest.fixture(scope="module")
def two_cpus(tmp_path_factory, cifar_images):
    """One ResNet-8 training step under MirroredStrategy over two logical CPUs, with and
    without `synchronize_batch_norm`; replica 0 gets the 10 brightest real images, replica 1
    the 10 darkest (so their batch statistics differ a lot)."""
    import numpy as np

    folder = tmp_path_factory.mktemp("two_cpus")
    order = np.argsort(-cifar_images.mean(axis=(1, 2, 3)))
    np.save(folder / "images.npy", cifar_images[order])
    result = subprocess.run([sys.executable, "-c", TWO_CPU_SCRIPT, str(folder)], capture_output=True,
                            text=True, cwd=ROOT, timeout=600,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("REPORT ", 1)[1])
    arrays = {name: dict(np.load(folder / f"{name}.npz")) for name in ("sync", "plain")}
    return report, arrays


def test_auto_strategy_with_two_logical_cpus_stays_on_one_replica(two_cpus):
    """`auto` picks mirrored only for several GPUs: two logical CPUs keep the default strategy,
    while `mirrored` spreads over both CPUs."""
    report, _ = two_cpus
    assert report["auto"] == "default strategy (1 replica(s))" and report["auto_is_default"]
    assert report["mirrored"] == "MirroredStrategy (2 replica(s))"


def test_sync_bn_moving_statistics_are_those_of_the_global_batch(two_cpus):
    import numpy as np

    report, arrays = two_cpus
    sync, plain = report["sync"], report["plain"]
    assert sync["count"] == len(sync["synchronized"]) == 7 and all(sync["synchronized"])  # ResNet-8
    assert not any(plain["synchronized"])
    m = sync["momentum"]
    features = arrays["sync"]["features"].astype(np.float64)
    assert features.shape == (20, 32, 32, 16)
    global_mean, global_var = features.mean(axis=(0, 1, 2)), features.var(axis=(0, 1, 2))
    # Synchronized: both replicas hold the statistics of all 20 images (initial mean 0, var 1).
    for replica in range(2):
        np.testing.assert_allclose(arrays["sync"]["mean"][replica], (1 - m) * global_mean,
                                   rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(arrays["sync"]["var"][replica], m + (1 - m) * global_var, rtol=1e-3)

    # Not synchronized (same seed, same weights): each replica holds its own half's statistics
    # (the fused kernel's unbiased variance), so the replicas really saw different data ...
    halves = arrays["plain"]["features"].astype(np.float64).reshape(2, 10, 32, 32, 16)
    np.testing.assert_array_equal(arrays["plain"]["features"], arrays["sync"]["features"])
    n = 10 * 32 * 32
    for replica, half in enumerate(halves):
        np.testing.assert_allclose(arrays["plain"]["mean"][replica], (1 - m) * half.mean(axis=(0, 1, 2)),
                                   rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(arrays["plain"]["var"][replica],
                                   m + (1 - m) * half.var(axis=(0, 1, 2)) * n / (n - 1), rtol=1e-3)
        # ... and synchronized BN's variance is far from what either replica computed alone.
        gap = np.abs(arrays["sync"]["var"][replica] - arrays["plain"]["var"][replica])
        assert np.max(gap / arrays["sync"]["var"][replica]) > 0.1


def test_multi_worker_refuses_a_keras_setup_it_was_not_checked_on(tmp_path):
    """`multi_worker_fit` replaces two private functions of Keras's TensorFlow trainer, so it
    runs only where it was verified. Two real workers on the JAX backend (a genuinely
    different Keras setup: `keras.config.backend()` is "jax") are refused at once, with the
    versions and the backend named, instead of hanging or patching a trainer that is not there."""
    output, tmpdir = tmp_path / "run", tmp_path / "tmp"
    tmpdir.mkdir()
    ports = free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TMPDIR": str(tmpdir), "KERAS_BACKEND": "jax",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen([sys.executable, "-m", "keras_resnet.cli", *TINY, "--epochs", "1",
                                       "--output", str(output)], cwd=ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_, stderr) in zip(procs, results):
        assert proc.returncode == 2 and "Traceback" not in stderr, stderr[-3000:]
        last = stderr.strip().splitlines()[-1]
        assert last == ("keras-resnet train: error: Multi-worker training runs on the TensorFlow "
                        "backend; this is jax. Set KERAS_BACKEND=tensorflow on every worker."), last
    assert not list(tmpdir.glob("keras-resnet-worker-*"))  # no worker started a scratch folder
    assert not output.exists()  # refused before the run folder is touched


@pytest.mark.parametrize("version, ok", [("3.15.1", True), ("3.15.0.dev2026", True), ("3.8.0", False),
                                         ("3.16.0", False), ("4.0.0", False)])
def test_multi_worker_fix_refuses_keras_versions_it_was_not_verified_on(version, ok):
    if ok:
        distribute.check_multi_worker_keras(version, "tensorflow")
        return
    with pytest.raises(distribute.DistributeError,
                       match=rf"verified on Keras 3\.15; this is Keras {re.escape(version)}\. "
                             r"Install keras==3\.15\.\*, or train on one machine"):
        distribute.check_multi_worker_keras(version, "tensorflow")
