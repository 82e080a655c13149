"""Stage 1: mixes clean speech with noise into the training and testing mixtures.

For every output n = 1..total_<split>_files (settings: data/config.ini, section [data]):
  * an SNR drawn from numpy.linspace(SNR_lower, SNR_upper, total_snrlevels);
  * a clean segment of file_length seconds that contains speech: 20-ms frames within 40 dB of the
    segment's loudest frame must be at least half of the frames (other offsets and files are tried);
  * a noise segment of the same length (noise shorter than that is looped; silent segments rejected);
  * the noise scaled so that 10 log10(sum clean^2 / sum noise^2) equals the SNR, noisy = clean + noise,
    and one common gain on all three signals when max|noisy| would exceed 0.99.
Each mixture's random draws depend only on (seed, split, n), so the output is byte-identical for any
number of worker processes. Files are float32 WAV, so noisy == clean + noise holds exactly on disk.

Outputs, inside output_path:
  CleanSpeech_<split>/clnsp{n}.wav, Noise_<split>/noisy{n}_SNRdb_{snr}.wav,
  NoisySpeech_<split>/noisy{n}_SNRdb_{snr}_clnsp{n}.wav  (split = training | testing, snr = f"{snr:g}"),
  manifest_<split>.csv  (index, noisy, clean, noise, snr_db, clean_source, clean_start_s, noise_source,
                         noise_start_s, gain; paths relative to output_path),
  data_prep_state_<split>.json (hash of the settings and the source list), data_prep_config.ini.

Several machines: --shard I/N mixes the I-th of N contiguous blocks of each split's indices into
manifest_<split>.shard-I-of-N.csv (same wav names, same bytes); --merge-shards N then writes the
manifest and skipped list one unsharded run would have written (shards.py).

A re-run with the same settings completes missing mixtures (an interrupted run resumes); a re-run with
different settings or sources refuses unless --overwrite, which first removes that split's outputs.
Sources (.wav/.flac/.ogg, searched recursively, any rate, any channel count) are never modified;
unreadable, empty, all-zero, NaN/Inf or too-short files are skipped with a warning and listed at the end.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import csv
import hashlib
import io
import json
import math
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # run as `python data/data_prep.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import manifests  # noqa: E402
import mixing  # noqa: E402
import shards  # noqa: E402
import utils  # noqa: E402

SPLITS = {name: i for i, name in enumerate(manifests.SPLITS)}  # the split id seeds every mixture
SPLIT_KEYS = {
    "training": ("clean_train_path", "noise_train_path", "total_training_files"),
    "testing": ("clean_test_path", "noise_test_path", "total_testing_files"),
}
FOLDERS = manifests.FOLDERS
MANIFEST_COLUMNS = manifests.WRITTEN

CACHE_BYTES = 512 * 2**20  # decoded sources kept per worker process
PARTIAL_READ_S = 60.0  # longer files at the target rate are read segment by segment, not cached whole
PARTIAL_FORMATS = {"WAV", "WAVEX", "FLAC", "AIFF", "RF64", "W64", "CAF"}  # exact frame counts, fast seeks
VERSION = 2  # bump when the mixing algorithm changes, so old outputs are not silently resumed

log = utils.get_logger("data_prep")


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    sample_rate: int
    file_length: float
    snr_levels: tuple[float, ...]
    seed: int
    output_path: Path
    workers: int
    clean: dict
    noise: dict
    totals: dict

    @property
    def n_samples(self) -> int:
        return int(round(self.file_length * self.sample_rate))

    @classmethod
    def from_config(cls, cfg, workers: int | None = None) -> Settings:
        source = getattr(cfg, "source", "config")
        if not cfg.has_section("data"):
            raise utils.PipelineError(f"{source}: no [data] section")

        def get(key):
            # no default: the sources and the mixtures' recipe are stated in full (paths have no
            # sensible default outside the file that names them)
            if not cfg.has_option("data", key):
                raise utils.PipelineError(f"{source}: [data] {key} is missing")
            return utils.config_value(cfg, "data", key)  # typed, finite, in range (utils.LOWER_BOUNDS)

        levels = np.linspace(get("SNR_lower"), get("SNR_upper"), get("total_snrlevels"))
        s = cls(
            sample_rate=get("sample_rate"),
            file_length=get("file_length"),
            snr_levels=tuple(float(v) + 0.0 for v in levels),  # + 0.0: -0.0 -> 0.0, never "-0" in names
            seed=get("seed"),
            output_path=Path(get("output_path")),
            workers=get("workers") if workers is None else workers,
            clean={split: Path(get(keys[0])) for split, keys in SPLIT_KEYS.items()},
            noise={split: Path(get(keys[1])) for split, keys in SPLIT_KEYS.items()},
            totals={split: get(keys[2]) for split, keys in SPLIT_KEYS.items()},
        )
        problems = [
            (s.n_samples < 1, "file_length must be > 0"),  # > 0 but shorter than one sample
            (s.workers < 0, "workers must be >= 0"),  # --workers is not checked by the config
        ]
        for bad, what in problems:
            if bad:
                raise utils.PipelineError(f"{source}: [data] {what}")
        return s


# ----------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    path: str
    frames: int
    samplerate: int
    format: str

    def partial(self, sample_rate: int) -> bool:
        """Long files at the target rate are read segment by segment instead of decoded whole."""
        return (
            self.samplerate == sample_rate
            and self.format in PARTIAL_FORMATS
            and self.frames > PARTIAL_READ_S * sample_rate
        )

    def length_at(self, sample_rate: int) -> int:
        return (
            self.frames
            if self.samplerate == sample_rate
            else int(self.frames * sample_rate / self.samplerate)
        )


def scan_sources(folder: Path, min_samples: int, sample_rate: int, exclude=()) -> tuple[list, list, list]:
    """Lists a folder's audio cheaply (headers only).

    Returns (usable Sources, skipped (path, reason) pairs, every file's (relative path, size) for the
    state hash). Content problems (NaN, all zeros) are found later, by `first_usable` or a worker.
    """
    found = [p for p in utils.find_audio(folder) if not any(p.is_relative_to(x) for x in exclude)]
    usable, skipped, listing = [], [], []
    for p in found:
        listing.append((p.relative_to(folder).as_posix(), p.stat().st_size))
        try:
            info = sf.info(str(p))
        except Exception as e:  # libsndfile raises several types for the same meaning
            skipped.append((str(p), utils.unreadable(e)))
            continue
        src = Source(str(p), int(info.frames), int(info.samplerate), str(info.format))
        if src.frames <= 0:
            skipped.append((str(p), "empty (0 samples)"))
        elif src.length_at(sample_rate) < min_samples:
            skipped.append(
                (str(p), f"too short ({src.frames / src.samplerate:.3f} s < {min_samples / sample_rate:g} s)")
            )
        else:
            usable.append(src)
    return usable, skipped, listing


def decode(path: str, sample_rate: int) -> np.ndarray:
    """A whole source, mono float32 at sample_rate, with utils.read_audio's checks (AudioError)."""
    return utils.read_audio(path, sample_rate)[0]


