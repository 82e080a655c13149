"""Benchmarks enhance.py / export.py on ONE CPU core: real-time factors, per-frame latency, peak memory.

    nice .venv/bin/python bench/bench_enhance.py [--model cp/NAME/best] [--seconds 60] [--long-minutes 10]
    nice .venv/bin/python bench/bench_enhance.py --streaming-only      # the TFLite streaming rows only

Every measurement runs in a fresh process pinned to one core (sched_setaffinity) with TensorFlow set to
1 intra-op and 1 inter-op thread and LiteRT to 1 thread:
  offline Keras      enhance_file on a --seconds file: chunked ([enhance] chunk_seconds), state carried
  streaming Keras    model.StreamingMask frame by frame: one process() call per 10-ms block of input
  streaming TFLite   the exported step (float32 and dynamic-range int8) through LiteRT, frame by frame
For streaming, the per-frame latency is the wall time of each 10-ms process() call (STFT, features,
network step, complex product, overlap-add): p50 / p99 / max. Real-time factor = processing time /
audio duration (< 1 is faster than real time). A second TFLite pass times interpreter.invoke() apart:
the network alone versus the rest of the frame (STFT, features, tensor I/O, product, iSTFT). The load
average is printed beside the timings: other processes on the machine slow a one-core figure down.
Peak memory: ru_maxrss of a fresh process that enhances a --long-minutes file offline (Keras, and the
TFLite runner, which never imports TensorFlow), next to one that only imports TensorFlow, one that only
loads the model and one that enhances the --seconds file; the growth between the two lengths is
extrapolated linearly to a 1-hour file and printed as such (--long-minutes 60 measures it instead).
Without --model the config's model is built with untrained weights (same cost as trained ones).
Quantization cost on real audio: --mixtures noisy clips mixed here from <corpus>/clean_test and
noise_test at 0 and 5 dB (synthetic stand-ins, said so, when the corpus is absent), enhanced by the
float32 and the int8 TFLite export: mean SI-SDR against the clean speech for each and the difference
(meaningful for quality only with a trained --model). Last, one met/missed line per target: streaming
TFLite real-time factor <= 0.01, p99 per-frame time < 1 ms, peak memory for a 1-hour file < 500 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import utils  # noqa: E402
from data.demo_corpus import harmonic_speech  # noqa: E402

SR = 16000
CORPUS = ROOT.parent / "shared" / "corpus"
TARGETS = {"rtf": 0.01, "p99_ms": 1.0, "hour_mb": 500.0}


def _noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.convolve(rng.standard_normal(int(seconds * SR)), np.ones(4) / 4, mode="same").astype(np.float32)


def _signal(seconds: float, seed: int) -> np.ndarray:
    return (harmonic_speech(seconds, seed) + 0.05 * _noise(seconds, seed + 1)).astype(np.float32)


def _mixtures(corpus: Path, count: int, seed: int = 0) -> tuple[list, str]:
    """[(clean, noisy, snr_db)] at 16 kHz: clean_test x noise_test at 0 / 5 dB, or synthetic stand-ins.

    Plain mixing (no data_prep): a random noise segment (tiled if short) scaled to the SNR, noisy = clean
    + noise, both scaled down together if the mix would clip.
    """
    rng = np.random.default_rng(seed)
    real = (corpus / "clean_test").is_dir() and (corpus / "noise_test").is_dir()
    if real:
        cleans = sorted(p for p in (corpus / "clean_test").iterdir() if p.suffix in (".flac", ".wav"))
        noises = sorted(p for p in (corpus / "noise_test").iterdir() if p.suffix in (".flac", ".wav"))
        cleans = [cleans[i] for i in sorted(rng.choice(len(cleans), min(count, len(cleans)), replace=False))]
        pairs = [(utils.read_audio(c, SR)[0], utils.read_audio(noises[i % len(noises)], SR)[0])
                 for i, c in enumerate(cleans)]  # fmt: skip
        source = f"{len(pairs)} real mixtures: {corpus}/clean_test x noise_test"
    else:
        pairs = [(harmonic_speech(4.0, 100 + i), _noise(20.0, 200 + i)) for i in range(count)]
        source = f"{count} SYNTHETIC mixtures (no corpus at {corpus}: not a real-audio figure)"
    out = []
    for i, (clean, noise) in enumerate(pairs):
        snr = (0.0, 5.0)[i % 2]
        noise = np.tile(noise, -(-len(clean) // len(noise)) + 1)
        start = rng.integers(0, len(noise) - len(clean) + 1)
        noise = noise[start : start + len(clean)]
        noise = noise * np.sqrt(np.sum(clean**2) / np.sum(noise**2) / 10 ** (snr / 10))
        noisy = clean + noise
        gain = min(1.0, 0.99 / np.max(np.abs(noisy)))
        out.append(((gain * clean).astype(np.float32), (gain * noisy).astype(np.float32), snr))
    return out, source + ", SNR 0 / 5 dB"


def _write_long(path: Path, seconds: float) -> None:
    """Writes a long file block by block (the bench itself must not hold it in memory)."""
    import soundfile as sf

    with sf.SoundFile(str(path), "w", SR, 1, "FLOAT") as f:
        block = _signal(60.0, 1)
        left = int(seconds * SR)
        while left > 0:
            f.write(block[:left])
            left -= len(block)


# ----------------------------------------------------------------------------- worker (fresh process)


def _one_core(tensorflow: bool) -> None:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    if not tensorflow:  # the TFLite runners never import it
        return
    utils.quiet_tensorflow()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def _maxrss_mb() -> float:
    """Peak resident memory of this process (ru_maxrss, KiB on Linux) in MB.

    The driver never imports TensorFlow and starts each worker with exec, so the figure is the worker's
    own (Linux carries ru_maxrss across exec: a worker forked from a big parent would inherit its peak).
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _stream_timing(enhancer, x: np.ndarray) -> dict:
    stream = enhancer.stream()
    hop = enhancer.sp.hop
    for i in range(0, 50 * hop, hop):  # warm-up: tracing, allocations
        stream.process(x[i : i + hop])
    stream.reset()
    times = []
    started = time.perf_counter()
    for i in range(0, len(x), hop):
        t0 = time.perf_counter()
        stream.process(x[i : i + hop])
        times.append(time.perf_counter() - t0)
    stream.flush()
    total = time.perf_counter() - started
    ms = 1000 * np.array(times)
    return {"rtf": total / (len(x) / SR), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()), "frames": len(ms)}  # fmt: skip


