"""Several machines: the TF_CONFIG cluster of multi-worker training (train.py --strategy multiworker).

Training (train.py --strategy multiworker): every machine runs the same command with its own TF_CONFIG,
e.g. {"cluster": {"worker": ["hostA:12345", "hostB:12345"]}, "task": {"type": "worker", "index": 0}}.
Worker 0 (or the task of type "chief") is the chief: it alone writes checkpoints, TensorBoard logs,
best/ and the enhanced examples; the others save into a private folder that they remove at the end.
A worker that dies stops the others with a PipelineError within about SE_HEARTBEAT_S seconds (the
coordination service's heartbeat timeout; default 10); a worker that never shows up stops the others
after SE_CLUSTER_TIMEOUT_S seconds (default 600).

Sharded data preparation, STFT cache and evaluation (--shard I/N): shards.py.
"""

from __future__ import annotations

import json
import os

import utils

CLUSTER_TIMEOUT_ENV = "SE_CLUSTER_TIMEOUT_S"
HEARTBEAT_ENV = "SE_HEARTBEAT_S"


# ----------------------------------------------------------------------------- TF_CONFIG


def tf_config() -> dict:
    """The parsed TF_CONFIG environment variable ({} when unset); a one-line error when malformed."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return {}
    try:
        config = json.loads(raw)
        if not isinstance(config, dict):
            raise ValueError("not an object")
    except ValueError as e:
        raise utils.PipelineError(f"TF_CONFIG: not valid JSON ({e})") from None
    return config


def task() -> tuple[str | None, int]:
    t = tf_config().get("task") or {}
    return t.get("type"), int(t.get("index", 0))


def is_chief_task() -> bool:
    """The chief of TF_CONFIG's cluster (known before any strategy exists): the "chief" task, else
    worker 0; True without a cluster."""
    config = tf_config()
    cluster = config.get("cluster") or {}
    if not cluster:
        return True
    kind, index = task()
    if "chief" in cluster:
        return kind == "chief"
    return kind == "worker" and index == 0


def n_workers() -> int:
    cluster = tf_config().get("cluster") or {}
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def _seconds(env: str, default: float) -> float:
    raw = os.environ.get(env, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise utils.PipelineError(f"{env}={raw!r}: expected seconds") from None
    if value <= 0:
        raise utils.PipelineError(f"{env}={raw!r}: must be > 0")
    return value


def configure_coordination(tf) -> None:
    """Bounded waits for a multi-worker cluster: the coordination service that
    MultiWorkerMirroredStrategy would start with unbounded defaults, configured first with
    SE_CLUSTER_TIMEOUT_S (all workers must register within it) and SE_HEARTBEAT_S (a worker silent
    that long is declared dead and every collective aborts with UnavailableError)."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    cluster = tf_config().get("cluster") or {}
    ctx = context.context()
    if not cluster or ctx.coordination_service is not None:
        return
    jobs = [
        coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(cluster[job]))
        for job in ("chief", "worker")
        if job in cluster
    ]
    leader = "/job:chief/replica:0/task:0" if "chief" in cluster else "/job:worker/replica:0/task:0"
    ctx.configure_coordination_service(
        service_type="standalone",
        service_leader=leader,
        cluster_register_timeout_in_ms=int(_seconds(CLUSTER_TIMEOUT_ENV, 600) * 1000),
        heartbeat_timeout_in_ms=int(_seconds(HEARTBEAT_ENV, 10) * 1000),
        shutdown_barrier_timeout_in_ms=int(_seconds(HEARTBEAT_ENV, 10) * 1000),
        coordinated_jobs=jobs,
    )


def worker_failure(e: BaseException) -> str | None:
    """The one-line reason when `e` is TensorFlow saying that a peer of the cluster is gone."""
    text = str(getattr(e, "message", e))
    type_name = type(e).__name__
    markers = ("unhealthy", "heartbeat", "Collective ops is aborted", "is down", "failed to connect",
               "Socket closed", "Connection reset", "coordination service")  # fmt: skip
    if type_name in ("UnavailableError", "AbortedError", "DeadlineExceededError", "CancelledError") or any(
        m in text for m in markers
    ):
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        useful = [ln for ln in lines if any(m in ln for m in markers)] or lines or [type_name]
        return useful[0][:300]
    return None
