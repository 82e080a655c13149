"""Plumbing shared by every script: config, audio I/O, atomic writes, seeding, logging.

This module imports no other project module (see docs/design.md section 2).
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import difflib
import errno
import glob
import hashlib
import io
import logging
import math
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
    check_config(cfg, str(path))
    base = path.resolve().parent
    for section in cfg.sections():
        for key, value in cfg.items(section):
            if _is_path_key(section, key) and value.strip():
                cfg.set(section, key, str((base / value.strip()).resolve()))
    for item in overrides:
        section, key, value = split_override(item)
        check_key(section, key, f"--set {item}", record_ok=False)
        parse_value(section, key, value, f"--set {item}")
        if not cfg.has_section(section):
            cfg.add_section(section)
        if _is_path_key(section, key) and value.strip():
            value = str(Path(value.strip()).resolve())
        cfg.set(section, key, value)
    cfg.source = str(path.resolve())  # type: ignore[attr-defined]
    return cfg


def split_override(item: str) -> tuple[str, str, str]:
    """(section, key, value) of a --set SECTION.KEY=VALUE."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise PipelineError(f"--set {item!r}: expected SECTION.KEY=VALUE")
    name, value = item.split("=", 1)
    section, key = name.split(".", 1)
    return section.strip(), key.strip(), value


# Sections a trained model carries in its folder's config.ini: fixed by the weights.
MODEL_SECTIONS = ("STFT", "features", "model", "loss")


def refuse_model_overrides(overrides, script: str) -> None:
    """enhance.py / evaluate.py / export.py take MODEL_SECTIONS from the model folder: a --set of one
    of them cannot apply, so it is an error rather than silently dropped."""
    for item in overrides:
        section = split_override(item)[0]
        if section in MODEL_SECTIONS:
            raise PipelineError(
                f"--set {item}: {script} takes [{section}] from the model folder's config.ini (what its "
                "weights were trained with), so this cannot apply; train another model to change it"
            )


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
    run = config_value(cfg, "train", "run_name") or "default"
    best = get_path(cfg, "checkpoint_dir") / run / "best"
    for folder in (best, PRETRAINED_DIR):
        if (folder / "model.weights.h5").is_file():
            return folder
    raise PipelineError(
        f"{best}: no trained model and no shipped {PRETRAINED_DIR.name}/ (train one with `python train.py`, "
        "run `make demo` or pass --model DIR)"
    )


def check_sample_rates(data_rate, data_source, stft_rate: int, stft_source) -> None:
    """The mixtures' rate ([data] sample_rate) must be the model's ([STFT] sample_rate): mixing at one
    rate and training at another would resample every example behind the user's back. A one-line
    PipelineError naming both files and values otherwise."""
    rate = parse_value("data", "sample_rate", data_rate, f"{data_source}: [data] sample_rate={data_rate!r}")
    if rate != stft_rate:
        raise PipelineError(
            f"{data_source}: [data] sample_rate={rate} differs from {stft_source}: [STFT] "
            f"sample_rate={stft_rate}; make them equal"
        )


def save_config(cfg: configparser.ConfigParser, path: Path | str) -> None:
    """Writes the resolved config (absolute paths, overrides applied) atomically."""
    with atomic_write(path, "w") as f:
        cfg.write(f)


def config_to_dict(cfg: configparser.ConfigParser) -> dict:
    return {s: dict(cfg.items(s)) for s in cfg.sections()}


def copy_config(cfg: configparser.ConfigParser) -> configparser.ConfigParser:
    """An independent copy (same keys, case kept, same .source) that a caller may change freely."""
    new = configparser.ConfigParser(interpolation=None)
    new.optionxform = str
    new.read_dict(config_to_dict(cfg))
    new.source = getattr(cfg, "source", str(DEFAULT_CONFIG))  # type: ignore[attr-defined]
    return new


