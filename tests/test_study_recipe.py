"""study_recipe.py: the commands it runs and the table it draws from evaluate.py's outputs."""

import csv
import json

import pytest

import study_recipe
import utils


def test_train_command_fine_tunes_from_the_shipped_weights_with_the_recipe_settings(tmp_path):
    cmd = study_recipe.train_command(
        "noiseaug_snr-10", "x_seed7", 7, 1500, tmp_path / "corpus", tmp_path / "out"
    )
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert f"train.init_weights={study_recipe.ROOT}/pretrained/model.weights.h5" in sets
    assert cmd[cmd.index("--config") + 1] == str(study_recipe.ROOT / "pretrained" / "config.ini")
    other = study_recipe.train_command("base", "b", 1, 500, tmp_path, tmp_path, start=tmp_path / "stage1")
    assert other[other.index("--config") + 1] == str(tmp_path / "stage1" / "config.ini")
    assert f"train.init_weights={tmp_path}/stage1/model.weights.h5" in other
    assert "data.SNR_lower=-10" in sets and study_recipe.NOISE_AUG in sets
    assert "train.seed=7" in sets and "train.epochs=3" in sets  # 1500 steps of 500
    assert cmd[cmd.index("--run-name") + 1] == "x_seed7" and "--resume" in cmd
    cosine = study_recipe.train_command("cosine", "c", 1, 3000, tmp_path, tmp_path)
    assert "train.cosine_steps=3000" in cosine  # the decay spans the budget
    # every recipe's settings are keys the trainer knows
    import train_settings

    for name in study_recipe.RECIPES:
        cmd = study_recipe.train_command(name, name, 1, 500, tmp_path, tmp_path)
        sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
        train_settings.TrainParams.from_config(
            utils.load_config(study_recipe.ROOT / "pretrained" / "config.ini", sets)
        )


def fake_run(out, name, scores: dict[int, float], validation: list[int]):
    """An evaluated run: results.csv (noisy and model SI-SDR / PESQ / STOI per file) + best/metrics.json."""
    ev, best = out / "eval" / name, out / "cp" / name / "best"
    ev.mkdir(parents=True)
    best.mkdir(parents=True)
    with open(ev / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["index", "snr_db", "system", "si_sdr", "sdr", "pesq", "stoi"])
        w.writeheader()
        for i, s in scores.items():
            snr = -5 if i % 2 else 0
            w.writerow(
                {
                    "index": i,
                    "snr_db": snr,
                    "system": "noisy",
                    "si_sdr": snr,
                    "sdr": snr,
                    "pesq": 1,
                    "stoi": 0.8,
                }
            )
            w.writerow(
                {"index": i, "snr_db": snr, "system": "model", "si_sdr": s, "sdr": s, "pesq": 2, "stoi": 0.9}
            )
    meta = {"epoch": 3, "step": 1500, "validation": {"si_sdr": 1.0, "si_sdr_noisy": 0.5},
            "validation_manifest_indices": validation}  # fmt: skip
    (best / "metrics.json").write_text(json.dumps(meta))


def test_table_compares_held_out_files_paired_against_the_reference(tmp_path):
    base = {i: float(i) for i in range(1, 11)}
    fake_run(tmp_path, "base", base, [1, 2])
    fake_run(tmp_path, "noiseaug", {i: v + 0.5 + (100 if i <= 2 else 0) for i, v in base.items()}, [1, 2])
    res = study_recipe.collect({"base": ("base", 1), "noiseaug": ("noiseaug", 1)}, "base", tmp_path)
    assert res["held_out_files"] == 8 and res["validation_files"] == 2
    row = res["rows"]["noiseaug"]
    assert row["d_si_sdr"]["mean"] == pytest.approx(0.5) and row["d_si_sdr"]["ci95"] == pytest.approx(0)
    assert row["si_sdr_at_-5"]["mean"] == pytest.approx((3 + 5 + 7 + 9) / 4 + 0.5)  # odd indices 3..9
    assert res["rows"]["noisy"]["si_sdr_at_0"]["mean"] == 0
    table = study_recipe.format_table(res)
    assert "| noiseaug | 1.00 |" in table and "0.50 ± 0.00" in table


def test_cli_refuses_unknown_recipes_and_odd_budgets(capsys):
    assert study_recipe.main(["--list"]) == 0 and "noiseaug" in capsys.readouterr().out
    with pytest.raises(utils.PipelineError, match="unknown nope"):
        study_recipe.main(["--recipes", "base,nope", "--compare-only"])
    with pytest.raises(utils.PipelineError, match="multiple of 500"):
        study_recipe.main(["--steps", "700", "--compare-only"])
