"""train.py --strategy multiworker with two real worker processes on 127.0.0.1 (one CPU device each).

Checked: the chief's weights after 6 steps (3 + 3 across a --resume of both workers) equal those of one
process on the same global batches and seed within WEIGHT_ATOL; only the chief writes checkpoints,
TensorBoard events and enhanced examples; a worker killed mid-run stops the other with a clear message
within KILL_DEADLINE_S. Every process started here is killed (its whole process group) when a test
ends, passed or failed. Deselect with -m "not multiworker".
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, write_config, write_split

import manifests
import STFT
import train
import train_settings
import utils
from trainer import Trainer

pytestmark = [pytest.mark.multiworker, pytest.mark.slow]

WEIGHT_ATOL = 1e-5  # float32 sums in another order (two replicas all-reduced vs one batch)
STEP_DEADLINE_S = 240  # one training command of two workers (start-up, tracing, 3 steps, validation)
KILL_DEADLINE_S = 60  # from the kill of one worker to the exit of the other
TRAIN = {"epochs": 1, "batch_size": 2, "crop_seconds": 0.5, "learning_rate": 1e-3, "validation_files": 1,
         "audio_examples": 1, "checkpoint_steps": 100}  # fmt: skip
TINY = {"projection_units": 16, "lstm_units": 16, "lstm_layers": 1, "dense_units": 16}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mw_data")
    write_split(root / "data", "training", (0.8, 0.6, 0.7, 0.9, 0.5, 0.6), 0)
    write_split(root / "data", "testing", (0.8,), 500)
    cfg = utils.load_config(write_config(root))
    for split in manifests.SPLITS:
        STFT.build_cache(cfg, split)
    return root


def make_config(folder: Path, data_root: Path, **train_values) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"data_dir": str(data_root / "data"), "stft_dir": str(data_root)}
    return write_config(folder, {"paths": paths, "model": TINY, "train": {**TRAIN, **train_values}})


def free_ports(n: int) -> list[int]:
    """Ports the kernel hands out now (closed again: a small race, acceptable on a test machine)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


class Cluster:
    """Worker processes of one cluster, each in its own process group; kill() ends them all."""

    def __init__(self, folder: Path, n: int = 2):
        self.folder, self.n, self.procs = folder, n, []
        self.ports = free_ports(n)

    def env(self, index: int) -> dict:
        spec = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in self.ports]},
                "task": {"type": "worker", "index": index}}  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        env.update(TF_CONFIG=json.dumps(spec), CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
                   TF_NUM_INTEROP_THREADS="1", TF_NUM_INTRAOP_THREADS="1", SE_HEARTBEAT_S="5",
                   SE_CLUSTER_TIMEOUT_S="120", PYTHONUNBUFFERED="1")  # fmt: skip
        return env

    def start(self, config: Path, *args: str, extra=None) -> None:
        """Starts every worker: train.py --strategy multiworker ARGS (worker i also gets extra[i])."""
        self.ports = free_ports(self.n)
        self.procs, self.logs = [], []
        for i in range(self.n):
            log = self.folder / f"worker{i}_{len(list(self.folder.glob('worker*.log')))}.log"
            cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(config), "--strategy",
                   "multiworker", "--no-progress", *args, *((extra or {}).get(i, ()))]  # fmt: skip
            with open(log, "w") as out:
                self.procs.append(subprocess.Popen(cmd, env=self.env(i), stdout=out, stderr=subprocess.STDOUT,
                                                   cwd=self.folder, start_new_session=True))  # fmt: skip
            self.logs.append(log)

    def wait(self, deadline_s: float) -> list[int]:
        end = time.monotonic() + deadline_s
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=max(0.1, end - time.monotonic())))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"workers still running after {deadline_s} s:\n{self.tails()}")
        return codes

    def tails(self, chars: int = 2500) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-chars:]}" for log in self.logs)

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)  # the worker and anything it started
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=10)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.kill()
        assert all(p.poll() is not None for p in c.procs), "a worker process survived the test"


