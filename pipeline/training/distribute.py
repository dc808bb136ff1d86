"""tf.distribute strategies for the same training job on 1 or N devices or workers.

`--strategy`:
  default       one device (TensorFlow's default strategy; no-op wrappers).
  mirrored      tf.distribute.MirroredStrategy over all local GPUs, or over N
                logical CPU devices with `--cpu_devices=N` (how tests run it).
  multi_worker  tf.distribute.MultiWorkerMirroredStrategy; the cluster comes
                from the standard TF_CONFIG environment variable.
  tpu           tf.distribute.TPUStrategy (documented; not tested here).

`--batch_size` is the global batch: each of R replicas gets batch_size / R
examples per step, and the loss is averaged over the global batch
(`tf.nn.compute_average_loss`), so the gradient, and therefore the learning
rate's meaning, is the same as on one device with the same global batch.

Security: TensorFlow's gRPC servers listen on all interfaces even when
TF_CONFIG names 127.0.0.1, and anyone who reaches a worker's port can run
graphs on it. Run multi-worker jobs only on a trusted network or behind a
firewall that admits the cluster's own hosts alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

from pipeline.errors import DistributeError, PeerLostError

TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
    '"task": {"type": "worker", "index": 0}}'
)
# The task types MultiWorkerMirroredStrategy runs (a chief is optional).
TASK_TYPES = ("chief", "worker")
# How often a waiting worker says whom it waits for.
WAIT_REPORT_EVERY_S = 30.0


@dataclasses.dataclass(frozen=True)
class Cluster:
    """TF_CONFIG, checked: every job's addresses and this process's task."""

    jobs: dict[str, list[str]]
    task_type: str
    task_index: int

    def tasks(self) -> list[tuple[str, int, str]]:
        """(job, index, address) of every task, chief first."""
        order = sorted(self.jobs, key=TASK_TYPES.index)
        return [(job, i, a) for job in order for i, a in enumerate(self.jobs[job])]

    def peers(self) -> list[tuple[str, int, str]]:
        """Every task but this process's own."""
        me = (self.task_type, self.task_index)
        return [t for t in self.tasks() if t[:2] != me]

    @property
    def is_chief(self) -> bool:
        if self.task_type == "chief":
            return True
        return self.task_index == 0 and "chief" not in self.jobs


def _bad(what: str) -> DistributeError:
    return DistributeError(f"TF_CONFIG: {what} (expected e.g. {TF_CONFIG_EXAMPLE})")


def _check_address(job: str, index: int, address: object) -> str:
    where = f"cluster.{job}[{index}]"
    if not isinstance(address, str):
        raise _bad(f"{where} is {address!r}, not a 'host:port' string")
    host, colon, port = address.rpartition(":")
    if not colon or not host:
        raise _bad(f"{where} {address!r} is not 'host:port'")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _bad(f"{where} {address!r}: port {port!r} is not a number 1-65535")
    return address


def _check_jobs(cluster: object) -> dict[str, list[str]]:
    if not isinstance(cluster, dict) or not cluster:
        raise _bad("'cluster' must be an object of jobs")
    jobs = {}
    for job, addresses in cluster.items():
        if job not in TASK_TYPES:
            raise _bad(
                f"job {job!r} is not one --strategy=multi_worker runs "
                f"({', '.join(TASK_TYPES)})"
            )
        if not isinstance(addresses, list) or not addresses:
            raise _bad(
                f"cluster.{job} must be a non-empty list of 'host:port' strings, "
                f"not {addresses!r}"
            )
        jobs[job] = [_check_address(job, i, a) for i, a in enumerate(addresses)]
    if len(jobs.get("chief", [])) > 1:
        raise _bad("cluster.chief must hold one address")
    if "worker" not in jobs and "chief" not in jobs:
        raise _bad("cluster needs a 'worker' list")
    seen = [a for job in jobs.values() for a in job]
    if len(set(seen)) != len(seen):
        raise _bad("the same host:port appears twice in 'cluster'")
    return jobs


