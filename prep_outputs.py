"""data/data_prep.py's output folder: the names of a mixture's three files (`output_names`), their
float32 WAV bytes and atomic writes, the skipped-sources list, and finding or removing what a run wrote
for one split (`split_outputs`, `remove_leftovers`, `remove_outputs`). The manifest itself is
manifests.py's.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf

import manifests
import utils


def snr_name(snr: float) -> str:
    return f"{snr:g}"


def output_names(split: str, index: int, snr: float) -> tuple[str, str, str]:
    """Relative paths (clean, noise, noisy) of mixture `index`, as in the original repo."""
    s = snr_name(snr)
    clean_dir, noise_dir, noisy_dir = (f.format(split) for f in manifests.FOLDERS)
    return (
        f"{clean_dir}/clnsp{index}.wav",
        f"{noise_dir}/noisy{index}_SNRdb_{s}.wav",
        f"{noisy_dir}/noisy{index}_SNRdb_{s}_clnsp{index}.wav",
    )


def wav_bytes(data: np.ndarray, sample_rate: int) -> bytes:
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


def _is_ours(name: str) -> bool:
    return (name.startswith(("clnsp", "noisy")) and name.endswith(".wav")) or (
        name.startswith(".") and name.endswith(".tmp")
    )


def split_outputs(out: Path, split: str) -> list[Path]:
    """Files data_prep wrote (or left half-written) for one split."""
    found = []
    for folder in manifests.FOLDERS:
        d = out / folder.format(split)
        if d.is_dir():
            found += [Path(e.path) for e in os.scandir(d) if e.is_file() and _is_ours(e.name)]
    found += [p for p in (out / f"manifest_{split}.csv",) if p.exists()]
    found += sorted(out.glob(f"manifest_{split}.shard-*-of-*.csv"))  # of --shard runs not yet merged
    return found


def remove_leftovers(out: Path, split: str) -> int:
    """Deletes temp files of an interrupted run (atomic writes name them .<name>.<random>.tmp)."""
    n = 0
    for folder in [*(f.format(split) for f in manifests.FOLDERS), "."]:
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
    for folder in manifests.FOLDERS:
        d = out / folder.format(split)
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def write_skipped(path: Path, skipped: dict) -> None:
    """data_prep_skipped_<split>.csv: (path, reason) of each skipped source, sorted; none -> no file."""
    if skipped:
        with utils.atomic_write(path, "w") as f:
            csv.writer(f, lineterminator="\n").writerows([("path", "reason"), *sorted(skipped.items())])
    else:
        path.unlink(missing_ok=True)
