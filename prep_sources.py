"""The audio sources data/data_prep.py mixes: the header scan of a source folder (`scan_sources`,
`Source`), decoding (`decode`), the per-process reader with its byte-bounded LRU cache (`SourceReader`:
whole files, or segment by segment for long ones) and the content check that finds a usable file
before anything is written (`first_usable`).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

import mixing
import utils

CACHE_BYTES = 512 * 2**20  # decoded sources kept per worker process
PARTIAL_READ_S = 60.0  # longer files at the target rate are read segment by segment, not cached whole
PARTIAL_FORMATS = {"WAV", "WAVEX", "FLAC", "AIFF", "RF64", "W64", "CAF"}  # exact frame counts, fast seeks


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
