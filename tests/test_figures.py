"""figures.py: the noise-kind names and table (the plots are drawn from the same rows)."""

import csv

import figures


def test_noise_kind_drops_piece_numbers_and_hashes():
    assert figures.noise_kind("/x/berlinnoise_traffic_9a12b4b8_02.flac") == "berlinnoise_traffic"
    assert figures.noise_kind("blanket_nature_crickets_01.flac") == "blanket_nature_crickets"
    assert figures.noise_kind("12.wav") == "12"  # never empty


def test_noise_kinds_table_means_per_kind_without_validation_files(tmp_path):
    with open(tmp_path / "manifest_testing.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["index", "noise_source"])
        w.writeheader()
        for i, src in enumerate(["a_x_01.flac", "a_x_02.flac", "b_y_01.flac", "b_y_02.flac"], 1):
            w.writerow({"index": i, "noise_source": src})
    model = {1: 100.0, 2: 4.0, 3: 1.0, 4: 3.0}
    results = [{"index": str(i), "system": s, "si_sdr": str(model[i] if s == "model" else 0.0), "pesq": "1.5"}
               for i in model for s in ("model", "noisy")]  # fmt: skip
    table = figures.noise_kinds_table(results, tmp_path, exclude={1})
    assert "| a_x | 1 | 0.00 / 1.50 | 4.00 / 1.50 |" in table  # file 1 (validation) left out
    assert "| b_y | 2 | 0.00 / 1.50 | 2.00 / 1.50 |" in table
