"""Manifests: the CSV files in which data/data_prep.py says which noisy, clean and noise files belong
together (docs/design.md section 3). data_prep writes them with `write`; STFT.py, evaluate.py and
train.py read them with `read_rows`. Nothing pairs files by parsing their names.

    manifest_<split>.csv   index, noisy, clean, noise, snr_db    (paths relative to the CSV's folder)
                           clean_source, clean_start_s, noise_source, noise_start_s, gain  (provenance)
"""

from __future__ import annotations

import csv
from pathlib import Path

import utils

COLUMNS = ("index", "noisy", "clean", "noise", "snr_db")  # what the later stages read
PROVENANCE = ("clean_source", "clean_start_s", "noise_source", "noise_start_s", "gain")  # data_prep's record
WRITTEN = COLUMNS + PROVENANCE  # data_prep's column order
SPLITS = ("training", "testing")
FOLDERS = ("CleanSpeech_{}", "Noise_{}", "NoisySpeech_{}")  # data_prep's output folders, per split


def output_folders() -> set[str]:
    """The names of data_prep's output folders (on-the-fly mixing skips them inside a source folder)."""
    return {f.format(split) for f in FOLDERS for split in SPLITS}


def path(cfg, split: str) -> Path:
    """<data_dir>/manifest_<split>.csv."""
    return utils.get_path(cfg, "data_dir") / f"manifest_{split}.csv"


def read_rows(path: Path | str, required=COLUMNS, what: str = "manifest") -> list[dict]:
    """The rows of a manifest as dicts of raw strings (file order); a one-line PipelineError when the
    file is missing, lacks one of `required` columns, or has no rows. `what` names the file there."""
    path = Path(path)
    if not path.is_file():
        raise utils.PipelineError(f"{path}: {what} not found (run data/data_prep.py first)")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or ())]
        if missing:
            raise utils.PipelineError(f"{path}: missing column(s) {', '.join(missing)}")
        rows = list(reader)
    if not rows:
        raise utils.PipelineError(f"{path}: no examples")
    return rows


def name(value: str) -> str:
    """A file column as compared across scripts and manifests (stripped, forward slashes)."""
    return Path(str(value).strip()).as_posix()


def write(path: Path | str, rows: list[dict], columns=WRITTEN) -> None:
    """Writes rows (sorted by index) atomically, with `columns` in that order."""
    with utils.atomic_write(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(sorted(rows, key=lambda r: r["index"]))
