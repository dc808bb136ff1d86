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

import json
import os

from pipeline.errors import DistributeError


def _check_tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise DistributeError(
            "--strategy=multi_worker needs the TF_CONFIG environment variable "
            '(e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}})'
        )
    try:
        tf_config = json.loads(raw)
        workers = tf_config["cluster"]["worker"]
        task = tf_config["task"]
        if task["type"] not in ("worker", "chief") or not workers:
            raise KeyError("task.type")
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DistributeError(f"TF_CONFIG is not valid cluster JSON ({err})") from None
    return tf_config


def make_strategy(name: str, cpu_devices: int = 0):
    """Builds the strategy `name`. Call before any other TensorFlow work.

    Logical CPU devices and multi-worker collectives must be configured before
    TensorFlow initialises its runtime, so entry points call this first.
    """
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if cpu_devices:
            _split_cpu(tf, cpu_devices)
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
            return tf.distribute.MirroredStrategy(devices=devices[:cpu_devices])
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        _check_tf_config()
        if cpu_devices:
            _split_cpu(tf, cpu_devices)
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise DistributeError(f"unknown --strategy {name!r}")


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
    owns the run directory (the same rule as `is_chief`).
    """
    if strategy_name != "multi_worker":
        return True
    tf_config = _check_tf_config()
    task = tf_config["task"]
    if task["type"] == "chief":
        return True
    return int(task.get("index", 0)) == 0 and "chief" not in tf_config["cluster"]


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
