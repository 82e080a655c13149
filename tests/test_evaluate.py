"""evaluate.py: oracle masks, baseline plumbing, outputs that agree with each other, end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import SR, make_test_set, noise_like, speech_like, write_config

import evaluate
import metrics
import spectral
import utils

FAST_METRICS = {"evaluate": {"metrics": "sdr,si_sdr,snr,stoi"}}  # PESQ is tested in test_metrics


@pytest.fixture
def test_set(tmp_path):
    """(config, data folder) with three 1.5-s test mixtures; every path inside tmp_path."""
    cfg = utils.load_config(write_config(tmp_path, FAST_METRICS))
    make_test_set(utils.get_path(cfg, "data_dir"))
    return cfg, utils.get_path(cfg, "data_dir")


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- oracles


def _spectra(seed=0, seconds=1.0, noise_gain=1.0):
    clean = speech_like(seconds, seed)
    noise = noise_gain * noise_like(seconds, seed + 1)
    p = spectral.StftParams()
    return clean, noise, clean + noise, p


def test_ideal_complex_mask_reconstructs_clean():
    clean, noise, noisy, p = _spectra()
    for bound in (math.inf, 1e6):
        est = evaluate.oracle_estimate("icm", clean, noise, noisy, p, bound)
        assert metrics.si_sdr(clean, est) > 60
    # the model's bound (2) costs something but stays far above the input
    bounded = metrics.si_sdr(clean, evaluate.oracle_estimate("icm", clean, noise, noisy, p, 2.0))
    assert metrics.si_sdr(clean, noisy) + 10 < bounded


def test_oracle_masks_are_bounded_and_beat_the_input():
    clean, noise, noisy, p = _spectra(seed=3, noise_gain=2.0)
    S, N, X = spectral.stft(clean, p), spectral.stft(noise, p), spectral.stft(noisy, p)
    irm = evaluate.oracle_mask("irm", S, N, X)
    psm = evaluate.oracle_mask("psm", S, N, X, bound=1.5)
    icm = evaluate.oracle_mask("icm", S, N, X, bound=1.5)
    assert np.all(irm.imag == 0) and 0 <= irm.real.min() and irm.real.max() <= 1
    assert np.all(psm.imag == 0) and 0 <= psm.real.min() and psm.real.max() <= 1.5
    assert np.abs(icm).max() <= 1.5 + 1e-9
    floor = metrics.si_sdr(clean, noisy)
    for kind in evaluate.ORACLES:
        assert metrics.si_sdr(clean, evaluate.oracle_estimate(kind, clean, noise, noisy, p, 2.0)) > floor + 3
    with pytest.raises(ValueError, match="unknown oracle"):
        evaluate.oracle_mask("ibm", S, N, X)


# ----------------------------------------------------------------------------- baselines


def test_delay_estimate_and_shift(rng):
    x = rng.standard_normal(4000).astype(np.float32)
    for d in (0, 37, -12):
        y = np.roll(x, d) * 0.5
        assert evaluate.estimate_delay(x, y, 100) == d
        back = evaluate.shift(y, d, len(x))
        lo, hi = max(0, -d), len(x) - max(0, d)
        np.testing.assert_allclose(back[lo:hi], 0.5 * x[lo:hi])


def _delayed_identity(x, sr):
    """A fake baseline: the input delayed by 3 ms, delay not reported."""
    return np.r_[np.zeros(int(0.003 * sr), np.float32), x], None


def test_baseline_is_resampled_and_delay_compensated(test_set, tmp_path, monkeypatch):
    cfg, _ = test_set
    monkeypatch.setitem(evaluate.BASELINE_ADAPTERS, "fake", ("numpy", 48000, _delayed_identity))
    summary = evaluate.evaluate(
        cfg, None, tmp_path / "out", workers=1, oracles=False, baselines=["fake"], progress=False
    )
    rows = _read_csv(tmp_path / "out" / "results.csv")
    by = {(r["index"], r["system"]): r for r in rows}
    assert summary["systems"] == ["noisy", "fake"]
    for i in ("0", "1", "2"):  # 16k -> 48k -> delayed identity -> aligned -> 16k: the input again
        assert float(by[(i, "fake")]["si_sdr"]) == pytest.approx(float(by[(i, "noisy")]["si_sdr"]), abs=0.05)


def test_missing_baseline_is_reported_not_fatal(test_set, tmp_path, monkeypatch, capsys):
    cfg, _ = test_set
    monkeypatch.setitem(evaluate.BASELINE_ADAPTERS, "ghost", ("no_such_module_xyz", None, _delayed_identity))
    summary = evaluate.evaluate(
        cfg, None, tmp_path / "out", limit=1, workers=1, oracles=False, baselines=["ghost"], progress=False
    )
    assert "not installed" in summary["baselines_skipped"]["ghost"]
    assert "baseline ghost: not installed" in capsys.readouterr().err
    assert {r["system"] for r in _read_csv(tmp_path / "out" / "results.csv")} == {"noisy"}


def test_unknown_baseline_is_a_user_error(test_set, tmp_path):
    cfg, _ = test_set
    with pytest.raises(utils.PipelineError, match="unknown baseline"):
        evaluate.main(["--config", cfg.source, "--model", str(tmp_path), "--baselines", "magic"])


@pytest.mark.skipif(
    evaluate.baseline_available("noisereduce") is not None, reason="noisereduce not installed"
)
def test_noisereduce_baseline_runs():
    clean, _, noisy, _ = _spectra(seed=5, seconds=2.0, noise_gain=2.0)
    est = evaluate.run_baseline("noisereduce", noisy, SR)
    assert est.shape == noisy.shape
    assert metrics.si_sdr(clean, est) > metrics.si_sdr(clean, noisy)


@pytest.mark.parametrize("name", ["noisereduce", "rnnoise", "deepfilternet"])
def test_baseline_adapter_smoke(name):
    """Each installed baseline: same length, aligned with the input, not worse than it (1 dB slack)."""
    if reason := evaluate.baseline_available(name):
        pytest.skip(f"baseline {name}: {reason}")
    clean, _, noisy, _ = _spectra(seed=5, seconds=2.0, noise_gain=2.0)
    est = evaluate.run_baseline(name, noisy, SR)
    assert est.shape == noisy.shape and np.isfinite(est).all()
    assert abs(evaluate.estimate_delay(clean, est, 160)) <= 1  # within a sample at 16 kHz
    assert metrics.si_sdr(clean, est) >= metrics.si_sdr(clean, noisy) - 1.0


# ----------------------------------------------------------------------------- outputs


@pytest.mark.slow
def test_summary_matches_csv_and_workers_do_not_matter(test_set, tmp_path):
    cfg, _ = test_set
    one = evaluate.evaluate(cfg, None, tmp_path / "w1", workers=1, progress=False)
    evaluate.evaluate(cfg, None, tmp_path / "w2", workers=2, progress=False)
    assert (tmp_path / "w1" / "results.csv").read_text() == (tmp_path / "w2" / "results.csv").read_text()

    rows = _read_csv(tmp_path / "w1" / "results.csv")
    summary = json.loads((tmp_path / "w1" / "summary.json").read_text())
    systems = ["noisy", "oracle_irm", "oracle_psm", "oracle_icm"]
    assert summary["systems"] == one["systems"] == systems
    assert len(rows) == 3 * len(systems)
    for system in systems:
        for m in summary["metrics"]:
            v = np.array([float(r[m]) for r in rows if r["system"] == system])
            stats = summary["results"][system][m]
            assert stats["mean"] == pytest.approx(np.nanmean(v), abs=1e-9)
            assert stats["median"] == pytest.approx(np.nanmedian(v), abs=1e-9)
            assert stats["n"] + stats["n_missing"] == 3
            half = 1.96 * np.nanstd(v, ddof=1) / np.sqrt(stats["n"])
            assert stats["ci95"] == pytest.approx([stats["mean"] - half, stats["mean"] + half])
    noisy = summary["results"]["noisy"]
    assert noisy["snri"]["mean"] == 0.0
    gain = summary["improvement_over_noisy"]["oracle_irm"]["si_sdr"]["mean"]
    assert gain == pytest.approx(summary["results"]["oracle_irm"]["si_sdr"]["mean"] - noisy["si_sdr"]["mean"])
    assert gain > 3
    out = tmp_path / "w1"
    table = (out / "snr_table.md").read_text()
    assert "| -5 |" in table and "| 15 |" in table and "oracle_icm" in table
    assert {p.name for p in out.glob("*.png")} == {f"{m}_vs_input_snr.png" for m in summary["metrics"]}
    assert utils.load_config(out / "config.ini").get("evaluate", "metrics") == "sdr,si_sdr,snr,stoi"


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda d: (d / "CleanSpeech_testing" / "clnsp1.wav").write_bytes(b"not audio"), "unreadable audio"),
        (lambda d: (d / "CleanSpeech_testing" / "clnsp1.wav").unlink(), "unreadable audio"),
        (lambda d: _rewrite(d / "CleanSpeech_testing" / "clnsp1.wav", lambda x: x[: len(x) // 2]),
         "12000 samples, but its noisy file NoisySpeech_testing/noisy1_SNRdb_5_clnsp1.wav has 24000"),
        (lambda d: _rewrite(d / "NoisySpeech_testing" / "noisy1_SNRdb_5_clnsp1.wav", lambda x: x * np.nan),
         "contains NaN or Inf samples"),
        (lambda d: _rewrite(d / "CleanSpeech_testing" / "clnsp1.wav", lambda x: x * 0), "silent"),
        (lambda d: _rewrite(d / "Noise_testing" / "noisy1_SNRdb_5.wav", lambda x: x[:0]), "empty"),
    ],
)  # fmt: skip
def test_bad_test_file_is_dropped_reported_and_counted(test_set, tmp_path, capsys, damage, reason):
    """What STFT.py refuses is never scored: reported on stderr, counted in summary.json, n is the real n."""
    cfg, data = test_set
    cfg.set("evaluate", "metrics", "sdr")
    damage(data)
    model_dir = str(_tiny_model(cfg, tmp_path))
    argv = ["--config", cfg.source, "--set", "evaluate.metrics=sdr", "--out", str(tmp_path / "out")]
    rc = evaluate.main([*argv, "--no-oracles", "--workers", "1", "--model", model_dir])
    out, err = capsys.readouterr()
    assert rc == 0
    lines = [line for line in err.splitlines() if line.startswith("dropped: ")]
    assert len(lines) == 1 and reason in lines[0] and str(data) in lines[0], err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_files"] == 2 and summary["n_dropped"] == 1 and reason in summary["dropped"][0]["reason"]
    assert summary["results"]["noisy"]["sdr"]["n"] == 2 and summary["results"]["model"]["sdr"]["n"] == 2
    assert "Summary (2 files, 1 dropped (see above)" in out
    assert {r["index"] for r in _read_csv(tmp_path / "out" / "results.csv")} == {"0", "2"}


def test_nothing_scorable_is_one_line_and_writes_nothing(test_set, tmp_path, capsys):
    cfg, data = test_set
    for f in (data / "CleanSpeech_testing").iterdir():
        f.write_bytes(b"")
    model_dir = str(_tiny_model(cfg, tmp_path))
    argv = ["--config", cfg.source, "--out", str(tmp_path / "out"), "--no-oracles", "--workers", "1"]
    rc = utils.run_main(evaluate.main, [*argv, "--model", model_dir])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].endswith("none of its 3 test files could be scored (see above)")
    assert not (tmp_path / "out").exists()


def test_validation_files_are_excluded_by_identity_only(test_set, tmp_path, capsys):
    """train.py's validation files, named by noisy file + manifest sha256 (or old index-only records
    when the manifest is the model's own), are excluded; another test set is never mislabelled."""
    cfg, data = test_set
    manifest = data / "manifest_testing.csv"
    tasks = evaluate.read_manifest(manifest)
    model_dir = _tiny_model(cfg, tmp_path)
    names = [tasks[2]["noisy_rel"], tasks[0]["noisy_rel"]]
    sums = [utils.file_sha256(data / n) for n in names]
    identity = {"manifest_sha256": utils.file_sha256(manifest), "noisy": names, "noisy_sha256": sums}
    record = {"validation_manifest_indices": [2, 0], "validation_files": identity}
    (model_dir / "metrics.json").write_text(json.dumps(record))
    assert evaluate.validation_exclusions(model_dir, manifest, tasks) == {0, 2}
    assert capsys.readouterr().err == ""

    other = tmp_path / "other"  # another test set: same names, indices and manifest, other audio
    make_test_set(other, seconds=1.0)
    other_tasks = evaluate.read_manifest(other / "manifest_testing.csv")
    assert [t["noisy_rel"] for t in other_tasks] == [t["noisy_rel"] for t in tasks]
    assert evaluate.validation_exclusions(model_dir, other / "manifest_testing.csv", other_tasks) == set()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "differ from those in" in err[0]
    identity["manifest_sha256"] = "0" * 64  # a manifest that differs: nothing at all is excluded
    (model_dir / "metrics.json").write_text(json.dumps(record))
    assert evaluate.validation_exclusions(model_dir, manifest, tasks) == set()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another test manifest" in err[0] and "none excluded" in err[0]

    # an old metrics.json (indices only): trusted for the model's own manifest, not for another one
    (model_dir / "metrics.json").write_text(json.dumps({"validation_manifest_indices": [0, 2]}))
    assert evaluate.validation_exclusions(model_dir, manifest, tasks) == {0, 2}
    assert evaluate.validation_exclusions(model_dir, other / "manifest_testing.csv", other_tasks) == set()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "by manifest index only" in err[0] and "none excluded" in err[0]

    # end to end on the other test set: no "without them" table
    argv = ["--config", cfg.source, "--set", "evaluate.metrics=sdr", "--set", f"paths.data_dir={other}"]
    rc = evaluate.main([*argv, "--out", str(tmp_path / "out"), "--no-oracles", "--workers", "1",
                        "--model", str(model_dir)])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "validation files" not in out and "Summary (3 files" in out
    assert "excluding_validation_files" not in json.loads((tmp_path / "out" / "summary.json").read_text())


