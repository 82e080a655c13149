"""enhance.py: chunked == whole file, streaming == offline, formats kept, inputs safe, bad inputs reported.

Clip lengths are not multiples of 10 ms: a clip whose length is a multiple of the hop ends under the
very tail of the last window, where spectral.istft divides by a near-zero window sum and amplifies any float
rounding of the mask (see the STFT module docstring); these tests are about enhance.py, not that edge.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import soundfile as sf
from conftest import SR, make_model, noisy, write_config
from conftest import run_enhance_cli as run_cli

import enhance
import model as M
import spectral
import streaming
import utils


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("causal"), lookahead_frames=0)


@pytest.fixture(scope="module")
def lookahead_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("lookahead"), lookahead_frames=2)


@pytest.fixture(scope="module")
def enhancers(causal_dir, lookahead_dir):
    return {
        0: enhance.Enhancer.from_pretrained(causal_dir),
        2: enhance.Enhancer.from_pretrained(lookahead_dir),
    }


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("lookahead", [0, 2])
@pytest.mark.parametrize("chunk", [1, 160, 1000, 4801, 40000])
def test_chunked_equals_whole(enhancers, lookahead, chunk):
    """Offline blocks with the state carried (stateful whole-chunk calls) == the whole clip at once."""
    enh = enhancers[lookahead]
    x = noisy()[: 33 * 160 + 77] if chunk == 1 else noisy()  # 1-sample chunks: a shorter clip (speed)
    ref = enh.whole(x)
    stream = enh.frame_stream(streaming=False)
    parts = [stream.process(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    y = np.concatenate(parts + [stream.flush()])
    assert len(y) == len(x)
    np.testing.assert_allclose(y, ref, atol=1e-4, rtol=0)
    assert np.abs(ref - x).max() > 1e-3  # the model does change the signal


@pytest.mark.parametrize("lookahead", [0, 2])
def test_realtime_stream_odd_chunks(enhancers, lookahead):
    """Frame by frame, odd chunk sizes (1, 7, 161, ...): len(out) == len(in), out[delay:] == offline."""
    enh = enhancers[lookahead]
    x = noisy()
    ref = enh.whole(x)
    stream = enh.stream()
    assert stream.delay == 400 + 160 * lookahead  # window + lookahead, in samples
    sizes = np.random.default_rng(lookahead).choice([1, 7, 159, 161, 333, 1600], size=len(x))
    parts, i = [], 0
    for n in sizes:
        if i >= len(x):
            break
        chunk = x[i : i + n]
        out = stream.process(chunk)
        assert len(out) == len(chunk)
        parts.append(out)
        i += n
    y = np.concatenate(parts + [stream.flush()])
    assert len(y) == len(x) + stream.delay
    assert not np.any(y[: stream.delay])
    np.testing.assert_allclose(y[stream.delay :], ref, atol=1e-4, rtol=0)
    assert enh.latency_ms == pytest.approx(M.algorithmic_latency_ms(enh.cfg))


@pytest.mark.parametrize("lookahead", [0, 2])
@pytest.mark.parametrize("sr", [SR, 44100])
def test_call_is_chunked_and_equals_whole(enhancers, lookahead, sr, monkeypatch):
    """enh(x) runs causal models in chunk_seconds blocks (bounded memory), equal to the whole clip at once."""
    enh = enhancers[lookahead]
    x = np.stack([noisy(1.3037, 30, sr), 0.5 * noisy(1.3037, 31, sr)], axis=1)
    pushed = []
    push = M.KerasChunkRunner.push
    monkeypatch.setattr(M.KerasChunkRunner, "push", lambda r, f: pushed.append(len(f)) or push(r, f))
    y = enh(x, sr, chunk_seconds=0.05)
    assert y.shape == x.shape
    np.testing.assert_allclose(y, enh.whole(x, sr), atol=1e-4, rtol=0)
    assert len(pushed) > 40 and max(pushed) <= 10  # 0.05 s = 5 frames (soxr releases output in bursts)
    pushed.clear()
    enh(x[:, 0], sr)  # default: [enhance] chunk_seconds of the model's config (30 s): one block
    assert max(pushed) > 100


def test_aligned_stream_at_other_rate(enhancers):
    """At 44.1 kHz (soxr streams in and out) the aligned stream equals offline resample-enhance-resample."""
    enh = enhancers[2]
    x = noisy(1.3037, 3, 44100)
    ref = enh(x, 44100)
    stream = enh.stream(44100, aligned=True)
    y = np.concatenate([stream.process(x[i : i + 3001])[:, 0] for i in range(0, len(x), 3001)])
    y = np.concatenate([y, stream.flush()[:, 0]])[: len(x)]
    np.testing.assert_allclose(y, ref[: len(y)], atol=1e-4, rtol=0)
    assert len(y) >= len(x) - 1
    with pytest.raises(ValueError, match="model rate"):
        enh.stream(44100)


def test_cli_chunked_file_equals_whole(tmp_path, capsys, lookahead_dir, enhancers):
    x = noisy(2.1037, 4)
    sf.write(tmp_path / "a.wav", x, SR, subtype="FLOAT")
    rc, out, err = run_cli(
        capsys,
        tmp_path / "a.wav",
        "-o",
        tmp_path / "out",
        "--model",
        lookahead_dir,
        "--set",
        "enhance.chunk_seconds=0.37",
    )
    assert rc == 0, err
    y, sr = sf.read(tmp_path / "out" / "a.wav", dtype="float32")
    assert sr == SR and len(y) == len(x)
    np.testing.assert_allclose(y, enhancers[2](x), atol=1e-4, rtol=0)
    assert "real-time factor" in out and "a.wav" in out
    assert (tmp_path / "out" / "enhance_config.ini").is_file()


def test_cli_streaming_equals_offline(tmp_path, capsys, lookahead_dir):
    x = noisy(2.1037, 5)
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "b.wav", x, SR, subtype="FLOAT")
    rc, _, err = run_cli(capsys, tmp_path / "in", "-o", tmp_path / "off", "--model", lookahead_dir)
    assert rc == 0, err
    rc, out, err = run_cli(
        capsys, tmp_path / "in", "-o", tmp_path / "str", "--model", lookahead_dir, "--streaming"
    )
    assert rc == 0, err
    assert "algorithmic latency 45.0 ms" in out  # 25 ms window + 2 x 10 ms lookahead
    off, _ = sf.read(tmp_path / "off" / "b.wav", dtype="float32")
    st, _ = sf.read(tmp_path / "str" / "b.wav", dtype="float32")
    assert len(st) == len(off) == len(x)
    np.testing.assert_allclose(st, off, atol=1e-4, rtol=0)  # aligned with the input: delay removed


def _fake_net(feats: np.ndarray) -> np.ndarray:
    """A numpy stand-in for the network: (..., F, C) features -> (..., F, 2) mask using every channel."""
    re = np.tanh(feats.sum(axis=-1))
    im = 0.5 * np.sin(feats[..., 0] - feats[..., -1])
    return np.stack([re, im], axis=-1).astype(np.float32)


class FakeFrameRunner:
    """A frame runner around _fake_net: output n is the mask of frame n - L (None for the first L)."""

    def __init__(self, lookahead: int, n_bins: int, channels: int):
        self.lookahead, self.zero = lookahead, np.zeros((n_bins, channels), np.float32)
        self.seen = []  # every feature frame stepped, real ones first

    def reset(self) -> None:
        self.n = 0

    def step(self, feats):
        self.seen.append(feats.copy())
        self.n += 1
        return _fake_net(feats) if self.n > self.lookahead else None

    def flush(self):
        masks = [self.step(self.zero) for _ in range(self.lookahead)]
        self.reset()
        return [m for m in masks if m is not None]


@pytest.mark.parametrize("lookahead", [0, 2])
@pytest.mark.parametrize(
    "features",
    [
        spectral.FeatureParams(),
        spectral.FeatureParams(deviation=True),
        spectral.FeatureParams(compression=0.5, delta_phase=False),
    ],
)
def test_hop_stream_equals_whole_clip_transform(lookahead, features):
    """HopStream (frame by frame, odd chunks) == spectral.features, the L-frame delay and spectral.istft."""
    sp = spectral.StftParams()
    x = noisy(0.7037, 40)
    X = spectral.stft(x, sp)
    feats = spectral.features(X, features, sp)
    padded = np.concatenate([feats, np.zeros((lookahead,) + feats.shape[1:], np.float32)])
    mask = _fake_net(padded)[lookahead:]
    want = spectral.istft((mask[..., 0] + 1j * mask[..., 1]) * X, sp, length=len(x))
    runner = FakeFrameRunner(lookahead, sp.n_bins, features.channels)
    stream = streaming.HopStream(runner, sp, features)
    sizes = np.random.default_rng(lookahead).choice([1, 7, 159, 160, 161, 1000], size=len(x))
    parts, i = [], 0
    for n in sizes:
        if i >= len(x):
            break
        parts.append(stream.process(x[i : i + n]))
        i += n
    y = np.concatenate(parts + [stream.flush()])
    assert len(y) == len(x)
    np.testing.assert_allclose(np.stack(runner.seen[: len(X)]), feats, atol=1e-5, rtol=0)
    np.testing.assert_allclose(y, want, atol=1e-5, rtol=0)
    # flush() reset the stream: a second pass gives the same output.
    np.testing.assert_allclose(np.concatenate([stream.process(x), stream.flush()]), y, atol=0, rtol=0)


@pytest.mark.parametrize("n", [0, 1, 80, 159, 161, 400])
def test_hop_stream_short_inputs(n):
    """Shorter than a hop or a window: as many samples out as in, equal to the whole-clip transform."""
    sp, fp = spectral.StftParams(), spectral.FeatureParams()
    x = noisy(0.1, 41)[:n]
    stream = streaming.HopStream(FakeFrameRunner(2, sp.n_bins, fp.channels), sp, fp)
    y = np.concatenate([stream.process(x), stream.flush()])
    X = spectral.stft(x, sp)
    padded = np.concatenate([spectral.features(X, fp, sp), np.zeros((2, sp.n_bins, fp.channels), np.float32)])
    mask = _fake_net(padded)[2:]
    want = spectral.istft((mask[..., 0] + 1j * mask[..., 1]) * X, sp, length=n)
    assert y.shape == (n,) and y.dtype == np.float32
    np.testing.assert_allclose(y, want, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize("channels", ["each", "mix"])
def test_format_rate_channels_preserved(tmp_path, capsys, causal_dir, enhancers, channels):
    """44.1 kHz stereo PCM_16 in -> 44.1 kHz PCM_16 out, stereo (each) or mono (mix), values as offline."""
    sr = 44100
    x = np.stack([noisy(1.2345, 6, sr), 0.5 * noisy(1.2345, 7, sr)], axis=1)
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "st.wav", x, sr, subtype="PCM_16")
    rc, _, err = run_cli(
        capsys, tmp_path / "in", "-o", tmp_path / "out", "--model", causal_dir, "--channels", channels,
        "--set", "enhance.chunk_seconds=0.5",
    )  # fmt: skip
    assert rc == 0, err
    info = sf.info(tmp_path / "out" / "st.wav")
    assert (info.samplerate, info.subtype, info.format) == (sr, "PCM_16", "WAV")
    assert info.frames == len(x)
    assert info.channels == (2 if channels == "each" else 1)
    y, _ = sf.read(tmp_path / "out" / "st.wav", dtype="float32", always_2d=True)
    xin, _ = sf.read(tmp_path / "in" / "st.wav", dtype="float32", always_2d=True)  # the PCM_16 values
    ref = enhancers[0](xin if channels == "each" else xin.mean(axis=1, keepdims=True), sr)
    np.testing.assert_allclose(y, np.clip(ref, -1, 1), atol=2 / 32768, rtol=0)  # PCM_16: rounding, clipping


def test_flac_float_and_mono_kept(tmp_path, capsys, causal_dir):
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "c.flac", noisy(0.8, 8, 22050), 22050, subtype="PCM_24")
    sf.write(tmp_path / "in" / "d.wav", noisy(0.8, 9, 8000), 8000, subtype="FLOAT")
    rc, _, err = run_cli(capsys, tmp_path / "in", "-o", tmp_path / "out", "--model", causal_dir)
    assert rc == 0, err
    for name, sr, fmt, subtype in (("c.flac", 22050, "FLAC", "PCM_24"), ("d.wav", 8000, "WAV", "FLOAT")):
        info = sf.info(tmp_path / "out" / name)
        assert (info.samplerate, info.format, info.subtype, info.channels) == (sr, fmt, subtype, 1)


# ----------------------------------------------------------------------------- safety and errors


def test_never_overwrites_input(tmp_path, capsys, causal_dir):
    x = noisy(0.6, 10)
    sf.write(tmp_path / "e.wav", x, SR, subtype="FLOAT")
    before = (tmp_path / "e.wav").read_bytes()
    rc, _, err = run_cli(capsys, tmp_path / "e.wav", "-o", tmp_path, "--model", causal_dir)
    assert rc == 1
    assert "e.wav" in err and "overwrite" in err
    rc, _, err = run_cli(capsys, tmp_path, "-o", tmp_path, "--model", causal_dir)  # folder into itself
    assert rc == 1 and "overwrite" in err
    assert (tmp_path / "e.wav").read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_bad_inputs_reported_others_processed(tmp_path, capsys, causal_dir):
    d = tmp_path / "in"
    (d / "empty_dir").mkdir(parents=True)
    sf.write(d / "good.wav", noisy(0.5, 11), SR, subtype="FLOAT")
    (d / "garbage.wav").write_bytes(b"this is not audio" * 20)
    sf.write(d / "zero_length.wav", np.zeros(0, np.float32), SR, subtype="FLOAT")
    bad = noisy(0.5, 12)
    bad[1234] = np.nan
    sf.write(d / "nan.wav", bad, SR, subtype="FLOAT")
    sf.write(d / "silent.wav", np.zeros(800, np.float32), SR, subtype="FLOAT")
    rc, out, err = run_cli(capsys, d, d / "empty_dir", tmp_path / "missing.wav", "-o", tmp_path / "out",
                           "--model", causal_dir)  # fmt: skip
    assert rc == 1
    lines = err.strip().splitlines()
    for name, reason in (
        ("garbage.wav", "unreadable"),
        ("zero_length.wav", "empty"),
        ("nan.wav", "NaN"),
        ("silent.wav", "silent"),
        ("empty_dir", "no audio"),
        ("missing.wav", "not found"),
    ):
        assert sum(name in line and reason in line for line in lines) == 1, (name, err)
    assert (tmp_path / "out" / "good.wav").is_file() and "good.wav" in out
    produced = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert produced == ["enhance_config.ini", "good.wav"]  # nothing half-written for the bad ones


@pytest.mark.parametrize(
    "model", [{"architecture": "bidirectional"}, {"lookahead_frames": 2, "lookahead_mode": "context"}]
)
def test_non_causal_model_whole_file(tmp_path, capsys, model):
    bidir = make_model(tmp_path / "bi", **model)
    x = noisy(1.1037, 13)
    sf.write(tmp_path / "f.wav", x, SR, subtype="FLOAT")
    rc, out, err = run_cli(capsys, tmp_path / "f.wav", "-o", tmp_path / "out", "--model", bidir)
    assert rc == 0, err
    assert "non-causal" in out
    y, _ = sf.read(tmp_path / "out" / "f.wav", dtype="float32")
    np.testing.assert_allclose(y, enhance.Enhancer.from_pretrained(bidir)(x), atol=1e-5, rtol=0)
    with pytest.raises(utils.PipelineError, match="causal"):
        enhance.main(
            [str(tmp_path / "f.wav"), "-o", str(tmp_path / "o2"), "--model", str(bidir), "--streaming"]
        )


def test_default_model_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(utils, "PRETRAINED_DIR", tmp_path / "no_pretrained")  # as if none were shipped
    cfg = utils.load_config(write_config(tmp_path))
    with pytest.raises(utils.PipelineError, match="no trained model") as e:
        enhance.default_model_dir(cfg)
    assert "\n" not in str(e.value) and "--model" in str(e.value)


def test_one_failing_file_does_not_stop_the_run(tmp_path, capsys, causal_dir):
    """Any exception is one `failed: <file>: <reason>` line; the other files go on; exit 1."""
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    sf.write(d / "sub" / "x.wav", noisy(0.5, 14), SR, subtype="FLOAT")
    sf.write(d / "y.wav", noisy(0.5, 15), SR, subtype="FLOAT")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").write_text("a file where the output folder would go")  # mkdir fails
    rc, out, err = run_cli(capsys, d, "-o", tmp_path / "out", "--model", causal_dir)
    assert rc == 1
    assert f"failed: {d / 'sub' / 'x.wav'}: {tmp_path / 'out' / 'sub'}: exists and is not a folder\n" in err
    assert (tmp_path / "out" / "y.wav").is_file() and "y.wav" in out


def test_writer_open_failure_leaves_no_temp(tmp_path, capsys, causal_dir, monkeypatch):
    """sf.SoundFile failing in _Writer.__enter__ (a format it cannot write): no temp file is left behind."""
    real = sf.SoundFile

    def fake(file, mode="r", *args, **kwargs):
        if mode == "w":
            raise RuntimeError("Error opening file: unsupported format\nsecond line")
        return real(file, mode, *args, **kwargs)

    sf.write(tmp_path / "g.wav", noisy(0.5, 16), SR, subtype="FLOAT")
    monkeypatch.setattr(sf, "SoundFile", fake)
    rc, _, err = run_cli(capsys, tmp_path / "g.wav", "-o", tmp_path / "out", "--model", causal_dir)
    assert rc == 1
    lines = [line for line in err.splitlines() if not line.startswith("model: ")]
    assert lines[0] == f"failed: {tmp_path / 'g.wav'}: RuntimeError: Error opening file: unsupported format"
    # no .tmp, no enhance_config.ini for a run that enhanced nothing, not even the folder it made
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    rc, _, _ = run_cli(capsys, tmp_path / "g.wav", "-o", tmp_path / "out", "--model", causal_dir)
    assert rc == 1 and list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_output_mode_follows_umask(tmp_path, enhancers, umask):
    sf.write(tmp_path / "h.wav", noisy(0.3, 17), SR, subtype="FLOAT")
    old = os.umask(umask)
    try:
        enhancers[0].enhance_file(tmp_path / "h.wav", tmp_path / "out" / "h.wav")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out" / "h.wav").stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_folder_scan_finds_every_libsndfile_format(tmp_path, capsys, causal_dir):
    exts = utils.readable_extensions()
    assert {".wav", ".flac", ".ogg", ".aif", ".aiff", ".au"} <= set(exts) and ".raw" not in exts
    d = tmp_path / "in"
    d.mkdir()
    sf.write(d / "a.aiff", noisy(0.4, 18), SR, subtype="PCM_16")
    sf.write(d / "b.au", noisy(0.4, 19), 8000, subtype="FLOAT")
    (d / "notes.txt").write_text("not audio")
    rc, out, err = run_cli(capsys, d, "-o", tmp_path / "out", "--model", causal_dir)
    assert rc == 0, err
    assert (sf.info(tmp_path / "out" / "a.aiff").format, sf.info(tmp_path / "out" / "b.au").format) == (
        "AIFF",
        "AU",
    )
    assert "notes.txt" not in out + err


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize(("n", "sr"), [(50, SR), (3, 44100)])
def test_shorter_than_one_frame(tmp_path, capsys, lookahead_dir, n, sr, streaming):
    """A clip shorter than one hop (3 samples at 44.1 kHz resample to ~1): processed, same length, finite."""
    x = 0.1 * np.random.default_rng(n).standard_normal(n).astype(np.float32)
    sf.write(tmp_path / "s.wav", x, sr, subtype="FLOAT")
    args = ["--streaming"] if streaming else []
    rc, out, err = run_cli(
        capsys, tmp_path / "s.wav", "-o", tmp_path / "out", "--model", lookahead_dir, *args
    )
    assert rc == 0, err
    y, sr_out = sf.read(tmp_path / "out" / "s.wav", dtype="float32")
    assert sr_out == sr and len(y) == n and np.all(np.isfinite(y))
    np.testing.assert_allclose(y, enhance.Enhancer.from_pretrained(lookahead_dir).whole(x, sr), atol=1e-4)


def test_shorter_than_one_frame_non_causal(tmp_path, capsys):
    """The whole-file path too: 1 sample at 44.1 kHz resamples to 0 samples at 16 kHz."""
    bidir = make_model(tmp_path / "bi", architecture="bidirectional")
    for n in (3, 1):
        sf.write(tmp_path / f"s{n}.wav", np.full(n, 0.1, np.float32), 44100, subtype="FLOAT")
    rc, _, err = run_cli(
        capsys, tmp_path / "s3.wav", tmp_path / "s1.wav", "-o", tmp_path / "out", "--model", bidir
    )
    assert rc == 0, err
    assert [sf.info(tmp_path / "out" / f"s{n}.wav").frames for n in (3, 1)] == [3, 1]


# ----------------------------------------------------------------------------- one-line errors (issue 17)


def run_main(capsys, *args):
    rc = utils.run_main(enhance.main, [str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, [line for line in out.err.splitlines() if not line.startswith("model: ")]


def _tree(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("which", ["input", "other file"])
def test_out_that_is_a_file_is_one_line(tmp_path, capsys, causal_dir, which):
    sf.write(tmp_path / "a.wav", noisy(0.3, 20), SR, subtype="FLOAT")
    (tmp_path / "b.txt").write_text("keep me")
    before = _tree(tmp_path)
    target = tmp_path / ("a.wav" if which == "input" else "b.txt")
    rc, _, err = run_main(capsys, tmp_path / "a.wav", "-o", target, "--model", causal_dir)
    kind = "an input" if which == "input" else "an existing"
    assert rc == 2 and err == [f"error: {target}: -o must be a folder, and this is {kind} file"]
    assert _tree(tmp_path) == before


def test_truncated_weights_is_one_line(tmp_path, capsys, causal_dir):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(causal_dir, model_dir)
    weights = model_dir / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:5000])
    sf.write(tmp_path / "a.wav", noisy(0.3, 21), SR, subtype="FLOAT")
    rc, _, err = run_main(capsys, tmp_path / "a.wav", "-o", tmp_path / "out", "--model", model_dir)
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"error: {weights}: not a readable weights file (")
    assert not (tmp_path / "out").exists()


def test_disk_full_is_said_in_those_words(tmp_path, capsys, causal_dir, monkeypatch):
    sf.write(tmp_path / "a.wav", noisy(0.3, 22), SR, subtype="FLOAT")

    def full_disk(self, data):
        raise sf.LibsndfileError(2)  # what libsndfile raises when write() fails: "System error."

    class Statvfs:
        f_bavail, f_frsize = 0, 4096

    monkeypatch.setattr(sf.SoundFile, "write", full_disk)
    monkeypatch.setattr(enhance.os, "statvfs", lambda path: Statvfs)
    rc, _, err = run_main(capsys, tmp_path / "a.wav", "-o", tmp_path / "out", "--model", causal_dir)
    assert rc == 1
    assert err[0] == f"failed: {tmp_path / 'a.wav'}: {tmp_path / 'out' / 'a.wav'}: disk full"
    assert not (tmp_path / "out").exists()  # no temp file, no enhance_config.ini, no empty folder


def test_stale_temp_of_a_killed_run_is_removed(tmp_path, capsys, causal_dir):
    sf.write(tmp_path / "a.wav", noisy(0.3, 23), SR, subtype="FLOAT")
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".a.wav.k1ll3d.tmp", out / ".enhance_config.ini.x8y9z0.tmp"]
    for f in stale:
        f.write_bytes(b"half a file")
    (out / ".other.wav.abc.tmp").write_bytes(b"not ours")
    rc, _, err = run_main(capsys, tmp_path / "a.wav", "-o", out, "--model", causal_dir)
    assert rc == 0 and f"removed {stale[0]} (left by an interrupted run)" in err
    assert sorted(p.name for p in out.iterdir()) == [".other.wav.abc.tmp", "a.wav", "enhance_config.ini"]


def test_second_run_into_a_locked_folder_is_refused(tmp_path, capsys, causal_dir):
    sf.write(tmp_path / "a.wav", noisy(0.3, 24), SR, subtype="FLOAT")
    out = tmp_path / "out"
    out.mkdir()
    with utils.folder_lock(out, "enhance.py"):  # another run holds the folder
        rc, _, err = run_main(capsys, tmp_path / "a.wav", "-o", out, "--model", causal_dir)
        assert rc == 2
        held = f"another enhance.py run (pid {os.getpid()}) is writing here"
        assert err == [f"error: {out}: {held}; wait for it to finish or choose another output folder"]
        assert [p.name for p in out.iterdir()] == [".lock"]
    assert list(out.iterdir()) == []  # the lock goes with its run
    assert run_main(capsys, tmp_path / "a.wav", "-o", out, "--model", causal_dir)[0] == 0


def test_bad_chunk_seconds_in_the_config_file_is_one_line(tmp_path, capsys, causal_dir):
    path = write_config(tmp_path, {"enhance": {"chunk_seconds": "thirty"}})
    sf.write(tmp_path / "a.wav", noisy(0.3, 25), SR, subtype="FLOAT")
    rc, _, err = run_main(capsys, tmp_path / "a.wav", "-o", tmp_path / "out", "--config", path)
    assert rc == 2 and err == [f"error: {path}: [enhance] chunk_seconds='thirty': expected a number"]
    assert not (tmp_path / "out").exists()


def test_second_run_with_another_model_into_the_same_folder_is_refused(
    tmp_path, capsys, causal_dir, lookahead_dir
):
    sf.write(tmp_path / "a.wav", noisy(0.3, 26), SR, subtype="FLOAT")
    sf.write(tmp_path / "b.wav", noisy(0.3, 27), SR, subtype="FLOAT")
    out = tmp_path / "out"
    assert run_main(capsys, tmp_path / "a.wav", "-o", out, "--model", causal_dir)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rc, _, err = run_main(capsys, tmp_path / "b.wav", "-o", out, "--model", lookahead_dir)
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"error: {out}: holds files enhanced with another model ({causal_dir}")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written
    assert run_main(capsys, tmp_path / "b.wav", "-o", out, "--model", causal_dir)[0] == 0  # same model: fine