class SourceReader:
    """Decoded, resampled, mono sources for one process, in a byte-bounded LRU cache.

    Files that fail to decode are remembered in `bad` (path -> reason) and never read again.
    """

    def __init__(self, sample_rate: int, cache_bytes: int = CACHE_BYTES):
        self.sample_rate = sample_rate
        self.cache_bytes = cache_bytes
        self.bad: dict[str, str] = {}
        self._cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._used = 0
        self._checked: set[str] = set()

    def length(self, src: Source) -> int:
        if src.partial(self.sample_rate):
            self._check_whole(src)  # once per process: same rules as a decoded file, bounded memory
            return src.frames
        return len(self._decoded(src))

    def segment(self, src: Source, start: int, n: int) -> np.ndarray:
        """n samples from `start`, wrapping around the end (so short noise loops)."""
        length = self.length(src)
        pieces, pos = [], start % length
        while n > 0:
            take = min(n, length - pos)
            pieces.append(self._read(src, pos, take))
            n -= take
            pos = 0
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _read(self, src: Source, start: int, n: int) -> np.ndarray:
        if not src.partial(self.sample_rate):
            return self._decoded(src)[start : start + n]
        try:
            x, _ = sf.read(src.path, start=start, stop=start + n, dtype="float32", always_2d=True)
        except Exception as e:
            raise utils.AudioError(src.path, utils.unreadable(e)) from e
        if len(x) != n:
            raise utils.AudioError(src.path, "shorter than its header says")
        return x[:, 0] if x.shape[1] == 1 else x.mean(axis=1, dtype=np.float32)

    def _check_whole(self, src: Source) -> None:
        """Applies utils.read_audio's content checks to a long file, block by block."""
        if src.path in self._checked:
            return
        any_sound, frames = False, 0
        for block in sf.blocks(src.path, blocksize=2**20, dtype="float32", always_2d=True):
            if not np.all(np.isfinite(block)):
                raise utils.AudioError(src.path, "contains NaN or Inf samples")
            any_sound = any_sound or bool(np.any(block))
            frames += len(block)
        if frames != src.frames:  # found here, in every process alike, not by whichever segment read fails
            raise utils.AudioError(src.path, "shorter than its header says")
        if not any_sound:
            raise utils.AudioError(src.path, "silent (all samples are zero)")
        self._checked.add(src.path)

    def _decoded(self, src: Source) -> np.ndarray:
        x = self._cache.get(src.path)
        if x is not None:
            self._cache.move_to_end(src.path)
            return x
        x = decode(src.path, self.sample_rate)
        x.setflags(write=False)  # cached arrays are shared by every draw
        self._cache[src.path] = x
        self._used += x.nbytes
        while self._used > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._used -= old.nbytes
        return x


