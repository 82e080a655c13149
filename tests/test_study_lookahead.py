"""study_lookahead.py: the --quick study end to end on a tiny corpus, its no-op re-run, its refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, write_config

import study_lookahead
import utils


def run_study(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "study_lookahead.py", *map(str, args)], cwd=cwd, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


@pytest.fixture
def tiny_data(tmp_path, synthetic_corpus) -> Path:
    """8 training / 4 testing 1-s mixtures from the synthetic corpus and their STFT caches; returns
    the config (every [paths] entry inside tmp_path)."""
    data = tmp_path / "data"
    sets = {
        "clean_train_path": synthetic_corpus / "clean_train",
        "noise_train_path": synthetic_corpus / "noise_train",
        "clean_test_path": synthetic_corpus / "clean_test",
        "noise_test_path": synthetic_corpus / "noise_test",
        "output_path": data,
        "file_length": 1,
        "total_training_files": 8,
        "total_testing_files": 4,
        "workers": 1,
    }
    args = [a for k, v in sets.items() for a in ("--set", f"data.{k}={v}")]
    prep = subprocess.run(
        [sys.executable, "data/data_prep.py", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert prep.returncode == 0, prep.stderr[-2000:]
    config = write_config(tmp_path)
    stft = subprocess.run(
        [sys.executable, "STFT.py", "--config", config], cwd=ROOT, capture_output=True, text=True
    )
    assert stft.returncode == 0, stft.stderr[-2000:]
    return config


def test_parse_lookaheads_and_budget():
    assert study_lookahead.parse_lookaheads("0, 2,2,10") == [0, 2, 10]
    with pytest.raises(utils.PipelineError):
        study_lookahead.parse_lookaheads("0,-1")
    with pytest.raises(utils.PipelineError):
        study_lookahead.parse_lookaheads("a")
    assert study_lookahead.epochs_for_budget(3, 25.0) == 7  # floor(180 / 25)
    assert study_lookahead.epochs_for_budget(0.1, 25.0) == 1  # at least one epoch


def test_settings_hash_ignores_bookkeeping_but_not_training_keys(tmp_config):
    cfg = utils.load_config(tmp_config)
    base = study_lookahead.train_settings(cfg, {})
    for item, same in (("train.epochs=7", True), ("train.checkpoint_steps=3", True),
                       ("train.learning_rate=0.00021", True),  # == 2.1e-4 as a number
                       ("train.learning_rate=1e-3", False), ("model.lstm_units=8", False),
                       ("train.seed=1", False)):  # fmt: skip
        other = study_lookahead.train_settings(utils.load_config(tmp_config, [item]), {})
        assert (study_lookahead._digest(other) == study_lookahead._digest(base)) is same, item


def test_missing_data_is_one_line_exit_2(tmp_path):
    config = write_config(tmp_path)
    out = run_study("--config", config, "--quick", "--out", tmp_path / "study")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "data_prep.py" in lines[0] and "STFT.py" in lines[0], out.stderr
    assert not (tmp_path / "study").exists()


@pytest.mark.slow
def test_quick_study_end_to_end_then_noop(tiny_data, tmp_path):
    out_dir = tmp_path / "study"
    first = run_study("--config", tiny_data, "--quick", "--out", out_dir, "--no-progress")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    table = (out_dir / "table.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| system")]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines}
    assert set(rows) == {"noisy", "lookahead_00", "lookahead_02", "bidirectional"}  # no oracles in --quick
    assert rows["lookahead_00"][:2] == ["0", "25"] and rows["lookahead_02"][:2] == ["2", "45"]
    assert rows["bidirectional"][1] == "offline"
    assert rows["bidirectional"][9].startswith("+0.00")  # its own difference to itself
    assert table in first.stdout  # printed at the end

    results = json.loads((out_dir / "results.json").read_text())
    models = {s["name"]: s for s in results["systems"] if s["kind"] == "model"}
    assert results["epochs"] == 1 and results["equal_optimizer_steps"]
    steps = 8 // utils.load_config(tiny_data).getint("train", "batch_size")  # 8 training clips
    assert {s["optimizer_steps"] for s in models.values()} == {results["optimizer_steps"]} == {steps}
    assert models["lookahead_02"]["algorithmic_latency_ms"] == 45
    assert models["bidirectional"]["algorithmic_latency_ms"] is None  # inf: offline
    assert models["bidirectional"]["parameters"] > models["lookahead_00"]["parameters"] > 0
    assert models["lookahead_00"]["parameters"] == models["lookahead_02"]["parameters"]
    for s in models.values():
        assert s["macs_per_frame"] > 0 and s["epochs"] == 1
        for m in ("sdr", "si_sdr", "snri", "pesq", "stoi"):
            assert s["metrics"][m]["n"] == results["evaluation"]["n_files"] == 2  # 4 scored - 2 validated
        assert s["delta_si_sdr_vs_bidirectional"]["n"] == 2
    assert (out_dir / "quality_vs_latency.png").read_bytes()[:4] == b"\x89PNG"
    assert utils.load_config(out_dir / "config.ini").get("model", "lstm_units") == "16"
    cfg = utils.load_config(tiny_data)
    runs = utils.get_path(cfg, "checkpoint_dir") / "study_lookahead_quick"
    weights = {n: (runs / n / "best" / "model.weights.h5").stat().st_mtime_ns for n in models}
    events = sorted((utils.get_path(cfg, "log_dir") / "study_lookahead_quick").rglob("events.*"))
    assert [e for e in events if "bidirectional" in e.parts]

    again = run_study("--config", tiny_data, "--quick", "--out", out_dir, "--no-progress")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("not retrained") == 3 and again.stdout.count("not re-evaluated") == 3
    assert weights == {n: (runs / n / "best" / "model.weights.h5").stat().st_mtime_ns for n in models}
    # no TensorFlow work at all: no run trained, so no new TensorBoard event file
    assert sorted((utils.get_path(cfg, "log_dir") / "study_lookahead_quick").rglob("events.*")) == events
    assert (out_dir / "table.md").read_text() == table

    changed = run_study(
        "--config", tiny_data, "--quick", "--out", out_dir, "--set", "train.learning_rate=0.01"
    )
    assert changed.returncode == 2 and "--overwrite" in changed.stderr and "learning_rate" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1

    # --budget-minutes: the first configuration's first epoch is timed (and kept); then a longer
    # budget resumes that run instead of starting it again.
    alone = ("--quick", "--lookaheads", "0", "--no-bidirectional", "--study", "budget", "--no-progress")
    budget = run_study("--config", tiny_data, *alone, "--out", tmp_path / "b", "--budget-minutes", "0.001")
    assert budget.returncode == 0, budget.stderr[-3000:]
    assert "calibrating the budget" in budget.stdout and "not retrained" in budget.stdout
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert b["epochs"] == 1 and b["budget"]["mode"] == "budget_minutes" and b["budget"]["epoch_seconds"] > 0
    longer = run_study("--config", tiny_data, *alone, "--out", tmp_path / "b", "--epochs", "2")
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "resuming from epoch 2" in longer.stdout
    history = (
        (utils.get_path(cfg, "checkpoint_dir") / "budget/lookahead_00/history.jsonl").read_text().splitlines()
    )
    assert [json.loads(line)["epoch"] for line in history] == [1, 2]
    b2 = json.loads((tmp_path / "b" / "results.json").read_text())
    assert b2["systems"][1]["epochs"] == 2 and b2["systems"][1]["optimizer_steps"] == 2 * steps

    # --extra-seeds: the first study's runs are reused; L=0 and the bidirectional model train again
    # with seed 7 in their own folder, each is compared with the bidirectional model of its seed.
    own_seed = run_study("--config", tiny_data, "--quick", "--out", out_dir, "--extra-seeds", "1234")
    assert own_seed.returncode == 2 and "own [train] seed" in own_seed.stderr
    seeded = run_study("--config", tiny_data, "--quick", "--out", out_dir, "--no-progress",
                       "--extra-seeds", "7", "--extra-seed-lookaheads", "0",
                       "--context-lookaheads", "2")  # fmt: skip
    assert seeded.returncode == 0, seeded.stdout[-3000:] + seeded.stderr[-3000:]
    assert seeded.stdout.count("not retrained") == 3
    r = json.loads((out_dir / "results.json").read_text())
    models = {s["name"]: s for s in r["systems"] if s["kind"] == "model"}
    assert {"lookahead_00_seed7", "bidirectional_seed7"} < set(models) and r["extra_seeds"] == [7]
    assert models["lookahead_00_seed7"]["seed"] == 7 and models["lookahead_00"]["seed"] == 1234
    assert models["lookahead_00_seed7"]["delta_reference"] == "bidirectional_seed7"
    # the lookahead as input: its own run, the same latency as lookahead_02, no extra seed
    assert models["context_02"]["lookahead_mode"] == "context" and models["context_02"]["seed"] == 1234
    assert models["context_02"]["algorithmic_latency_ms"] == models["lookahead_02"]["algorithmic_latency_ms"]
    assert models["context_02"]["parameters"] > models["lookahead_02"]["parameters"]
    assert "| context_02 | 2 (input) | 45 |" in (out_dir / "table.md").read_text()
    assert (utils.get_path(cfg, "checkpoint_dir") / "study_lookahead_quick_seed7/lookahead_00/best").is_dir()
    assert set(r["seeds"]) == {"lookahead_00", "bidirectional"}
    assert r["seeds"]["lookahead_00"]["seed_difference_si_sdr"]["n"] == 2
    assert r["seeds"]["lookahead_00"]["delta_si_sdr_vs_bidirectional_mean_over_seeds"]["n"] == 2
    assert len(models["lookahead_00"]["validation_si_sdr"]) == 1
    assert "| lookahead_00 | 1234, 7 |" in (out_dir / "table.md").read_text()
    assert (out_dir / "validation_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_table_says_which_models_converged():
    model = {"name": "lookahead_00", "kind": "model", "lookahead_frames": 0, "algorithmic_latency_ms": 25.0,
             "parameters": 10, "macs_per_frame": 1e6, "metrics": {}, "train_seconds": 60.0,
             "optimizer_steps": 1500, "converged": True}  # fmt: skip
    results = {"epochs": 40, "patience": 3, "min_delta": 0.05, "batch_size": 8, "seed": 1,
               "training_clips": 9,
               "optimizer_steps": 5000, "evaluation": {"n_files": 4, "files": "all"},
               "systems": [model, {**model, "name": "lookahead_20", "converged": False}]}  # fmt: skip
    table = study_lookahead.format_table(results)
    assert "at most 40 epoch(s), stopped once 3 validations gained <= 0.05 dB" in table
    assert "| 1500 (yes) |" in table and table.count("(no)") == 1


def test_table_places_baselines_and_seeds():
    model = {"name": "lookahead_00", "kind": "model", "lookahead_frames": 0, "algorithmic_latency_ms": 25.0,
             "parameters": 10, "macs_per_frame": 1e6, "metrics": {"si_sdr": {"mean": 7.0}},
             "train_seconds": 60.0, "optimizer_steps": 1500, "converged": True, "seed": 1,
             "delta_si_sdr_vs_bidirectional": {"mean": -0.4, "ci95_half_width": 0.1, "n": 9}}  # fmt: skip
    rnnoise = {"name": "rnnoise", "kind": "baseline", "algorithmic_latency_ms": 20.0,
               "metrics": {"si_sdr": {"mean": 6.5}},
               "delta_si_sdr_vs_bidirectional": {"mean": -0.9, "ci95_half_width": 0.2, "n": 9}}  # fmt: skip
    seeds = {"lookahead_00": {"seeds": [1, 2],
             "delta_si_sdr_vs_bidirectional_per_seed": {"1": {"mean": -0.4, "ci95_half_width": 0.1},
                                                        "2": {"mean": -0.5, "ci95_half_width": 0.1}},
             "delta_si_sdr_vs_bidirectional_mean_over_seeds": {"mean": -0.45, "ci95_half_width": 0.08},
             "seed_difference_si_sdr": {"mean": 0.05, "ci95_half_width": 0.07}}}  # fmt: skip
    results = {"epochs": 10, "patience": 3, "min_delta": 0.05, "batch_size": 8, "seed": 1,
               "training_clips": 4000, "on_the_fly": True, "optimizer_steps": 5000,
               "evaluation": {"n_files": 9, "files": "all"},
               "systems": [model, rnnoise], "seeds": seeds}  # fmt: skip
    table = study_lookahead.format_table(results)
    assert "4000 training clips per epoch, mixed on the fly" in table
    assert "| rnnoise | - | 20 (published) | - | - |" in table and "| -0.90 ± 0.20 |" in table
    assert "| lookahead_00 | 1, 2 | -0.40 ± 0.10 / -0.50 ± 0.10 | -0.45 ± 0.08 | +0.05 ± 0.07 |" in table
