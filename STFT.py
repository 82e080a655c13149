"""THE transform and features, in numpy and TensorFlow with one definition; also the cache script.

Framing (causal, streaming-compatible, never centred):
    frame t covers input samples [t*hop - (win - hop), t*hop + hop): the signal is preceded by
    win - hop zeros (the past of a stream that starts in silence), so frame t depends only on
    samples < (t + 1) * hop and features are causal. A clip of N samples gives
    T = ceil((N + win - hop) / hop) frames: the frames a stream emits until its last sample has
    passed through every window that covers it (the end is zero-padded, like flushing a stream).
    Without those flush frames the last samples would be seen only by the near-zero tail of the
    last window, and any mask applied there would be amplified ~1e8 times by the iSTFT
    normalisation. The periodic Hann window (400 samples) is zero-padded to n_fft = 512 at its
    end (as tf.signal.stft does) -> 257 bins.
iSTFT: weighted overlap-add (synthesis window = analysis window) divided by the summed squared
    window; every output sample of the clip sees the full overlap (sum >= 0.5), so STFT -> iSTFT
    is exact up to float error everywhere, edges included, and masks cannot blow up at the end.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import soundfile as sf

import manifests
import shards
import utils


@dataclass(frozen=True)
class StftParams:
    sample_rate: int = 16000
    win_length: int = 400
    hop: int = 160
    n_fft: int = 512

    @classmethod
    def from_config(cls, cfg) -> StftParams:
        """From [STFT]; a missing or bad key is a one-line PipelineError naming it (never a KeyError)."""
        where = f"{Path(utils.config_source(cfg)).name}: [STFT]"
        if not cfg.has_section("STFT"):
            raise utils.PipelineError(f"{where} section is missing")
        window_type = utils.config_value(cfg, "STFT", "window_type")
        if window_type.lower() != "hann":
            raise utils.PipelineError(f"{where} window_type={window_type}: only hann is supported")

        def number(key: str):
            # no default: the transform a cache or model was made with must be stated, never assumed
            if not cfg.has_option("STFT", key):
                raise utils.PipelineError(f"{where} {key} is missing")
            return utils.config_value(cfg, "STFT", key)  # typed and > 0 (utils.LOWER_BOUNDS)

        def samples(key: str, sr: int) -> int:
            # a window or hop that is not a whole number of samples would be silently rounded
            exact = number(key) * sr
            if abs(exact - round(exact)) > 1e-6:
                raw = cfg.get("STFT", key).strip()
                raise utils.PipelineError(f"{where} {key}={raw} is {exact:.6g} samples at {sr} Hz, not whole")
            return round(exact)

        sr = number("sample_rate")
        p = cls(sr, samples("window_length", sr), samples("hop_size", sr), number("n_fft"))
        if not p.hop <= p.win_length <= p.n_fft:
            raise utils.PipelineError(
                f"{where} needs 0 < hop_size <= window_length <= n_fft samples "
                f"(got hop {p.hop}, window {p.win_length}, n_fft {p.n_fft})"
            )
        return p

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def pad_front(self) -> int:
        return self.win_length - self.hop

    def n_frames(self, n_samples: int) -> int:
        return math.ceil((n_samples + self.pad_front) / self.hop)


@dataclass(frozen=True)
class FeatureParams:
    compression: float = 0.3
    delta_phase: bool = True
    deviation: bool = False

    @classmethod
    def from_config(cls, cfg) -> FeatureParams:
        return cls(**utils.config_values(cfg, "features", [f.name for f in fields(cls)]))

    @property
    def channels(self) -> int:
        return 4 if self.delta_phase else 2


# Floor for the summed squared window in the iSTFT: only guards 0/0 outside the signal. A larger floor
# (1e-8 was used) breaks the last samples of a clip whose length is a multiple of hop, where only the
# tail of the last window (w^2 ~ 4e-9) covers them.
_TINY = float(np.finfo(np.float32).tiny)


def window(p: StftParams) -> np.ndarray:
    """Periodic Hann window (the one that sums to a constant at 10 ms hop in overlap-add)."""
    n = np.arange(p.win_length)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / p.win_length)).astype(np.float32)


# ----------------------------------------------------------------------------- numpy


def stft(x: np.ndarray, p: StftParams = StftParams()) -> np.ndarray:
    """(..., N) float -> (..., T, F) complex64 with T = ceil((N + win - hop) / hop)."""
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[-1]
    t = p.n_frames(n)
    if t == 0:
        return np.zeros(x.shape[:-1] + (0, p.n_bins), dtype=np.complex64)
    pad = [(0, 0)] * (x.ndim - 1) + [(p.pad_front, t * p.hop - n)]
    xp = np.pad(x, pad)
    frames = np.lib.stride_tricks.sliding_window_view(xp, p.win_length, axis=-1)[..., :: p.hop, :][..., :t, :]
    return np.fft.rfft(frames * window(p), n=p.n_fft, axis=-1).astype(np.complex64)


def _overlap_add(frames: np.ndarray, hop: int) -> np.ndarray:
    """(..., T, W) -> (..., (T - 1) * hop + W): sums frame t into samples [t*hop, t*hop + W).

    The frames are cut into hop-sized blocks and block k of every frame is added with one
    slice-add, so the work is ceil(W / hop) vector ops (no np.add.at, no Python loop over frames).
    """
    t, w = frames.shape[-2:]
    k = -(-w // hop)
    if k * hop != w:
        frames = np.pad(frames, [(0, 0)] * (frames.ndim - 1) + [(0, k * hop - w)])
    blocks = frames.reshape(frames.shape[:-1] + (k, hop))
    out = np.zeros(frames.shape[:-2] + (t + k - 1, hop), dtype=frames.dtype)
    for i in range(k):
        out[..., i : i + t, :] += blocks[..., :, i, :]
    return out.reshape(frames.shape[:-2] + (-1,))[..., : (t - 1) * hop + w]


def istft(X: np.ndarray, p: StftParams = StftParams(), length: int | None = None) -> np.ndarray:
    """(..., T, F) complex -> (..., length) float32; inverse of `stft` (default length T * hop)."""
    X = np.asarray(X)
    t = X.shape[-2]
    length = t * p.hop if length is None else length
    if t == 0:
        return np.zeros(X.shape[:-2] + (length,), dtype=np.float32)
    w = window(p)
    frames = np.fft.irfft(X.astype(np.complex64, copy=False), n=p.n_fft, axis=-1)[..., : p.win_length] * w
    out = _overlap_add(frames.astype(np.float32, copy=False), p.hop)
    norm = _overlap_add(np.broadcast_to(w.astype(np.float64) ** 2, (t, p.win_length)), p.hop)
    y = (out / np.maximum(norm, _TINY))[..., p.pad_front :]
    if y.shape[-1] < length:
        y = np.pad(y, [(0, 0)] * (y.ndim - 1) + [(0, length - y.shape[-1])])
    return y[..., :length].astype(np.float32)


def compress(X: np.ndarray, power: float, eps: float = 1e-12) -> np.ndarray:
    """|X|^p * exp(j angle X): compresses the magnitude, keeps the phase (never pow(complex, p))."""
    mag = np.abs(X)
    return (X * (mag**power / np.maximum(mag, eps))).astype(X.dtype)


def wrap(phi: np.ndarray) -> np.ndarray:
    """Wraps angles to (-pi, pi]."""
    return np.pi - np.mod(np.pi - phi, 2 * np.pi)


def delta_phase(X: np.ndarray, p: StftParams = StftParams(), deviation: bool = False) -> np.ndarray:
    """Causal phase advance along time: angle(X[t] * conj(X[t-1])), 0 at t = 0.

    deviation=True subtracts the advance 2*pi*f*hop/n_fft expected at bin f's centre frequency.
    """
    d = np.zeros(X.shape, dtype=np.float32)
    d[..., 1:, :] = np.angle(X[..., 1:, :] * np.conj(X[..., :-1, :]))
    if deviation:
        f = np.arange(X.shape[-1])
        d[..., 1:, :] = wrap(d[..., 1:, :] - 2 * np.pi * f * p.hop / p.n_fft)
    return d


def features(X: np.ndarray, fp: FeatureParams = FeatureParams(), p: StftParams = StftParams()) -> np.ndarray:
    """Model input (..., T, F, C) float32: Re, Im of the compressed STFT (+ cos, sin delta phase).

    cos/sin make the phase feature continuous across the +-pi wrap; no weighting is applied, the
    magnitudes of all channels are already O(1) after compression.
    """
    Xc = compress(X, fp.compression)
    chans = [Xc.real, Xc.imag]
    if fp.delta_phase:
        d = delta_phase(X, p, fp.deviation)
        chans += [np.cos(d), np.sin(d)]
    return np.stack(chans, axis=-1).astype(np.float32)


# ----------------------------------------------------------------------------- TensorFlow


def _tf():
    if "tensorflow" not in sys.modules:  # (also keeps autograph from converting os.environ calls)
        utils.quiet_tensorflow()
    import tensorflow as tf

    return tf


def stft_tf(x, p: StftParams = StftParams()):
    """TensorFlow twin of `stft`: (..., N) -> (..., T, F) complex64 with the same framing."""
    tf = _tf()
    x = tf.convert_to_tensor(x, tf.float32)
    n = tf.shape(x)[-1]
    t = (n + p.pad_front + p.hop - 1) // p.hop
    rank = tf.rank(x)
    pads = tf.concat([tf.zeros([rank - 1, 2], tf.int32), [[p.pad_front, t * p.hop - n]]], axis=0)
    xp = tf.pad(x, pads)
    w = tf.constant(window(p))
    return tf.signal.stft(xp, p.win_length, p.hop, p.n_fft, window_fn=lambda *_a, **_k: w, pad_end=False)


def istft_tf(X, p: StftParams = StftParams(), length=None):
    """TensorFlow twin of `istft`: weighted overlap-add normalised by the summed squared window."""
    tf = _tf()
    X = tf.convert_to_tensor(X, tf.complex64)
    w = tf.constant(window(p))
    frames = tf.signal.irfft(X, fft_length=[p.n_fft])[..., : p.win_length] * w
    y = tf.signal.overlap_and_add(frames, p.hop)
    t = tf.shape(X)[-2]
    w2 = tf.tile(tf.reshape(w**2, [1, -1]), [t, 1])
    norm = tf.signal.overlap_and_add(w2, p.hop)
    y = y / tf.maximum(norm, _TINY)
    y = y[..., p.pad_front :]
    if length is not None:  # like `istft`: cut, or zero-pad past the last frame
        y = y[..., :length]
        extra = tf.maximum(length - tf.shape(y)[-1], 0)
        pads = tf.concat([tf.zeros([tf.rank(y) - 1, 2], tf.int32), [[0, extra]]], axis=0)
        y = tf.pad(y, pads)
    return y


def compress_tf(X, power: float, eps: float = 1e-12):
    tf = _tf()
    mag = tf.abs(X)
    scale = tf.pow(mag, power) / tf.maximum(mag, eps)
    return X * tf.cast(scale, X.dtype)


def delta_phase_tf(X, p: StftParams = StftParams(), deviation: bool = False):
    tf = _tf()
    d = tf.math.angle(X[..., 1:, :] * tf.math.conj(X[..., :-1, :]))
    if deviation:
        f = tf.range(tf.shape(X)[-1], dtype=tf.float32)
        d = d - 2 * np.pi * f * p.hop / p.n_fft
        d = np.pi - tf.math.floormod(np.pi - d, 2 * np.pi)
    return tf.concat([tf.zeros_like(d[..., :1, :]), d], axis=-2)


def features_tf(X, fp: FeatureParams = FeatureParams(), p: StftParams = StftParams()):
    """TensorFlow twin of `features` (used inside the training graph)."""
    tf = _tf()
    Xc = compress_tf(X, fp.compression)
    chans = [tf.math.real(Xc), tf.math.imag(Xc)]
    if fp.delta_phase:
        d = delta_phase_tf(X, p, fp.deviation)
        chans += [tf.cos(d), tf.sin(d)]
    return tf.stack(chans, axis=-1)


# ----------------------------------------------------------------------------- cache
#
# <stft_dir>/Training_STFT/ (Testing_STFT/) holds the STFT of every example of a data-prep manifest:
#   noisy.npy, clean.npy (and noise.npy with [STFT] cache_noise = true): all examples concatenated
#       along time, (sum_T, n_bins) complex64, loadable with np.load(mmap_mode="r");
#   index.csv: row, manifest_index, offset, n_frames, n_samples, noisy, clean, noise, snr_db
#       (example `row` is array rows [offset, offset + n_frames); n_samples for istft(length=...));
#   meta.json: STFT parameters, sha256 of the [STFT] section, of the manifest and of the audio files'
#       (path, size, mtime), counts and bytes; config.ini: the resolved config of the run.
# Features are computed from these spectra on the fly (train.py), so the cache does not depend on
# [features]. A build writes a temp folder beside the target and renames it into place at the end.
# Several machines: --shard I/N writes <Split>_STFT.shard-I-of-N/ (the I-th of N contiguous blocks of
# examples: a contiguous range of array rows); --merge-shards N joins them into <Split>_STFT/ (shards.py).

CACHE_FORMAT = 1
SPLITS = ("training", "testing")
INDEX_COLUMNS = (
    *("row", "manifest_index", "offset", "n_frames", "n_samples"),
    *("noisy", "clean", "noise", "snr_db"),
)
_TMP_SUFFIX = ".tmp"  # temp folders are <target>.<pid>.tmp (matched by .gitignore's *.tmp)


@dataclass
class StftCache:
    """A loaded cache: memory-mapped spectra plus the per-example index."""

    noisy: np.ndarray
    clean: np.ndarray
    noise: np.ndarray | None
    offsets: np.ndarray
    n_frames: np.ndarray
    n_samples: np.ndarray
    rows: list
    meta: dict

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def params(self) -> StftParams:
        return StftParams(**{k: self.meta["stft"][k] for k in ("sample_rate", "win_length", "hop", "n_fft")})

    def _span(self, i: int) -> slice:
        if not -len(self) <= i < len(self):
            raise IndexError(f"example {i} out of range (cache has {len(self)})")
        i = i % len(self)
        return slice(int(self.offsets[i]), int(self.offsets[i] + self.n_frames[i]))

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(noisy (T, F), clean (T, F)) complex64 arrays (copies) of example i."""
        s = self._span(i)
        return np.array(self.noisy[s]), np.array(self.clean[s])

    def noise_example(self, i: int) -> np.ndarray:
        """Noise (T, F) complex64 of example i; needs a cache built with [STFT] cache_noise = true."""
        if self.noise is None:
            raise utils.PipelineError(f"{self.meta.get('folder', 'cache')}: built without cache_noise")
        return np.array(self.noise[self._span(i)])