def parse_tf_config(raw: str | None) -> Cluster:
    """The cluster TF_CONFIG describes; DistributeError naming what is wrong.

    Pure Python, so a wrong TF_CONFIG is one line before TensorFlow loads.
    """
    if not raw:
        raise DistributeError(
            "--strategy=multi_worker needs the TF_CONFIG environment variable "
            f"(e.g. {TF_CONFIG_EXAMPLE})"
        )
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise DistributeError(f"TF_CONFIG is not valid JSON ({err})") from None
    if not isinstance(tf_config, dict):
        raise _bad("it must be a JSON object")
    jobs = _check_jobs(tf_config.get("cluster"))
    task = tf_config.get("task")
    if not isinstance(task, dict):
        raise _bad("'task' must be an object with 'type' and 'index'")
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in jobs:
        raise _bad(
            f"task.type {task_type!r} is not a job of 'cluster' ({', '.join(jobs)})"
        )
    if not isinstance(index, int) or isinstance(index, bool):
        raise _bad(f"task.index {index!r} must be an integer")
    if not 0 <= index < len(jobs[task_type]):
        raise _bad(
            f"task.index {index} is out of range: cluster.{task_type} has "
            f"{len(jobs[task_type])} address(es), indexes 0-{len(jobs[task_type]) - 1}"
        )
    return Cluster(jobs, task_type, index)


def _check_tf_config() -> Cluster:
    return parse_tf_config(os.environ.get("TF_CONFIG"))


def make_strategy(
    name: str,
    cpu_devices: int = 0,
    peer_timeout_s: float = 600.0,
    report: Callable[[str], None] | None = None,
):
    """Builds the strategy `name`. Call before any other TensorFlow work.

    Logical CPU devices and multi-worker collectives must be configured before
    TensorFlow initialises its runtime, so entry points call this first.
    A multi-worker strategy waits for every worker of TF_CONFIG at most
    `peer_timeout_s` seconds, saying whom it waits for through `report`
    (default: stderr); see `rendezvous`.
    """
    if name == "multi_worker":
        # Before TensorFlow loads: its own wait cannot be interrupted.
        cluster = _check_tf_config()
        with rendezvous(cluster, peer_timeout_s, report):
            import tensorflow as tf  # while peers still see this task up

            _register_timeout(tf, cluster, peer_timeout_s)
            if cpu_devices:
                _split_cpu(tf, cpu_devices)
        return tf.distribute.MultiWorkerMirroredStrategy()
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if cpu_devices:
            _split_cpu(tf, cpu_devices)
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
            return tf.distribute.MirroredStrategy(devices=devices[:cpu_devices])
        return tf.distribute.MirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise DistributeError(f"unknown --strategy {name!r}")


def _register_timeout(tf, cluster: Cluster, timeout_s: float) -> None:
    """Gives TensorFlow's own wait for the cluster a deadline too (a peer that
    dies between `rendezvous` and it), with the coordination service
    MultiWorkerMirroredStrategy would configure (chief and worker jobs)."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    leader = "chief" if "chief" in cluster.jobs else "worker"
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=f"/job:{leader}/replica:0/task:0",
        cluster_register_timeout_in_ms=int(timeout_s * 1000),
        coordinated_jobs=[
            coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(tasks))
            for job, tasks in sorted(cluster.jobs.items())
        ],
    )


def _listening(address: str) -> bool:
    """Whether something accepts TCP connections at `address` (host:port)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def describe_tasks(tasks: list[tuple[str, int, str]]) -> str:
    """`worker 1 at 127.0.0.1:2223, worker 2 at ...`."""
    return ", ".join(f"{job} {index} at {address}" for job, index, address in tasks)


