import numpy as np
import pytest
import soundfile as sf

import utils


def test_config_paths_relative_to_file_and_overrides(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "exp"
    cfg_dir.mkdir()
    (cfg_dir / "c.ini").write_text("[paths]\ndata_dir = data\n[train]\nepochs = 3\n")
    monkeypatch.chdir(tmp_path)
    cfg = utils.load_config(cfg_dir / "c.ini", ["train.epochs=5", "paths.log_dir=logs"])
    assert cfg["paths"]["data_dir"] == str(cfg_dir / "data")
    assert cfg["paths"]["log_dir"] == str(tmp_path / "logs")  # overrides: relative to the current folder
    assert cfg.getint("train", "epochs") == 5


def test_data_config_keys_keep_case():
    cfg = utils.load_config(utils.DATA_CONFIG)
    assert cfg.getfloat("data", "SNR_lower") == -5
    assert cfg["data"]["clean_train_path"].startswith(str(utils.ROOT / "data"))


@pytest.mark.parametrize("bad", ["noequals", "nodot=1"])
def test_bad_override(bad):
    with pytest.raises(utils.PipelineError):
        utils.load_config(utils.DEFAULT_CONFIG, [bad])


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), utils.atomic_write(target) as f:
        f.write(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "content, reason",
    [(np.zeros(100), "silent"), (np.array([0.1, np.nan, 0.2]), "NaN"), (np.zeros(0), "empty")],
)
def test_read_audio_rejects_bad_files(tmp_path, content, reason):
    path = tmp_path / "bad.wav"
    sf.write(path, content.astype(np.float32), 16000, subtype="FLOAT")
    with pytest.raises(utils.AudioError, match=reason) as e:
        utils.read_audio(path)
    assert str(path) in str(e.value)


def test_read_audio_unreadable(tmp_path):
    path = tmp_path / "junk.wav"
    path.write_bytes(b"not audio at all")
    with pytest.raises(utils.AudioError, match="unreadable"):
        utils.read_audio(path)


def test_read_audio_downmixes_and_resamples(tmp_path):
    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1) * 0.5
    path = tmp_path / "st.wav"
    sf.write(path, stereo, 44100, subtype="PCM_16")
    x, sr = utils.read_audio(path, 16000)
    assert sr == 16000 and x.ndim == 1 and abs(len(x) - 16000) <= 1
    assert x.dtype == np.float32


def test_write_audio_roundtrip_float(tmp_path):
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    utils.write_audio(tmp_path / "a.wav", x, 16000)
    y, sr = sf.read(tmp_path / "a.wav", dtype="float32")
    assert sr == 16000 and np.array_equal(x, y)
