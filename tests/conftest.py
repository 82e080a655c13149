"""Shared fixtures: tiny generated signals that always exist, and the real corpus when present."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data.demo_corpus import harmonic_speech as speech_like  # fixtures and tests use this name

ROOT = Path(__file__).resolve().parents[1]  # on sys.path through pyproject's [tool.pytest] pythonpath

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

CORPUS = Path(os.environ.get("SE_CORPUS", ROOT.parent / "shared" / "corpus"))
CORPUS_SPLITS = ("clean_train", "clean_test", "noise_train", "noise_test")
SR = 16000


def corpus_available() -> bool:
    return all((CORPUS / s).is_dir() for s in CORPUS_SPLITS)


requires_corpus = pytest.mark.skipif(
    not corpus_available(), reason=f"real corpus not found at {CORPUS} (set SE_CORPUS to use another)"
)


def noise_like(seconds: float, seed: int, sr: int = SR) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = rng.standard_normal(int(seconds * sr))
    n = np.convolve(n, np.ones(4) / 4, mode="same")  # mildly coloured
    return (0.1 * n).astype(np.float32)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def synthetic_corpus(tmp_path) -> Path:
    """A tiny corpus in the shared layout (clean_train/ clean_test/ noise_train/ noise_test/)."""
    root = tmp_path / "corpus"
    for split, maker, count, secs in (
        ("clean_train", speech_like, 4, 4.0),
        ("clean_test", speech_like, 2, 4.0),
        ("noise_train", noise_like, 2, 5.0),
        ("noise_test", noise_like, 1, 5.0),
    ):
        (root / split).mkdir(parents=True)
        for i in range(count):
            seed = CORPUS_SPLITS.index(split) * 100 + i
            sf.write(root / split / f"{split}_{i}.wav", maker(secs, seed), SR, subtype="FLOAT")
    return root


@pytest.fixture
def tiny_real_corpus(tmp_path) -> Path:
    """A few real files copied from ../shared/corpus in the same layout; skipped when absent."""
    if not corpus_available():
        pytest.skip(f"real corpus not found at {CORPUS}")
    root = tmp_path / "real_corpus"
    for split, count in zip(CORPUS_SPLITS, (6, 3, 3, 2), strict=True):
        (root / split).mkdir(parents=True)
        for f in sorted((CORPUS / split).glob("*.flac"))[:count]:
            shutil.copy(f, root / split / f.name)
    return root


def write_config(tmp_path: Path, overrides: dict | None = None) -> Path:
    """Copies config.ini into tmp_path with every [paths] entry inside tmp_path and a tiny model."""
    import configparser

    cfg = configparser.ConfigParser(interpolation=None)
    cfg.optionxform = str
    cfg.read(ROOT / "config.ini")
    for key in cfg["paths"]:
        cfg["paths"][key] = key.replace("_dir", "")
    cfg["paths"]["stft_dir"] = "."
    tiny = {
        "model": {"projection_units": "32", "lstm_units": "32", "lstm_layers": "1", "dense_units": "32"},
        "train": {"epochs": "1", "batch_size": "2", "validation_files": "2", "audio_examples": "1"},
    }
    merged = {section: dict(values) for section, values in tiny.items()}
    for section, values in (overrides or {}).items():  # merge key by key: keep the tiny sizes
        merged.setdefault(section, {}).update(values)
    for section, values in merged.items():
        if not cfg.has_section(section):
            cfg.add_section(section)
        for k, v in values.items():
            cfg[section][k] = str(v)
    path = tmp_path / "config.ini"
    with open(path, "w") as f:
        cfg.write(f)
    return path


def make_test_set(root: Path, snrs=(-5, 5, 15), seconds: float = 1.5) -> Path:
    """Writes tiny mixtures in data_prep's layout (noisy == clean + noise) and manifest_testing.csv."""
    rows = []
    for i, snr in enumerate(snrs):
        clean = speech_like(seconds, seed=10 + i)
        noise = noise_like(seconds, seed=20 + i)
        noise = noise * np.sqrt(np.sum(clean**2) / np.sum(noise**2) / 10 ** (snr / 10))
        names = {
            "clean": f"CleanSpeech_testing/clnsp{i}.wav",
            "noise": f"Noise_testing/noisy{i}_SNRdb_{snr:g}.wav",
            "noisy": f"NoisySpeech_testing/noisy{i}_SNRdb_{snr:g}_clnsp{i}.wav",
        }
        for key, signal in (("clean", clean), ("noise", noise), ("noisy", clean + noise)):
            (root / names[key]).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / names[key], signal.astype(np.float32), SR, subtype="FLOAT")
        rows.append({"index": i, **names, "snr_db": snr})
    with open(root / "manifest_testing.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["index", "noisy", "clean", "noise", "snr_db"])
        w.writeheader()
        w.writerows(rows)
    return root / "manifest_testing.csv"


@pytest.fixture
def tmp_config(tmp_path) -> Path:
    return write_config(tmp_path)


# ----------------------------------------------------------------------------- tiny models (enhance, export)

TINY_MODEL = {"projection_units": "32", "lstm_units": "32", "lstm_layers": "2", "dense_units": "32"}


def make_model(folder: Path, **model) -> Path:
    """A seeded tiny model saved with model.save_trained into `folder`; returns folder/model."""
    import keras

    import model as M
    import utils

    folder.mkdir(parents=True, exist_ok=True)
    cfg = utils.load_config(
        write_config(folder, {"model": {**TINY_MODEL, **{k: str(v) for k, v in model.items()}}})
    )
    keras.utils.set_random_seed(7)
    M.save_trained(M.build_model(cfg), cfg, folder / "model")
    return folder / "model"


def noisy(seconds=2.1037, seed=0, sr=SR) -> np.ndarray:
    """speech_like + noise_like; the default length is not a multiple of the 10-ms hop (see test_enhance)."""
    return (speech_like(seconds, seed, sr) + noise_like(seconds, seed + 50, sr)).astype(np.float32)


def run_enhance_cli(capsys, *args) -> tuple[int, str, str]:
    """enhance.main(args) in-process: (exit code, stdout, stderr)."""
    import enhance

    rc = enhance.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def write_split(data: Path, split: str, seconds, seed: int) -> None:
    """noisy = clean + noise pairs and a manifest in data_prep's layout (docs/design.md section 3)."""
    rows = []
    for n, secs in enumerate(seconds):
        clean = speech_like(secs, seed + n)
        noise = noise_like(secs, seed + 50 + n)
        snr = float([0, 5, -5][n % 3])
        noise = noise * np.sqrt(np.sum(clean**2) / np.sum(noise**2) / 10 ** (snr / 10))
        noisy = (clean + noise).astype(np.float32)
        names = {
            "clean": f"CleanSpeech_{split}/clnsp{n}.wav",
            "noise": f"Noise_{split}/noisy{n}_SNRdb_{snr:g}.wav",
            "noisy": f"NoisySpeech_{split}/noisy{n}_SNRdb_{snr:g}_clnsp{n}.wav",
        }
        for key, sig in (("clean", clean), ("noise", noise.astype(np.float32)), ("noisy", noisy)):
            (data / names[key]).parent.mkdir(parents=True, exist_ok=True)
            sf.write(data / names[key], sig, SR, subtype="FLOAT")
        rows.append({"index": n, **names, "snr_db": snr, "clean_source": "synthetic", "clean_start_s": 0,
                     "noise_source": "synthetic", "noise_start_s": 0, "gain": 1.0})  # fmt: skip
    with open(data / f"manifest_{split}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