def set_value(cfg: configparser.ConfigParser, section: str, key: str, value) -> None:
    """cfg[section][key] = str(value), adding the section when missing."""
    if not cfg.has_section(section):
        cfg.add_section(section)
    cfg.set(section, key, str(value))


# ----------------------------------------------------------------------------- config schema
#
# The valid sections and keys are those of config.ini and data/config.ini themselves (a key added
# there is valid everywhere at once); each key's type is read off its default value. Only what a
# default cannot say is listed here: numbers whose default happens to be whole, lower bounds, and
# the keys the scripts write into the configs they save as a record (never set by a user).

FLOAT_KEYS = {
    ("data", "file_length"), ("data", "SNR_lower"), ("data", "SNR_upper"),
    ("train", "level_db_min"), ("train", "level_db_max"), ("enhance", "chunk_seconds"),
}  # fmt: skip
# (section, key) -> (lowest value, whether the lowest value itself is allowed)
LOWER_BOUNDS = {
    **{("STFT", k): (0, False) for k in ("sample_rate", "window_length", "hop_size", "n_fft")},
    ("features", "compression"): (0, False),
    ("loss", "power"): (0, False), ("loss", "lam"): (0, True), ("loss", "epsilon"): (0, False),
    ("model", "lookahead_frames"): (0, True), ("model", "mask_bound"): (0, False),
    ("train", "clip_norm"): (0, False), ("train", "validation_files"): (1, True),
    ("train", "audio_examples"): (0, True), ("train", "crop_seconds"): (0, False),
    ("evaluate", "workers"): (0, True), ("evaluate", "batch_size"): (1, True),
    ("enhance", "chunk_seconds"): (0, False),
    ("data", "sample_rate"): (0, False), ("data", "file_length"): (0, False),
    ("data", "total_training_files"): (0, True), ("data", "total_testing_files"): (0, True),
    ("data", "total_snrlevels"): (1, True), ("data", "workers"): (0, True),
}  # fmt: skip
# Comma-separated lists: their value is the tuple of the non-empty, stripped items.
LIST_KEYS = {("evaluate", "metrics"), ("evaluate", "oracles"), ("train", "augment")}
# Written by evaluate.py (results/<run>/config.ini) and enhance.py (enhance_config.ini) to record a run.
RECORD_KEYS = {"evaluate": {"model_dir", "limit"}, "enhance": {"model", "streaming", "channels"}}
# configparser's BOOLEAN_STATES: what parse_bool accepts.
_BOOLEANS = {"1": True, "yes": True, "true": True, "on": True, "0": False, "no": False, "false": False,
             "off": False}  # fmt: skip
KIND_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text",
              "list": "a comma-separated list"}  # fmt: skip


def _kind_of(section: str, key: str, default: str) -> str:
    text = default.strip().lower()
    if (section, key) in FLOAT_KEYS:
        return "float"
    if (section, key) in LIST_KEYS:
        return "list"
    if text in ("true", "false", "yes", "no", "on", "off"):
        return "bool"
    try:
        return "int" if float(text).is_integer() and "." not in text and "e" not in text else "float"
    except ValueError:
        return "str"


def parse_bool(raw) -> bool:
    """true/false, yes/no, on/off, 1/0 (any case, surrounding blanks ignored); ValueError otherwise.
    The one boolean parser of every config value."""
    text = str(raw).strip().lower()
    if text not in _BOOLEANS:
        raise ValueError(f"{raw!r}: expected true or false")
    return _BOOLEANS[text]


_SCHEMA: dict[str, dict[str, str]] = {}
_DEFAULTS: dict[str, dict[str, str]] = {}


