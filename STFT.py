"""The STFT cache script: builds <stft_dir>/Training_STFT/ and Testing_STFT/ from the data-prep
manifests (the layout: stft_cache.py, which also reads it; the transform: spectral.py).

A build reads the manifest, fingerprints its audio files, decides whether the cache is stale (and
says why), fills the arrays (in this process or spawned workers, each example at its fixed place)
in a temp folder beside the target and swaps it into place. `python STFT.py --help` for the script.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import manifests
import shards
import spectral
import stft_cache
import utils

_TMP_SUFFIX = ".tmp"  # temp folders are <target>.<pid>.tmp (matched by .gitignore's *.tmp)

# -- manifest scan


@dataclass
class _Example:
    manifest_index: str
    noisy: Path
    clean: Path
    noise: Path | None
    snr_db: str


def _read_manifest(path: Path) -> list[_Example]:
    rows = manifests.read_rows(path)
    base = path.resolve().parent
    out, seen = [], {}
    for line, r in enumerate(rows, 2):  # line 1 is the header
        for key in ("index", "noisy"):  # a repeated example would be cached (and trained on) twice
            value = (r[key] or "").strip()
            if (key, value) in seen:
                raise utils.PipelineError(
                    f"{path}: line {line}: {key}={value!r} repeats line {seen[key, value]} (duplicate row)"
                )
            seen[key, value] = line
        noise = (r["noise"] or "").strip()
        out.append(
            _Example(
                r["index"],
                base / r["noisy"].strip(),
                base / r["clean"].strip(),
                base / noise if noise else None,
                (r["snr_db"] or "").strip(),
            )
        )
    return out


def _sources(examples: list[_Example], with_noise: bool) -> list[Path]:
    """Audio files the cache is made of, in example order (noisy, clean[, noise])."""
    files = []
    for ex in examples:
        files += [ex.noisy, ex.clean]
        if with_noise:
            if ex.noise is None:
                raise utils.PipelineError(f"{ex.noisy}: no noise file in the manifest but cache_noise = true")
            files.append(ex.noise)
    return files


def _fingerprint(files: list[Path], manifest: Path) -> str:
    """sha256 over (path, size, mtime) of every source file; raises naming the first missing one."""
    h = hashlib.sha256()
    for path in files:
        try:
            st = path.stat()
        except OSError:
            raise utils.PipelineError(f"{path}: file not found (named in {manifest})") from None
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _section_dict(cfg, section: str) -> dict:
    return {k: v.strip() for k, v in sorted(cfg.items(section))} if cfg.has_section(section) else {}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _expected_meta(cfg, split: str) -> dict:
    """The fields of meta.json that decide whether a cache is up to date."""
    p = spectral.StftParams.from_config(cfg)
    manifest = manifests.path(cfg, split)
    examples = _read_manifest(manifest)
    with_noise = utils.config_value(cfg, "STFT", "cache_noise")
    stft_section = _section_dict(cfg, "STFT")
    return {
        "format": stft_cache.CACHE_FORMAT,
        "split": split,
        "stft": {**asdict(p), "n_bins": p.n_bins, "window": "periodic hann", "framing": "causal, uncentred"},
        "config": {"STFT": stft_section},
        "config_sha256": {"STFT": _sha256(json.dumps(stft_section, sort_keys=True).encode())},
        "manifest": str(manifest.resolve()),
        "manifest_sha256": _sha256(manifest.read_bytes()),
        "sources_sha256": _fingerprint(_sources(examples, with_noise), manifest),
        "arrays": ["noisy", "clean"] + (["noise"] if with_noise else []),
        "examples": len(examples),
    }


def _stale_reason(cfg, split: str, expected: dict | None = None) -> str | None:
    """None when the cache is up to date, else why it must be (re)built."""
    folder = stft_cache.cache_dir(cfg, split)
    expected = expected or _expected_meta(cfg, split)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except FileNotFoundError:
        return "no cache yet"
    except (OSError, ValueError):
        return "meta.json unreadable"
    if meta.get("format") != stft_cache.CACHE_FORMAT:
        return f"cache format {meta.get('format')} != {stft_cache.CACHE_FORMAT}"
    if meta.get("config_sha256") != expected["config_sha256"]:
        old, new = meta.get("config", {}).get("STFT", {}), expected["config"]["STFT"]
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        changed = [f"{k} {old.get(k)} -> {new.get(k)}" for k in keys]
        return "[STFT] changed: " + (", ".join(changed) or "section hash differs")
    if meta.get("manifest") != expected["manifest"]:
        return f"manifest path changed ({meta.get('manifest')} -> {expected['manifest']})"
    if meta.get("manifest_sha256") != expected["manifest_sha256"]:
        return f"manifest changed ({expected['manifest']})"
    if meta.get("sources_sha256") != expected["sources_sha256"]:
        return "audio files changed since the cache was built (size or modification time)"
    try:
        cache = stft_cache.load_cache(folder)
    except (utils.PipelineError, KeyError) as e:
        return f"cache incomplete ({e})"
    if len(cache) != expected["examples"]:
        return f"cache holds {len(cache)} examples, manifest {expected['examples']}"
    return None


def is_up_to_date(cfg, split: str) -> bool:
    """True when <stft_dir>/<Split>_STFT matches the current [STFT] settings, manifest and audio files."""
    return _stale_reason(cfg, split) is None


# -- build


def _remove_stale_temps(target: Path) -> None:
    """Deletes temp folders of interrupted builds (their process is gone)."""
    for tmp in target.parent.glob(f"{target.name}.*{_TMP_SUFFIX}"):
        pid = tmp.name[len(target.name) + 1 :].split(".")[0]
        if tmp.is_dir() and (not pid.isdigit() or int(pid) == os.getpid() or not utils.pid_alive(int(pid))):
            print(f"removing {tmp} (left by an interrupted run)")
            shutil.rmtree(tmp, ignore_errors=True)


_WORKER: dict = {}  # per-process state of a build: open output files and the STFT parameters


def _keep_buffers_on_heap() -> None:
    """Frees one 16 MB block so glibc raises its mmap threshold (dynamic, up to 32 MB) above it.

    Otherwise every ~0.5 MB temporary of `stft` is a fresh mmap that page-faults on first touch:
    measured 1.6 ms instead of 0.4 ms per 3-s STFT in a new process. Harmless elsewhere.
    """
    block = np.empty(16 << 20, np.uint8)
    del block


def _worker_init(files: dict, params: dict) -> None:
    """files: array name -> (path of its .npy, byte offset of the data after the npy header)."""
    _keep_buffers_on_heap()
    _WORKER["files"] = {n: (os.open(path, os.O_WRONLY), start) for n, (path, start) in files.items()}
    _WORKER["params"] = spectral.StftParams(**params)
    _WORKER["paths"] = {n: path for n, (path, _) in files.items()}


def _worker_close() -> None:
    for fd, _ in _WORKER.pop("files", {}).values():
        os.close(fd)
    _WORKER.clear()


def _pwrite_all(fd: int, data: np.ndarray, pos: int) -> None:
    view = memoryview(np.ascontiguousarray(data)).cast("B")
    while view:  # pwrite may write less than asked (e.g. > 2 GiB)
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


def _worker_fill(tasks: list) -> int:
    """Decodes and transforms a chunk of examples, writing each at its fixed place in the .npy files.

    Plain positional writes (pwrite) rather than a writable memmap: page-faulting a fresh file
    through a mapping measured 3-7x slower for these 0.6 MB blocks.
    """
    p, files = _WORKER["params"], _WORKER["files"]
    row_bytes = p.n_bins * np.dtype(np.complex64).itemsize
    try:
        for offset, n_samples, paths in tasks:
            for name, path in paths.items():
                x, _ = utils.read_audio(path, p.sample_rate)
                if len(x) != n_samples:
                    reason = f"changed while caching ({len(x)} != {n_samples} samples)"
                    raise utils.PipelineError(f"{path}: {reason}")
                fd, start = files[name]
                try:
                    _pwrite_all(fd, spectral.stft(x, p), start + offset * row_bytes)
                except OSError as e:  # os.pwrite's ENOSPC names no file: one line naming the cache file
                    raise utils.PipelineError(utils.os_error_line(e, _WORKER["paths"][name])) from None
    except utils.PipelineError as e:
        raise utils.PipelineError(str(e)) from None  # AudioError's signature does not survive pickling
    return len(tasks)


def _fill_arrays(
    folder: Path, names: list, p: spectral.StftParams, tasks: list, total_frames: int, workers: int, desc: str
) -> None:
    """Writes <folder>/<name>.npy, (total_frames, n_bins) complex64, from the examples in tasks."""
    from tqdm import tqdm

    chunks = [tasks[i : i + 8] for i in range(0, len(tasks), 8)]
    files = {}
    for name in names:  # allocate the files (sparse) and find where each header ends
        mm = np.lib.format.open_memmap(folder / f"{name}.npy", "w+", np.complex64, (total_frames, p.n_bins))
        files[name] = (str(folder / f"{name}.npy"), int(mm.offset))
        del mm
    init = (files, asdict(p))
    with tqdm(total=len(tasks), desc=desc, unit="ex", dynamic_ncols=True) as bar:
        if workers <= 1:
            _worker_init(*init)
            try:
                for chunk in chunks:
                    bar.update(_worker_fill(chunk))
            finally:
                _worker_close()
            return
        import multiprocessing as mp

        # spawn, not fork: callers may have TensorFlow (threads) loaded; results land at fixed offsets,
        # so the output is the same for any worker count and completion order.
        with mp.get_context("spawn").Pool(workers, _worker_init, init) as pool:
            for n in pool.imap_unordered(_worker_fill, chunks):
                bar.update(n)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_in(tmp: Path, target: Path) -> None:
    """Renames tmp over target; the old cache is moved aside first (a folder cannot be replaced)."""
    old = target.with_name(f"{target.name}.{os.getpid()}.old{_TMP_SUFFIX}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    _fsync(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def build_cache(cfg, split: str, workers: int = 1, force: bool = False) -> Path:
    """Writes <stft_dir>/<Split>_STFT from <data_dir>/manifest_<split>.csv unless it is up to date.

    workers: processes decoding and transforming (1 = in this process, 0 = one per CPU core). On the
    2-core dev machine 2 workers were slower (300 vs 570 examples/s for 1000 3-s examples: the work is
    ~1.7 ms per example and starting spawn workers costs ~0.5 s), hence the default of 1. A caller
    using workers > 1 needs the usual `if __name__ == "__main__":` guard (spawn start method).
    Returns the cache folder.
    """
    target = stft_cache.cache_dir(cfg, split)
    p = spectral.StftParams.from_config(cfg)
    _check_data_rate(cfg, p)
    if target.parent.is_dir():
        _remove_stale_temps(target)
    expected = _expected_meta(cfg, split)
    reason = "--force" if force else _stale_reason(cfg, split, expected)
    if reason is None:
        print(f"{target}: up to date ({expected['examples']} examples), nothing to do")
        return target
    print(f"{target}: building ({reason})")
    target.parent.mkdir(parents=True, exist_ok=True)
    rows, tasks, offset = _plan_examples(cfg, expected)
    names = expected["arrays"]

    def fill(tmp: Path) -> None:
        n = (os.cpu_count() or 1) if workers <= 0 else workers
        _fill_arrays(tmp, names, p, tasks, offset, min(n, len(tasks)), f"STFT {split}")

    meta = _write_cache(cfg, target, expected, rows, offset, fill)
    mb = meta["bytes_per_example"] / 1e6
    print(f"{target}: {len(rows)} examples, {offset} frames, {mb:.2f} MB per example ({', '.join(names)})")
    return target


def _check_data_rate(cfg, p: spectral.StftParams) -> None:
    """Mixtures data_prep made (its data_prep_config.ini beside the manifests) must be at [STFT]
    sample_rate. Audio from elsewhere, without that file, is resampled as any input is."""
    made_by = utils.get_path(cfg, "data_dir") / "data_prep_config.ini"
    if made_by.is_file():
        data = utils.load_config(made_by)
        rate = data.get("data", "sample_rate", fallback=None)
        if rate is not None:
            utils.check_sample_rates(rate, made_by, p.sample_rate, getattr(cfg, "source", "config.ini"))


def _plan_examples(cfg, expected: dict) -> tuple[list, list, int]:
    """(index.csv rows, fill tasks (offset, n_samples, paths), total frames) of the manifest's examples,
    lengths read from the audio headers."""
    p = spectral.StftParams.from_config(cfg)
    manifest = Path(expected["manifest"])
    examples = _read_manifest(manifest)
    names = expected["arrays"]
    rows, tasks, offset = [], [], 0
    for i, ex in enumerate(examples):
        paths = {"noisy": ex.noisy, "clean": ex.clean, "noise": ex.noise}
        paths = {n: paths[n] for n in names}
        lengths = {n: utils.audio_length(path, p.sample_rate) for n, path in paths.items()}
        if len(set(lengths.values())) != 1:
            raise utils.PipelineError(
                f"{ex.noisy}: lengths differ from its partners in {manifest.name} "
                + ", ".join(f"{n}={v}" for n, v in lengths.items())
            )
        n_samples, n_frames = lengths["noisy"], p.n_frames(lengths["noisy"])
        rows.append(
            {
                "row": i,
                "manifest_index": ex.manifest_index,
                "offset": offset,
                "n_frames": n_frames,
                "n_samples": n_samples,
                "noisy": ex.noisy.resolve(),
                "clean": ex.clean.resolve(),
                "noise": ex.noise.resolve() if ex.noise else "",
                "snr_db": ex.snr_db,
            }
        )
        tasks.append((offset, n_samples, {n: str(path) for n, path in paths.items()}))
        offset += n_frames
    return rows, tasks, offset


def _write_cache(cfg, target: Path, expected: dict, rows: list, offset: int, fill) -> dict:
    """Builds the cache in a temp folder (fill(tmp) writes the .npy arrays; then index.csv, meta.json,
    config.ini) and renames it into place; returns meta."""
    names = expected["arrays"]
    tmp = target.with_name(f"{target.name}.{os.getpid()}{_TMP_SUFFIX}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
        for name in names:
            _fsync(tmp / f"{name}.npy")
        with open(tmp / "index.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, stft_cache.INDEX_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        sizes = {n: (tmp / f"{n}.npy").stat().st_size for n in names}
        meta = {
            **expected,
            "total_frames": offset,
            "dtype": "complex64",
            "bytes": {**sizes, "total": sum(sizes.values())},
            "bytes_per_example": sum(sizes.values()) / len(rows),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        utils.save_config(cfg, tmp / "config.ini")
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


# ----------------------------------------------------------------------------- script


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Caches the STFT of the data-prep mixtures: reads <data_dir>/manifest_<split>.csv and writes "
            "<stft_dir>/Training_STFT/ and Testing_STFT/ (noisy.npy, clean.npy [, noise.npy]: complex64 "
            "(frames, bins) arrays of all examples concatenated along time; index.csv; meta.json). "
            "Does nothing when the cache matches the current [STFT] settings, manifest and audio files; "
            "rebuilds (saying why) otherwise. Audio files are only read."
        ),
        epilog="example: python STFT.py --split training --set STFT.cache_noise=true",
    )
    utils.add_config_args(parser)
    parser.add_argument(
        "--split",
        choices=(*manifests.SPLITS, "both"),
        default="both",
        help="which manifest to cache (default: both)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="processes decoding and transforming (default 1: in this process, which measured fastest "
        "on 2 cores; 0 = one per core); the output does not depend on it",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache is up to date")
    shards.add_arguments(
        parser,
        "one machine's part: the I-th of N contiguous blocks of examples, into "
        "<Split>_STFT.shard-I-of-N/; then --merge-shards N",
        "join the N shard folders into <Split>_STFT/ (the arrays of one unsharded build)",
    )
    args = parser.parse_args(argv)
    if args.workers < 0:
        raise utils.PipelineError(f"--workers {args.workers}: must be >= 0 (0 = one per CPU core)")
    cfg = utils.config_from_args(args)
    for split in manifests.SPLITS if args.split == "both" else (args.split,):
        if args.shard:
            shards.build_stft_shard(cfg, split, args.shard, workers=args.workers)
        elif args.merge_shards:
            shards.merge_stft(cfg, split, args.merge_shards)
        else:
            build_cache(cfg, split, workers=args.workers, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
