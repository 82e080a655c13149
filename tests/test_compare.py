"""compare.py: paired per-file differences between two evaluate.py results.csv files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import compare
import utils

COLUMNS = (
    "index",
    "snr_db",
    "system",
    "sdr",
    "si_sdr",
    "snr",
    "snri",
    "pesq",
    "stoi",
    "failures",
    "noisy_file",
)


def write_results(folder, systems: dict[str, np.ndarray], snrs: list[float]) -> None:
    """results.csv with one row per file and system; systems maps name -> si_sdr per file."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        for i, snr in enumerate(snrs, start=1):
            for name, si_sdr in systems.items():
                v = float(si_sdr[i - 1])
                row = {"index": i, "snr_db": snr, "system": name, "sdr": v + 1, "si_sdr": v, "snr": v}
                w.writerow({**row, "snri": v - snr, "pesq": "", "stoi": 0.8, "noisy_file": f"n{i}.wav"})


def test_paired_difference_per_file_overall_and_per_snr(tmp_path):
    rng = np.random.default_rng(0)
    snrs = [-5.0, 0.0] * 10
    old = rng.normal(5, 3, 20)
    new = old + np.where(np.array(snrs) < 0, 1.0, 0.5) + rng.normal(0, 0.01, 20)
    write_results(tmp_path / "a", {"model": new}, snrs)
    write_results(tmp_path / "b", {"model": old}, snrs)
    res = compare.compare(
        compare.read_scores(tmp_path / "a")["model"],
        compare.read_scores(tmp_path / "b")["model"],
        ["si_sdr"],
        set(),
    )
    d = new - old
    assert res["files"] == 20 and res["excluded"] == 0
    assert res["overall"]["si_sdr"]["delta"]["mean"] == pytest.approx(d.mean())
    assert res["overall"]["si_sdr"]["delta"]["ci95"] == pytest.approx(1.96 * d.std(ddof=1) / np.sqrt(20))
    assert res["per_snr"]["-5"]["si_sdr"]["delta"]["mean"] == pytest.approx(1.0, abs=0.01)
    assert res["per_snr"]["0"]["si_sdr"]["delta"]["mean"] == pytest.approx(0.5, abs=0.01)
    # the pairing resolves a 0.5 dB change that the spread between files (std 3 dB) would hide
    assert res["per_snr"]["0"]["si_sdr"]["delta"]["ci95"] < 0.05


def test_validation_files_left_out_and_empty_cells_skipped(tmp_path, capsys):
    snrs = [0.0] * 6
    write_results(tmp_path / "ev", {"model": np.arange(6.0), "rnnoise": np.zeros(6)}, snrs)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "metrics.json").write_text(json.dumps({"validation_manifest_indices": [1, 2]}))
    out = tmp_path / "cmp.json"
    args = [str(tmp_path / "ev"), str(tmp_path / "ev"), "--old-system", "rnnoise", "--metrics", "si_sdr,stoi"]
    assert compare.main([*args, "--exclude-validation", str(model_dir), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["files"] == 4 and res["excluded"] == 2
    assert res["overall"]["si_sdr"]["delta"]["mean"] == pytest.approx(np.mean([2, 3, 4, 5]))
    assert res["overall"]["stoi"]["delta"]["mean"] == pytest.approx(0.0)
    assert "model − rnnoise on 4 test files (2 validation files left out)" in capsys.readouterr().out
    with pytest.raises(utils.PipelineError, match="pesq"):  # an all-empty column is not a metric here
        compare.main([*args[:4], "--metrics", "pesq"])


def test_clear_errors(tmp_path):
    write_results(tmp_path / "ev", {"model": np.zeros(2)}, [0.0, 5.0])
    with pytest.raises(utils.PipelineError, match="no system 'rnnoise'"):
        compare.main([str(tmp_path / "ev"), str(tmp_path / "ev"), "--old-system", "rnnoise"])
    with pytest.raises(utils.PipelineError, match="no evaluate.py results.csv"):
        compare.main([str(tmp_path / "missing"), str(tmp_path / "ev")])
    with pytest.raises(utils.PipelineError, match="metrics.json: missing"):
        compare.main([str(tmp_path / "ev"), str(tmp_path / "ev"), "--exclude-validation", str(tmp_path)])
