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


@pytest.mark.parametrize(
    "raw, value", [("true", True), (" On", True), ("1", True), ("no", False), ("OFF ", False)]
)
def test_parse_bool(raw, value):
    assert utils.parse_bool(raw) is value


def test_parse_bool_refuses_other_words():
    with pytest.raises(ValueError, match="true or false"):
        utils.parse_bool("maybe")


def test_config_default_is_the_shipped_value_as_its_type():
    assert utils.config_default("model", "mask_bound") == 2.0
    assert utils.config_default("train", "on_the_fly") is False
    assert utils.config_default("data", "sample_rate") == 16000


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


def test_worker_dies_with_its_parent(tmp_path):
    """data_prep's pool workers call utils.die_with_parent: a parent killed with kill -9 leaves none."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing, os, sys, time\n"
        "import utils\n"
        "def child(ppid):\n"
        "    utils.die_with_parent(ppid)\n"
        "    time.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    p = multiprocessing.get_context('fork').Process(target=child, args=(os.getpid(),))\n"
        "    p.start()\n"
        "    print(p.pid, flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(utils.ROOT)}  # the script lives in tmp_path, not the repository
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    child = int(parent.stdout.readline())
    time.sleep(0.5)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the worker outlived its parent")


def test_data_prep_workers_are_told_to_die_with_the_parent(monkeypatch):
    import prep_run

    seen = []
    monkeypatch.setattr(utils, "die_with_parent", seen.append)
    monkeypatch.setattr(prep_run, "Mixer", lambda job: job)
    prep_run._init_worker("job", 4242)
    assert seen == [4242]


def test_pid_alive():
    import os

    assert utils.pid_alive(os.getpid())
    assert not utils.pid_alive(2**40)  # no process can have it (OverflowError or ESRCH)


def test_json_safe_replaces_non_finite_floats_at_any_depth():
    x = {"a": [1.0, float("nan"), (float("inf"), 2)], "b": {"c": -float("inf")}, "d": "text"}
    assert utils.json_safe(x) == {"a": [1.0, None, [None, 2]], "b": {"c": None}, "d": "text"}


def test_atomic_path_renames_on_success_and_removes_the_temp_on_error(tmp_path):
    import os

    target = tmp_path / "sub" / "out.bin"
    with utils.atomic_path(target, suffix=".weights.h5") as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".weights.h5") and not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(RuntimeError), utils.atomic_path(target, fsync=False) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError
    assert target.read_bytes() == b"new" and sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]
