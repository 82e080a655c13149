"""--shard I/N of data/data_prep.py, STFT.py and evaluate.py, and the merges of their N shards.

Shard I of N takes the I-th of N contiguous, near-equal blocks of the items (mixture indices 1..total,
the examples of a manifest, the test files): the N blocks are disjoint and cover every item. Each
shard writes its items' outputs under names of their own (..shard-I-of-N..), so N machines may share
one folder or copy their folders together afterwards; the merge (--merge-shards N) checks that every
shard is there and complete, and writes the files one machine would have written, byte for byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import utils


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


# ----------------------------------------------------------------------------- data/data_prep.py


def _read_csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _missing(paths) -> list:
    return [p for p in paths if not p.is_file()]


def merge_data_prep(cfg, count: int, splits=("training", "testing")) -> list[str]:
    """Joins manifest_<split>.shard-I-of-N.csv (I = 1..N) into manifest_<split>.csv and the shards'
    skipped lists into data_prep_skipped_<split>.csv, as one unsharded run writes them; the shard files
    are removed afterwards. Refuses (writing nothing) when a shard is missing or the shards' mixture
    indices are not exactly 1..total_<split>_files."""

    import manifests
    import prep_outputs
    import prep_plan

    settings = prep_plan.Settings.from_config(cfg)
    out, lines, done = settings.output_path, [], []
    for split in splits:
        total = settings.totals[split]
        if total == 0:
            continue
        parts = [s.label for s in Shard(1, count).all()]
        shard_csvs = [out / f"manifest_{split}.{p}.csv" for p in parts]
        if missing := _missing(shard_csvs):
            names = ", ".join(m.name for m in missing)
            raise utils.PipelineError(f"{out}: {split}: shard manifest(s) not there yet: {names}")
        rows = [r for m in shard_csvs for r in _read_csv(m)]
        for r in rows:
            r["index"] = int(r["index"])
        indices = sorted(r["index"] for r in rows)
        if indices != list(range(1, total + 1)):
            raise utils.PipelineError(
                f"{out}: {split}: the {count} shards hold {len(indices)} mixtures "
                f"({len(set(indices))} distinct), not 1..{total}: were they made with other settings?"
            )
        skipped = {}
        for p in parts:
            listing = out / f"data_prep_skipped_{split}.{p}.csv"
            if listing.is_file():
                for r in _read_csv(listing):
                    skipped.setdefault(r["path"], r["reason"])
        prep_outputs.remove_leftovers(out, split)  # temp files of interrupted shards (none runs now)
        manifests.write(out / f"manifest_{split}.csv", rows)
        prep_outputs.write_skipped(out / f"data_prep_skipped_{split}.csv", skipped)
        done += shard_csvs + [out / f"data_prep_skipped_{split}.{p}.csv" for p in parts]
        lines.append(f"{split}: {total} mixtures from {count} shards -> {out / f'manifest_{split}.csv'}")
    for path in done:
        path.unlink(missing_ok=True)
    return lines


# ----------------------------------------------------------------------------- STFT.py


def stft_shard_dir(cfg, split: str, shard: Shard):
    import stft_cache

    target = stft_cache.cache_dir(cfg, split)
    return target.with_name(f"{target.name}.{shard.label}")


def _shard_record(expected: dict, shard: Shard, rows: range, frames: tuple[int, int]) -> dict:
    keys = (
        "format",
        "split",
        "stft",
        "config_sha256",
        "manifest_sha256",
        "sources_sha256",
        "arrays",
        "examples",
    )
    return {"shard": shard.label, "rows": [rows.start, rows.stop], "frames": list(frames),
            **{k: expected[k] for k in keys}}  # fmt: skip


def build_stft_shard(cfg, split: str, shard: Shard, workers: int = 1):
    """<stft_dir>/<Split>_STFT.shard-I-of-N/: the spectra of the shard's block of manifest examples
    (noisy.npy, clean.npy [, noise.npy]: exactly the rows [first, last) frames of the full cache's
    arrays) and shard.json. Up to date (nothing done) when shard.json matches the manifest, its audio
    files and [STFT]."""
    import json
    import os
    import shutil

    import spectral
    import STFT

    p = spectral.StftParams.from_config(cfg)
    expected = STFT._expected_meta(cfg, split)
    rows, tasks, total_frames = STFT._plan_examples(cfg, expected)
    mine = shard.block(len(tasks))
    first = tasks[mine.start][0] if len(mine) else total_frames
    last = tasks[mine.stop][0] if mine.stop < len(tasks) else total_frames
    record = _shard_record(expected, shard, mine, (first, last))
    folder = stft_shard_dir(cfg, split, shard)
    try:
        if json.loads((folder / "shard.json").read_text()) == record:
            print(f"{folder}: up to date ({len(mine)} examples), nothing to do")
            return folder
    except (OSError, ValueError):
        pass
    folder.parent.mkdir(parents=True, exist_ok=True)
    # hidden temp name: never taken for another build's leftover by STFT._remove_stale_temps
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        local = [(offset - first, n, paths) for offset, n, paths in tasks[mine.start : mine.stop]]
        n = (os.cpu_count() or 1) if workers <= 0 else workers
        desc = f"STFT {split} {shard.label}"
        STFT._fill_arrays(tmp, expected["arrays"], p, local, last - first, max(1, min(n, len(local))), desc)
        (tmp / "shard.json").write_text(json.dumps(record, indent=1) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"{folder}: examples {mine.start}..{mine.stop - 1} of {len(tasks)}, frames {first}..{last}")
    return folder


def merge_stft(cfg, split: str, count: int):
    """Joins the N shard folders into <stft_dir>/<Split>_STFT, the cache STFT.build_cache writes (same
    arrays, index.csv, config.ini; meta.json differs only in "created"); removes the shard folders.
    Refuses (writing nothing) when a shard is missing or was made from another manifest, other audio
    files or another [STFT]."""
    import json
    import os
    import shutil

    import numpy as np

    import STFT
    import stft_cache

    target = stft_cache.cache_dir(cfg, split)
    expected = STFT._expected_meta(cfg, split)
    rows, tasks, total_frames = STFT._plan_examples(cfg, expected)
    folders = []
    for shard in Shard(1, count).all():
        folder = stft_shard_dir(cfg, split, shard)
        mine = shard.block(len(tasks))
        first = tasks[mine.start][0] if len(mine) else total_frames
        last = tasks[mine.stop][0] if mine.stop < len(tasks) else total_frames
        try:
            found = json.loads((folder / "shard.json").read_text())
        except (OSError, ValueError):
            raise utils.PipelineError(f"{folder}: shard not there (or not finished): run STFT.py "
                                      f"--split {split} --shard {shard.index}/{count}") from None  # fmt: skip
        if found != _shard_record(expected, shard, mine, (first, last)):
            raise utils.PipelineError(
                f"{folder}: made from another manifest, other audio files or another [STFT] than "
                f"{expected['manifest']}; rebuild it"
            )
        folders.append((folder, first, last))

    def fill(tmp) -> None:
        row_bytes = expected["stft"]["n_bins"] * np.dtype(np.complex64).itemsize
        for name in expected["arrays"]:
            shape = (total_frames, expected["stft"]["n_bins"])
            mm = np.lib.format.open_memmap(tmp / f"{name}.npy", "w+", np.complex64, shape)
            start = int(mm.offset)
            del mm
            fd = os.open(tmp / f"{name}.npy", os.O_WRONLY)
            try:
                for folder, first, last in folders:
                    part = np.load(folder / f"{name}.npy", mmap_mode="r")
                    if part.shape != (last - first, shape[1]):
                        raise utils.PipelineError(f"{folder / f'{name}.npy'}: shape {part.shape} is not "
                                                  f"{(last - first, shape[1])}")  # fmt: skip
                    for a in range(0, len(part), 4096):  # in slices: bounded memory
                        STFT._pwrite_all(fd, np.asarray(part[a : a + 4096]), start + (first + a) * row_bytes)
            finally:
                os.close(fd)

    STFT._write_cache(cfg, target, expected, rows, total_frames, fill)
    for folder, _, _ in folders:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{target}: {len(rows)} examples, {total_frames} frames, from {count} shards")
    return target


# ----------------------------------------------------------------------------- evaluate.py


def evaluate_batches(tasks: list[dict], sample_rate: int, batch_size: int) -> list[list[int]]:
    """Positions of `tasks` grouped as evaluate's model batches (runs of up to batch_size files of one
    length; an unreadable file alone), lengths from the audio headers."""
    groups, current, length = [], [], None
    for i, t in enumerate(tasks):
        try:
            n = utils.audio_length(t["noisy"], sample_rate)
        except utils.PipelineError:
            groups += [current, [i]] if current else [[i]]
            current = []
            continue
        if current and (len(current) >= batch_size or n != length):
            groups.append(current)
            current = []
        if not current:
            length = n
        current.append(i)
    return groups + ([current] if current else [])


def evaluate_shard_tasks(tasks: list[dict], shard: Shard, sample_rate: int, batch_size: int) -> list[dict]:
    """The shard's test files: its block of whole model batches (a file's model estimate does not then
    depend on the sharding: every batch is the one an unsharded run infers)."""
    groups = evaluate_batches(tasks, sample_rate, batch_size)
    return [tasks[i] for g in shard.block(len(groups)) for i in groups[g]]


def _evaluate_shard_path(out_dir, shard: Shard):
    return Path(out_dir) / "shards" / f"{shard.label}.json"


def _plain(x):
    """JSON-ready: numpy scalars as Python numbers (NaN stays NaN: Python's json writes it)."""
    import numpy as np

    return x.item() if isinstance(x, np.generic) else x


def save_evaluate_shard(
    out_dir, shard: Shard, rows: list[dict], tasks: list[dict], fingerprint: dict
) -> dict:
    """<out>/shards/shard-I-of-N.json: the shard's scored rows (dropped files included) and what they
    were scored with; returns {"shard", "files", "path"}."""
    import json

    path = _evaluate_shard_path(out_dir, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"shard": shard.label, "fingerprint": fingerprint, "indices": [t["index"] for t in tasks],
              "rows": [{k: _plain(v) for k, v in r.items()} for r in rows]}  # fmt: skip
    with utils.atomic_write(path, "w") as f:
        json.dump(record, f)
    print(f"{path}: {len(tasks)} test files of {fingerprint['files']}")
    return {"shard": shard.label, "files": len(tasks), "path": str(path)}


def load_evaluate_shards(out_dir, count: int, tasks: list[dict], fingerprint: dict) -> list[dict]:
    """The rows of the N shards of <out>/shards/, checked: all there, scored with the same model,
    manifest, limit, systems and metrics, and together every test file exactly once."""
    import json

    rows, seen = [], []
    for shard in Shard(1, count).all():
        path = _evaluate_shard_path(out_dir, shard)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            raise utils.PipelineError(
                f"{path}: shard not there (or unreadable): run evaluate.py --shard {shard.index}/{count} "
                "with the same options"
            ) from None
        if record.get("fingerprint") != fingerprint:
            theirs = record.get("fingerprint") or {}
            diff = [k for k in fingerprint if theirs.get(k) != fingerprint[k]]
            raise utils.PipelineError(f"{path}: scored with other settings ({', '.join(diff)} differ)")
        rows += record["rows"]
        seen += record["indices"]
    if sorted(seen) != sorted(t["index"] for t in tasks):
        raise utils.PipelineError(
            f"{Path(out_dir) / 'shards'}: the {count} shards hold {len(seen)} test files, not each of the "
            f"{len(tasks)} exactly once"
        )
    return rows


def remove_evaluate_shards(out_dir, count: int) -> None:
    for shard in Shard(1, count).all():
        _evaluate_shard_path(out_dir, shard).unlink(missing_ok=True)
    folder = Path(out_dir) / "shards"
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def add_arguments(parser, shard_help: str, merge_help: str) -> None:
    """--shard I/N and --merge-shards N (exclusive), with each script's own help text."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--shard", type=shard_arg, metavar="I/N", help=shard_help)
    group.add_argument("--merge-shards", type=merge_arg, metavar="N", help=merge_help)
