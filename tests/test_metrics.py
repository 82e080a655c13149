"""metrics.py: definitions checked against references, closed forms and failure handling."""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest
from conftest import CORPUS, noise_like, requires_corpus, speech_like

import metrics
import utils


def _mixture(seed: int, seconds: float = 1.5):
    """A reference and a distorted estimate: filtered copy + noise + a little clipping."""
    rng = np.random.default_rng(seed)
    s = speech_like(seconds, seed).astype(np.float64)
    n = noise_like(seconds, seed + 100).astype(np.float64)
    h = rng.standard_normal(40) * np.exp(-np.arange(40) / 8)
    est = np.convolve(s, h, mode="full")[: s.size] + rng.uniform(0.2, 1.0) * n
    return s, np.clip(est, -0.25, 0.25)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sdr_matches_mir_eval_bss_eval_sources(seed):
    import mir_eval

    s, est = _mixture(seed, seconds=1.0 + 0.5 * seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mir_eval 0.8 deprecates bss_eval_sources (still the reference)
        ref_sdr = mir_eval.separation.bss_eval_sources(s[None], est[None])[0][0]
    assert metrics.sdr(s, est) == pytest.approx(ref_sdr, abs=0.05)
    # float32 inputs are promoted to float64 inside: same value
    assert metrics.sdr(s.astype(np.float32), est.astype(np.float32)) == pytest.approx(ref_sdr, abs=0.05)


def test_sdr_allows_short_filters_but_not_noise():
    s, _ = _mixture(3)
    h = np.zeros(200)
    h[[0, 120, 199]] = [0.6, 0.5, -0.3]  # echoes within the 512-tap filter: an allowed distortion for SDR
    filtered = np.convolve(s, h, mode="full")[: s.size]
    assert metrics.sdr(s, filtered) > 60
    assert metrics.si_sdr(s, filtered) < 20  # SI-SDR only forgives a gain


def _orthogonal_pair(rng, n=16000, ratio_db=7.0):
    s = rng.standard_normal(n)
    s -= s.mean()
    e = rng.standard_normal(n)
    e -= e.mean()
    e -= (e @ s) / (s @ s) * s  # orthogonal to s, still zero-mean
    e *= np.linalg.norm(s) / np.linalg.norm(e) * 10 ** (-ratio_db / 20)
    return s, e


def test_si_sdr_closed_form_and_scale_invariance(rng):
    s, e = _orthogonal_pair(rng)
    expected = 10 * math.log10((s @ s) / (e @ e))
    assert expected == pytest.approx(7.0)
    assert metrics.si_sdr(s, s + e) == pytest.approx(expected, abs=1e-6)
    for gain in (3.7, 0.01, -2.0):
        assert metrics.si_sdr(s, gain * (s + e)) == pytest.approx(expected, abs=1e-6)
    # zero-mean: a DC offset in the estimate does not count
    assert metrics.si_sdr(s, s + e + 0.5) == pytest.approx(expected, abs=1e-6)
    # agrees with fast_bss_eval's own SI-SDR (its numpy backend: the top-level one needs torch)
    import fast_bss_eval.numpy as fbe

    noisy = s + rng.standard_normal(s.size)
    assert metrics.si_sdr(s, noisy) == pytest.approx(
        float(fbe.si_sdr(s[None], noisy[None], zero_mean=True)[0])
    )


def test_snr_and_snri_definitions(rng):
    s = rng.standard_normal(8000)
    n = rng.standard_normal(8000)
    assert metrics.snr(s, s + n) == pytest.approx(10 * math.log10((s @ s) / (n @ n)))
    assert metrics.snri(s, s + n, s + n) == 0.0  # the identity improves nothing
    assert metrics.snri(s, s + 0.5 * n, s + n) == pytest.approx(20 * math.log10(2))
    assert metrics.snr(s, 0.5 * s) == pytest.approx(10 * math.log10(4))  # a gain error is noise for SNR


def test_pesq_and_stoi_of_clean_speech_like():
    s = speech_like(3.0, seed=7)
    noisy = s + noise_like(3.0, seed=8) * 2
    assert metrics.pesq_wb(s, s) > 4.5
    assert metrics.stoi(s, s) > 0.99
    assert metrics.pesq_wb(s, noisy) < 3.5
    assert metrics.stoi(s, noisy) < 0.95


@requires_corpus
def test_pesq_and_stoi_of_real_speech():
    path = sorted((CORPUS / "clean_test").glob("*.flac"))[0]
    s, _ = utils.read_audio(path, 16000)
    assert metrics.pesq_wb(s, s) > 4.5
    assert metrics.stoi(s, s) > 0.99


def test_pesq_resamples_other_rates():
    s = speech_like(2.0, seed=3, sr=8000)
    assert metrics.pesq_wb(s, s, sr=8000) > 4.4


def test_score_returns_all_metrics_and_snri():
    s = speech_like(2.0, seed=1)
    noisy = s + noise_like(2.0, seed=2)
    values, failures = metrics.score(s, noisy, noisy)
    assert failures == {}
    assert list(values) == ["sdr", "si_sdr", "snr", "pesq", "stoi", "snri"]
    assert values["snri"] == 0.0
    assert set(metrics.metric_names()) == set(values)
    values, _ = metrics.score(s, s + 0.5 * (noisy - s), noisy, metrics=("snr",))
    assert values["snri"] == pytest.approx(20 * math.log10(2), abs=1e-4)


def test_score_trims_to_common_length():
    s = speech_like(2.0, seed=1)
    longer = np.r_[s, np.ones(500, np.float32)]  # junk after the common length is ignored
    values, failures = metrics.score(s, longer, metrics=("snr", "si_sdr"))
    assert failures == {} and values["snr"] > 100


def test_failing_metric_is_nan_with_reason():
    s = speech_like(2.0, seed=1)
    values, failures = metrics.score(s, np.zeros_like(s))  # silent estimate
    for name in ("sdr", "pesq"):
        assert math.isnan(values[name]) and name in failures and failures[name]
    short = speech_like(0.1, seed=1)  # too short for PESQ and STOI
    values, failures = metrics.score(short, short + 0.01, short + 0.1)
    assert math.isnan(values["pesq"]) and "PESQ" in failures["pesq"]
    assert math.isnan(values["stoi"]) and "STOI" in failures["stoi"]
    assert math.isfinite(values["si_sdr"]) and "si_sdr" not in failures
    bad = s.copy()
    bad[10] = np.nan
    values, failures = metrics.score(s, bad, s)
    assert all(math.isnan(v) for v in values.values()) and set(failures) == set(values)
    assert "NaN" in failures["sdr"]


def test_unknown_metric_is_a_caller_error():
    with pytest.raises(ValueError, match="unknown metrics"):
        metrics.score(np.ones(10), np.ones(10), metrics=("sdr", "mos"))


def test_metrics_does_not_import_tensorflow():
    import subprocess

    code = "import sys, metrics; metrics.score([1.0, 2.0], [1.0, 2.5], metrics=('snr',))\n"
    code += "print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=metrics.utils.ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_silent_or_constant_estimate_fails_si_sdr_instead_of_scoring_inf():
    s = speech_like(1.0, seed=4)
    noisy = s + noise_like(1.0, seed=5)
    for est in (np.zeros_like(s), np.full_like(s, 0.3)):  # constant = silent once the mean is removed
        with pytest.raises(metrics.MetricError, match="silent"):
            metrics.si_sdr(s, est)
        values, failures = metrics.score(s, est, noisy, metrics=("sdr", "si_sdr", "snr"))
        assert math.isnan(values["si_sdr"]) and "silent" in failures["si_sdr"]
        assert all(math.isnan(v) or math.isfinite(v) for v in values.values()), values  # no inf leaks
    assert math.isfinite(metrics.si_sdr(s, np.full_like(s, 0.3), zero_mean=False))  # a scaled DC: defined
    assert metrics.snr(s, np.zeros_like(s)) == pytest.approx(0.0, abs=1e-9)  # all of s is error: 0 dB
    with pytest.raises(metrics.MetricError, match="0 / 0"):
        metrics._db(0.0, 0.0)
