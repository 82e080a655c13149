"""manifests.py: the one manifest reader and writer."""

import pytest

import manifests
import utils


def row(i: int) -> dict:
    return {"index": i, "noisy": f"NoisySpeech_testing/n{i}.wav", "clean": f"CleanSpeech_testing/c{i}.wav",
            "noise": f"Noise_testing/z{i}.wav", "snr_db": 5, "clean_source": "a.flac", "clean_start_s": 0,
            "noise_source": "b.wav", "noise_start_s": 1.5, "gain": 1.0}  # fmt: skip


def test_write_then_read_keeps_the_columns_and_sorts_by_index(tmp_path):
    path = tmp_path / "manifest_testing.csv"
    manifests.write(path, [row(2), row(1)])
    assert path.read_text().splitlines()[0] == ",".join(manifests.WRITTEN)
    rows = manifests.read_rows(path)
    assert [r["index"] for r in rows] == ["1", "2"] and rows[1]["noisy"] == "NoisySpeech_testing/n2.wav"


def test_read_errors_are_one_line(tmp_path):
    with pytest.raises(utils.PipelineError, match="test manifest not found.*data_prep"):
        manifests.read_rows(tmp_path / "none.csv", what="test manifest")
    path = tmp_path / "m.csv"
    path.write_text("index,noisy\n1,a.wav\n")
    with pytest.raises(utils.PipelineError, match=r"missing column\(s\) clean, noise, snr_db"):
        manifests.read_rows(path)
    assert manifests.read_rows(path, ("index", "noisy"))[0]["noisy"] == "a.wav"
    path.write_text("index,noisy\n")
    with pytest.raises(utils.PipelineError, match="no examples"):
        manifests.read_rows(path, ("index", "noisy"))


def test_name_compares_file_columns():
    assert manifests.name(" NoisySpeech_testing/n1.wav ") == "NoisySpeech_testing/n1.wav"
