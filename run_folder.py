"""The run folder <checkpoint_dir>/<run>: --resume / --overwrite and what --resume refuses, the lock of
the process training it, history.jsonl and the plateau rule, best/, checkpoint temps, and the signal
handling that makes Ctrl-C and SIGTERM save a checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import mixing
import utils
from train_settings import FIXED_TRAIN_KEYS, MODEL_SECTIONS, RESUMABLE_TRAIN_KEYS, RunDirs, TrainParams

if TYPE_CHECKING:
    from trainer import Trainer
    from validation import Validator

log = utils.get_logger("train")


def _resume_conflicts(saved, cfg) -> list[str]:
    """Settings of MODEL_SECTIONS and FIXED_TRAIN_KEYS that differ between the saved and new config
    (numbers compared as numbers, so 2.1e-4 == 0.00021)."""

    def norm(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return v

    def get(items: dict, section: str, key: str):
        if key in items:
            return items[key]
        try:  # a key newer than the saved config: the run had its default
            return utils.config_default(section, key)
        except KeyError:
            return None

    diffs = []
    for section in MODEL_SECTIONS:
        sa = dict(saved.items(section)) if saved.has_section(section) else {}
        sb = dict(cfg.items(section)) if cfg.has_section(section) else {}
        for k in sorted(set(sa) | set(sb)):
            a, b = get(sa, section, k), get(sb, section, k)
            if norm(a) != norm(b):
                diffs.append(f"[{section}] {k} {a} -> {b}")
    pa, pb = TrainParams.from_config(saved), TrainParams.from_config(cfg)
    diffs += [f"[train] {k} {getattr(pa, k)} -> {getattr(pb, k)}" for k in FIXED_TRAIN_KEYS
              if getattr(pa, k) != getattr(pb, k)]  # fmt: skip
    if pa.on_the_fly and pb.on_the_fly:  # the sources and SNR range make the on-the-fly examples
        da, db = mixing.data_settings(saved), mixing.data_settings(cfg)
        keys = mixing.MIX_DATA_KEYS
        diffs += [f"[data] {k} {da[k]} -> {db[k]}" for k in keys if norm(da[k]) != norm(db[k])]
    return diffs


def prepare_run(cfg, dirs: RunDirs, resume: bool, overwrite: bool) -> bool:
    """Checks / clears the run folders; returns True when a checkpoint will be restored."""
    if resume and overwrite:
        raise utils.PipelineError("train.py: --resume and --overwrite exclude each other")
    _refuse_if_locked(dirs.checkpoints)
    exists = dirs.checkpoints.exists() or dirs.logs.exists()
    if exists and overwrite:
        for folder in (dirs.checkpoints, dirs.logs):
            shutil.rmtree(folder, ignore_errors=True)
        for folder in dirs.enhanced.glob("epoch_*"):
            shutil.rmtree(folder, ignore_errors=True)
        return False
    if exists and not resume:
        raise utils.PipelineError(
            f"train.py: run folder {dirs.checkpoints} exists; use --resume to continue it, "
            "another --run-name, or --overwrite to start it again"
        )
    if not resume:
        return False
    tf = utils.import_tensorflow()
    if tf.train.latest_checkpoint(str(dirs.checkpoints)) is None:
        log.warning(f"--resume: no checkpoint in {dirs.checkpoints}; starting a new run")
        return False
    saved = dirs.checkpoints / "config.ini"
    if saved.is_file():  # refused before anything is written: the saved config.ini stays as it was
        diffs = _resume_conflicts(utils.load_config(saved), cfg)
        if diffs:
            raise utils.PipelineError(
                f"train.py: --resume with other settings than {saved} ({'; '.join(diffs[:3])}); only "
                f"{', '.join(RESUMABLE_TRAIN_KEYS[:4])} and {RESUMABLE_TRAIN_KEYS[4]} may change"
            )
    return True


@contextlib.contextmanager
def run_lock(folder: Path):
    """<run>/.lock holds the pid of the process training the run: a second one is refused."""
    _refuse_if_locked(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".lock"
    lock.write_text(f"{os.getpid()}\n")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()


def _refuse_if_locked(folder: Path) -> None:
    try:
        pid = int((folder / ".lock").read_text().strip() or 0)
    except (OSError, ValueError):
        return
    if pid and pid != os.getpid() and utils.pid_alive(pid):
        raise utils.PipelineError(f"train.py: run folder {folder} is being trained by process {pid}")


def plateaued(records: list[dict], patience: int, min_delta: float, min_epochs: int = 0) -> bool:
    """True when the last `patience` validated epochs of a history raised validation SI-SDR by no more
    than min_delta over the best validation before them (the run has converged by that rule), from
    epoch min_epochs on."""
    scores = [r["validation"]["si_sdr"] for r in records if r.get("validation")]
    if patience < 1 or len(scores) <= patience or records[-1]["epoch"] < min_epochs:
        return False
    return max(scores[-patience:]) <= max(scores[:-patience]) + min_delta


class History:
    """One JSON line per finished epoch (<run>/history.jsonl), rewritten atomically."""

    def __init__(self, path: Path, keep_before_epoch: int):
        self.path = path
        self.records = []
        if path.is_file():
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            self.records = [r for r in records if r["epoch"] <= keep_before_epoch]

    def add(self, record: dict) -> None:
        self.records.append(record)
        text = "".join(json.dumps(r, allow_nan=True) + "\n" for r in self.records)
        with utils.atomic_write(self.path, "w") as f:
            f.write(text)


def export_best(trainer: Trainer, cfg, dirs: RunDirs, epoch: int, val: dict, validator: Validator) -> None:
    """best/ = model.save_trained + metrics.json, swapped in by renames so it is never half-written.
    metrics.json names the test-split files validation used (evaluate.py reports scores without them)."""
    tmp, old = dirs.checkpoints / ".best.tmp", dirs.checkpoints / ".best.old"
    for folder in (tmp, old):
        shutil.rmtree(folder, ignore_errors=True)
    trainer.model_lib.save_trained(trainer.model, cfg, tmp)
    with utils.atomic_write(tmp / "metrics.json", "w") as f:
        record = {
            "epoch": epoch,
            "step": int(trainer.step.numpy()),
            "validation": val,
            "validation_split": "testing",
            "validation_manifest_indices": list(validator.manifest_indices),
            "validation_files": validator.identity,
        }
        json.dump(record, f, indent=2)
    if dirs.best.exists():
        dirs.best.rename(old)
    tmp.rename(dirs.best)
    shutil.rmtree(old, ignore_errors=True)


def remove_checkpoint_temps(folder: Path) -> None:
    """The ckpt-N_temp/ folders TensorFlow writes a checkpoint into before renaming it."""
    for tmp in Path(folder).glob("ckpt-*_temp*"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def save_checkpoint(manager, folder: Path, step: int) -> str:
    """manager.save; on any error its ckpt-N_temp/ folder is removed and a full disk (or a
    read-only folder) is one line, not a TensorFlow traceback."""
    try:
        return manager.save(checkpoint_number=step)
    except BaseException as e:
        remove_checkpoint_temps(folder)
        tf = utils.import_tensorflow()
        if isinstance(e, tf.errors.OpError):
            text = (str(e.message).strip().splitlines() or [type(e).__name__])[0]
            reason = "disk full" if "No space left" in text else text[:200]
            raise utils.PipelineError(f"{folder}: checkpoint not saved: {reason}") from e
        raise


@contextlib.contextmanager
def deferred_interrupt():
    """Holds Ctrl-C (and SIGTERM, see _terminate_as_interrupt) back while the training state changes,
    then raises KeyboardInterrupt: a checkpoint taken in the except-handler never sees half an epoch
    transition. A signal ignored (SIGINT of a background job) or handled by someone else is left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught, swapped = [], {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) in (signal.default_int_handler, _terminate_as_interrupt):
            swapped[sig] = signal.signal(sig, lambda *_: caught.append(True))
    try:
        yield
    finally:
        for sig, handler in swapped.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt


def _terminate_as_interrupt(signum, frame):
    """SIGTERM (a scheduler, `kill`, a container stop) saves and exits like Ctrl-C."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_saves():
    """Installs _terminate_as_interrupt for SIGTERM while training, when nobody else handles it."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