def _invoke_split(enhancer, x: np.ndarray) -> dict:
    """A TFLite streaming pass with interpreter.invoke() timed apart: network vs the rest, per frame (ms)."""
    stream = enhancer.stream()
    interpreter, hop = stream.frames.runner.interpreter, enhancer.sp.hop
    invoke, spent = interpreter.invoke, []

    def timed_invoke():
        t0 = time.perf_counter()
        invoke()
        spent.append(time.perf_counter() - t0)

    interpreter.invoke = timed_invoke
    frames, network = [], []
    for i in range(0, len(x), hop):
        t0, n = time.perf_counter(), len(spent)
        stream.process(x[i : i + hop])
        frames.append(time.perf_counter() - t0)
        network.append(sum(spent[n:]))
    frames, network = 1000 * np.array(frames), 1000 * np.array(network)
    return {"invoke_p50_ms": float(np.percentile(network, 50)),
            "rest_p50_ms": float(np.percentile(frames - network, 50))}  # fmt: skip


def worker(args) -> dict:
    _one_core(tensorflow=args.worker not in ("stream_tflite", "stream_tflite_int8", "long_tflite", "quality"))
    import soundfile as sf

    import enhance

    if args.worker == "setup":  # untrained config model (if none given) and its export
        import export
        import model as M

        if not (args.model / "model.weights.h5").is_file():
            cfg = utils.config_from_args(args)
            M.save_trained(M.build_model(cfg), cfg, args.model)
        export.export(args.model, args.tflite, quantize=True)
        _, cfg = M.load_trained(args.model)
        s = M.summary(cfg)
        return {k: s[k] for k in ("architecture", "parameters", "macs_per_frame", "algorithmic_latency_ms")}
    if args.worker == "import_tf":  # _one_core imported TensorFlow: its own footprint
        return {"maxrss_mb": _maxrss_mb()}
    if args.worker == "load":
        enhance.Enhancer.from_pretrained(args.model)
        return {"maxrss_mb": _maxrss_mb()}
    if args.worker == "quality":  # SI-SDR of the float32 and int8 exports on the same mixtures
        import metrics

        mixes, source = _mixtures(args.corpus, args.mixtures)
        scores = {"noisy": [m[1] for m in mixes]}
        for kind, quantized in (("float32", False), ("int8", True)):
            enh = enhance.TFLiteEnhancer.from_export(args.tflite, quantized=quantized)
            scores[kind] = [enh(noisy) for _, noisy, _ in mixes]
        means = {
            k: float(np.mean([metrics.si_sdr(m[0], y) for m, y in zip(mixes, v)])) for k, v in scores.items()
        }
        return {"source": source, **means}
    if args.worker == "long_tflite":  # the TFLite runner needs no TensorFlow at all
        enh = enhance.TFLiteEnhancer.from_export(args.tflite)
        with tempfile.TemporaryDirectory() as out:
            r = enh.enhance_file(args.file, Path(out) / "out.wav", chunk_seconds=args.chunk_seconds)
        return {"rtf": r["rtf"], "seconds": r["seconds"], "maxrss_mb": _maxrss_mb()}
    if args.worker == "offline":
        enh = enhance.Enhancer.from_pretrained(args.model)
        with tempfile.TemporaryDirectory() as out:
            enh.enhance_file(args.file, Path(out) / "warm.wav", chunk_seconds=args.chunk_seconds)  # tracing
            r = enh.enhance_file(args.file, Path(out) / "out.wav", chunk_seconds=args.chunk_seconds)
        return {"rtf": r["rtf"], "seconds": r["seconds"], "maxrss_mb": _maxrss_mb()}
    if args.worker == "long":  # one cold pass: what a user running enhance.py on a long file sees
        enh = enhance.Enhancer.from_pretrained(args.model)
        with tempfile.TemporaryDirectory() as out:
            r = enh.enhance_file(args.file, Path(out) / "out.wav", chunk_seconds=args.chunk_seconds)
        return {"rtf": r["rtf"], "seconds": r["seconds"], "maxrss_mb": _maxrss_mb()}
    x, _ = sf.read(args.file, dtype="float32")
    if args.worker == "stream_keras":
        enh = enhance.Enhancer.from_pretrained(args.model)
    else:
        enh = enhance.TFLiteEnhancer.from_export(args.tflite, quantized=args.worker == "stream_tflite_int8")
        return {**_stream_timing(enh, x), **_invoke_split(enh, x), "maxrss_mb": _maxrss_mb()}
    return {**_stream_timing(enh, x), "maxrss_mb": _maxrss_mb()}