# ----------------------------------------------------------------------------- names


def snr_name(snr: float) -> str:
    return f"{snr:g}"


def output_names(split: str, index: int, snr: float) -> tuple[str, str, str]:
    """Relative paths (clean, noise, noisy) of mixture `index`, as in the original repo."""
    s = snr_name(snr)
    clean_dir, noise_dir, noisy_dir = (f.format(split) for f in FOLDERS)
    return (
        f"{clean_dir}/clnsp{index}.wav",
        f"{noise_dir}/noisy{index}_SNRdb_{s}.wav",
        f"{noisy_dir}/noisy{index}_SNRdb_{s}_clnsp{index}.wav",
    )


def _wav_bytes(data: np.ndarray, sample_rate: int) -> bytes:
    """float32 WAV without libsndfile's PEAK chunk, whose time stamp would make equal audio differ."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", sample_rate, 1, subtype="FLOAT", format="WAV") as f:
        try:  # SFC_SET_ADD_PEAK_CHUNK = 0x1050, off; private API, so fall back to the default quietly
            sf._snd.sf_command(f._file, 0x1050, sf._ffi.NULL, 0)
        except AttributeError:
            pass
        f.write(data)
    return buf.getvalue()


def write_bytes(path: Path, data: bytes) -> None:
    """Temp file + rename, like utils.atomic_write but without its fsync.

    An fsync per file costs ~5 ms here and would triple the run time; an interrupted run still never
    leaves a partial file under a final name, and resuming checks every file's exact size, which
    also catches a file that a power cut left empty.
    """
    with utils.atomic_path(path, fsync=False) as tmp:
        tmp.write_bytes(data)


# ----------------------------------------------------------------------------- one split's mixing


@dataclass(frozen=True)
class Job:
    """Everything a worker process needs to make any mixture of one split."""

    split: str
    seed: int
    sample_rate: int
    n_samples: int
    snr_levels: tuple
    clean: tuple
    noise: tuple
    clean_dir: str
    noise_dir: str
    output_path: str
    bad: tuple = ()  # (path, reason) of files the main process already found unusable


@dataclass
class ChunkResult:
    rows: list = field(default_factory=list)
    written: int = 0
    resumed: int = 0
    bad: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


class Mixer:
    def __init__(self, job: Job):
        self.job = job
        self.reader = SourceReader(job.sample_rate)
        self.reader.bad.update(job.bad)
        self.out = Path(job.output_path)
        self.file_bytes = len(_wav_bytes(np.zeros(job.n_samples, np.float32), job.sample_rate))

    def rng(self, index: int) -> list[np.random.Generator]:
        """Independent streams for the SNR, the clean draw and the noise draw of one mixture."""
        base = np.random.default_rng([self.job.seed, SPLITS[self.job.split], index])
        return base.spawn(3)

    def _fail(self, src: Source, reason: str) -> None:
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
        names = output_names(job.split, index, snr)
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
                write_bytes(path, _wav_bytes(data, job.sample_rate))
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


def _init_worker(job: Job, parent_pid: int | None = None) -> None:
    global _WORKER
    if parent_pid is not None:
        utils.die_with_parent(parent_pid)  # a parent killed with kill -9 takes its workers with it
    _WORKER = Mixer(job)


def _run_chunk(indices) -> ChunkResult:
    return _WORKER.run(indices)


# ----------------------------------------------------------------------------- outputs and state


def _is_ours(name: str) -> bool:
    return (name.startswith(("clnsp", "noisy")) and name.endswith(".wav")) or (
        name.startswith(".") and name.endswith(".tmp")
    )


def split_outputs(out: Path, split: str) -> list[Path]:
    """Files this script wrote (or left half-written) for one split."""
    found = []
    for folder in FOLDERS:
        d = out / folder.format(split)
        if d.is_dir():
            found += [Path(e.path) for e in os.scandir(d) if e.is_file() and _is_ours(e.name)]
    found += [p for p in (out / f"manifest_{split}.csv",) if p.exists()]
    found += sorted(out.glob(f"manifest_{split}.shard-*-of-*.csv"))  # of --shard runs not yet merged
    return found


def remove_leftovers(out: Path, split: str) -> int:
    """Deletes temp files of an interrupted run (atomic writes name them .<name>.<random>.tmp)."""
    n = 0
    for folder in [*(f.format(split) for f in FOLDERS), "."]:
        d = out / folder
        if not d.is_dir():
            continue
        for e in os.scandir(d):
            if e.is_file() and e.name.startswith(".") and e.name.endswith(".tmp"):
                if folder != "." or e.name.startswith((f".manifest_{split}.", f".data_prep_state_{split}.")):
                    os.unlink(e.path)
                    n += 1
    return n


def remove_outputs(out: Path, split: str) -> None:
    for p in split_outputs(out, split):
        p.unlink()
    (out / f"data_prep_state_{split}.json").unlink(missing_ok=True)
    for folder in FOLDERS:
        d = out / folder.format(split)
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def state_digest(settings: Settings, split: str, clean_list, noise_list) -> tuple[str, dict]:
    state = {
        "version": VERSION,
        "split": split,
        "sample_rate": settings.sample_rate,
        "file_length": settings.file_length,
        "total": settings.totals[split],
        "snr_levels": list(settings.snr_levels),
        "seed": settings.seed,
        "clean_path": str(settings.clean[split]),
        "noise_path": str(settings.noise[split]),
        "activity": [
            mixing.ACTIVITY_FRAME_S,
            mixing.ACTIVITY_RANGE_DB,
            mixing.ACTIVITY_MIN_FRACTION,
            mixing.SILENCE_RMS,
            mixing.MIN_NOISE_S,
        ],
        "clean_files": clean_list,
        "noise_files": noise_list,
    }
    digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()
    return digest, state


@dataclass
class SplitPlan:
    split: str
    job: Job
    total: int
    digest: str
    state: dict
    skipped: list  # (path, reason) found by the header scan
    action: str = "fresh"  # fresh | resume | overwrite

    @property
    def state_path(self) -> Path:
        return Path(self.job.output_path) / f"data_prep_state_{self.split}.json"


def _content_problem(reader: SourceReader, src: Source, kind: str, min_samples: int) -> str | None:
    """Why a source cannot be used (the checks a worker would make), or None."""
    sr = reader.sample_rate
    try:
        length = reader.length(src)  # decodes (or checks block by block): unreadable, NaN/Inf, all zero
    except utils.AudioError as e:
        return e.reason
    if length < min_samples:
        return f"too short ({length / sr:.2f} s after resampling)"
    if src.partial(sr):
        return None  # long file: finite and not all zero was checked without decoding it whole
    x = reader._decoded(src)
    if kind == "clean" and mixing.active_fraction(x, sr) == 0:
        return "silent (no 20-ms frame above -100 dBFS)"
    if kind == "noise" and mixing.is_silent(x):
        return "silent (RMS below -100 dBFS)"
    return None


def first_usable(sources, kind: str, sample_rate: int, min_samples: int) -> tuple[Source | None, list]:
    """Decodes sources in file order until one is usable: (that source or None, [(path, reason)] before it).

    The header scan cannot see content, so without this a set of all-NaN or all-zero files would pass
    it and fail only in a worker, after folders and the state file were written. Stopping at the first
    usable file keeps this cheap; the order is fixed, so the result does not depend on anything else.
    """
    reader = SourceReader(sample_rate, cache_bytes=0)  # keeps only the last decoded file
    bad = []
    for src in sources:
        reason = _content_problem(reader, src, kind, min_samples)
        if reason is None:
            return src, bad
        bad.append((src.path, reason))
    return None, bad


def plan_split(settings: Settings, split: str) -> SplitPlan:
    """Scans one split's sources; raises PipelineError (nothing written yet) when they are unusable."""
    out = settings.output_path
    exclude = [out / f.format(s) for f in FOLDERS for s in SPLITS]  # outputs inside a source folder
    n = settings.n_samples
    clean, skip_c, list_c = scan_sources(settings.clean[split], n, settings.sample_rate, exclude)
    min_noise = int(math.ceil(mixing.MIN_NOISE_S * settings.sample_rate))
    noise, skip_n, list_n = scan_sources(settings.noise[split], min_noise, settings.sample_rate, exclude)
    decoded_bad = []
    for kind, usable, folder, least, skipped in (
        ("clean", clean, settings.clean[split], n, skip_c),
        ("noise", noise, settings.noise[split], min_noise, skip_n),
    ):
        found, bad = first_usable(usable, kind, settings.sample_rate, least) if usable else (None, [])
        if found is None:
            why = utils.why_none_usable(skipped + bad, len(usable) + len(skipped))
            raise utils.PipelineError(f"{folder}: no usable {kind} audio for the {split} split{why}")
        decoded_bad += bad
    digest, state = state_digest(settings, split, list_c, list_n)
    job = Job(
        split=split,
        seed=settings.seed,
        sample_rate=settings.sample_rate,
        n_samples=n,
        snr_levels=settings.snr_levels,
        clean=tuple(clean),
        noise=tuple(noise),
        clean_dir=str(settings.clean[split]),
        noise_dir=str(settings.noise[split]),
        output_path=str(out),
        bad=tuple(decoded_bad),  # workers skip them without decoding them again
    )
    return SplitPlan(split, job, settings.totals[split], digest, state, skip_c + skip_n + decoded_bad)


