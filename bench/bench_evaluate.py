"""Benchmarks evaluate.py: files scored per second per metric, and the whole test split extrapolated.

Makes --files 3-s mixtures (real speech from ../shared/corpus when present, else the synthetic
speech stand-in) in a temporary folder, then measures
  1. each metric alone, in this process with one BLAS thread: files/s (one system scored per file);
  2. evaluate() end to end with --workers processes: noisy + model (the config's architecture,
     untrained weights: inference costs the same), all metrics, then again with the oracles;
and extrapolates 2. to the full test split (--split-files, default 1000 3-s mixtures).
Target: noisy + model, all metrics, 1000 files in < 5 minutes on 2 cores.

    nice .venv/bin/python bench/bench_evaluate.py
    nice .venv/bin/python bench/bench_evaluate.py --files 32 --workers 2 --set model.architecture=causal
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import evaluate  # noqa: E402
import metrics  # noqa: E402
import utils  # noqa: E402
from data.demo_corpus import harmonic_speech  # noqa: E402

SR = 16000
CORPUS = ROOT.parent / "shared" / "corpus"


def _clean_sources(n: int, seconds: float) -> tuple[list[np.ndarray], str]:
    files = sorted((CORPUS / "clean_test").glob("*.flac")) + sorted((CORPUS / "clean_train").glob("*.flac"))
    length = int(seconds * SR)
    out = []
    for f in files:
        x, _ = utils.read_audio(f, SR)
        if len(x) >= length:
            out.append(x[:length])
        if len(out) == n:
            return out, f"real speech from {CORPUS}"
    return [harmonic_speech(seconds, 100 + i) for i in range(n)], "synthetic speech-like signals"


def make_mixtures(root: Path, n: int, seconds: float) -> str:
    """data_prep's layout and manifest: noisy = clean + white-ish noise at SNRs -5..15 dB."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    cleans, origin = _clean_sources(n, seconds)
    rows = []
    for i, clean in enumerate(cleans):
        snr = float([-5, 0, 5, 10, 15][i % 5])
        noise = np.convolve(rng.standard_normal(clean.size), np.ones(4) / 4, "same").astype(np.float32)
        noise *= np.sqrt(np.sum(clean**2) / np.sum(noise**2) / 10 ** (snr / 10))
        names = {k: f"{k}/{i}.wav" for k in ("clean", "noise", "noisy")}
        for key, x in (("clean", clean), ("noise", noise), ("noisy", clean + noise)):
            (root / key).mkdir(parents=True, exist_ok=True)
            sf.write(root / names[key], x, SR, subtype="FLOAT")
        rows.append({"index": i, **names, "snr_db": f"{snr:g}"})
    with open(root / "manifest_testing.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["index", "noisy", "clean", "noise", "snr_db"])
        w.writeheader()
        w.writerows(rows)
    return origin


def per_metric_rate(root: Path, n: int) -> dict[str, float]:
    """Files/s for each metric alone (one estimate per file, this process, one BLAS thread)."""
    pairs = []
    for i in range(n):
        clean, _ = utils.read_audio(root / "clean" / f"{i}.wav")
        noisy, _ = utils.read_audio(root / "noisy" / f"{i}.wav")
        pairs.append((clean, noisy))
    rates = {}
    with evaluate._single_threaded_blas():
        metrics.score(*pairs[0], metrics=metrics.ALL_METRICS)  # imports and first-call costs
        for m in metrics.ALL_METRICS:
            start = time.perf_counter()
            for clean, noisy in pairs:
                metrics.score(clean, noisy, noisy, metrics=(m,))
            rates[m] = n / (time.perf_counter() - start)
    return rates


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    utils.add_config_args(parser)
    parser.add_argument("--files", type=int, default=24, help="3-s mixtures to score (default 24)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each mixture (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="scoring processes (default 2)")
    parser.add_argument("--split-files", type=int, default=1000, help="test split size to extrapolate to")
    args = parser.parse_args(argv)
    utils.quiet_tensorflow()
    import model

    with tempfile.TemporaryDirectory(prefix="bench_evaluate_") as tmp:
        tmp = Path(tmp)
        overrides = [
            *args.overrides,
            f"paths.data_dir={tmp / 'data'}",
            f"paths.results_dir={tmp / 'results'}",
        ]
        cfg = utils.load_config(args.config, overrides)
        origin = make_mixtures(tmp / "data", args.files, args.seconds)
        model_dir = tmp / "model"
        model.save_trained(model.build_model(cfg), cfg, model_dir)
        arch = cfg.get("model", "architecture")
        print(f"{args.files} mixtures of {args.seconds:g} s ({origin}); model: {arch}")

        rates = per_metric_rate(tmp / "data", args.files)
        print("\nPer metric, one process, one system scored per file:\n")
        print("| metric | files/s | ms/file |\n|---|---|---|")
        for m, r in rates.items():
            print(f"| {m} | {r:.1f} | {1000 / r:.1f} |")

        def timed(oracles, limit=None):
            start = time.perf_counter()
            evaluate.evaluate(cfg, model_dir, tmp / "results", limit=limit, workers=args.workers,
                              oracles=oracles, progress=False)  # fmt: skip
            return time.perf_counter() - start

        # Two sizes give the start-up cost (model load, worker spawn) and the per-file cost apart.
        small = max(2, args.files // 4)
        t_small, t_full = timed(False, small), timed(False)
        per_file = (t_full - t_small) / (args.files - small)
        startup = max(0.0, t_small - small * per_file)
        t_oracles = timed(True)
        per_file_oracles = (t_oracles - startup) / args.files

    print(f"\nevaluate() end to end, {args.workers} workers, all metrics:\n")
    print(
        f"| systems | s for {args.files} files | files/s (steady) | {args.split_files} files (extrapolated) |"
    )
    print("|---|---|---|---|")
    for label, total, pf in (("noisy + model", t_full, per_file), ("noisy + model + 3 oracles", t_oracles,
                                                                     per_file_oracles)):  # fmt: skip
        print(f"| {label} | {total:.1f} | {1 / pf:.2f} | {(startup + args.split_files * pf) / 60:.1f} min |")
    minutes = (startup + args.split_files * per_file) / 60
    verdict = "meets" if minutes < 5 else "MISSES"
    print(f"\nstart-up (model load, worker spawn): {startup:.1f} s")
    print(f"noisy + model on {args.split_files} files: {minutes:.1f} min ({verdict} the < 5 min target)")
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