def config_schema() -> dict[str, dict[str, str]]:
    """section -> key -> kind ("int", "float", "bool", "str", "list") of every valid key."""
    if not _SCHEMA:
        for path in (DEFAULT_CONFIG, DATA_CONFIG):
            raw = configparser.ConfigParser(interpolation=None)
            raw.optionxform = str
            raw.read(path)
            for section in raw.sections():
                keys = _SCHEMA.setdefault(section, {})
                defaults = _DEFAULTS.setdefault(section, {})
                for key, default in raw.items(section):
                    keys[key] = _kind_of(section, key, default)
                    defaults[key] = default.strip()
    return _SCHEMA


def config_default(section: str, key: str):
    """The shipped default of section.key (config.ini or data/config.ini), as its schema type: the
    fallback for a saved config that predates the key. The only default a key has."""
    config_schema()
    return parse_value(section, key, _DEFAULTS[section][key], f"{DEFAULT_CONFIG.name}: [{section}] {key}")


def config_source(cfg) -> str:
    """The file a config was loaded from (load_config records it), for error messages."""
    return str(getattr(cfg, "source", DEFAULT_CONFIG.name))


def config_value(cfg, section: str, key: str):
    """THE typed getter: section.key of cfg as its schema type (parse_value), or config_default when
    cfg (None allowed) lacks it. A bad value is one line naming the file, section.key and the value."""
    if cfg is None or not cfg.has_option(section, key):
        return config_default(section, key)
    raw = cfg.get(section, key)
    return parse_value(section, key, raw, f"{config_source(cfg)}: [{section}] {key}={raw.strip()!r}")


def config_values(cfg, section: str, keys) -> dict:
    """{key: config_value(cfg, section, key)} for keys: what a params dataclass is built from."""
    return {key: config_value(cfg, section, key) for key in keys}


def _closest(name: str, options) -> str:
    """' (did you mean X?)' for the closest of options, or '' when nothing is close."""
    options = list(options)
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    if not match:  # case slips (snr_lower) are common: compare case-folded too
        folded = {o.lower(): o for o in options}
        match = [folded[m] for m in difflib.get_close_matches(name.lower(), list(folded), n=1, cutoff=0.6)]
    return f" (did you mean {match[0]}?)" if match else ""


def check_key(section: str, key: str, where: str, record_ok: bool = True) -> None:
    """PipelineError unless section.key is a key of the schema; names the closest valid one."""
    schema = config_schema()
    if section not in schema:
        hint = _closest(f"[{section}]", [f"[{s}]" for s in schema])
        raise PipelineError(f"{where}: unknown section [{section}]{hint}")
    if key in schema[section] or record_ok and key in RECORD_KEYS.get(section, ()):
        return
    elsewhere = [f"{s}.{key}" for s in schema if key in schema[s]]
    hint = (
        f" (did you mean {elsewhere[0]}?)"
        if elsewhere
        else _closest(f"{section}.{key}", [f"{section}.{k}" for k in schema[section]])
    )
    raise PipelineError(f"{where}: unknown key {section}.{key}{hint}")


def parse_value(section: str, key: str, raw: str, where: str):
    """The value of section.key as its schema type, range-checked; else a PipelineError starting with
    `where` (which names the file or --set, the key and the value)."""
    kind = config_schema().get(section, {}).get(key, "str")
    text = str(raw).strip()
    bad = f"{where}: expected {KIND_NAMES[kind]}"
    if kind == "str":
        return text
    if kind == "list":
        return tuple(item.strip() for item in text.split(",") if item.strip())
    if kind == "bool":
        try:
            return parse_bool(text)
        except ValueError:
            raise PipelineError(bad) from None
    try:
        value = float(text)
    except ValueError:
        raise PipelineError(bad) from None
    if not math.isfinite(value) or kind == "int" and not value.is_integer():
        raise PipelineError(bad)
    if kind == "int":  # int(text) when it is one: exact past 2**53 (a seed), else 1e1 -> 10
        value = int(text) if text.lstrip("+-").isdigit() else int(value)
    low = LOWER_BOUNDS.get((section, key))
    if low is not None and (value < low[0] or value == low[0] and not low[1]):
        raise PipelineError(f"{where}: must be {'>=' if low[1] else '>'} {low[0]}")
    return value