def check_state(plan: SplitPlan, overwrite: bool) -> None:
    """Decides fresh / resume / overwrite; refuses to mix into outputs made with other settings."""
    out = Path(plan.job.output_path)
    existing = split_outputs(out, plan.split)
    old = None
    if plan.state_path.exists():
        try:
            old = json.loads(plan.state_path.read_text()).get("hash")
        except (OSError, ValueError, AttributeError):
            old = None
    if old == plan.digest:
        plan.action = "resume"
    elif not existing:
        plan.action = "fresh"
    elif overwrite:
        plan.action = "overwrite"
    else:
        why = "different settings or sources" if old else "no matching data_prep_state file"
        raise utils.PipelineError(
            f"{out}: {plan.split} outputs there were made with {why}; use --overwrite to replace them"
        )


def write_skipped(path: Path, skipped: dict) -> None:
    """data_prep_skipped_<split>.csv: (path, reason) of each skipped source, sorted; none -> no file."""
    if skipped:
        with utils.atomic_write(path, "w") as f:
            csv.writer(f, lineterminator="\n").writerows([("path", "reason"), *sorted(skipped.items())])
    else:
        path.unlink(missing_ok=True)


def write_manifest(path: Path, rows: list[dict]) -> None:
    manifests.write(path, rows, MANIFEST_COLUMNS)


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


