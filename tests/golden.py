"""Golden regression cases for the shipped model (pretrained/): fixed mixtures, their recorded scores.

The synthetic cases are generated here (data/demo_corpus speech and noise, fixed seeds), so they run on
any clone; the real cases mix fixed files of ../shared/corpus (clean_test x noise_test) and run only
where it exists. tests/test_pretrained.py checks that the shipped model reproduces the scores.

After retraining pretrained/, record new scores (and say why in the commit):

    python tests/golden.py --record
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import metrics  # noqa: E402
import mixing  # noqa: E402
import utils  # noqa: E402
from data import demo_corpus  # noqa: E402

GOLDEN = utils.PRETRAINED_DIR / "golden.json"
SR = 16000
SECONDS = 4.0
METRICS = ("si_sdr", "snr", "pesq", "stoi")
# Tolerances: far above float32 differences between CPUs, far below any real change of the model.
TOLERANCE = {"si_sdr": 0.05, "snr": 0.05, "pesq": 0.02, "stoi": 0.002}
# (name, noise kind, SNR dB): synthetic talker of demo_corpus in its synthetic noise.
SYNTHETIC = (("synthetic_babble_0dB", "babble", 0.0), ("synthetic_pink_5dB", "pink", 5.0),
             ("synthetic_keyboard_10dB", "keyboard", 10.0))  # fmt: skip
# (name, clean_test file, noise_test file, SNR dB): first SECONDS of the clean file, noise from 1 s.
REAL = (("real_0dB", 0, 0, 0.0), ("real_5dB", 1, 3, 5.0), ("real_10dB", 2, 6, 10.0))


def mix(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy) mixed exactly as data_prep mixes (SNR exact, one gain if it would clip)."""
    c, _, noisy, _ = mixing.mix(clean, noise, snr_db)
    return c, noisy


def synthetic_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for k, (name, kind, snr) in enumerate(SYNTHETIC):
        rng = np.random.default_rng([2026, k])
        talker = demo_corpus.make_talkers(rng, 3)[k]
        clean = demo_corpus.synth_speech(rng, talker, SECONDS)
        noise = demo_corpus.synth_noise(rng, kind, SECONDS)
        out[name] = mix(clean, noise, snr)
    return out


def corpus_files(corpus: Path, split: str) -> list[Path]:
    return sorted(p for p in (corpus / split).rglob("*") if p.suffix.lower() in (".flac", ".wav"))


def real_cases(corpus: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    n = int(SECONDS * SR)
    cleans = [f for f in corpus_files(corpus, "clean_test") if utils.read_audio(f, SR)[0].size >= n]
    noises = [f for f in corpus_files(corpus, "noise_test") if utils.read_audio(f, SR)[0].size >= n + SR]
    out = {}
    for name, ci, ni, snr in REAL:
        clean = utils.read_audio(cleans[ci], SR)[0][:n]
        noise = utils.read_audio(noises[ni], SR)[0][SR : SR + n]
        out[name] = mix(clean, noise, snr)
    return out


def scores(clean: np.ndarray, estimate: np.ndarray) -> dict[str, float]:
    return {
        "si_sdr": metrics.si_sdr(clean, estimate),
        "snr": metrics.snr(clean, estimate),
        "pesq": metrics.pesq_wb(clean, estimate, SR),
        "stoi": metrics.stoi(clean, estimate, SR),
    }


def model_sha256(folder: Path = utils.PRETRAINED_DIR) -> str:
    return hashlib.sha256((folder / "model.weights.h5").read_bytes()).hexdigest()


def run(cases: dict[str, tuple[np.ndarray, np.ndarray]], enhancer) -> dict[str, dict]:
    """{case: {"noisy": scores, "enhanced": scores}} of the enhancer on each (clean, noisy) case."""
    return {
        name: {"noisy": scores(clean, noisy), "enhanced": scores(clean, enhancer(noisy, SR))}
        for name, (clean, noisy) in cases.items()
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--record", action="store_true", help=f"write {GOLDEN.relative_to(ROOT)}")
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus")
    args = parser.parse_args(argv)
    import enhance

    enhancer = enhance.Enhancer.from_pretrained(utils.PRETRAINED_DIR)
    cases = synthetic_cases()
    if args.corpus.is_dir():
        cases.update(real_cases(args.corpus))
    else:
        print(f"{args.corpus}: not found; real cases not recorded", file=sys.stderr)
    result = {"model_sha256": model_sha256(), "seconds": SECONDS, "cases": run(cases, enhancer)}
    text = json.dumps(result, indent=2)
    if args.record:
        with utils.atomic_write(GOLDEN, "w") as f:
            f.write(text + "\n")
        print(f"wrote {GOLDEN}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