def check_config(cfg: configparser.ConfigParser, where: str) -> None:
    """Every section and key known and every value of its type and range (see config_schema)."""
    for section in cfg.sections():
        for key, value in cfg.items(section):
            check_key(section, key, where)
            parse_value(section, key, value, f"{where}: [{section}] {key}={value.strip()!r}")


# ----------------------------------------------------------------------------- files


def why_none_usable(skipped: list[tuple], n_files: int) -> str:
    """' (N files: 3 too short, 1 unreadable audio; e.g. a.wav: too short (0.5 s))' for an error that
    says no source file was usable: the reasons counted by their first words, and one example."""
    if not skipped:
        return f" ({n_files} files)" if n_files else " (no audio files found)"
    counts: dict[str, int] = {}
    for _, reason in skipped:
        kind = str(reason).split(" (")[0]
        counts[kind] = counts.get(kind, 0) + 1
    listed = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    path, reason = skipped[0]
    return f" ({n_files} files: {listed}; e.g. {path}: {reason})"


def give_usual_mode(path: Path | str) -> None:
    """mkstemp makes 0600 files: give an output the mode a plain open() would (0666 minus umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def atomic_path(path: Path | str, suffix: str = ".tmp", fsync: bool = True):
    """The one atomic-replace helper: yields the name of an empty temp file beside `path`
    (.NAME.XXXX<suffix>, hidden) for the block to write by any means (a library that wants a file
    name); renames it over `path` with the usual file mode only when the block succeeds, else removes
    it. fsync=False skips the flush to disk (data_prep: a size check on resume replaces it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        give_usual_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: Path | str, mode: str = "wb"):
    """Opens a temp file beside `path` and renames it over `path` only on success (atomic_path)."""
    path = Path(path)
    with atomic_path(path, fsync=False) as tmp:
        try:
            with open(tmp, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            if e.filename is None:  # f.write's ENOSPC names no file: name it
                e.filename = str(path)
            raise


@contextlib.contextmanager
def folder_lock(folder: Path | str, what: str):
    """Holds an exclusive lock on `folder` (its hidden .lock file, removed on exit) for one run;
    a second run into the same folder is refused with one line naming the holder."""
    import fcntl

    folder = Path(folder)
    lock = folder / ".lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise PipelineError(
                f"{folder}: another {what} run (pid {holder}) is writing here; wait for it to finish or "
                "choose another output folder"
            ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:  # else the previous holder removed the file just now: lock the new one
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def remove_stale_temps(target: Path | str) -> list[Path]:
    """Removes the hidden .NAME.XXXX.tmp files atomic_write (or enhance.py's writer) left beside
    `target` when killed; call only while no other process can be writing `target`."""
    target = Path(target)
    removed = []
    for tmp in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def atomic_save_npy(path: Path | str, array: np.ndarray) -> None:
    with atomic_write(path, "wb") as f:
        np.save(f, array)


def file_sha256(path: Path | str) -> str:
    """sha256 of a file's bytes (a manifest's identity)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_audio(folder: Path | str, extensions=AUDIO_EXTENSIONS) -> list[Path]:
    """The files under `folder` (recursive) whose extension is one of `extensions`, sorted so results
    do not depend on the OS. The default, AUDIO_EXTENSIONS, is what data_prep and on-the-fly mixing
    take as sources; enhance.py takes every format libsndfile reads (readable_extensions())."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineError(f"{folder}: folder not found")
    exts = {e.lower() for e in extensions}
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts and p.is_file())