# ----------------------------------------------------------------------------- driver


def _run(mode: str, model: Path, file: Path, tflite: Path, chunk_seconds: float, extra=()) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--model", str(model), "--file", str(file),
           "--tflite", str(tflite), "--chunk-seconds", str(chunk_seconds), *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _hour_mb(short: dict, big: dict, args, chunk: float) -> tuple[float | None, str]:
    """Peak memory for a 1-hour file: measured (--long-minutes >= 60) or extrapolated linearly."""
    if args.long_minutes >= 60:
        return big["maxrss_mb"], "measured"
    if args.seconds < 2 * chunk:  # one chunk only: the growth per chunk is not seen
        return None, f"not extrapolated: needs --seconds >= 2 chunks = {2 * chunk:g} s"
    per_min = (big["maxrss_mb"] - short["maxrss_mb"]) / max(args.long_minutes - args.seconds / 60, 1e-9)
    hour = big["maxrss_mb"] + max(per_min, 0.0) * max(60 - args.long_minutes, 0)
    return hour, (f"extrapolated linearly (not measured) from {args.seconds:g} s and {args.long_minutes:g} "
                  f"min, {per_min:+.2f} MB/min")  # fmt: skip


def _verdict(what: str, value: float | None, op: str, target: float, unit: str = "") -> None:
    if value is None:
        print(f"  {what} {op} {target:g}{unit}: unknown (not measured)")
        return
    met = value <= target if op == "<=" else value < target
    print(f"  {what} {op} {target:g}{unit}: {'met' if met else 'MISSED'} ({value:.4g}{unit})")


