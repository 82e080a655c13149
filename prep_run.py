"""Mixing one split of data/data_prep.py: the Mixer (each mixture's draws, from (seed, split, index)
alone, and its three files), the worker processes that run it over chunks of mixture indices, and
`run_split`, which writes the state file, the manifest and the skipped list around them.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import manifests
import mixing
import prep_outputs
import prep_plan
import prep_sources
import utils

SPLIT_IDS = {name: i for i, name in enumerate(manifests.SPLITS)}  # the split id seeds every mixture

log = utils.get_logger("data_prep")


@dataclass
class ChunkResult:
    rows: list = field(default_factory=list)
    written: int = 0
    resumed: int = 0
    bad: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


class Mixer:
    def __init__(self, job: prep_plan.Job):
        self.job = job
        self.reader = prep_sources.SourceReader(job.sample_rate)
        self.reader.bad.update(job.bad)
        self.out = Path(job.output_path)
        self.file_bytes = len(prep_outputs.wav_bytes(np.zeros(job.n_samples, np.float32), job.sample_rate))

    def rng(self, index: int) -> list[np.random.Generator]:
        """Independent streams for the SNR, the clean draw and the noise draw of one mixture."""
        base = np.random.default_rng([self.job.seed, SPLIT_IDS[self.job.split], index])
        return base.spawn(3)

    def _fail(self, src: prep_sources.Source, reason: str) -> None:
        self.reader.bad.setdefault(src.path, reason)

    def pick_clean(self, rng: np.random.Generator):
        job, best = self.job, None
        for _ in range(mixing.MAX_ATTEMPTS):
            i, u = mixing.draw(rng, len(job.clean))  # both drawn before any I/O (see mixing.draw)
            src = job.clean[i]
            if src.path in self.reader.bad:
                continue
            try:
                length = self.reader.length(src)
                if length < job.n_samples:
                    self._fail(src, f"too short ({length / job.sample_rate:.2f} s after resampling)")
                    continue
                start = mixing.start_at(u, length, job.n_samples)
                seg = self.reader.segment(src, start, job.n_samples)
            except utils.AudioError as e:
                self._fail(src, e.reason)
                continue
            frac = mixing.active_fraction(seg, job.sample_rate)
            if frac >= mixing.ACTIVITY_MIN_FRACTION:
                return src, start, seg, None
            if frac > 0 and (best is None or frac > best[0]):
                best = (frac, src, start, seg)
        if best is None:
            raise utils.PipelineError(f"{job.clean_dir}: no usable clean speech (every draw failed)")
        frac, src, start, seg = best
        note = f"{src.path}: no segment passed the speech-activity check; used one {frac:.0%} active"
        return src, start, seg, note

    def pick_noise(self, rng: np.random.Generator):
        job = self.job
        for _ in range(mixing.MAX_ATTEMPTS):
            i, u = mixing.draw(rng, len(job.noise))
            src = job.noise[i]
            if src.path in self.reader.bad:
                continue
            try:
                length = self.reader.length(src)
                if length < mixing.MIN_NOISE_S * job.sample_rate:
                    self._fail(src, f"too short ({length / job.sample_rate:.2f} s after resampling)")
                    continue
                start = mixing.start_at(u, length, job.n_samples)  # a short noise loops
                seg = self.reader.segment(src, start, job.n_samples)
            except utils.AudioError as e:
                self._fail(src, e.reason)
                continue
            if not mixing.is_silent(seg):
                return src, start, seg
        raise utils.PipelineError(f"{job.noise_dir}: no usable noise (every draw failed or was silent)")

    def make(self, index: int, result: ChunkResult) -> None:
        job = self.job
        r_snr, r_clean, r_noise = self.rng(index)
        snr = job.snr_levels[int(r_snr.integers(len(job.snr_levels)))]
        names = prep_outputs.output_names(job.split, index, snr)
        paths = [self.out / n for n in names]
        clean_src, clean_start, clean, note = self.pick_clean(r_clean)
        noise_src, noise_start, noise = self.pick_noise(r_noise)
        if note:
            result.notes.append(f"mixture {index}: {note}")
        if all(_size(p) == self.file_bytes for p in paths):
            result.resumed += 1  # the plan is recomputed (cheap) so the manifest row is exact
            _, _, _, gain = mixing.mix(clean, noise, snr)
        else:
            c32, n32, y32, gain = mixing.mix(clean, noise, snr)
            for path, data in zip(paths, (c32, n32, y32)):
                prep_outputs.write_bytes(path, prep_outputs.wav_bytes(data, job.sample_rate))
            result.written += 1
        sr = job.sample_rate
        result.rows.append({
            "index": index, "clean": names[0], "noise": names[1], "noisy": names[2], "snr_db": f"{snr:.12g}",
            "clean_source": clean_src.path, "clean_start_s": f"{clean_start / sr:.6f}",
            "noise_source": noise_src.path, "noise_start_s": f"{noise_start / sr:.6f}", "gain": f"{gain:.9g}",
        })  # fmt: skip

    def run(self, indices) -> ChunkResult:
        result = ChunkResult()
        for i in indices:
            self.make(i, result)
        result.bad = dict(self.reader.bad)
        return result


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


_WORKER: Mixer | None = None


def _init_worker(job: prep_plan.Job, parent_pid: int | None = None) -> None:
    global _WORKER
    if parent_pid is not None:
        utils.die_with_parent(parent_pid)  # a parent killed with kill -9 takes its workers with it
    _WORKER = Mixer(job)


def _run_chunk(indices) -> ChunkResult:
    return _WORKER.run(indices)


def _chunks(total: int, workers: int) -> list[range]:
    size = max(1, min(32, math.ceil(total / (workers * 4))))
    return [range(a, min(a + size, total + 1)) for a in range(1, total + 1, size)]


@dataclass
class SplitStats:
    split: str
    total: int
    written: int
    resumed: int
    seconds: float
    skipped: dict  # path -> reason
    notes: list
    manifest: Path


def _warn_skipped(items: list[tuple[str, str]], shown: int = 5) -> None:
    """One line per bad file; files that are merely shorter than file_length are summarised."""
    short = [(p, r) for p, r in items if r.startswith("too short")]
    for path, reason in [(p, r) for p, r in items if not r.startswith("too short")] + short[:shown]:
        log.warning(f"skipped {path}: {reason}")
    if len(short) > shown:
        log.warning(f"skipped {len(short) - shown} more files that are too short (listed in the summary)")


def run_split(plan: prep_plan.SplitPlan, workers: int, progress: bool = True, shard=None) -> SplitStats:
    """Mixes the split (shard: only its block of mixture indices, into manifest_<split>.<shard>.csv
    and data_prep_skipped_<split>.<shard>.csv; shards.merge_data_prep joins them)."""
    from tqdm import tqdm

    out = Path(plan.job.output_path)
    started = time.perf_counter()
    if plan.action == "overwrite":
        prep_outputs.remove_outputs(out, plan.split)
    if shard is None:  # (other shards may be writing their temp files into the same folders)
        prep_outputs.remove_leftovers(out, plan.split)
    for folder in manifests.FOLDERS:
        (out / folder.format(plan.split)).mkdir(parents=True, exist_ok=True)
    with utils.atomic_write(plan.state_path, "w") as f:
        json.dump(
            {"hash": plan.digest, **{k: v for k, v in plan.state.items() if not k.endswith("_files")}}, f
        )

    skipped = dict(plan.skipped)
    _warn_skipped(plan.skipped)
    total = ChunkResult()
    chunks = _chunks(plan.total, workers)
    n_mix = plan.total
    if shard is not None:
        mine = shard.block(plan.total)  # positions 0..total-1 of mixtures 1..total
        lo, hi = mine.start + 1, mine.stop + 1
        chunks = [range(max(c.start, lo), min(c.stop, hi)) for c in chunks if c.start < hi and c.stop > lo]
        n_mix = len(mine)
    workers = min(workers, len(chunks))
    desc = f"mixing {plan.split}" + (f" {shard.label}" if shard else "")
    bar = tqdm(total=n_mix, desc=desc, unit="mix", disable=None if progress else True)

    def collect(res: ChunkResult) -> None:
        total.rows += res.rows
        total.written += res.written
        total.resumed += res.resumed
        total.notes += res.notes
        for path, reason in res.bad.items():
            if path not in skipped:
                skipped[path] = reason
                tqdm.write(f"WARNING skipped {path}: {reason}", file=sys.stderr)
        bar.update(len(res.rows))

    try:
        if workers <= 1:
            mixer = Mixer(plan.job)
            for chunk in chunks:
                collect(mixer.run(chunk))
        else:
            # fork is fast and safe here unless TensorFlow (threads) is loaded in this process
            ctx = multiprocessing.get_context("spawn" if "tensorflow" in sys.modules else None)
            with cf.ProcessPoolExecutor(
                workers, ctx, initializer=_init_worker, initargs=(plan.job, os.getpid())
            ) as pool:
                futures = [pool.submit(_run_chunk, chunk) for chunk in chunks]
                try:
                    for fut in cf.as_completed(futures):
                        collect(fut.result())
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        bar.close()
    part = f".{shard.label}" if shard else ""
    manifest = out / f"manifest_{plan.split}{part}.csv"
    manifests.write(manifest, total.rows)
    prep_outputs.write_skipped(out / f"data_prep_skipped_{plan.split}{part}.csv", skipped)
    return SplitStats(
        plan.split, n_mix, total.written, total.resumed, time.perf_counter() - started,
        skipped, total.notes, manifest,
    )  # fmt: skip
