"""Speech-enhancement metrics on waveforms: SDR, SI-SDR, SNR(i), PESQ, STOI.

Every metric compares an estimate with the TRUE clean reference (docs/design.md section 4). Pairwise
functions take `(reference, estimate)` (BSS Eval order); signals are aligned 1-D float arrays.
`score` computes several at once, trims to the common length and never raises for one bad file:
a metric that fails is recorded as NaN together with the reason.

This module imports no TensorFlow: it runs in the scoring worker processes of evaluate.py.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

import utils

ALL_METRICS = ("sdr", "si_sdr", "snr", "pesq", "stoi")
# Columns `score` fills: the requested metrics plus snri when a noisy input is given.
PESQ_RATE = 16000
SDR_FILTER_LENGTH = 512  # BSS Eval v3 / mir_eval default: distortion filter of 512 taps


class MetricError(ValueError):
    """A metric that cannot be computed for this pair of signals (the message says why)."""


def _as_1d(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D signal, got shape {x.shape}")
    return x


def _check(reference: np.ndarray, estimate: np.ndarray) -> None:
    if reference.shape != estimate.shape:
        raise MetricError(f"length mismatch ({reference.size} vs {estimate.size} samples)")
    if reference.size == 0:
        raise MetricError("empty signal")
    if not np.all(np.isfinite(estimate)):
        raise MetricError("estimate contains NaN or Inf")
    if not np.any(reference):
        raise MetricError("reference is silent (all zeros)")


def _db(num: float, den: float) -> float:
    """10 log10(num / den); +inf for an exact estimate (den 0), -inf for no target (num 0); 0 / 0 has no
    value and raises (it used to give +inf, a perfect score for a silent estimate)."""
    if num <= 0 and den <= 0:
        raise MetricError("0 / 0 energy ratio (silent target and error)")
    if den <= 0:
        return math.inf
    if num <= 0:
        return -math.inf
    return 10.0 * math.log10(num / den)


# ----------------------------------------------------------------------------- energy ratios


def sdr(reference, estimate, filter_length: int = SDR_FILTER_LENGTH) -> float:
    """Signal-to-distortion ratio in dB, BSS Eval `bss_eval_sources` definition (single source).

    The estimate is split as s_target + e_distortion where s_target is its least-squares projection on
    the reference filtered by any FIR filter of `filter_length` (512) taps (time-invariant gains and
    short filters are allowed distortions); SDR = 10 log10(|s_target|^2 / |e|^2). No zero-mean, no
    rescaling: identical to mir_eval.separation.bss_eval_sources (checked in tests/test_metrics.py),
    computed with fast_bss_eval in float64; +inf for an exact estimate.
    Ref: Vincent, Gribonval, Fevotte, "Performance measurement in blind audio source separation",
    IEEE TASLP 14(4), 2006; Scheibler, "SDR - medium rare with fast computations", ICASSP 2022.
    """
    import fast_bss_eval  # imported lazily: only scoring pays for it

    s, x = _as_1d(reference, "reference"), _as_1d(estimate, "estimate")
    _check(s, x)
    if not np.any(x):
        raise MetricError("estimate is silent (all zeros)")
    # sdr_loss without permutation search: one source, and +inf (exact estimate) stays representable
    with np.errstate(divide="ignore"):
        value = -float(fast_bss_eval.sdr_loss(x, s, filter_length=filter_length, pairwise=False))
    if math.isnan(value):
        raise MetricError("SDR is NaN (degenerate signals)")
    return value


def si_sdr(reference, estimate, zero_mean: bool = True) -> float:
    """Scale-invariant SDR in dB (Le Roux, Wisdom, Erdogan, Hershey, "SDR - half-baked or well
    done?", ICASSP 2019).

    After removing the means: alpha = <x, s> / |s|^2, target = alpha s, e = x - target,
    SI-SDR = 10 log10(|target|^2 / |e|^2). Invariant to any non-zero scaling of the estimate; a silent
    (all-zero, or constant with zero_mean) estimate has no scale to undo and raises MetricError.
    """
    s, x = _as_1d(reference, "reference"), _as_1d(estimate, "estimate")
    _check(s, x)
    if zero_mean:
        s, x = s - s.mean(), x - x.mean()
    ss = float(np.dot(s, s))
    if ss == 0:
        raise MetricError("reference is constant")
    if not np.any(x):
        raise MetricError(
            "estimate is silent (all zeros" + (" after removing the mean)" if zero_mean else ")")
        )
    target = (np.dot(x, s) / ss) * s
    return _db(float(np.dot(target, target)), float(np.sum((x - target) ** 2)))


def snr(reference, estimate) -> float:
    """SNR(x, s) = 10 log10(sum s^2 / sum (s - x)^2) in dB, x = estimate, s = reference.

    Plain (not scale-invariant): a gain error counts as noise. +inf when x == s exactly; a silent
    estimate scores 0 dB (all of s is error), by definition.
    """
    s, x = _as_1d(reference, "reference"), _as_1d(estimate, "estimate")
    _check(s, x)
    return _db(float(np.dot(s, s)), float(np.sum((s - x) ** 2)))


def snri(reference, estimate, noisy) -> float:
    """SNR improvement in dB: SNR(s_hat, s) - SNR(noisy, s); 0 for the identity (s_hat = noisy)."""
    return snr(reference, estimate) - snr(reference, noisy)


# ----------------------------------------------------------------------------- perceptual


def pesq_wb(reference, estimate, sr: int = PESQ_RATE) -> float:
    """Wide-band PESQ (ITU-T P.862.2) MOS-LQO, about 1.0..4.64, via the `pesq` package.

    Defined at 16 kHz: other rates are resampled (soxr) first. The package normalises both signals
    by their common peak. Raises MetricError for PESQ's own failures (no utterance detected, buffer
    too short). Ref: ITU-T Rec. P.862.2 (2007); Rix et al., ICASSP 2001.
    """
    from pesq import PesqError, pesq

    s, x = _as_1d(reference, "reference"), _as_1d(estimate, "estimate")
    _check(s, x)
    if sr != PESQ_RATE:
        s, x = utils.resample(s, sr, PESQ_RATE), utils.resample(x, sr, PESQ_RATE)
    if not np.any(x):
        raise MetricError("estimate is silent (all zeros)")
    try:
        value = float(pesq(PESQ_RATE, s, x, "wb"))
    except PesqError as e:  # NoUtterancesError, BufferTooShortError, ...
        raise MetricError(f"PESQ {type(e).__name__}: {e}") from e
    if not math.isfinite(value):
        raise MetricError("PESQ is not finite")
    return value


def stoi(reference, estimate, sr: int = 16000) -> float:
    """Short-time objective intelligibility, 0..1 (Taal, Hendriks, Heusdens, Jensen, IEEE TASLP
    19(7), 2011), via `pystoi` with extended=False (pystoi resamples to 10 kHz itself).

    pystoi returns 1e-5 with a warning when fewer than 30 non-silent frames remain (too short or
    too quiet); that is reported as a failure rather than a score.
    """
    from pystoi import stoi as _stoi

    s, x = _as_1d(reference, "reference"), _as_1d(estimate, "estimate")
    _check(s, x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(_stoi(s, x, sr, extended=False))
    for w in caught:
        if "Not enough STFT frames" in str(w.message):
            raise MetricError("STOI: fewer than 30 non-silent frames (signal too short or silent)")
    if not math.isfinite(value):
        raise MetricError("STOI is not finite")
    return value


# ----------------------------------------------------------------------------- all at once


def _reason(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return text if isinstance(e, MetricError) else f"{type(e).__name__}: {text}"[:200]


def score(
    clean, estimate, noisy=None, sr: int = 16000, metrics=ALL_METRICS
) -> tuple[dict[str, float], dict[str, str]]:
    """Scores `estimate` against `clean`; returns (values, failures).

    values has one float per requested metric (NaN when it failed) plus "snri" when "snr" is
    requested and `noisy` is given; failures maps each failed metric to its reason. All signals are
    trimmed to their common length. Unknown metric names raise ValueError (a caller bug).
    """
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {ALL_METRICS}")
    signals = [_as_1d(clean, "clean"), _as_1d(estimate, "estimate")]
    if noisy is not None:
        signals.append(_as_1d(noisy, "noisy"))
    n = min(x.size for x in signals)
    s, x = signals[0][:n], signals[1][:n]
    v = signals[2][:n] if noisy is not None else None

    funcs = {
        "sdr": lambda: sdr(s, x),
        "si_sdr": lambda: si_sdr(s, x),
        "snr": lambda: snr(s, x),
        "pesq": lambda: pesq_wb(s, x, sr),
        "stoi": lambda: stoi(s, x, sr),
    }
    values: dict[str, float] = {}
    failures: dict[str, str] = {}
    for name in metrics:
        try:
            values[name] = float(funcs[name]())
        except Exception as e:  # one metric on one file must never stop an evaluation
            values[name], failures[name] = math.nan, _reason(e)
    if "snr" in metrics and v is not None:
        if name_failed := failures.get("snr"):
            values["snri"], failures["snri"] = math.nan, name_failed
        else:
            try:
                values["snri"] = values["snr"] - snr(s, v)
            except Exception as e:
                values["snri"], failures["snri"] = math.nan, f"noisy input: {_reason(e)}"
    return values, failures


def metric_names(metrics=ALL_METRICS, with_noisy: bool = True) -> list[str]:
    """The value keys `score` returns for these metrics, in a stable order (for CSV columns)."""
    names = [m for m in ALL_METRICS if m in metrics]
    if with_noisy and "snr" in names:
        names.insert(names.index("snr") + 1, "snri")
    return names
