"""--shard I/N and --merge-shards N of data/data_prep.py, STFT.py and evaluate.py: N = 3 shards give,
once merged, the bytes of one unsharded run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import SR, make_test_set, speech_like, write_config

import shards
import utils
from data import data_prep


def test_shard_blocks_are_disjoint_and_cover_everything():
    for n in (0, 1, 2, 3, 7, 10):
        for count in (1, 2, 3, 5):
            blocks = [shards.Shard(i, count).block(n) for i in range(1, count + 1)]
            assert [j for b in blocks for j in b] == list(range(n))
    assert shards.Shard.parse(" 2/3 ") == shards.Shard(2, 3) and shards.Shard(2, 3).label == "shard-2-of-3"
    for bad in ("0/3", "4/3", "1", "a/b", "1/0"):
        with pytest.raises(utils.PipelineError):
            shards.Shard.parse(bad)


def files(folder: Path, skip=()) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def data_argv(corpus: Path, out: Path, *extra: str) -> list[str]:
    values = {
        "clean_train_path": corpus / "clean_train", "noise_train_path": corpus / "noise_train",
        "clean_test_path": corpus / "clean_test", "noise_test_path": corpus / "noise_test",
        "output_path": out, "file_length": 1, "total_training_files": 7, "total_testing_files": 4,
        "workers": 1,
    }  # fmt: skip
    return [a for k, v in values.items() for a in ("--set", f"data.{k}={v}")] + list(extra)


def test_data_prep_three_shards_merge_to_the_bytes_of_one_run(synthetic_corpus, tmp_path, capsys):
    one, three = tmp_path / "one", tmp_path / "three"
    # files the mixing skips (listed in data_prep_skipped_<split>.csv): the shards' lists are joined
    sf.write(synthetic_corpus / "noise_train" / "silent.wav", np.zeros(5 * SR, np.float32), SR)
    sf.write(synthetic_corpus / "clean_train" / "short.wav", speech_like(0.3, 9), SR)
    assert utils.run_main(data_prep.main, data_argv(synthetic_corpus, one)) == 0
    for i in (3, 1):  # shard 2 is late
        assert utils.run_main(data_prep.main, data_argv(synthetic_corpus, three, "--shard", f"{i}/3")) == 0
    capsys.readouterr()
    assert utils.run_main(data_prep.main, data_argv(synthetic_corpus, three, "--merge-shards", "3")) == 2
    assert "shard-2-of-3" in capsys.readouterr().err and not (three / "manifest_training.csv").exists()
    assert utils.run_main(data_prep.main, data_argv(synthetic_corpus, three, "--shard", "2/3")) == 0
    shard_rows = (three / "manifest_training.shard-2-of-3.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in shard_rows[1:]] == ["3", "4"]  # 7 mixtures: blocks 1-2, 3-4, 5-7
    assert utils.run_main(data_prep.main, data_argv(synthetic_corpus, three, "--merge-shards", "3")) == 0
    a, b = files(one, {"data_prep_config.ini"}), files(three, {"data_prep_config.ini"})
    assert sorted(a) == sorted(b) and a == b  # manifests, wavs, state, skipped lists: byte for byte
    assert "manifest_training.csv" in a and "data_prep_skipped_training.csv" in a
    assert not list(three.glob("*shard*"))
    # --overwrite cannot be sharded (it would delete the other shards' outputs)
    argv = data_argv(synthetic_corpus, three, "--shard", "1/3", "--overwrite")
    assert utils.run_main(data_prep.main, argv) == 2


def test_stft_three_shards_merge_to_the_cache_of_one_build(tmp_path, capsys):
    import STFT
    import stft_cache

    data = tmp_path / "data"
    data.mkdir()
    make_test_set(data, snrs=(-5, 0, 5, 10, 15), seconds=0.5)
    config = write_config(tmp_path, {"paths": {"data_dir": str(data)}})
    cfg = utils.load_config(config)
    one = STFT.build_cache(cfg, "testing").rename(tmp_path / "one_machine")  # then the same on 3
    config = str(config)
    for i in (2, 3):
        assert utils.run_main(STFT.main, ["--config", config, "--split", "testing", "--shard", f"{i}/3"]) == 0
    merge = ["--config", config, "--split", "testing", "--merge-shards", "3"]
    assert utils.run_main(STFT.main, merge) == 2  # shard 1 is missing
    assert "shard-1-of-3" in capsys.readouterr().err
    assert utils.run_main(STFT.main, ["--config", config, "--split", "testing", "--shard", "1/3"]) == 0
    assert utils.run_main(STFT.main, merge) == 0
    three = stft_cache.cache_dir(cfg, "testing")
    a, b = files(one, {"meta.json"}), files(three, {"meta.json"})
    assert sorted(a) == ["clean.npy", "config.ini", "index.csv", "noisy.npy"] and a == b
    meta_a, meta_b = (json.loads((d / "meta.json").read_text()) for d in (one, three))
    meta_a.pop("created"), meta_b.pop("created")
    assert meta_a == meta_b and STFT.is_up_to_date(cfg, "testing")
    assert not list(three.parent.glob("*shard*"))


@pytest.mark.slow
def test_evaluate_three_shards_merge_to_the_results_of_one_run(tmp_path, capsys):
    import evaluate
    import model

    over = {"evaluate": {"metrics": "sdr,si_sdr", "batch_size": 2}}
    config = write_config(tmp_path, over)
    cfg = utils.load_config(config)
    data = utils.get_path(cfg, "data_dir")
    make_test_set(data, snrs=(-5, 0, 5, 10, 15, 20, 3), seconds=0.5)
    (data / "CleanSpeech_testing" / "clnsp3.wav").write_bytes(b"not audio")  # dropped, and counted
    model_dir = tmp_path / "tiny" / "best"
    model.save_trained(model.build_model(cfg), cfg, model_dir)
    argv = ["--config", str(config), "--model", str(model_dir), "--workers", "1", "--page-examples", "1"]
    assert utils.run_main(evaluate.main, [*argv, "--out", str(tmp_path / "one")]) == 0
    three = [*argv, "--out", str(tmp_path / "three")]
    for i in (3, 1):
        assert utils.run_main(evaluate.main, [*three, "--shard", f"{i}/3"]) == 0
    assert utils.run_main(evaluate.main, [*three, "--merge-shards", "3"]) == 2  # shard 2 is missing
    assert "shard-2-of-3" in capsys.readouterr().err and not (tmp_path / "three" / "summary.json").exists()
    assert utils.run_main(evaluate.main, [*three, "--shard", "2/3"]) == 0
    record = json.loads((tmp_path / "three" / "shards" / "shard-2-of-3.json").read_text())
    assert record["indices"] == [2, 3]  # 7 files in model batches of 2: [0 1] | [2 3] | [4 5] [6]
    assert utils.run_main(evaluate.main, [*three, "--merge-shards", "3"]) == 0
    a, b = files(tmp_path / "one"), files(tmp_path / "three")
    assert sorted(a) == sorted(b)
    for name in ("results.csv", "summary.json", "snr_table.md", "config.ini"):
        assert a[name] == b[name], name
    # the listening page differs in its title only (the output folder's name)
    assert a["index.html"].replace(b"page: one<", b"page: X<") == b["index.html"].replace(
        b"page: three<", b"page: X<"
    )
    assert (
        json.loads(a["summary.json"])["n_dropped"] == 1
        and "model" in json.loads(a["summary.json"])["systems"]
    )
    assert not (tmp_path / "three" / "shards").exists()
    # a shard scored with other settings is refused
    assert utils.run_main(evaluate.main, [*three, "--shard", "1/3", "--no-oracles"]) == 0
    assert utils.run_main(evaluate.main, [*three, "--shard", "2/3"]) == 0
    assert utils.run_main(evaluate.main, [*three, "--shard", "3/3"]) == 0
    assert utils.run_main(evaluate.main, [*three, "--merge-shards", "3"]) == 2
    assert "systems differ" in capsys.readouterr().err
