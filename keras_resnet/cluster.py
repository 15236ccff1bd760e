"""Multi-process JAX: join the cluster, and end with one line when a peer is lost.

One process per host (a TPU pod slice's VMs, SLURM's tasks, or the processes Keras's
`KERAS_DISTRIBUTION_JOB_ADDRESSES` / `_NUM_PROCESSES` / `_PROCESS_ID` describe) joins with
`jax.distributed.initialize` before JAX computes anything; Keras's `DataParallel` then spans
every device of every process. JAX notices a dead process by its missing heartbeats and
aborts the others with a C++ stack trace; a watch thread here notices first (a heartbeat of
its own in the coordinator's key-value store) and ends the process with one line saying how
to resume.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time

from keras_resnet.errors import DistributeError

ADDRESSES, COUNT, INDEX = (f"KERAS_DISTRIBUTION_{k}" for k in ("JOB_ADDRESSES", "NUM_PROCESSES", "PROCESS_ID"))
PEER_TIMEOUT = "KERAS_RESNET_PEER_TIMEOUT"  # seconds without a peer's heartbeat before this process gives up
DEFAULT_PEER_TIMEOUT = 60.0
LOST_EXIT_CODE = 3
RESUME = "Start every process again with the same command: training resumes from process 0's last checkpoint."
_PREFIX = "keras_resnet/heartbeat/"
_SAVED = "keras_resnet/saved"  # process 0 wrote the finished run
_joined: dict[str, PeerWatch] = {}
_lost: list[bool] = []  # a peer was lost: this process leaves without JAX's shutdown barrier


def detected() -> str | None:
    """What announces a multi-process cluster to this process, or None: Keras's variables
    naming several processes, an `srun` step of several tasks (not a batch script's one
    process), a TPU pod slice's worker list."""
    if int(os.environ.get(COUNT, "1") or 1) > 1:
        return COUNT
    if int(os.environ.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1 and "SLURM_PROCID" in os.environ:
        return "SLURM_STEP_NUM_TASKS"
    if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        return "TPU_WORKER_HOSTNAMES"
    return None


def peer_timeout() -> float:
    raw = os.environ.get(PEER_TIMEOUT, "")
    try:
        value = float(raw) if raw else DEFAULT_PEER_TIMEOUT
    except ValueError:
        value = -1.0
    if value <= 0:
        raise DistributeError(f"{PEER_TIMEOUT}={raw!r} must be a number of seconds above 0 (default 60).")
    return value


def join() -> tuple[int, int]:
    """Join the JAX cluster once per process; (this process's index, the process count).
    The coordinator, count and index come from Keras's variables, else from JAX's own
    detection (TPU, SLURM, Open MPI)."""
    import jax

    if "watch" in _joined:
        return jax.process_index(), jax.process_count()
    timeout = peer_timeout()
    address = os.environ.get(ADDRESSES, "").split(",")[0] or None
    count = int(os.environ[COUNT]) if os.environ.get(COUNT) else None
    index = int(os.environ[INDEX]) if os.environ.get(INDEX) else None
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes reduce over TCP
    try:
        jax.distributed.initialize(
            address,
            count,
            index,
            heartbeat_timeout_seconds=int(2 * timeout + 10),  # JAX's detection (an abort) comes after ours
            shutdown_timeout_seconds=24 * 3600,  # the others wait while process 0 evaluates and saves
        )
    except (RuntimeError, ValueError) as err:
        raise DistributeError(
            f"Could not join the JAX cluster ({str(err).splitlines()[0][:200]}). Start every process with the "
            f"same command and {ADDRESSES} (process 0's host:port), {COUNT} and {INDEX}, before any JAX "
            "computation; on a TPU pod slice or under SLURM they are found without them."
        ) from err
    watch = PeerWatch(jax.process_index(), jax.process_count(), timeout)
    watch.start()
    atexit.register(watch.stop)  # a thread inside the client's C++ at interpreter exit aborts the process
    atexit.register(_leave_if_lost)  # runs first: after a loss, JAX's shutdown would wait and then abort
    _joined["watch"] = watch
    return jax.process_index(), jax.process_count()


def abandon() -> None:
    """Mark the cluster as lost (a peer died): at exit, leave with `LOST_EXIT_CODE` at once
    instead of JAX's shutdown barrier, which would wait for the dead process and abort."""
    _lost.append(True)


def _leave_if_lost() -> None:
    if _lost:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(LOST_EXIT_CODE)


def finished(chief: bool) -> None:
    """This process's work succeeded. Process 0 (`chief`) says the run is saved; the others
    wait for that (a process 0 lost meanwhile ends them with one line, not exit 0); then each
    tells the others it ends on purpose."""
    watch = _joined.get("watch")
    if watch is None:
        return
    if chief:
        watch.client.key_value_set(_SAVED, "yes", allow_overwrite=True)
    else:
        while watch.is_alive() and watch.value(_SAVED) != "yes":
            time.sleep(1.0)
    watch.finish()


class PeerWatch(threading.Thread):
    """Beats in the coordinator's key-value store and watches the others' beats; a peer
    silent for `timeout` seconds, or a coordinator gone, ends this process with one line."""

    def __init__(self, index: int, count: int, timeout: float):
        super().__init__(name="keras-resnet-peer-watch", daemon=True)
        from jax._src import distributed  # the client jax.distributed.initialize made

        client = distributed.global_state.client
        if client is None:
            raise DistributeError("The JAX cluster has no client: jax.distributed.initialize did not run.")
        self.client, self.index, self.count, self.timeout = client, index, count, timeout
        self.stopping = threading.Event()

    def run(self) -> None:
        beat, start, unreachable = 0, time.monotonic(), None
        last: dict[int, tuple[str | None, float]] = {p: (None, start) for p in range(self.count) if p != self.index}
        while not self.stopping.is_set():
            beat += 1
            try:
                self.client.key_value_set(f"{_PREFIX}{self.index}", str(beat), allow_overwrite=True)
                for peer in list(last):
                    value = self.value(f"{_PREFIX}{peer}")
                    if value == "done":
                        del last[peer]
                    elif value != last[peer][0]:
                        last[peer] = (value, time.monotonic())
                    elif time.monotonic() - last[peer][1] > self.timeout:
                        self.lost(f"process {peer} (no heartbeat for {self.timeout:.0f} s)")
                unreachable = None
            except Exception:  # the coordinator's service is gone with process 0, or busy
                unreachable = unreachable or time.monotonic()
                if time.monotonic() - unreachable > self.timeout:
                    self.lost("process 0, the coordinator")
            self.stopping.wait(min(self.timeout / 6, 5.0))

    def value(self, key: str) -> str | None:
        """The key's value in the coordinator's store; None while it is not set."""
        try:
            return self.client.key_value_try_get(key)
        except Exception as err:
            if "NOT_FOUND" in str(err) or "not found" in str(err).lower():
                return None  # not started beating yet: its timeout runs from our start
            raise

    def lost(self, what: str) -> None:
        if self.stopping.is_set():
            return
        print(
            f"keras-resnet train: error: Lost contact with {what}. {RESUME}",
            file=sys.stderr,
            flush=True,
        )
        os._exit(LOST_EXIT_CODE)

    def stop(self) -> None:
        """Stop watching (this process ends; JAX's own heartbeat watches its last moments)."""
        self.stopping.set()
        if self.is_alive():
            self.join(timeout=30)

    def finish(self) -> None:
        """Mark this process as ended on purpose, and stop; only after its work succeeded (a
        process that fails stops beating, and the others end with one line)."""
        self.stop()
        try:
            self.client.key_value_set(f"{_PREFIX}{self.index}", "done", allow_overwrite=True)
        except Exception:
            pass  # the coordinator already went; nothing is waiting for this process