def missing_peers(cluster: Cluster) -> list[tuple[str, int, str]]:
    """The other tasks of `cluster` whose address accepts no connection: not
    started yet, or gone (a started worker's gRPC server listens there)."""
    return [peer for peer in cluster.peers() if not _listening(peer[2])]


class _WaitStoppedError(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGINT and SIGTERM raise `_WaitStoppedError` in the main thread meanwhile.

    Only the first signal raises: one that lands while the handlers are put
    back (after the first raised) would otherwise raise out of the middle of
    that, leaving its own handler in place for the rest of the run.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopped: list[int] = []

    def stop(signum, frame):
        if not stopped:
            stopped.append(signum)
            raise _WaitStoppedError(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def rendezvous(cluster: Cluster, timeout_s: float, report=None) -> Iterator[None]:
    """Waits until every task of `cluster` has started, in plain Python.

    TensorFlow's own wait for the cluster (`ensure_initialized` while building
    MultiWorkerMirroredStrategy) has no deadline, holds the GIL, and its
    preemption notifier takes SIGTERM: a worker started without its peers
    hangs there and only SIGKILL ends it. So each worker first listens on its
    own TF_CONFIG port (where TensorFlow's server will listen next) and
    waits until it can connect to every peer's port, reporting every
    `WAIT_REPORT_EVERY_S` seconds whom it waits for. SIGINT/SIGTERM stop the
    wait; after `timeout_s` it gives up naming the missing tasks. Nothing has
    been trained or written by then. The port stays open for the body of the
    `with` (load TensorFlow there) and is closed for TensorFlow's server.

    Raises:
      DistributeError: the timeout, a signal (exit code 128 + signal), or
        this task's port taken by another program.
    """
    report = report or (lambda line: print(line, file=sys.stderr, flush=True))
    with _listening_on(cluster):
        _wait_for_peers(cluster, timeout_s, report)
        yield


def _wait_for_peers(cluster: Cluster, timeout_s: float, report) -> None:
    me = f"{cluster.task_type} {cluster.task_index}"
    started = time.monotonic()
    next_report = started + min(5.0, WAIT_REPORT_EVERY_S)
    try:
        with _signals_raise():
            while missing := missing_peers(cluster):
                waited = time.monotonic() - started
                if waited >= timeout_s:
                    raise DistributeError(_gave_up(missing, waited))
                if time.monotonic() >= next_report:
                    next_report += WAIT_REPORT_EVERY_S
                    report(
                        f"{me}: waiting for {describe_tasks(missing)} to start "
                        f"({waited:.0f} s of --peer_timeout={timeout_s:g})"
                    )
                time.sleep(0.5)
    except _WaitStoppedError as stopped:
        err = DistributeError(
            f"interrupted by {stopped} while waiting for "
            f"{describe_tasks(missing_peers(cluster))} to start; nothing was "
            "trained or written"
        )
        err.exit_code = 128 + stopped.signum
        raise err from None


@contextlib.contextmanager
def _listening_on(cluster: Cluster) -> Iterator[None]:
    """Listens on this task's port (all interfaces, as TensorFlow's server
    will) so that peers see it has started; closed before TensorFlow binds."""
    address = cluster.jobs[cluster.task_type][cluster.task_index]
    port = int(address.rpartition(":")[2])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", port))
        listener.listen(16)
    except OSError as err:
        listener.close()
        raise DistributeError(
            f"TF_CONFIG: this task's address {address} cannot be listened on "
            f"({err.strerror or err}); is another program using port {port}?"
        ) from None
    try:
        yield
    finally:
        listener.close()


def _gave_up(missing: list[tuple[str, int, str]], waited: float) -> str:
    return (
        f"gave up after {waited:.0f} s (--peer_timeout) waiting for "
        f"{describe_tasks(missing)}: start it with the same flags and its own "
        "TF_CONFIG task, or check that address; nothing was trained or written"
    )


def _split_cpu(tf, count: int) -> None:
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * count
        )
    except RuntimeError as err:
        raise DistributeError(
            f"--cpu_devices={count}: TensorFlow was initialised already ({err})"
        ) from None


def chief_from_tf_config(strategy_name: str) -> bool:
    """Whether this process will be the chief, read from TF_CONFIG alone.

    Lets entry points decide, before TensorFlow starts, whether this worker
    owns the run directory (the same rule as `is_chief`); a wrong TF_CONFIG
    is refused here, in one line.
    """
    if strategy_name != "multi_worker":
        return True
    return _check_tf_config().is_chief


# How TensorFlow names a task in its errors: /job:worker/replica:0/task:1.
_TASK_NAME = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")


def lost_peers(cluster: Cluster, message: str) -> list[tuple[str, int, str]]:
    """The peers a collective's error names, else those no longer listening."""
    named = {(job, int(index)) for job, index in _TASK_NAME.findall(message)}
    peers = [peer for peer in cluster.peers() if peer[:2] in named]
    return peers or missing_peers(cluster)


@contextlib.contextmanager
def peers_watched(strategy, run_path, step: Callable[[], int]) -> Iterator[None]:
    """Turns a multi-worker collective failing on a lost peer into one line.

    TensorFlow raises `UnavailableError` (or a cancelled/aborted collective)
    with a long op trace when another worker dies. This names the worker
    that is gone, the step, and the command that continues the run (on every
    worker, since a collective run needs them all); the run is then recorded
    `interrupted` at its last checkpoint (`PeerLostError`).
    """
    if not is_multi_worker(strategy):
        yield
        return
    import tensorflow as tf

    lost = (
        tf.errors.UnavailableError,
        tf.errors.CancelledError,
        tf.errors.AbortedError,
        tf.errors.DeadlineExceededError,
    )
    try:
        yield
    except lost as err:
        cluster = _check_tf_config()
        text = getattr(err, "message", None) or str(err)
        gone = lost_peers(cluster, text)
        who = describe_tasks(gone) if gone else "another worker"
        name = pathlib.Path(run_path)
        raise PeerLostError(
            f"{who} is gone (at step {step()}; TensorFlow: {type(err).__name__}); "
            "the run stops at its last checkpoint; continue it by running on "
            "every worker, each with its own TF_CONFIG: pipeline-train --resume "
            f"--strategy=multi_worker --logdir={name.parent} --run_name={name.name}"
        ) from None


def make_preemption_handler(strategy, manager, on_preempted):
    """A PreemptionCheckpointHandler for multi-worker runs, else None.

    SIGTERM to any worker makes every worker save a checkpoint through
    `manager` at the same step; then `on_preempted()` runs on each of them (it
    should raise to end training; the process exits 42, TensorFlow's
    restart code). Create it before restoring a checkpoint: it adds its own
    counter to the checkpoint, which the restore must then bring back on
    every worker.
    """
    if not is_multi_worker(strategy):
        return None
    import tensorflow as tf

    return tf.distribute.experimental.PreemptionCheckpointHandler(
        strategy.cluster_resolver,
        manager,
        termination_config=tf.distribute.experimental.TerminationConfig(
            exit_fn=on_preempted
        ),
    )


def is_multi_worker(strategy) -> bool:
    """True when the strategy spans several worker processes."""
    extended = strategy.extended
    return bool(getattr(extended, "_in_multi_worker_mode", lambda: False)())


def is_chief(strategy) -> bool:
    """Only the chief writes summaries, the run record and real checkpoints.

    With a `chief` task in TF_CONFIG that task is the chief; otherwise worker 0.
    """
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def worker_label(strategy) -> str:
    """`worker-<id>` for log lines and temporary directory names."""
    if not is_multi_worker(strategy):
        return "local"
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type}-{resolver.task_id}"


def is_single_device(strategy) -> bool:
    """One replica in one process: the input pipeline needs no distributing."""
    return strategy.num_replicas_in_sync == 1 and not is_multi_worker(strategy)
