"""Distribution for `train`: choose a strategy, validate the cluster, decide who writes.

On TensorFlow, tf.distribute; on JAX and PyTorch, `KerasStrategy` stands in for it (on JAX,
Keras's `DataParallel` over the local devices, or with `multi-process` over every device of
every process of a JAX cluster, `cluster.join`).

Strategies are TensorFlow's own (`OneDeviceStrategy`, `MirroredStrategy`,
`MultiWorkerMirroredStrategy` from `TF_CONFIG`, `TPUStrategy`); nothing here moves tensors
between machines. `multi_worker_fit` holds the one workaround this needs: Keras 3's
TensorFlow trainer cannot run `model.fit` under `MultiWorkerMirroredStrategy` (it reduces
the symbolic-build batch and the scalar logs with collectives that fail; keras-team/keras
#20585), so two private functions are replaced, only while such a fit runs, and only on the
Keras versions where they were checked.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np

from keras_resnet import cluster
from keras_resnet.errors import DistributeError

try:
    import tensorflow as tf
except ImportError:  # a JAX or PyTorch installation: `KerasStrategy` only
    tf = None

STRATEGIES = ("auto", "one-device", "mirrored", "multi-worker", "multi-process", "tpu")
# What a lost worker raises in `model.fit` (multi-worker, TensorFlow only).
LOST_CONTACT = (
    ()
    if tf is None
    else (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError, tf.errors.AbortedError)
)
# Keras versions whose TensorFlow trainer the multi-worker fix was verified against (by the
# two-worker tests; on Keras 3.8 with TensorFlow 2.18 they failed, so it is not listed).
MULTI_WORKER_FIX_KERAS = ("3.15",)


def parse_tf_config(raw: str | None = None) -> dict | None:
    """`TF_CONFIG` (the environment's when `raw` is None), validated; None when unset."""
    raw = os.environ.get("TF_CONFIG") if raw is None else raw
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise DistributeError(f"TF_CONFIG is not valid JSON ({err.msg} at character {err.pos}).") from err
    cluster, task = config.get("cluster") if isinstance(config, dict) else None, None
    if not isinstance(cluster, dict) or not cluster:
        raise DistributeError('TF_CONFIG needs "cluster": {"worker": ["host:port", ...], ...}.')
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise DistributeError(f'TF_CONFIG "cluster.{job}" must be a list of "host:port" strings.')
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise DistributeError('TF_CONFIG needs "task": {"type": "worker", "index": N}.')
    if task["type"] not in cluster:
        raise DistributeError(
            f'TF_CONFIG "task.type" {task["type"]!r} is not a job of "cluster" ({", ".join(cluster)}).'
        )
    if not isinstance(task["index"], int) or not 0 <= task["index"] < len(cluster[task["type"]]):
        raise DistributeError(
            f'TF_CONFIG "task.index" {task["index"]!r} is out of range: '
            f'"cluster.{task["type"]}" has {len(cluster[task["type"]])} address(es).'
        )
    return config


def _cluster_size(config: dict | None) -> int:
    return 0 if config is None else sum(len(config["cluster"].get(job, [])) for job in ("chief", "worker"))


def _tpu_address(tpu: str | None) -> str | None:
    return (
        tpu
        or os.environ.get("TPU_NAME")
        or (f"grpc://{os.environ['COLAB_TPU_ADDR']}" if os.environ.get("COLAB_TPU_ADDR") else None)
    )


def _local_tpu() -> bool:
    """A TPU VM exposes its chips as /dev/accel* (v4 and older) or /dev/vfio/N (v5+)."""
    return any(Path("/dev").glob("accel*")) or any(Path("/dev/vfio").glob("[0-9]*"))


class KerasStrategy:
    """The strategy of a run on JAX or PyTorch: on JAX with several devices Keras's
    `DataParallel`, which splits each batch over them (BN statistics are the whole batch's,
    as XLA computes them over the sharded batch); in a JAX cluster, each process feeding its
    share of every batch."""

    def __init__(self, distribution: keras.distribution.Distribution | None = None, cluster=None):
        """`cluster`: (this process's index, the process count) under `--strategy multi-process`."""
        self.distribution = distribution
        self.cluster: tuple[int, int] | None = cluster

    @property
    def num_replicas_in_sync(self) -> int:
        return self.distribution.device_mesh.devices.size if self.distribution else 1

    def scope(self):
        return self.distribution.scope() if self.distribution else contextlib.nullcontext()


def _keras_strategy(name: str) -> KerasStrategy:
    backend = keras.config.backend()
    if name == "multi-worker" or (name == "auto" and _cluster_size(parse_tf_config()) > 1):
        check_multi_worker_keras()  # refuses every backend but TensorFlow, naming it
    if name == "multi-process" or (name == "auto" and backend == "jax" and cluster.detected()):
        return _multi_process(backend)
    if name not in ("auto", "one-device", "mirrored"):
        raise DistributeError(
            f"--strategy {name} is tf.distribute's: set KERAS_BACKEND=tensorflow. On "
            f"{backend}, --strategy auto trains on one process"
            + (" and spreads the batch over the local devices." if backend == "jax" else ".")
        )
    if backend == "jax" and name != "one-device":
        devices = keras.distribution.list_devices()
        if len(devices) > 1:
            return KerasStrategy(keras.distribution.DataParallel(devices=devices))
        if name == "mirrored":
            raise DistributeError("--strategy mirrored found one device; use --strategy auto.")
    elif name == "mirrored":
        raise DistributeError(
            f"--strategy mirrored is not available on {backend}: set KERAS_BACKEND=jax "
            "(Keras's DataParallel) or tensorflow."
        )
    return KerasStrategy()


def _multi_process(backend: str) -> KerasStrategy:
    """Join the JAX cluster; `DataParallel` over every device of every process."""
    if backend != "jax":
        raise DistributeError(
            f"--strategy multi-process joins a JAX cluster; this is {backend}. Set KERAS_BACKEND=jax on every "
            "process, or on TensorFlow use --strategy multi-worker (tf.distribute, TF_CONFIG)."
        )
    index, count = cluster.join()
    devices = keras.distribution.list_devices()
    return KerasStrategy(keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False), (index, count))


