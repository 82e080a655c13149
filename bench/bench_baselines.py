"""Real-time factors of the shipped model beside the baselines, on ONE CPU core, same input.

    PYTHONPATH=... nice .venv/bin/python bench/bench_baselines.py [--model pretrained] [--seconds 60]

The process pins itself to one core (TensorFlow 1 intra- and 1 inter-op thread) and enhances the same
--seconds of 16-kHz audio (a real clean_test file in noise_test noise when ../shared/corpus exists, else a
synthetic stand-in) with: the model offline (Enhancer, chunked whole-file path), the model streaming
(10-ms chunks through Enhancer.stream() with each --engine: the Keras step, the TFLite float32 step
(the default) and the int8 one, converted once beforehand and cached beside the weights), what
`enhance.py --streaming` does to a file (read, 10-ms blocks, write: Enhancer.enhance_file), and every
installed baseline of evaluate.py
(`make peers`) exactly as evaluate.py runs it (16 kHz -> native rate -> 16 kHz included: that is the
cost of using it on 16-kHz audio). Real-time factor = wall time / audio duration (< 1: faster than real
time). Each system runs twice and the faster time is kept (the first run includes warm-up). For the
streaming engines the time of every process() call (one 10-ms hop) is also kept: mean, p50 and p99
in ms per hop (the whole-file systems get their mean only). The ratios against DeepFilterNet3 are
the figures to quote from a busy machine: every system runs in the same process, one after another.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import utils  # noqa: E402

SR = 16000
CORPUS = ROOT.parent / "shared" / "corpus"


def bench_signal(seconds: float) -> tuple[np.ndarray, str]:
    n = int(seconds * SR)
    files = {s: sorted((CORPUS / s).glob("*.flac")) for s in ("clean_test", "noise_test")}
    if all(files.values()):
        clean = np.concatenate([utils.read_audio(f, SR)[0] for f in files["clean_test"][:40]])
        noise = np.concatenate([utils.read_audio(f, SR)[0] for f in files["noise_test"][:10]])
        if len(clean) >= n and len(noise) >= n:
            return (clean[:n] + 0.5 * noise[:n]).astype(np.float32), "shared corpus speech + noise"
    from data.demo_corpus import harmonic_speech

    rng = np.random.default_rng(0)
    return (harmonic_speech(seconds, 0) + 0.02 * rng.standard_normal(n)).astype(np.float32), "synthetic"


def best_of_two(fn) -> float:
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=utils.PRETRAINED_DIR)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    utils.quiet_tensorflow()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import enhance
    import evaluate

    x, source = bench_signal(args.seconds)
    engines = {
        e: enhance.Enhancer.from_pretrained(args.model, engine=e) for e in ("keras", "tflite", "tflite-int8")
    }
    enh = engines["keras"]
    for e in engines.values():  # converted on first use (cached beside the weights): not timed
        if e.engine != "keras":
            e.step_path()

    hop_times: dict[str, np.ndarray] = {}

    def stream(name, e):
        s, times = e.stream(), []
        for i in range(0, len(x), 160):
            t0 = time.perf_counter()
            s.process(x[i : i + 160])
            times.append(time.perf_counter() - t0)
        s.flush()
        hop_times[name] = np.array(times)

    tmp = Path(tempfile.mkdtemp(prefix="bench_baselines_"))
    sf.write(tmp / "in.wav", x, SR, subtype="PCM_16")

    def cli(e):  # what enhance.py --streaming does per file: read, stream in 10-ms blocks, write
        e.enhance_file(tmp / "in.wav", tmp / "out" / "in.wav", streaming=True)

    systems = {"model offline (Keras, whole-file blocks)": lambda: enh(x, SR)}
    names = {"keras": "model streaming, Keras step", "tflite": "model streaming, TFLite float32 (default)",
             "tflite-int8": "model streaming, TFLite int8 (--engine tflite-int8)"}  # fmt: skip
    for engine, e in engines.items():
        systems[names[engine]] = lambda n=names[engine], e=e: stream(n, e)
    systems["enhance.py --streaming file (TFLite float32, incl. file I/O)"] = lambda: cli(engines["tflite"])
    for name in evaluate.BASELINE_ADAPTERS:
        reason = evaluate.baseline_available(name)
        if reason:
            print(f"{name}: {reason}; skipped", file=sys.stderr)
            continue
        systems[name] = lambda name=name: evaluate.run_baseline(name, x, SR)
    load = os.getloadavg()[0]
    rtf = {name: best_of_two(fn) / args.seconds for name, fn in systems.items()}
    ref = rtf.get("deepfilternet")
    print(f"{args.seconds:g} s of {source}, one core, load average {load:.2f} -> {os.getloadavg()[0]:.2f}\n")
    print("| system | real-time factor | x faster than DeepFilterNet3 | ms per 10-ms hop: mean / p50 / p99 |")
    print("|---|---|---|---|")
    for name, r in rtf.items():
        ratio = f"{ref / r:.1f}x" if ref else "n/a"
        if name in hop_times:  # the second (warm) run's per-call times: process() of one 10-ms block
            t = 1e3 * hop_times[name]
            hops = f"{t.mean():.3f} / {np.percentile(t, 50):.3f} / {np.percentile(t, 99):.3f}"
        else:
            hops = f"{10 * r:.3f} / (whole file) / (whole file)"
        print(f"| {name} | {r:.4f} | {ratio} | {hops} |", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