def test_disk_full_leaves_the_results_folder_as_it_was(test_set, tmp_path, capsys, monkeypatch):
    cfg, _ = test_set
    out = tmp_path / "out"
    argv = ["--config", cfg.source, "--set", "evaluate.metrics=sdr", "--out", str(out), "--no-oracles",
            "--workers", "1", "--model", str(_tiny_model(cfg, tmp_path))]  # fmt: skip
    assert utils.run_main(evaluate.main, argv) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real = utils.atomic_write

    def full(path, mode="wb"):
        if Path(path).name == "snr_table.md":  # half way through the set
            raise OSError(28, "No space left on device", str(path))
        return real(path, mode)

    monkeypatch.setattr(utils, "atomic_write", full)
    capsys.readouterr()
    assert utils.run_main(evaluate.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and err[-1].endswith("snr_table.md: disk full")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # old set
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging folder


@pytest.mark.parametrize("bad", ["snr_db", "index"])
def test_bad_number_in_the_manifest_is_one_line(test_set, tmp_path, capsys, bad):
    cfg, data = test_set
    manifest = data / "manifest_testing.csv"
    rows = _read_csv(manifest)
    rows[1][bad] = "abc"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    rc = utils.run_main(evaluate.main, ["--config", cfg.source, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {manifest}: line 3: ")
    assert f"{bad}='abc'" in err[0] and "expected an integer and a number" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", ["evaluate", "STFT"])
def test_negative_workers_refused(test_set, tmp_path, capsys, script):
    cfg, _ = test_set
    rc = utils.run_main(__import__(script).main, ["--config", cfg.source, "--workers", "-1"])
    assert rc == 2
    assert capsys.readouterr().err.strip() == "error: --workers -1: must be >= 0 (0 = one per CPU core)"


def _rewrite(path: Path, change) -> None:
    x, sr = sf.read(path, dtype="float32")
    sf.write(path, change(x), sr, subtype="FLOAT")


def _tiny_model(cfg, tmp_path) -> Path:
    import model

    folder = tmp_path / "tiny" / "best"
    if not folder.is_dir():
        model.save_trained(model.build_model(cfg), cfg, folder)
    return folder


def test_missing_inputs_are_user_errors(tmp_path):
    cfg = utils.load_config(write_config(tmp_path))
    with pytest.raises(utils.PipelineError, match="manifest_testing.csv"):
        evaluate.evaluate(cfg, None, tmp_path / "out", progress=False)
    make_test_set(utils.get_path(cfg, "data_dir"), snrs=(0,))
    with pytest.raises(utils.PipelineError, match="no trained model"):
        evaluate.main(["--config", str(tmp_path / "config.ini"), "--run", "nothing_here"])


def test_resolve_model_dir(tmp_path):
    cfg = utils.load_config(write_config(tmp_path, {"train": {"run_name": "exp"}}))
    cp = utils.get_path(cfg, "checkpoint_dir")
    if (utils.PRETRAINED_DIR / "model.weights.h5").is_file():  # not trained yet: the shipped model
        assert evaluate.resolve_model_dir(cfg, None, None) == (utils.PRETRAINED_DIR, "pretrained")
    (cp / "exp" / "best").mkdir(parents=True)
    (cp / "exp" / "best" / "model.weights.h5").write_bytes(b"")
    assert evaluate.resolve_model_dir(cfg, None, None) == (cp / "exp" / "best", "exp")
    assert evaluate.resolve_model_dir(cfg, None, "b") == (cp / "b" / "best", "b")
    assert evaluate.resolve_model_dir(cfg, tmp_path / "cp" / "x" / "best", None)[1] == "x"


# ----------------------------------------------------------------------------- end to end


def test_end_to_end_with_tiny_untrained_model(test_set, tmp_path, capsys):
    import model

    cfg, _ = test_set
    net = model.build_model(cfg)
    model_dir = utils.get_path(cfg, "checkpoint_dir") / "tiny" / "best"
    model.save_trained(net, cfg, model_dir)
    rc = evaluate.main(["--config", cfg.source, "--run", "tiny", "--workers", "2", "--limit", "2"])
    assert rc == 0
    out = utils.get_path(cfg, "results_dir") / "tiny"
    rows = _read_csv(out / "results.csv")
    assert {r["system"] for r in rows} == {"noisy", "model", "oracle_irm", "oracle_psm", "oracle_icm"}
    assert len(rows) == 2 * 5
    assert all(math.isfinite(float(r["si_sdr"])) for r in rows if r["system"] == "model")

    # the model row is istft(M * X) of the model's own mask: recompute one file by hand
    _, mcfg = model.load_trained(model_dir)
    task = evaluate.read_manifest(utils.get_path(cfg, "data_dir") / "manifest_testing.csv", 1)[0]
    clean, _ = utils.read_audio(task["clean"], SR)
    noisy, _ = utils.read_audio(task["noisy"], SR)
    p = spectral.StftParams.from_config(mcfg)
    padded = np.r_[noisy, np.zeros(p.win_length - p.hop, np.float32)]  # whole windows over the last samples
    est = spectral.istft(model.enhance_spectrogram(net, spectral.stft(padded, p), mcfg), p)[: len(noisy)]
    first = next(r for r in rows if r["system"] == "model")
    assert float(first["si_sdr"]) == pytest.approx(metrics.si_sdr(clean, est), abs=1e-3)

    printed = capsys.readouterr().out
    assert "| model |" in printed and "SI-SDR" in printed
    assert (out / "summary.json").is_file() and (out / "model_config.ini").is_file()


def test_failing_model_batch_is_recorded_missing_and_the_rest_is_scored(test_set, tmp_path, monkeypatch):
    import model

    cfg, _ = test_set
    cfg.set("evaluate", "batch_size", "1")  # one file per model call
    model_dir = tmp_path / "tiny" / "best"
    model.save_trained(model.build_model(cfg), cfg, model_dir)
    # train.py's best/metrics.json: test files 0 and 2 were its validation set
    (model_dir / "metrics.json").write_text(json.dumps({"validation_manifest_indices": [0, 2]}))
    original, calls = model.enhance_spectrogram, {"n": 0}

    def fail_second_call(net, X, mcfg):
        calls["n"] += 1
        if calls["n"] == 2:
            raise MemoryError("OOM when allocating tensor")
        return original(net, X, mcfg)

    monkeypatch.setattr(model, "enhance_spectrogram", fail_second_call)
    summary = evaluate.evaluate(cfg, model_dir, tmp_path / "out", workers=1, oracles=False, progress=False)
    rows = {(r["index"], r["system"]): r for r in _read_csv(tmp_path / "out" / "results.csv")}
    bad = rows[("1", "model")]
    assert math.isnan(float(bad["si_sdr"])) and "model inference: MemoryError: OOM" in bad["failures"]
    assert all(math.isfinite(float(rows[(i, "model")]["si_sdr"])) for i in ("0", "2"))
    assert summary["results"]["model"]["si_sdr"]["n_missing"] == 1
    held = summary["excluding_validation_files"]
    assert held["n_excluded"] == 2 and held["n_files"] == 1
    assert held["results"]["noisy"]["si_sdr"]["mean"] == pytest.approx(float(rows[("1", "noisy")]["si_sdr"]))