def make_strategy(name: str = "auto", tpu: str | None = None):
    """The strategy for `name`:

    - `auto`: multi-worker when `TF_CONFIG` names more than one worker, a TPU when one is
      addressed (`tpu`, `TPU_NAME`, Colab's `COLAB_TPU_ADDR`), mirrored over several local
      GPUs, else TensorFlow's default strategy;
    - `one-device`, `mirrored` (all local GPUs, or all logical CPUs without GPUs),
      `multi-worker` (`TF_CONFIG`), `tpu` (`tpu` address, or the local TPU VM);
    - on JAX and PyTorch, a `KerasStrategy` (`auto`, `one-device`; `mirrored` on JAX;
      `multi-process` on JAX, and `auto` where `cluster.detected` finds a cluster).
    """
    if name not in STRATEGIES:
        raise DistributeError(f"Unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}.")
    if keras.config.backend() != "tensorflow":
        return _keras_strategy(name)
    if name == "multi-process":
        raise DistributeError(
            "--strategy multi-process joins a JAX cluster: set KERAS_BACKEND=jax on every process, or on "
            "TensorFlow use --strategy multi-worker (tf.distribute, TF_CONFIG)."
        )
    config = parse_tf_config()
    if name == "auto":
        if _cluster_size(config) > 1:
            name = "multi-worker"
        elif _tpu_address(tpu):
            name = "tpu"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            return tf.distribute.get_strategy()
    if name == "one-device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi-worker":
        if config is None:
            raise DistributeError(
                '--strategy multi-worker needs TF_CONFIG, e.g. TF_CONFIG=\'{"cluster": '
                '{"worker": ["host1:12345", "host2:12345"]}, "task": '
                '{"type": "worker", "index": 0}}\' on each worker.'
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    address = _tpu_address(tpu)
    if address is None and not _local_tpu():
        raise DistributeError(
            "--strategy tpu found no TPU: pass --tpu grpc://HOST:8470 (or a TPU name), "
            "run on a TPU VM, or pick a Colab TPU runtime."
        )
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address or "local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError, RuntimeError) as err:
        raise DistributeError(
            f"Could not connect to the TPU {address or 'local'} "
            f"({type(err).__name__}: {str(err).splitlines()[0][:160]})."
        ) from err
    return tf.distribute.TPUStrategy(resolver)


def is_default(strategy) -> bool:
    """One process on one device, as without any strategy."""
    if isinstance(strategy, KerasStrategy):
        return strategy.distribution is None
    return strategy is tf.distribute.get_strategy()


def describe(strategy) -> str:
    if isinstance(strategy, KerasStrategy):
        if strategy.cluster:
            return f"DataParallel ({strategy.num_replicas_in_sync} devices, {strategy.cluster[1]} processes)"
        return f"DataParallel ({strategy.num_replicas_in_sync} devices)" if strategy.distribution else "one device"
    name = type(strategy).__name__
    return f"{'default strategy' if name.startswith('_Default') else name} ({strategy.num_replicas_in_sync} replica(s))"


def is_multi_worker(strategy) -> bool:
    return (
        tf is not None
        and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    )


def is_multi_process(strategy) -> bool:
    """Several processes train together: tf.distribute's multi-worker or a JAX cluster."""
    cluster_shard = shard(strategy)
    return is_multi_worker(strategy) or (cluster_shard is not None and cluster_shard[1] > 1)


def shard(strategy) -> tuple[int, int] | None:
    """(this process's index, the process count) under `--strategy multi-process`, whose
    processes (one, or several) each feed their share of every batch; None otherwise."""
    return strategy.cluster if isinstance(strategy, KerasStrategy) else None


def lost_contact(err: BaseException, strategy) -> str | None:
    """What to tell the user when `err` says another worker or process of the run is gone
    (the run can resume), or None. In a JAX cluster, the process then leaves without JAX's
    shutdown barrier (`cluster.abandon`)."""
    if is_multi_worker(strategy) and isinstance(err, LOST_CONTACT):
        return "Start every worker again with the same command; training resumes from the chief's last checkpoint."
    cluster_shard = shard(strategy)
    signs = ("Gloo", "UNAVAILABLE", "DEADLINE_EXCEEDED", "Connection reset", "heartbeat")
    if cluster_shard and cluster_shard[1] > 1 and isinstance(err, RuntimeError) and any(k in str(err) for k in signs):
        cluster.abandon()
        return cluster.RESUME
    return None


def done(strategy) -> None:
    """This process's work succeeded: in a JAX cluster, tell the others it ends on purpose."""
    if shard(strategy):
        cluster.finished(chief=is_chief(strategy))


def is_chief(strategy) -> bool:
    """Whether this process writes the run folder: the `chief` task, else worker 0; process
    0 of a JAX cluster."""
    if isinstance(strategy, KerasStrategy):
        return not strategy.cluster or strategy.cluster[0] == 0
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (not has_chief and resolver.task_type == "worker" and resolver.task_id == 0)


def check_batch(batch_size: int, strategy) -> None:
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        lower, upper = batch_size // replicas * replicas, -(-batch_size // replicas) * replicas
        raise DistributeError(
            f"The global batch size {batch_size} does not split over {replicas} "
            f"replicas; use a multiple of {replicas} (e.g. {lower or upper} or {upper})."
        )


def agree(strategy, value: int, what: str) -> int:
    """`value` if every worker holds the same one, else a clear error (no silent divergence)."""
    if not is_multi_process(strategy):
        return value
    if isinstance(strategy, KerasStrategy):
        from jax.experimental import multihost_utils

        values = np.asarray(multihost_utils.process_allgather(np.array([value], np.int64)))
    else:
        values = strategy.gather(strategy.run(lambda: tf.constant([value], tf.int64)), axis=0).numpy()
    low, high = int(values.min()), int(values.max())
    if low != high:
        raise DistributeError(
            f"Workers disagree on {what} ({low} vs {high}): every worker must see the "
            "chief's run folder (shared storage) and get the same command line."
        )
    return value


def synchronize_batch_norm(model: keras.Model) -> int:
    """Switch every BatchNormalization layer to cross-replica statistics; returns the count."""
    count = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            count += 1
    return count


def check_multi_worker_keras(version: str | None = None, backend: str | None = None) -> None:
    """Refuse a Keras version or backend that `multi_worker_fit` was not verified on
    (default: the running ones)."""
    version, backend = version or keras.__version__, backend or keras.config.backend()
    if backend != "tensorflow":
        raise DistributeError(
            f"Multi-worker training runs on the TensorFlow backend; this is {backend}. "
            "Set KERAS_BACKEND=tensorflow on every worker."
        )
    if ".".join(version.split(".")[:2]) not in MULTI_WORKER_FIX_KERAS:
        raise DistributeError(
            f"Multi-worker training is verified on Keras {', '.join(MULTI_WORKER_FIX_KERAS)}; "
            f"this is Keras {version}. Install keras=={MULTI_WORKER_FIX_KERAS[-1]}.*, "
            "or train on one machine (--strategy mirrored)."
        )


@contextlib.contextmanager
def multi_worker_fit(strategy) -> Iterator[None]:
    """Make `model.fit`/`evaluate` work under a multi-worker strategy, for the duration."""
    if not is_multi_worker(strategy):
        yield
        return
    check_multi_worker_keras()
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original_reduce = tf_trainer.reduce_per_replica
    original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build

    def first_local(value):
        return (
            strategy.experimental_local_results(value)[0]
            if isinstance(value, tf.distribute.DistributedValues)
            else value
        )

    def reduce_per_replica(values, strat, reduction):
        # Scalars (losses, metric results) cannot be reduced along axis 0.
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strat):
            return tree.map_structure(
                lambda v: strat.reduce("MEAN", v, axis=0 if first_local(v).shape.rank else None), values
            )
        return original_reduce(values, strat, reduction)

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        # The batch only gives shapes: take this worker's first replica instead of a collective.
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tree.map_structure(first_local, next(batches))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    tf_trainer.reduce_per_replica = reduce_per_replica
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    try:
        yield
    finally:
        tf_trainer.reduce_per_replica = original_reduce
        tf_trainer.TensorFlowTrainer._maybe_symbolic_build = original_build
