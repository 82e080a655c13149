"""Benchmark of STFT.py (the cache build speed and size for 3-s examples) and of spectral.py (stft/istft of
one 3-s clip).

Generates N noisy/clean 3-s pairs (real speech and noise from ../shared/corpus when present, else
synthetic) with a data-prep style manifest in a temp folder, builds the cache with each worker count,
and prints examples per second, bytes per example and the per-clip transform times.

    nice .venv/bin/python bench/bench_stft.py [--examples 200] [--workers 1,2]
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

import spectral  # noqa: E402
import spectral_tf  # noqa: E402
import STFT  # noqa: E402
import stft_cache  # noqa: E402
import utils  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"


def _sources(corpus: Path, sr: int, seconds: float, rng) -> tuple[list, list, str]:
    """Lists of clean and noise signals (each >= `seconds` long), from the corpus or synthetic."""
    need = int(seconds * sr)
    if (corpus / "clean_train").is_dir() and (corpus / "noise_train").is_dir():
        clean = [utils.read_audio(p, sr)[0] for p in utils.find_audio(corpus / "clean_train")[:60]]
        noise = [utils.read_audio(p, sr)[0] for p in utils.find_audio(corpus / "noise_train")[:20]]
        clean, noise = [x for x in clean if len(x) >= need], [x for x in noise if len(x) >= need]
        if clean and noise:
            return clean, noise, f"real audio from {corpus}"
    clean = [0.1 * rng.standard_normal(4 * need).astype(np.float32) for _ in range(10)]
    noise = [0.1 * rng.standard_normal(4 * need).astype(np.float32) for _ in range(5)]
    return clean, noise, "synthetic noise (corpus not found)"


def make_examples(folder: Path, n: int, seconds: float, sr: int, corpus: Path, seed: int = 0) -> str:
    """Writes n noisy/clean/noise wav triples and manifest_training.csv into folder."""
    rng = np.random.default_rng(seed)
    clean_src, noise_src, what = _sources(corpus, sr, seconds, rng)
    length = int(seconds * sr)
    rows = []
    for i in range(n):
        c, z = clean_src[i % len(clean_src)], noise_src[rng.integers(len(noise_src))]
        cs, zs = rng.integers(len(c) - length + 1), rng.integers(len(z) - length + 1)
        clean, noise = c[cs : cs + length], z[zs : zs + length]
        snr = float(rng.choice([-5, 0, 5, 10, 15]))
        noise = noise * np.sqrt(np.sum(clean**2) / (np.sum(noise**2) * 10 ** (snr / 10)))
        rel = {
            "clean": f"CleanSpeech_training/clnsp{i}.wav",
            "noise": f"Noise_training/noisy{i}_SNRdb_{snr:g}.wav",
            "noisy": f"NoisySpeech_training/noisy{i}_SNRdb_{snr:g}_clnsp{i}.wav",
        }
        for key, x in (("clean", clean), ("noise", noise), ("noisy", clean + noise)):
            (folder / rel[key]).parent.mkdir(parents=True, exist_ok=True)
            utils.write_audio(folder / rel[key], x.astype(np.float32), sr)
        rows.append({"index": i, **rel, "snr_db": f"{snr:g}", "clean_source": "", "clean_start_s": cs / sr})
        rows[-1].update({"noise_source": "", "noise_start_s": zs / sr, "gain": 1.0})
    with open(folder / "manifest_training.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return what


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up (TF traces, FFT plans)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _istft_add_at(X: np.ndarray, p: spectral.StftParams) -> np.ndarray:
    """The previous np.add.at overlap-add, kept here only to report the speed-up."""
    t, w = X.shape[-2], spectral.window(p)
    frames = np.fft.irfft(X, n=p.n_fft, axis=-1)[..., : p.win_length] * w
    total = p.pad_front + t * p.hop
    out, norm = np.zeros(total), np.zeros(total)
    for i in range(p.win_length // p.hop + 1):
        seg = frames[:, i * p.hop : (i + 1) * p.hop]
        idx = (np.arange(t)[:, None] * p.hop + i * p.hop + np.arange(seg.shape[-1])[None, :]).reshape(-1)
        np.add.at(out, idx, seg.reshape(-1))
        np.add.at(norm, idx, np.tile(w[i * p.hop : i * p.hop + seg.shape[-1]] ** 2, t))
    return (out / np.maximum(norm, 1e-8))[p.pad_front :].astype(np.float32)


def bench_transform(p: spectral.StftParams, seconds: float, repeats: int) -> None:
    x = np.random.default_rng(1).standard_normal(int(seconds * p.sample_rate)).astype(np.float32)
    X = spectral.stft(x, p)
    figures = {
        "numpy stft": _median_time(lambda: spectral.stft(x, p), repeats),
        "numpy istft": _median_time(lambda: spectral.istft(X, p, len(x)), repeats),
        "numpy istft (old np.add.at)": _median_time(lambda: _istft_add_at(X, p), repeats),
        "numpy features": _median_time(lambda: spectral.features(X, spectral.FeatureParams(), p), repeats),
    }
    utils.quiet_tensorflow()
    import tensorflow as tf

    xt, Xt = tf.constant(x), tf.constant(X)
    stft_fn = tf.function(lambda v: spectral_tf.stft_tf(v, p))
    istft_fn = tf.function(lambda v: spectral_tf.istft_tf(v, p, len(x)))
    figures["TF stft (tf.function, CPU)"] = _median_time(lambda: stft_fn(xt).numpy(), repeats)
    figures["TF istft (tf.function, CPU)"] = _median_time(lambda: istft_fn(Xt).numpy(), repeats)
    print(f"\n{seconds:g}-s clip ({len(x)} samples -> {X.shape[0]} x {X.shape[1]}), median of {repeats}:")
    for name, sec in figures.items():
        print(f"  {name:30s} {sec * 1e3:8.3f} ms")


def bench_cache(args, tmp: Path) -> None:
    data = tmp / "data"
    t = time.perf_counter()
    what = make_examples(data, args.examples, args.seconds, args.sample_rate, args.corpus)
    took = time.perf_counter() - t
    print(f"generated {args.examples} x {args.seconds:g}-s examples ({what}) in {took:.1f} s")
    for workers in args.workers:
        overrides = [*args.overrides, f"paths.data_dir={data}", f"paths.stft_dir={tmp / f'w{workers}'}"]
        cfg = utils.load_config(args.config, overrides)
        t = time.perf_counter()
        folder = STFT.build_cache(cfg, "training", workers=workers)
        build = time.perf_counter() - t
        t = time.perf_counter()
        STFT.build_cache(cfg, "training", workers=workers)
        noop = time.perf_counter() - t
        cache = stft_cache.load_cache(folder)
        t = time.perf_counter()
        for i in range(len(cache)):
            cache.example(i)
        read = time.perf_counter() - t
        m = cache.meta
        print(
            f"workers={workers}: {len(cache) / build:7.1f} examples/s cached ({build:.2f} s), "
            f"{m['bytes_per_example']:,.0f} bytes per example (noisy + clean, "
            f"{300 * 257 * 8 * 2:,} for 300 frames), up-to-date re-run {noop * 1e3:.0f} ms, "
            f"reading {len(cache) / read:,.0f} examples/s"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    utils.add_config_args(parser)
    parser.add_argument("--examples", type=int, default=200, help="noisy/clean pairs to cache (default 200)")
    parser.add_argument("--seconds", type=float, default=3.0, help="example length (default 3)")
    parser.add_argument(
        "--workers", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2], help="e.g. 1,2"
    )
    parser.add_argument("--corpus", type=Path, default=CORPUS, help=f"real audio (default {CORPUS})")
    parser.add_argument("--repeats", type=int, default=50, help="timing repeats for one clip (default 50)")
    args = parser.parse_args(argv)
    cfg = utils.config_from_args(args)
    p = spectral.StftParams.from_config(cfg)
    args.sample_rate = p.sample_rate
    with tempfile.TemporaryDirectory(prefix="bench_stft_") as tmp:
        bench_cache(args, Path(tmp))
    bench_transform(p, args.seconds, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
