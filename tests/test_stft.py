"""spectral.py, spectral_tf.py, stft_cache.py and STFT.py: the transform (numpy and TF twins), the features
and the on-disk STFT cache (reading it; building it with the script)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import SR, noise_like, speech_like, write_config

import spectral
import spectral_tf
import STFT
import stft_cache
import utils

P = spectral.StftParams()


def snr_db(ref: np.ndarray, est: np.ndarray) -> float:
    ref, est = np.asarray(ref, np.float64), np.asarray(est, np.float64)
    return 10 * np.log10(np.sum(ref**2) / np.sum((ref - est) ** 2))


def reference_istft(X: np.ndarray, p: spectral.StftParams, length: int) -> np.ndarray:
    """The iSTFT written out frame by frame (slow, obvious) to check the vectorised one."""
    w = spectral.window(p).astype(np.float64)
    frames = np.fft.irfft(X.astype(np.complex128), n=p.n_fft, axis=-1)[..., : p.win_length] * w
    t = X.shape[-2]
    out = np.zeros(X.shape[:-2] + (p.pad_front + t * p.hop,))
    norm = np.zeros(p.pad_front + t * p.hop)
    for i in range(t):
        out[..., i * p.hop : i * p.hop + p.win_length] += frames[..., i, :]
        norm[i * p.hop : i * p.hop + p.win_length] += w**2
    y = out[..., p.pad_front :] / norm[p.pad_front :]
    return y[..., :length]


# ----------------------------------------------------------------------------- transform


@pytest.mark.parametrize("kind", ["noise", "speech"])
@pytest.mark.parametrize("n", [16000, 16000 + 37])  # a multiple of hop and not
def test_reconstruction_above_60_db(kind, n):
    x = (noise_like if kind == "noise" else speech_like)(2.0, seed=3)[:n]
    X = spectral.stft(x, P)
    assert X.shape == (P.n_frames(n), P.n_bins) and X.dtype == np.complex64
    y = spectral.istft(X, P, length=n)
    assert y.shape == x.shape and y.dtype == np.float32
    assert snr_db(x, y) >= 60, "whole signal"
    edge = P.win_length
    assert snr_db(x[edge:-edge], y[edge:-edge]) >= 60, "away from the edges"
    assert np.max(np.abs(x[-5:] - y[-5:])) < 1e-2 * np.max(np.abs(x)), "last samples"


def random_spectrogram(rng, shape) -> np.ndarray:
    """Not the STFT of any signal (frames disagree), so overlap-add mistakes cannot cancel out."""
    X = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    X[..., 0] = X[..., 0].real  # DC and Nyquist bins of a real frame are real
    X[..., -1] = X[..., -1].real
    return X.astype(np.complex64)


def test_istft_equals_frame_by_frame_overlap_add(rng):
    X = random_spectrogram(rng, (2, 3, 11, 257))
    np.testing.assert_allclose(spectral.istft(X, P, 1601), reference_istft(X, P, 1601), atol=1e-5)
    x = rng.standard_normal((2, 3, 1601)).astype(np.float32)
    X = spectral.stft(x, P)
    # longer than the frames cover: zero-padded, like the TF twin
    y = spectral.istft(X, P, length=X.shape[-2] * P.hop + 50)
    assert np.all(y[..., -50:] == 0)


def test_numpy_and_tf_agree(rng):
    x = rng.standard_normal((2, 4811)).astype(np.float32)
    X = spectral.stft(x, P)
    Xt = spectral_tf.stft_tf(x, P).numpy()
    assert Xt.shape == X.shape
    assert np.max(np.abs(X - Xt)) <= 1e-5 * np.max(np.abs(X))
    R = random_spectrogram(rng, X.shape)
    for length in (4811, X.shape[-2] * P.hop, X.shape[-2] * P.hop + 30):
        for S in (X, R):
            y, yt = spectral.istft(S, P, length), spectral_tf.istft_tf(S, P, length).numpy()
            assert yt.shape == y.shape
            # rtol: a random last frame divided by its tiny window tail gives values ~1e3
            np.testing.assert_allclose(yt, y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(spectral_tf.istft_tf(X, P).numpy(), spectral.istft(X, P), atol=1e-5)


def test_features_numpy_and_tf_agree(rng):
    X = spectral.stft(rng.standard_normal(3200).astype(np.float32), P)
    FP = spectral.FeatureParams
    for fp in (FP(), FP(deviation=True), FP(delta_phase=False)):
        f, ft = spectral.features(X, fp, P), spectral_tf.features_tf(X, fp, P).numpy()
        assert ft.shape == f.shape
        # cos/sin of angles near +-pi can flip by float error; everything else is close
        np.testing.assert_allclose(ft[..., :2], f[..., :2], atol=1e-5)
        if fp.delta_phase:
            assert np.mean(np.abs(ft[..., 2:] - f[..., 2:]) < 1e-4) > 0.999


def test_compression_keeps_angle_and_compresses_magnitude(rng):
    X = (rng.standard_normal(2000) + 1j * rng.standard_normal(2000)).astype(np.complex64) * 3
    X[:4] = [-1, -2j, 0, 1e-30]  # the negative axis, a pure imaginary value, zero, a denormal-ish value
    for fn in (spectral.compress, lambda X, p: spectral_tf.compress_tf(X, p).numpy()):
        Xc = fn(X, 0.3)
        assert Xc.dtype == np.complex64 and np.all(np.isfinite(Xc))
        nz = np.abs(X) > 1e-20
        np.testing.assert_allclose(np.abs(Xc[nz]), np.abs(X[nz]) ** 0.3, rtol=1e-5)
        d = spectral.wrap(np.angle(Xc[nz]) - np.angle(X[nz]))
        assert np.max(np.abs(d)) < 1e-5
        assert Xc[2] == 0
        np.testing.assert_allclose(Xc[0], -1, atol=1e-6)  # pow(-1, 0.3) would be exp(0.3j*pi)
    # the tempting wrong formula fails exactly these checks, so they can catch it
    wrong = X.astype(np.complex128) ** 0.3
    assert np.max(np.abs(spectral.wrap(np.angle(wrong[4:]) - np.angle(X[4:])))) > 1


@pytest.mark.parametrize("k", [37, 101])
def test_delta_phase_of_a_bin_centred_sinusoid(k):
    n = 8000
    f0 = k * SR / P.n_fft  # exactly at bin k's centre
    x = np.cos(2 * np.pi * f0 * np.arange(n) / SR + 0.4).astype(np.float32)
    X = spectral.stft(x, P)
    first_full = -(-P.pad_front // P.hop)  # frames before this one include the zero padding
    last_full = n // P.hop - 1  # later frames include the flush padding at the end
    ts = slice(first_full + 1, last_full + 1)  # deltas between two full frames
    expected = spectral.wrap(2 * np.pi * f0 * P.hop / SR)
    for d in (spectral.delta_phase(X, P), spectral_tf.delta_phase_tf(X, P).numpy()):
        assert d.shape == X.shape
        assert np.all(d[0] == 0)
        assert np.max(np.abs(spectral.wrap(d[ts, k] - expected))) < 1e-3
    assert abs(expected) > 0.5  # so the deviation test below is not trivially true
    for d in (
        spectral.delta_phase(X, P, deviation=True),
        spectral_tf.delta_phase_tf(X, P, deviation=True).numpy(),
    ):
        assert np.max(np.abs(d[ts, k])) < 1e-3
        assert np.all(d > -np.pi - 1e-6) and np.all(d <= np.pi + 1e-6)


@pytest.mark.parametrize("k", [37, 101])
def test_delta_phase_of_an_off_centre_sinusoid(k):
    """f0 at bin k + 0.3: the raw advance is still 2*pi*f0*hop/sr (a property of the signal, not of the
    bin), and the deviation is what is left after removing bin k's centre advance, not zero."""
    n = 8000
    f0 = (k + 0.3) * SR / P.n_fft
    x = np.cos(2 * np.pi * f0 * np.arange(n) / SR + 1.1).astype(np.float32)
    X = spectral.stft(x, P)
    first_full = -(-P.pad_front // P.hop)
    last_full = n // P.hop - 1
    ts = slice(first_full + 1, last_full + 1)  # deltas between two frames with full windows
    raw = spectral.wrap(2 * np.pi * f0 * P.hop / SR)
    deviation = spectral.wrap(raw - 2 * np.pi * k * P.hop / P.n_fft)
    assert abs(deviation) > 0.5  # 2*pi*0.3*hop/n_fft = 0.59 rad: far from the bin-centred case
    for d in (spectral.delta_phase(X, P), spectral_tf.delta_phase_tf(X, P).numpy()):
        assert np.max(np.abs(spectral.wrap(d[ts, k] - raw))) < 1e-3
    for d in (
        spectral.delta_phase(X, P, deviation=True),
        spectral_tf.delta_phase_tf(X, P, deviation=True).numpy(),
    ):
        assert np.max(np.abs(spectral.wrap(d[ts, k] - deviation))) < 1e-3


@pytest.mark.parametrize("fp", [spectral.FeatureParams(), spectral.FeatureParams(deviation=True)])
def test_features_are_causal(rng, fp):
    x = rng.standard_normal(4000).astype(np.float32)
    for t in (0, 5, 17):
        y = x.copy()
        y[(t + 1) * P.hop :] = rng.standard_normal(len(x) - (t + 1) * P.hop)
        fx = spectral.features(spectral.stft(x, P), fp, P)
        fy = spectral.features(spectral.stft(y, P), fp, P)
        np.testing.assert_allclose(fy[: t + 1], fx[: t + 1], atol=1e-6)
        assert np.max(np.abs(fy[t + 1] - fx[t + 1])) > 1e-2  # the next frame does see the change
        fxt = spectral_tf.features_tf(spectral_tf.stft_tf(x, P), fp, P).numpy()
        fyt = spectral_tf.features_tf(spectral_tf.stft_tf(y, P), fp, P).numpy()
        np.testing.assert_allclose(fyt[: t + 1], fxt[: t + 1], atol=1e-6)


@pytest.mark.parametrize("delta", [True, False])
def test_feature_shapes(rng, delta):
    fp = spectral.FeatureParams(delta_phase=delta)
    X = spectral.stft(rng.standard_normal((3, 1000)).astype(np.float32), P)
    f = spectral.features(X, fp, P)
    assert fp.channels == (4 if delta else 2)
    assert f.shape == (3, 8, 257, fp.channels) and f.dtype == np.float32
    Xc = spectral.compress(X, fp.compression)
    np.testing.assert_array_equal(f[..., 0], Xc.real)
    np.testing.assert_array_equal(f[..., 1], Xc.imag)
    if delta:
        np.testing.assert_allclose(f[..., 2] ** 2 + f[..., 3] ** 2, 1, atol=1e-5)
    assert spectral_tf.features_tf(X, fp, P).shape == f.shape


def test_params_from_config(tmp_config):
    cfg = utils.load_config(tmp_config, ["STFT.n_fft=1024", "features.delta_phase=false"])
    p = spectral.StftParams.from_config(cfg)
    assert (p.sample_rate, p.win_length, p.hop, p.n_fft, p.n_bins) == (16000, 400, 160, 1024, 513)
    assert spectral.FeatureParams.from_config(cfg).channels == 2


@pytest.mark.parametrize(
    "override,key",
    [
        ("STFT.hop_size=0.03", "hop_size"),  # hop 480 > window 400
        ("STFT.window_length=0.04", "window_length"),  # window 640 > n_fft 512
        ("STFT.hop_size=0", "hop_size"),
        ("STFT.hop_size=-0.01", "hop_size"),
        ("STFT.n_fft=0", "n_fft"),
        ("STFT.n_fft=512.5", "n_fft"),
        ("STFT.sample_rate=abc", "sample_rate"),
        ("STFT.window_length=0.02501", "window_length"),  # 400.16 samples: not whole
        ("STFT.hop_size=0.0100001", "hop_size"),  # 160.0016 samples
        ("STFT.sample_rate=22050", "window_length"),  # 551.25 samples at 22.05 kHz
    ],
)
def test_bad_stft_settings_are_one_line(tmp_config, override, key):
    # a value of the wrong type or sign is refused by load_config (utils.config_schema), the rest by
    # StftParams: either way one line naming the key
    with pytest.raises(utils.PipelineError, match=key) as e:
        spectral.StftParams.from_config(utils.load_config(tmp_config, [override]))
    assert "\n" not in str(e.value) and "STFT" in str(e.value)


def test_whole_sample_settings_pass(tmp_config):
    """Decimal seconds that are whole samples only up to float error are accepted (0.025 * 16000)."""
    cfg = utils.load_config(tmp_config, ["STFT.sample_rate=8000", "STFT.hop_size=0.025", "STFT.n_fft=200"])
    p = spectral.StftParams.from_config(cfg)
    assert (p.win_length, p.hop, p.n_fft) == (200, 200, 200)  # hop == window == n_fft is allowed


@pytest.mark.parametrize("key", ["sample_rate", "window_length", "hop_size", "n_fft"])
def test_missing_stft_key_is_a_pipeline_error(tmp_config, key):
    cfg = utils.load_config(tmp_config)
    cfg.remove_option("STFT", key)
    with pytest.raises(utils.PipelineError, match=f"{key} is missing") as e:
        spectral.StftParams.from_config(cfg)
    assert "\n" not in str(e.value)
    cfg.remove_section("STFT")
    with pytest.raises(utils.PipelineError, match="STFT"):
        spectral.StftParams.from_config(cfg)


# ----------------------------------------------------------------------------- cache


def make_dataset(
    root: Path, seconds=(0.5, 1.234, 0.8), split="training", sr=SR, name="manifest"
) -> list[dict]:
    """Tiny noisy/clean/noise wavs in the data-prep layout and their manifest in root."""
    rows = []
    for i, secs in enumerate(seconds):
        clean, noise = speech_like(secs, seed=10 + i, sr=sr), noise_like(secs, seed=50 + i, sr=sr)
        rel = {
            "clean": f"CleanSpeech_{split}/clnsp{i}.wav",
            "noise": f"Noise_{split}/noisy{i}_SNRdb_0.wav",
            "noisy": f"NoisySpeech_{split}/noisy{i}_SNRdb_0_clnsp{i}.wav",
        }
        for key, x in (("clean", clean), ("noise", noise), ("noisy", clean + noise)):
            (root / rel[key]).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / rel[key], x, sr, subtype="FLOAT")
        rows.append(
            {
                "index": i,
                **rel,
                "snr_db": 0,
                "clean_source": "synthetic",
                "clean_start_s": 0,
                "noise_source": "synthetic",
                "noise_start_s": 0,
                "gain": 1,
            }
        )
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{name}_{split}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


