"""Reading the STFT cache STFT.py builds: the folder of a split (`cache_dir`), opening it (`load_cache`)
and the loaded cache (`StftCache`: memory-mapped spectra plus the per-example index).

<stft_dir>/Training_STFT/ (Testing_STFT/) holds the STFT of every example of a data-prep manifest:
  noisy.npy, clean.npy (and noise.npy with [STFT] cache_noise = true): all examples concatenated
      along time, (sum_T, n_bins) complex64, loadable with np.load(mmap_mode="r");
  index.csv: row, manifest_index, offset, n_frames, n_samples, noisy, clean, noise, snr_db
      (example `row` is array rows [offset, offset + n_frames); n_samples for istft(length=...));
  meta.json: STFT parameters, sha256 of the [STFT] section, of the manifest and of the audio files'
      (path, size, mtime), counts and bytes; config.ini: the resolved config of the run.
Features are computed from these spectra on the fly (train.py), so the cache does not depend on
[features]. A build writes a temp folder beside the target and renames it into place at the end.
Several machines: --shard I/N writes <Split>_STFT.shard-I-of-N/ (the I-th of N contiguous blocks of
examples: a contiguous range of array rows); --merge-shards N joins them into <Split>_STFT/ (shards.py).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import manifests
import utils
from spectral import StftParams

CACHE_FORMAT = 1
INDEX_COLUMNS = (
    *("row", "manifest_index", "offset", "n_frames", "n_samples"),
    *("noisy", "clean", "noise", "snr_db"),
)


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
    if split not in manifests.SPLITS:
        raise utils.PipelineError(f"split {split!r}: expected one of {', '.join(manifests.SPLITS)}")
    return utils.get_path(cfg, "stft_dir") / f"{split.capitalize()}_STFT"


def load_cache(folder) -> StftCache:
    """Opens a cache folder written by STFT.build_cache (arrays memory-mapped read-only)."""
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
