"""Several machines: the TF_CONFIG cluster of multi-worker training and the --shard I/N of the scripts.

Training (train.py --strategy multiworker): every machine runs the same command with its own TF_CONFIG,
e.g. {"cluster": {"worker": ["hostA:12345", "hostB:12345"]}, "task": {"type": "worker", "index": 0}}.
Worker 0 (or the task of type "chief") is the chief: it alone writes checkpoints, TensorBoard logs,
best/ and the enhanced examples; the others save into a private folder that they remove at the end.
A worker that dies stops the others with a PipelineError within about SE_HEARTBEAT_S seconds (the
coordination service's heartbeat timeout; default 10); a worker that never shows up stops the others
after SE_CLUSTER_TIMEOUT_S seconds (default 600).

Sharding (data/data_prep.py, STFT.py, evaluate.py --shard I/N): shard I of N takes the I-th of N
contiguous blocks of the items (mixture indices, cache examples, test files); the blocks are disjoint
and cover every item. Each script's merge step joins the N shards into what one machine would have
written.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import utils

CLUSTER_TIMEOUT_ENV = "SE_CLUSTER_TIMEOUT_S"
HEARTBEAT_ENV = "SE_HEARTBEAT_S"


# ----------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """ "I/N" with 1 <= I <= N."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
            raise utils.PipelineError(f"--shard {text!r}: expected I/N with 1 <= I <= N, e.g. 2/3")
        return cls(int(m.group(1)), int(m.group(2)))

    @property
    def label(self) -> str:
        """The shard's part of a file name: shard-2-of-3."""
        return f"shard-{self.index}-of-{self.count}"

    def block(self, n: int) -> range:
        """Positions 0..n-1 of this shard: the index-th of `count` contiguous, near-equal blocks."""
        return range((self.index - 1) * n // self.count, self.index * n // self.count)

    def all(self) -> list[Shard]:
        return [Shard(i, self.count) for i in range(1, self.count + 1)]


def shard_arg(text: str) -> Shard:
    """argparse type for --shard."""
    import argparse

    try:
        return Shard.parse(text)
    except utils.PipelineError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def merge_arg(text: str) -> int:
    """argparse type for --merge-shards N."""
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--merge-shards {text!r}: expected a shard count >= 1")
    return int(text)


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
