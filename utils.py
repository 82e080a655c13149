"""Plumbing shared by every script: config, audio I/O, atomic writes, seeding, logging.

This module imports no other project module (see DESIGN.md section 2).
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import logging
import os
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent
DEFAULT_CONFIG = ROOT / "config.ini"
DATA_CONFIG = ROOT / "data" / "config.ini"
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")

# Keys whose values are filesystem paths, resolved relative to the config file's folder.
PATH_KEYS = {
    "paths": None,  # every key of [paths]
    "data": {"clean_train_path", "noise_train_path", "clean_test_path", "noise_test_path", "output_path"},
    "train": {"init_weights"},
}


class PipelineError(Exception):
    """A fatal, user-facing error: printed as one line, exit status 2."""


class AudioError(PipelineError):
    """An audio file that cannot be used; the message names the file and the reason."""

    def __init__(self, path, reason):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


# ----------------------------------------------------------------------------- config


def add_config_args(parser: argparse.ArgumentParser, default: Path = DEFAULT_CONFIG) -> None:
    """Adds the --config / --set options every script shares."""
    parser.add_argument("--config", type=Path, default=default, help=f"config file (default: {default})")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable); paths given here are relative to the current folder",
    )


def _is_path_key(section: str, key: str) -> bool:
    keys = PATH_KEYS.get(section, set())
    return keys is None and section in PATH_KEYS or (keys is not None and key in keys)


def load_config(
    path: Path | str = DEFAULT_CONFIG, overrides: list[str] | tuple = ()
) -> configparser.ConfigParser:
    """Reads a config file, applies `section.key=value` overrides and resolves paths.

    Path values from the file are made absolute relative to the file's folder; path values from
    overrides relative to the current folder (what a user typing them expects).
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: config file not found")
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.optionxform = str  # keep the seed repo's key case (SNR_lower, ...)
    try:
        cfg.read(path)
    except configparser.Error as e:
        raise PipelineError(f"{path}: cannot parse config ({e.__class__.__name__})") from e
    base = path.resolve().parent
    for section in cfg.sections():
        for key, value in cfg.items(section):
            if _is_path_key(section, key) and value.strip():
                cfg.set(section, key, str((base / value.strip()).resolve()))
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise PipelineError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        name, value = item.split("=", 1)
        section, key = name.split(".", 1)
        if not cfg.has_section(section):
            cfg.add_section(section)
        if _is_path_key(section, key) and value.strip():
            value = str(Path(value.strip()).resolve())
        cfg.set(section, key, value)
    cfg.source = str(path.resolve())  # type: ignore[attr-defined]
    return cfg


def config_from_args(args: argparse.Namespace) -> configparser.ConfigParser:
    return load_config(args.config, args.overrides)


def get_path(cfg: configparser.ConfigParser, key: str, section: str = "paths") -> Path:
    return Path(cfg.get(section, key))


PRETRAINED_DIR = ROOT / "pretrained"  # the shipped default model (pretrained/README.md)


def default_model_dir(cfg=None) -> Path:
    """The model a script uses when none is given: the run config.ini names
    (<checkpoint_dir>/<[train] run_name>/best) once you have trained it, else the shipped pretrained/."""
    if cfg is None:
        cfg = load_config(DEFAULT_CONFIG)
    run = cfg.get("train", "run_name", fallback="default") or "default"
    best = get_path(cfg, "checkpoint_dir") / run / "best"
    for folder in (best, PRETRAINED_DIR):
        if (folder / "model.weights.h5").is_file():
            return folder
    raise PipelineError(
        f"{best}: no trained model and no shipped {PRETRAINED_DIR.name}/ (train one with `python train.py`, "
        "run `make demo` or pass --model DIR)"
    )


def save_config(cfg: configparser.ConfigParser, path: Path | str) -> None:
    """Writes the resolved config (absolute paths, overrides applied) atomically."""
    with atomic_write(path, "w") as f:
        cfg.write(f)


def config_to_dict(cfg: configparser.ConfigParser) -> dict:
    return {s: dict(cfg.items(s)) for s in cfg.sections()}


# ----------------------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_write(path: Path | str, mode: str = "wb"):
    """Opens a temp file beside `path` and renames it over `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give outputs the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_save_npy(path: Path | str, array: np.ndarray) -> None:
    with atomic_write(path, "wb") as f:
        np.save(f, array)


def find_audio(folder: Path | str) -> list[Path]:
    """All audio files under `folder` (recursive), sorted so results do not depend on the OS."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineError(f"{folder}: folder not found")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())


# ----------------------------------------------------------------------------- audio


def read_audio(path: Path | str, sample_rate: int | None = None, mono: bool = True) -> tuple[np.ndarray, int]:
    """Reads any libsndfile format as float32, downmixes to mono and resamples with soxr.

    Raises AudioError (one line naming the file and the reason) for unreadable, empty, non-finite
    or all-zero audio. Returns (samples, rate); samples are (N,) when mono else (N, channels).
    """
    path = Path(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises several types; all mean "unreadable"
        raise AudioError(path, f"unreadable audio ({str(e).splitlines()[0][:120]})") from e
    if data.shape[0] == 0:
        raise AudioError(path, "empty (0 samples)")
    if not np.all(np.isfinite(data)):
        raise AudioError(path, "contains NaN or Inf samples")
    if not np.any(data):
        raise AudioError(path, "silent (all samples are zero)")
    if mono:
        data = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1)
    if sample_rate is not None and sr != sample_rate:
        data = resample(data, sr, sample_rate)
        sr = sample_rate
    return np.ascontiguousarray(data, dtype=np.float32), sr


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    import soxr  # imported lazily: only resampling callers pay for it

    if sr_in == sr_out:
        return x
    return soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32)


def write_audio(path: Path | str, data: np.ndarray, sample_rate: int, subtype: str = "FLOAT") -> None:
    """Writes audio atomically (temp file + rename); float32 WAV by default so sums stay exact."""
    path = Path(path)
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}.get(path.suffix.lower(), "WAV")
    with atomic_write(path, "wb") as f:
        sf.write(f, np.asarray(data), sample_rate, subtype=subtype, format=fmt)


def peak_normalize(x: np.ndarray, peak: float = 0.99) -> np.ndarray:
    """Scales down (never up) so |x| <= peak; for listening copies, never for metrics."""
    m = float(np.max(np.abs(x))) if x.size else 0.0
    return x * (peak / m) if m > peak else x


# ----------------------------------------------------------------------------- misc


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if "tensorflow" in sys.modules:
        sys.modules["tensorflow"].random.set_seed(seed)


def get_logger(name: str = "se") -> logging.Logger:
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    return logger


def quiet_tensorflow() -> None:
    """Silences TensorFlow's start-up chatter; call before importing tensorflow."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def run_main(main_fn, argv=None) -> int:
    """Runs a script's main, turning PipelineError into one line on stderr and exit status 2."""
    try:
        return main_fn(argv) or 0
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