def _streaming_verdicts(timing: dict) -> None:
    for kind, mode in (("float32", "stream_tflite"), ("int8", "stream_tflite_int8")):
        r = timing[mode]
        _verdict(f"streaming TFLite {kind} real-time factor", r["rtf"], "<=", TARGETS["rtf"])
        _verdict(f"streaming TFLite {kind} p99 frame time", r["p99_ms"], "<", TARGETS["p99_ms"], " ms")


def _load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg()) + f" (1 / 5 / 15 min, {os.cpu_count()} cores)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="model folder (default: untrained config model)"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="file length for the real-time factors")
    parser.add_argument("--long-minutes", type=float, default=10.0, help="file length for the memory figure")
    parser.add_argument("--chunk-seconds", type=float, default=None, help="default: [enhance] chunk_seconds")
    parser.add_argument(
        "--corpus", type=Path, default=CORPUS, help=f"for the SI-SDR mixtures (default {CORPUS})"
    )
    parser.add_argument("--mixtures", type=int, default=10, help="mixtures for the int8-vs-float32 SI-SDR")
    parser.add_argument(
        "--streaming-only",
        action="store_true",
        help="only the streaming TFLite rows and their targets (no offline, memory or SI-SDR runs)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tflite", type=Path, default=None, help=argparse.SUPPRESS)
    utils.add_config_args(parser)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    cfg = utils.config_from_args(args)
    chunk = args.chunk_seconds or cfg.getfloat("enhance", "chunk_seconds", fallback=30.0)
    with tempfile.TemporaryDirectory(prefix="bench_enhance_") as tmp:
        tmp = Path(tmp)
        model_dir = args.model or tmp / "model"
        exported = tmp / "exported"
        sets = [f"--config={args.config}"] + [f"--set={o}" for o in args.overrides]
        info = _run("setup", model_dir, tmp, exported, chunk, sets)
        origin = args.model or f"{args.config} (UNTRAINED weights: same cost as trained ones)"
        print(f"model: {info['architecture']}, {info['parameters']:,} parameters, "
              f"{info['macs_per_frame'] / 1e6:.2f} M multiply-adds per 10-ms frame, algorithmic latency "
              f"{info['algorithmic_latency_ms']:.0f} ms; from {origin}")  # fmt: skip
        short, long = tmp / "short.wav", tmp / "long.wav"
        _write_long(short, args.seconds)
        print(
            f"one core of {os.cpu_count()}, 1 TF intra/inter-op thread, 1 LiteRT thread, a fresh process each"
        )

        rows = [("offline Keras (chunked)", "offline"), ("streaming Keras", "stream_keras"),
                ("streaming TFLite float32", "stream_tflite"),
                ("streaming TFLite int8", "stream_tflite_int8")]  # fmt: skip
        if args.streaming_only:
            rows = rows[2:]
        timing = {}
        print(f"load average before: {_load()}")
        print(f"\n{args.seconds:g}-s file          real-time factor   per-frame p50 / p99 / max (ms)")
        for label, mode in rows:
            r = timing[mode] = _run(mode, model_dir, short, exported, chunk)
            lat = f"{r['p50_ms']:.3f} / {r['p99_ms']:.3f} / {r['max_ms']:.3f}" if "p50_ms" in r else "-"
            print(f"{label:<26} {r['rtf']:>8.4f}          {lat}")
        print("\nTFLite per-frame p50 split (second pass, invoke timed apart):")
        for label, mode in rows[-2:]:
            r = timing[mode]
            print(f"  {label[10:]:<15} network invoke {r['invoke_p50_ms']:.3f} ms, rest of the frame (STFT, "
                  f"features, tensor I/O, product, iSTFT) {r['rest_p50_ms']:.3f} ms")  # fmt: skip
        print(f"load average after: {_load()}")
        if args.streaming_only:
            print("\ntargets:")
            _streaming_verdicts(timing)
            return 0

        tf_only = _run("import_tf", model_dir, short, exported, chunk)
        base = _run("load", model_dir, short, exported, chunk)
        one = _run("long", model_dir, short, exported, chunk)
        lite_one = _run("long_tflite", model_dir, short, exported, chunk)
        _write_long(long, 60 * args.long_minutes)
        big = _run("long", model_dir, long, exported, chunk)
        lite = _run("long_tflite", model_dir, long, exported, chunk)
        hour = {
            "Keras": _hour_mb(one, big, args, chunk),
            "TFLite float32": _hour_mb(lite_one, lite, args, chunk),
        }
        print(f"\npeak memory (ru_maxrss of the worker), offline, chunk {chunk:g} s:")
        print(f"  TensorFlow imported, nothing else: {tf_only['maxrss_mb']:.0f} MB")
        print(f"  Keras, model loaded, nothing processed: {base['maxrss_mb']:.0f} MB")
        print(f"  Keras, {args.seconds:g}-s file:  {one['maxrss_mb']:.0f} MB")
        print(f"  Keras, {args.long_minutes:g}-min file: {big['maxrss_mb']:.0f} MB "
              f"(real-time factor {big['rtf']:.4f}, {big['seconds']:.0f} s)")  # fmt: skip
        print(f"  TFLite float32 (no TensorFlow), {args.seconds:g}-s / {args.long_minutes:g}-min file: "
              f"{lite_one['maxrss_mb']:.0f} / {lite['maxrss_mb']:.0f} MB "
              f"(real-time factor {lite['rtf']:.4f})")  # fmt: skip
        for name, (mb, how) in hour.items():
            figure = "" if mb is None else f"{mb:.0f} MB, " if how == "measured" else f"~{mb:.0f} MB, "
            print(f"  {name}, 1-hour file: {figure}{how}")

        q = _run(
            "quality",
            model_dir,
            short,
            exported,
            chunk,
            [f"--corpus={args.corpus}", f"--mixtures={args.mixtures}"],
        )
        print(f"\nSI-SDR vs clean, mean over {q['source']}:")
        if not args.model:
            print(
                "  (UNTRAINED default model: only the int8 - float32 difference means anything; use --model)"
            )
        print(f"  noisy input     {q['noisy']:7.2f} dB")
        for kind in ("float32", "int8"):
            print(f"  TFLite {kind:<8} {q[kind]:7.2f} dB  ({q[kind] - q['noisy']:+.2f} dB over noisy)")
        print(f"  int8 - float32  {q['int8'] - q['float32']:+7.3f} dB")

        print("\ntargets:")
        _streaming_verdicts(timing)
        for name, (mb, _) in hour.items():
            _verdict(f"peak memory, 1-hour file, offline {name}", mb, "<", TARGETS["hour_mb"], " MB")
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
