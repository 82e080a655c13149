"""data/demo_corpus.py: the synthetic corpus has the shared layout, sane audio, and is deterministic."""

from __future__ import annotations

import numpy as np
import soundfile as sf
from conftest import CORPUS_SPLITS, SR

import mixing
from data import demo_corpus


def load(folder):
    out = {}
    for p in sorted(folder.rglob("*.wav")):
        x, sr = sf.read(p, dtype="float32")
        assert sr == SR and x.ndim == 1
        out[p.relative_to(folder).as_posix()] = x
    return out


def test_layout_and_audio(tmp_path):
    root = demo_corpus.make_demo_corpus(tmp_path / "demo", seed=0, scale=0.1, progress=False)
    assert root == (tmp_path / "demo").resolve()
    audio = load(root)
    for split in CORPUS_SPLITS:
        assert any(name.startswith(split + "/") for name in audio), split
    for name, x in audio.items():
        assert np.all(np.isfinite(x)) and np.max(np.abs(x)) <= 1.0, name
        assert 10 * np.log10(np.mean(x.astype(np.float64) ** 2)) > -45, name
    for name, x in audio.items():
        if name.startswith("clean"):
            assert len(x) >= demo_corpus.UTTERANCE_S[0] * SR - 1
            # speech-like: passes data_prep's activity check, yet has pauses (quiet frames)
            assert mixing.active_fraction(x[: 3 * SR], SR) >= mixing.ACTIVITY_MIN_FRACTION
            frames = x[: len(x) // 320 * 320].reshape(-1, 320)
            energy = np.sum(frames.astype(np.float64) ** 2, axis=1)
            assert np.mean(energy < energy.max() * 1e-4) > 0.05, name
    noise_kinds = {name.split("/")[1].split("_")[0] for name in audio if name.startswith("noise_train")}
    assert noise_kinds == set(demo_corpus.NOISE_KINDS)
    train = {n.split("/")[1].split("_")[0] for n in audio if n.startswith("clean_train")}
    test = {n.split("/")[1].split("_")[0] for n in audio if n.startswith("clean_test")}
    assert train and test and not train & test  # different talkers


def test_talkers_differ_in_pitch():
    rng = np.random.default_rng(1)
    low, high = demo_corpus.Talker(100, 0.1, 1.0, 4.5, 0.03), demo_corpus.Talker(240, 0.1, 1.15, 4.5, 0.03)

    def pitch(talker):
        x = demo_corpus.synth_speech(rng, talker, 2.0).astype(np.float64)
        frames = x[: len(x) // 640 * 640].reshape(-1, 640)
        f = frames[np.argmax(np.sum(frames**2, axis=1))]  # the loudest 40-ms frame is voiced
        ac = np.correlate(f, f, "full")[len(f) - 1 :]
        lo, hi = SR // 400, SR // 60
        return SR / (lo + np.argmax(ac[lo:hi]))

    assert 70 < pitch(low) < 160 < 180 < pitch(high) < 330


def test_deterministic_and_up_to_date(tmp_path):
    a = demo_corpus.make_demo_corpus(tmp_path / "a", seed=3, scale=0.05, progress=False)
    b = demo_corpus.make_demo_corpus(tmp_path / "b", seed=3, scale=0.05, progress=False)
    c = demo_corpus.make_demo_corpus(tmp_path / "c", seed=4, scale=0.05, progress=False)
    la, lb, lc = load(a), load(b), load(c)
    assert la.keys() == lb.keys() and all(np.array_equal(la[k], lb[k]) for k in la)
    assert any(k not in lc or not np.array_equal(la[k], lc[k]) for k in la)
    stamps = {p: p.stat().st_mtime_ns for p in a.rglob("*.wav")}
    demo_corpus.make_demo_corpus(a, seed=3, scale=0.05, progress=False)  # complete: a no-op
    assert {p: p.stat().st_mtime_ns for p in a.rglob("*.wav")} == stamps
    # other settings replace the old files instead of mixing two corpora
    demo_corpus.make_demo_corpus(a, seed=3, scale=0.1, progress=False)
    expected = demo_corpus.plan(3, 3.0 * 0.1, 1.5 * 0.1)
    assert set(load(a)) == {f"{split}/{name}" for split, items in expected.items() for name, _, _ in items}


def test_cli(tmp_path, capsys):
    assert demo_corpus.main([str(tmp_path / "d"), "--seed", "1", "--scale", "0.05"]) == 0
    assert "synthetic" in capsys.readouterr().out
    assert (tmp_path / "d" / "clean_train").is_dir()