def run_split(plan: SplitPlan, workers: int, progress: bool = True, shard=None) -> SplitStats:
    """Mixes the split (shard: only its block of mixture indices, into manifest_<split>.<shard>.csv
    and data_prep_skipped_<split>.<shard>.csv; shards.merge_data_prep joins them)."""
    from tqdm import tqdm

    out = Path(plan.job.output_path)
    started = time.perf_counter()
    if plan.action == "overwrite":
        remove_outputs(out, plan.split)
    if shard is None:  # (other shards may be writing their temp files into the same folders)
        remove_leftovers(out, plan.split)
    for folder in FOLDERS:
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
    write_manifest(manifest, total.rows)
    write_skipped(out / f"data_prep_skipped_{plan.split}{part}.csv", skipped)
    return SplitStats(
        plan.split, n_mix, total.written, total.resumed, time.perf_counter() - started,
        skipped, total.notes, manifest,
    )  # fmt: skip


def _skip_empty_split(out: Path, split: str, overwrite: bool) -> None:
    """A split with 0 mixtures is not mixed: its old outputs (a manifest STFT.py would cache) are
    removed with --overwrite, else named in a warning."""
    manifest = out / f"manifest_{split}.csv"
    if overwrite:
        remove_outputs(out, split)
        (out / f"data_prep_skipped_{split}.csv").unlink(missing_ok=True)
    elif manifest.exists():
        log.warning(
            f"total_{split}_files = 0, but {manifest} from an earlier run is still there "
            "(STFT.py would use it); --overwrite removes it"
        )