@pytest.fixture
def data(tmp_path):
    """(cfg, rows) with a 3-example training manifest in tmp_path/data."""
    make_dataset(tmp_path / "data")
    return utils.load_config(write_config(tmp_path)), tmp_path / "data"


def test_cache_dir(tmp_config):
    cfg = utils.load_config(tmp_config)
    assert stft_cache.cache_dir(cfg, "training") == tmp_config.parent / "Training_STFT"
    assert stft_cache.cache_dir(cfg, "testing") == tmp_config.parent / "Testing_STFT"
    with pytest.raises(utils.PipelineError):
        stft_cache.cache_dir(cfg, "train")


def test_cache_round_trip_equals_fresh_stft(data):
    cfg, root = data
    wavs = sorted(root.rglob("*.wav"))
    before = {w: (w.stat().st_mtime_ns, hashlib.sha256(w.read_bytes()).hexdigest()) for w in wavs}
    folder = STFT.build_cache(cfg, "training", workers=1)
    assert folder == stft_cache.cache_dir(cfg, "training") and folder.is_dir()
    cache = stft_cache.load_cache(folder)
    assert len(cache) == 3 and cache.noise is None and not (folder / "noise.npy").exists()
    assert isinstance(cache.noisy, np.memmap) and cache.noisy.dtype == np.complex64
    with open(folder / "index.csv", newline="") as f:
        assert tuple(csv.DictReader(f).fieldnames) == stft_cache.INDEX_COLUMNS
    np.testing.assert_array_equal(cache.offsets, np.concatenate([[0], np.cumsum(cache.n_frames)[:-1]]))
    assert cache.noisy.shape == cache.clean.shape == (cache.n_frames.sum(), 257)
    for i, row in enumerate(cache.rows):
        assert row["row"] == i and row["manifest_index"] == str(i)
        for key in ("noisy", "clean", "noise"):
            assert Path(row[key]).is_absolute() and Path(row[key]).is_file()
        x_noisy, _ = utils.read_audio(row["noisy"], SR)
        x_clean, _ = utils.read_audio(row["clean"], SR)
        assert cache.n_samples[i] == len(x_noisy) and cache.n_frames[i] == P.n_frames(len(x_noisy))
        noisy, clean = cache.example(i)
        assert type(noisy) is np.ndarray and noisy.dtype == np.complex64
        np.testing.assert_array_equal(noisy, spectral.stft(x_noisy, P))
        np.testing.assert_array_equal(clean, spectral.stft(x_clean, P))
        assert snr_db(x_clean, spectral.istft(clean, cache.params, int(cache.n_samples[i]))) >= 60
    np.testing.assert_array_equal(cache.example(-1)[0], cache.example(2)[0])
    with pytest.raises(IndexError):
        cache.example(3)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["stft"]["n_fft"] == 512 and meta["examples"] == 3
    manifest = root / "manifest_training.csv"
    assert meta["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert meta["bytes"]["total"] == sum((folder / f"{n}.npy").stat().st_size for n in ("noisy", "clean"))
    assert (folder / "config.ini").is_file()
    after = {w: (w.stat().st_mtime_ns, hashlib.sha256(w.read_bytes()).hexdigest()) for w in wavs}
    assert after == before, "input wavs must never be modified"


def test_variable_lengths_and_size_of_a_3s_example(tmp_path):
    seconds = (3.0, 0.25, 1.0 + 17 / SR, 2.0)
    make_dataset(tmp_path / "data", seconds, split="testing")
    cfg = utils.load_config(write_config(tmp_path))
    cache = stft_cache.load_cache(STFT.build_cache(cfg, "testing", workers=1))
    np.testing.assert_array_equal(cache.n_samples, [round(s * SR) for s in seconds])
    np.testing.assert_array_equal(cache.n_frames, [302, 27, 102, 202])
    for i in range(len(cache)):
        x, _ = utils.read_audio(cache.rows[i]["noisy"], SR)
        noisy, _ = cache.example(i)
        assert noisy.shape == (cache.n_frames[i], 257)
        assert snr_db(x, spectral.istft(noisy, P, int(cache.n_samples[i]))) >= 60
    # one 3-s example alone: noisy + clean within 1.3 MB (302 frames x 257 bins x 8 B x 2)
    make_dataset(tmp_path / "one" / "data", (3.0,))
    cfg1 = utils.load_config(write_config(tmp_path / "one"))
    meta = stft_cache.load_cache(STFT.build_cache(cfg1, "training", workers=1)).meta
    assert meta["bytes_per_example"] <= 1.3e6


def test_cache_noise_option(tmp_path):
    make_dataset(tmp_path / "data", (0.6, 0.9))
    cfg = utils.load_config(write_config(tmp_path, {"STFT": {"cache_noise": "true"}}))
    cache = stft_cache.load_cache(STFT.build_cache(cfg, "training", workers=1))
    assert cache.noise is not None and cache.meta["arrays"] == ["noisy", "clean", "noise"]
    for i in range(len(cache)):
        noise = cache.noise_example(i)
        np.testing.assert_array_equal(
            noise, spectral.stft(utils.read_audio(cache.rows[i]["noise"], SR)[0], P)
        )
        noisy, clean = cache.example(i)
        np.testing.assert_allclose(noisy, clean + noise, atol=1e-4)  # the STFT is linear


def test_second_run_is_a_no_op(data, capsys):
    cfg, _ = data
    folder = STFT.build_cache(cfg, "training", workers=1)
    assert STFT.is_up_to_date(cfg, "training")
    stamp = {f.name: f.stat().st_mtime_ns for f in folder.iterdir()}
    capsys.readouterr()
    STFT.build_cache(cfg, "training", workers=1)
    assert "up to date" in capsys.readouterr().out
    assert {f.name: f.stat().st_mtime_ns for f in folder.iterdir()} == stamp


def test_changed_n_fft_rebuilds(data, capsys):
    cfg, _ = data
    STFT.build_cache(cfg, "training", workers=1)
    cfg2 = utils.load_config(cfg.source, ["STFT.n_fft=1024"])
    assert not STFT.is_up_to_date(cfg2, "training")
    capsys.readouterr()
    cache = stft_cache.load_cache(STFT.build_cache(cfg2, "training", workers=1))
    assert "n_fft 512 -> 1024" in capsys.readouterr().out
    assert cache.noisy.shape[1] == 513 and cache.meta["stft"]["n_fft"] == 1024
    assert STFT.is_up_to_date(cfg2, "training") and not STFT.is_up_to_date(cfg, "training")


def test_changed_manifest_or_audio_rebuilds(data, capsys):
    cfg, root = data
    STFT.build_cache(cfg, "training", workers=1)
    make_dataset(root, (0.5, 1.234))  # a new manifest with fewer examples
    assert not STFT.is_up_to_date(cfg, "training")
    capsys.readouterr()
    cache = stft_cache.load_cache(STFT.build_cache(cfg, "training", workers=1))
    assert "manifest changed" in capsys.readouterr().out and len(cache) == 2
    # same manifest, rewritten audio
    wav = Path(cache.rows[0]["noisy"])
    sf.write(wav, 0.5 * utils.read_audio(wav)[0], SR, subtype="FLOAT")
    assert not STFT.is_up_to_date(cfg, "training")
    cache = stft_cache.load_cache(STFT.build_cache(cfg, "training", workers=1))
    np.testing.assert_array_equal(cache.example(0)[0], spectral.stft(utils.read_audio(wav)[0], P))


def test_failed_build_keeps_the_old_cache(data, monkeypatch):
    cfg, _ = data
    folder = STFT.build_cache(cfg, "training", workers=1)
    old = {f.name: f.read_bytes() for f in folder.iterdir()}
    calls = []

    def boom(x, p=P):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("disk full, say")
        return real_stft(x, p)

    real_stft = spectral.stft
    monkeypatch.setattr(spectral, "stft", boom)
    cfg2 = utils.load_config(cfg.source, ["STFT.n_fft=1024"])
    with pytest.raises(RuntimeError):
        STFT.build_cache(cfg2, "training", workers=1)
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == old
    assert not list(folder.parent.glob("Training_STFT.*")), "temp folder left behind"
    assert STFT.is_up_to_date(cfg, "training")
    monkeypatch.undo()
    STFT.build_cache(cfg2, "training", workers=1)
    assert stft_cache.load_cache(folder).noisy.shape[1] == 513


def test_stale_temp_folder_is_removed(data):
    cfg, _ = data
    target = stft_cache.cache_dir(cfg, "training")
    stale = target.with_name(f"{target.name}.999999999.tmp")  # no process has this pid
    stale.mkdir(parents=True)
    (stale / "noisy.npy").write_bytes(b"half-written")
    STFT.build_cache(cfg, "training", workers=1)
    assert not stale.exists() and len(stft_cache.load_cache(target)) == 3
    stale.mkdir()  # also removed by a run that finds the cache up to date
    STFT.build_cache(cfg, "training", workers=1)
    assert not stale.exists()


def test_missing_manifest_names_the_file(tmp_config):
    cfg = utils.load_config(tmp_config)
    with pytest.raises(utils.PipelineError) as e:
        STFT.build_cache(cfg, "testing")
    msg = str(e.value)
    assert str(tmp_config.parent / "data" / "manifest_testing.csv") in msg and "\n" not in msg
    assert not stft_cache.cache_dir(cfg, "testing").exists()
    with pytest.raises(utils.PipelineError):
        stft_cache.load_cache(stft_cache.cache_dir(cfg, "testing"))


def test_missing_wav_names_the_file(data):
    cfg, root = data
    missing = root / "CleanSpeech_training" / "clnsp1.wav"
    missing.unlink()
    with pytest.raises(utils.PipelineError) as e:
        STFT.build_cache(cfg, "training", workers=1)
    assert str(missing) in str(e.value) and "\n" not in str(e.value)
    assert not stft_cache.cache_dir(cfg, "training").exists()


def test_other_sample_rate_is_resampled(tmp_path):
    make_dataset(tmp_path / "data", (0.5, 0.7), sr=8000)
    cfg = utils.load_config(write_config(tmp_path))
    cache = stft_cache.load_cache(STFT.build_cache(cfg, "training", workers=1))
    for i in range(len(cache)):
        x, sr = utils.read_audio(cache.rows[i]["noisy"], SR)
        assert sr == SR and cache.n_samples[i] == len(x)
        np.testing.assert_array_equal(cache.example(i)[0], spectral.stft(x, P))


def test_mixtures_at_another_rate_than_stft_are_refused(data):
    """data_prep's record beside the manifests (data_prep_config.ini) says the mixtures' rate: it must be
    [STFT] sample_rate, else one line naming both files and values (hand-made audio is resampled)."""
    cfg, root = data
    made_by = root / "data_prep_config.ini"
    made_by.write_text(utils.DATA_CONFIG.read_text().replace("sample_rate = 16000", "sample_rate = 8000"))
    with pytest.raises(utils.PipelineError) as e:
        STFT.build_cache(cfg, "training", workers=1)
    assert str(e.value) == (
        f"{made_by}: [data] sample_rate=8000 differs from {cfg.source}: [STFT] sample_rate=16000; "
        "make them equal"
    )
    assert not stft_cache.cache_dir(cfg, "training").exists()
    made_by.write_text(utils.DATA_CONFIG.read_text())
    assert stft_cache.load_cache(STFT.build_cache(cfg, "training", workers=1)).params.sample_rate == SR


def test_output_does_not_depend_on_workers(tmp_path):
    make_dataset(tmp_path / "data", tuple(0.3 + 0.05 * i for i in range(20)))
    cfg_path = write_config(tmp_path)
    folders = []
    for workers in (1, 2):
        cfg = utils.load_config(cfg_path, [f"paths.stft_dir={tmp_path / f'w{workers}'}"])
        folders.append(STFT.build_cache(cfg, "training", workers=workers))
    for name in ("noisy.npy", "clean.npy", "index.csv"):
        assert (folders[0] / name).read_bytes() == (folders[1] / name).read_bytes()


def test_script_main(data, capsys):
    cfg, _ = data
    assert STFT.main(["--config", cfg.source, "--split", "training", "--workers", "1"]) == 0
    assert STFT.is_up_to_date(cfg, "training")
    assert STFT.main(["--config", cfg.source, "--split", "training", "--force"]) == 0
    assert "--force" in capsys.readouterr().out
    with pytest.raises(utils.PipelineError, match="manifest_testing.csv"):
        STFT.main(["--config", cfg.source])  # both splits; no test manifest here


def test_disk_full_is_one_line_naming_the_cache_file(data, monkeypatch, capsys):
    """os.pwrite's ENOSPC names no file: the error says which cache file and "disk full"; the old
    cache (here: none) is kept and no temp folder is left."""
    cfg, _ = data

    def full(fd, view, pos):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(STFT.os, "pwrite", full)
    rc = utils.run_main(STFT.main, ["--config", cfg.source, "--split", "training"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and err[-1].endswith("/noisy.npy: disk full")
    assert ".tmp" in err[-1]  # the temp folder's file, which is gone again:
    assert not list(stft_cache.cache_dir(cfg, "training").parent.glob("Training_STFT*"))


def test_duplicate_manifest_rows_are_refused(data):
    cfg, root = data
    manifest = root / "manifest_training.csv"
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines + [lines[2]]))  # example 1 (line 3) again as line 5
    with pytest.raises(utils.PipelineError, match=r"line 5: index='1' repeats line 3 \(duplicate row\)"):
        STFT.build_cache(cfg, "training", workers=1)
    assert not stft_cache.cache_dir(cfg, "training").exists()