def readable_extensions() -> tuple[str, ...]:
    """Extensions of every format this libsndfile reads (.wav .flac .aiff .au .mp3 ...).

    RAW is left out: headerless files cannot be read without being told their rate and encoding.
    """
    formats = sf.available_formats()
    exts = {f".{name.lower()}" for name in formats if name != "RAW"}
    if "AIFF" in formats:
        exts |= {".aif", ".aiff"}
    if "MP3" in formats:
        exts.add(".mp3")
    if "OGG" in formats and "OPUS" in sf.available_subtypes("OGG"):
        exts.add(".opus")
    return tuple(sorted(exts))


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
        raise AudioError(path, unreadable(e)) from e
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


def audio_length(path: Path | str, sample_rate: int) -> int:
    """Length after read_audio: read from the header, or by decoding when it will resample."""
    path = Path(path)
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile raises several types; all mean "unreadable"
        raise AudioError(path, unreadable(e)) from e
    if info.frames <= 0:
        raise AudioError(path, "empty (0 samples)")
    if info.samplerate == sample_rate:
        return int(info.frames)
    return len(read_audio(path, sample_rate)[0])


def unreadable(e: Exception) -> str:
    """AudioError's reason for a file libsndfile could not decode (it raises several types)."""
    text = str(e).splitlines()[0] if str(e).strip() else e.__class__.__name__
    return f"unreadable audio ({text[:120]})"


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    import soxr  # imported lazily: only resampling callers pay for it

    if sr_in == sr_out:
        return x
    return soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32)


def write_audio(path: Path | str, data: np.ndarray, sample_rate: int, subtype: str = "FLOAT") -> None:
    """Writes audio atomically (temp file + rename); float32 WAV by default so sums stay exact."""
    path = Path(path)
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}.get(path.suffix.lower(), "WAV")
    buf = io.BytesIO()  # encoded in memory: libsndfile would turn a full disk into "System error"
    sf.write(buf, np.asarray(data), sample_rate, subtype=subtype, format=fmt)
    with atomic_write(path, "wb") as f:
        f.write(buf.getbuffer())


def peak_normalize(x: np.ndarray, peak: float = 0.99) -> np.ndarray:
    """Scales down (never up) so |x| <= peak; for listening copies, never for metrics."""
    m = float(np.max(np.abs(x))) if x.size else 0.0
    return x * (peak / m) if m > peak else x


# ----------------------------------------------------------------------------- misc


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (ours or not): the owner test of a lock or a stale temp folder."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or a number no process can have
        return False
    except PermissionError:  # exists but not ours
        return True
    return True


def json_safe(x):
    """x with every NaN/Inf float (at any depth of dicts, lists and tuples) as None: JSON has none."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


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


def import_tensorflow():
    """The tensorflow module, quietened; imported on first use so that --help and config errors stay fast."""
    quiet_tensorflow()
    import tensorflow as tf

    return tf


OS_REASONS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk full (quota exceeded)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EEXIST: "exists and is not a folder",
    errno.ENOTDIR: "not a folder (part of the path is a file)",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOENT: "not found",
    errno.EFBIG: "file too large",
}


def os_error_line(e: OSError, path=None) -> str:
    """'PATH: reason' for a filesystem error ("disk full" in those words)."""
    where = e.filename if e.filename is not None else path
    first = (str(e).splitlines() or [""])[0]
    reason = OS_REASONS.get(e.errno) or e.strerror or first or type(e).__name__
    return f"{where}: {reason}" if where is not None else reason


def die_with_parent(parent_pid: int) -> None:
    """For a worker process: exit within a second of `parent_pid` going away (kill -9 too), instead of
    running on as an orphan. A polling thread, not Linux's PR_SET_PDEATHSIG: that one fires when the
    parent *thread* that started the worker ends, which for a process pool need not be the parent."""
    import threading

    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch():
        while os.getppid() == parent_pid:
            threading.Event().wait(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="die_with_parent").start()


def run_main(main_fn, argv=None) -> int:
    """Runs a script's main, turning PipelineError and filesystem errors (OSError: disk full,
    read-only, a file where a folder should be, ...) into one line on stderr and exit status 2."""
    try:
        return main_fn(argv) or 0
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
