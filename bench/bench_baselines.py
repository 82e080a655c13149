"""Real-time factors of the shipped model beside the baselines, on ONE CPU core, same input.

    PYTHONPATH=... nice .venv/bin/python bench/bench_baselines.py [--model pretrained] [--seconds 60]

The process pins itself to one core (TensorFlow 1 intra- and 1 inter-op thread) and enhances the same
--seconds of 16-kHz audio (a real clean_test file in noise_test noise when ../shared/corpus exists, else a
synthetic stand-in) with: the model offline (Enhancer, chunked whole-file path), the model streaming
(10-ms chunks through Enhancer.stream: the Keras step, and the TFLite float32 export through LiteRT,
exported to a temp folder here), and every installed baseline of evaluate.py
(`make peers`) exactly as evaluate.py runs it (16 kHz -> native rate -> 16 kHz included: that is the
cost of using it on 16-kHz audio). Real-time factor = wall time / audio duration (< 1: faster than real
time). Each system runs twice and the faster time is kept (the first run includes warm-up).
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
    import export

    x, source = bench_signal(args.seconds)
    enh = enhance.Enhancer.from_pretrained(args.model)

    tflite_dir = Path(tempfile.mkdtemp(prefix="bench_baselines_"))
    export.export(args.model, tflite_dir)
    lite = export.TFLiteEnhancer.from_export(tflite_dir)

    def stream(e):
        s = e.stream(aligned=True)
        for i in range(0, len(x), 160):
            s.process(x[i : i + 160])
        s.flush()

    systems = {
        "model offline (Keras)": lambda: enh(x, SR),
        "model streaming (Keras, 10-ms chunks)": lambda: stream(enh),
        "model streaming (TFLite float32, 10-ms chunks)": lambda: stream(lite),
    }
    for name in evaluate.BASELINE_ADAPTERS:
        reason = evaluate.baseline_available(name)
        if reason:
            print(f"{name}: {reason}; skipped", file=sys.stderr)
            continue
        systems[name] = lambda name=name: evaluate.run_baseline(name, x, SR)
    print(f"{args.seconds:g} s of {source}, one core, load average {os.getloadavg()[0]:.2f}\n")
    print("| system | real-time factor |\n|---|---|")
    for name, fn in systems.items():
        print(f"| {name} | {best_of_two(fn) / args.seconds:.4f} |", flush=True)
    shutil.rmtree(tflite_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