def checkpoint_weights(cfg, folder: Path, step: int) -> list[np.ndarray]:
    params = train_settings.TrainParams.from_config(cfg)
    tf = utils.import_tensorflow()
    trainer = Trainer(cfg, params, tf.distribute.get_strategy())
    trainer.checkpoint.restore(tf.train.latest_checkpoint(str(folder))).expect_partial()
    assert int(trainer.step.numpy()) == step
    return trainer.weights()


def event_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("events.out.tfevents.*"))


def test_two_workers_train_like_one_process_and_only_the_chief_writes(data_root, cluster, tmp_path):
    config = make_config(tmp_path / "mw", data_root)
    # worker 1 gets logs and examples folders of its own: they must stay empty
    private = {
        1: [
            "--set",
            f"paths.log_dir={tmp_path / 'w1_logs'}",
            "--set",
            f"paths.enhanced_dir={tmp_path / 'w1'}",
        ]
    }
    # 1 epoch of 3 steps on both workers, then both resume for a second epoch: 6 steps in all
    started = time.monotonic()
    cluster.start(config, "--run-name", "mw", extra=private)
    assert cluster.wait(STEP_DEADLINE_S) == [0, 0], cluster.tails()
    first = time.monotonic() - started
    cluster.start(config, "--run-name", "mw", "--resume", "--set", "train.epochs=2", extra=private)
    assert cluster.wait(STEP_DEADLINE_S) == [0, 0], cluster.tails()
    assert "resumed" in cluster.logs[0].read_text() and "resumed" in cluster.logs[1].read_text()
    cfg = utils.load_config(config)
    run = utils.get_path(cfg, "checkpoint_dir") / "mw"
    # only the chief wrote: checkpoints (no private folder of worker 1 left), logs, examples
    assert not list(run.glob(".worker_*")) and (run / "best" / "metrics.json").is_file()
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [(h["epoch"], h["step"]) for h in history] == [(1, 3), (2, 6)]
    events = event_files(utils.get_path(cfg, "log_dir") / "mw")
    assert events and len(events) == 4  # train + validation, two commands
    assert not list((tmp_path / "w1_logs").rglob("*")) and not list((tmp_path / "w1").rglob("*"))
    assert len(list((utils.get_path(cfg, "enhanced_dir") / "mw").glob("epoch_*/*.wav"))) == 6
    # one process, same global batch and seed, 2 epochs straight
    ref_cfg = utils.load_config(make_config(tmp_path / "one", data_root, epochs=2))
    ref_run = train.train(ref_cfg, "one", progress=False)
    ours, ref = checkpoint_weights(cfg, run, 6), checkpoint_weights(ref_cfg, ref_run, 6)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ours, ref))
    print(f"two workers vs one process after 6 steps: max |weight difference| = {diff:.3g}; "
          f"first command {first:.0f} s")  # fmt: skip
    assert len(ours) == len(ref) and diff <= WEIGHT_ATOL


def test_a_killed_worker_stops_the_other_with_a_clear_message(data_root, cluster, tmp_path):
    config = make_config(tmp_path / "mw", data_root, epochs=1000)
    cluster.start(config, "--run-name", "kill")
    deadline = time.monotonic() + STEP_DEADLINE_S
    while "epoch 1/1000 " not in cluster.logs[0].read_text():  # training is under way
        assert cluster.procs[0].poll() is None, cluster.tails()
        assert time.monotonic() < deadline, cluster.tails()
        time.sleep(0.5)
    os.killpg(cluster.procs[1].pid, signal.SIGKILL)
    killed = time.monotonic()
    try:
        code = cluster.procs[0].wait(timeout=KILL_DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the chief still runs {KILL_DEADLINE_S} s after its peer was killed:\n{cluster.tails()}")
    took = time.monotonic() - killed
    out = cluster.logs[0].read_text()
    print(f"chief stopped {took:.1f} s after worker 1 was killed")
    assert code == 2, out[-3000:]
    assert "multi-worker training stopped: a worker is gone or unreachable" in out, out[-3000:]
    assert "--resume" in out.splitlines()[-1] or "--resume" in out