def cache_dir(cfg, split: str) -> Path:
    """<stft_dir>/Training_STFT for "training", <stft_dir>/Testing_STFT for "testing"."""
    if split not in SPLITS:
        raise utils.PipelineError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    return utils.get_path(cfg, "stft_dir") / f"{split.capitalize()}_STFT"


def manifest_path(cfg, split: str) -> Path:
    return manifests.path(cfg, split)


def load_cache(folder) -> StftCache:
    """Opens a cache folder written by `build_cache` (arrays memory-mapped read-only)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        with open(folder / "index.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, ValueError) as e:
        reason = f"not a readable STFT cache ({e.__class__.__name__}); run STFT.py"
        raise utils.PipelineError(f"{folder}: {reason}") from e
    for r in rows:
        for k in ("row", "offset", "n_frames", "n_samples"):
            r[k] = int(r[k])
        r["snr_db"] = float(r["snr_db"]) if r["snr_db"] not in ("", None) else float("nan")
    offsets = np.array([r["offset"] for r in rows], dtype=np.int64)
    n_frames = np.array([r["n_frames"] for r in rows], dtype=np.int64)
    n_samples = np.array([r["n_samples"] for r in rows], dtype=np.int64)
    total = int(n_frames.sum())
    arrays = {}
    for name in meta["arrays"]:
        path = folder / f"{name}.npy"
        try:
            arrays[name] = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise utils.PipelineError(f"{path}: unreadable cache array ({e.__class__.__name__})") from e
        if arrays[name].shape != (total, meta["stft"]["n_bins"]) or arrays[name].dtype != np.complex64:
            reason = f"shape {arrays[name].shape} does not match index.csv ({total} frames)"
            raise utils.PipelineError(f"{path}: {reason}")
    meta["folder"] = str(folder.resolve())
    return StftCache(
        arrays["noisy"], arrays["clean"], arrays.get("noise"), offsets, n_frames, n_samples, rows, meta
    )


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


def _n_samples(path: Path, sample_rate: int) -> int:
    """Length after utils.read_audio: read from the header, or by decoding when it will resample."""
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile raises several types; all mean "unreadable"
        raise utils.AudioError(path, utils.unreadable(e)) from e
    if info.frames <= 0:
        raise utils.AudioError(path, "empty (0 samples)")
    if info.samplerate == sample_rate:
        return int(info.frames)
    return len(utils.read_audio(path, sample_rate)[0])


def _section_dict(cfg, section: str) -> dict:
    return {k: v.strip() for k, v in sorted(cfg.items(section))} if cfg.has_section(section) else {}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _expected_meta(cfg, split: str) -> dict:
    """The fields of meta.json that decide whether a cache is up to date."""
    p = StftParams.from_config(cfg)
    manifest = manifest_path(cfg, split)
    examples = _read_manifest(manifest)
    with_noise = utils.config_value(cfg, "STFT", "cache_noise")
    stft_section = _section_dict(cfg, "STFT")
    return {
        "format": CACHE_FORMAT,
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
    folder = cache_dir(cfg, split)
    expected = expected or _expected_meta(cfg, split)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except FileNotFoundError:
        return "no cache yet"
    except (OSError, ValueError):
        return "meta.json unreadable"
    if meta.get("format") != CACHE_FORMAT:
        return f"cache format {meta.get('format')} != {CACHE_FORMAT}"
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
        cache = load_cache(folder)
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
    _WORKER["params"] = StftParams(**params)
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
                    _pwrite_all(fd, stft(x, p), start + offset * row_bytes)
                except OSError as e:  # os.pwrite's ENOSPC names no file: one line naming the cache file
                    raise utils.PipelineError(utils.os_error_line(e, _WORKER["paths"][name])) from None
    except utils.PipelineError as e:
        raise utils.PipelineError(str(e)) from None  # AudioError's signature does not survive pickling
    return len(tasks)


def _fill_arrays(
    folder: Path, names: list, p: StftParams, tasks: list, total_frames: int, workers: int, desc: str
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
    target = cache_dir(cfg, split)
    p = StftParams.from_config(cfg)
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


def _check_data_rate(cfg, p: StftParams) -> None:
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
    p = StftParams.from_config(cfg)
    manifest = Path(expected["manifest"])
    examples = _read_manifest(manifest)
    names = expected["arrays"]
    rows, tasks, offset = [], [], 0
    for i, ex in enumerate(examples):
        paths = {"noisy": ex.noisy, "clean": ex.clean, "noise": ex.noise}
        paths = {n: paths[n] for n in names}
        lengths = {n: _n_samples(path, p.sample_rate) for n, path in paths.items()}
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
            writer = csv.DictWriter(f, INDEX_COLUMNS)
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
        "--split", choices=(*SPLITS, "both"), default="both", help="which manifest to cache (default: both)"
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
    for split in SPLITS if args.split == "both" else (args.split,):
        if args.shard:
            shards.build_stft_shard(cfg, split, args.shard, workers=args.workers)
        elif args.merge_shards:
            shards.merge_stft(cfg, split, args.merge_shards)
        else:
            build_cache(cfg, split, workers=args.workers, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