def prepare(cfg, splits=("training", "testing"), workers: int | None = None, overwrite: bool = False,
            progress: bool = True, shard=None) -> list[SplitStats]:  # fmt: skip
    """Mixes the given splits; every check (sources, state) runs before anything is written.
    shard (shards.Shard): only its block of each split's mixtures (see run_split)."""
    if shard is not None and overwrite:
        raise utils.PipelineError(
            "--overwrite with --shard: shards share the output folder; remove the old outputs first "
            "(or run one unsharded --overwrite)"
        )
    settings = Settings.from_config(cfg, workers)
    n_workers = settings.workers or os.cpu_count() or 1
    plans = [plan_split(settings, s) for s in splits if settings.totals[s] > 0]
    for plan in plans:
        check_state(plan, overwrite)
    for split in (s for s in splits if settings.totals[s] == 0):
        _skip_empty_split(settings.output_path, split, overwrite)
    settings.output_path.mkdir(parents=True, exist_ok=True)
    cfg.set("data", "workers", str(settings.workers))
    utils.save_config(cfg, settings.output_path / "data_prep_config.ini")
    return [run_split(plan, n_workers, progress, shard) for plan in plans]


def print_summary(stats: list[SplitStats], out=None, shown: int = 10) -> None:
    out = out or sys.stdout
    for s in stats:
        rate = s.total / s.seconds if s.seconds > 0 else float("inf")
        print(
            f"{s.split}: {s.total} mixtures ({s.written} written, {s.resumed} already complete) in "
            f"{s.manifest.parent}, {s.seconds:.1f} s, {rate:.1f} mixtures/s; manifest {s.manifest.name}",
            file=out,
        )
        if s.skipped:
            listing = s.manifest.parent / f"data_prep_skipped_{s.split}.csv"
            print(f"{s.split}: {len(s.skipped)} source file(s) skipped (all in {listing}):", file=out)
            for path, reason in sorted(s.skipped.items())[:shown]:
                print(f"  {path}: {reason}", file=out)
            if len(s.skipped) > shown:
                print(f"  ... and {len(s.skipped) - shown} more", file=out)
        for note in s.notes[:shown]:
            print(f"  note: {note}", file=out)
        if len(s.notes) > shown:
            print(f"  ... and {len(s.notes) - shown} more notes", file=out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    utils.add_config_args(parser, default=utils.DATA_CONFIG)
    parser.add_argument(
        "--split", choices=("training", "testing", "both"), default="both", help="which split(s) to mix"
    )
    parser.add_argument(
        "--workers", type=int, help="worker processes (default: [data] workers; 0 = one per core)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace outputs made with other settings (removes them first)",
    )
    shards.add_arguments(
        parser,
        "mix only the I-th of N contiguous blocks of each split's mixtures (one per machine); "
        "writes manifest_<split>.shard-I-of-N.csv; then --merge-shards N",
        "join the N shards' manifests (all in output_path) into manifest_<split>.csv, byte-identical "
        "to one unsharded run",
    )
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers is not None and args.workers < 0:
        raise utils.PipelineError(f"--workers {args.workers}: must be >= 0")
    cfg = utils.load_config(args.config, args.overrides)
    splits = ("training", "testing") if args.split == "both" else (args.split,)
    if args.merge_shards:
        for line in shards.merge_data_prep(cfg, args.merge_shards, splits):
            print(line)
        return 0
    stats = prepare(cfg, splits, args.workers, args.overwrite, shard=args.shard)
    print_summary(stats)
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
