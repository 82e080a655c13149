"""tflite_step.py: the streaming path's default TFLite step == the Keras step; its cache (hash-keyed,
converted once, rebuilt when stale, read-only model folders fall back to the user cache)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from conftest import SR, make_model, noisy
from conftest import run_enhance_cli as run_cli

import enhance
import model as M
import tflite_step
import utils

pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert is not installed")

# The stated tolerance: the TFLite float32 step equals the Keras step to float32 rounding. Masks and
# waveforms within 1e-4 (measured ~1e-6 on the tiny models; the shipped model: see README).
ATOL = 1e-4


@pytest.fixture
def counted_convert(monkeypatch):
    calls = []
    real = tflite_step.convert

    def convert(model, cfg, kind="float32", packed=False):
        calls.append(kind)
        return real(model, cfg, kind, packed)

    monkeypatch.setattr(tflite_step, "convert", convert)
    return calls


@pytest.fixture
def user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / tflite_step.PROJECT / "tflite"


@pytest.mark.parametrize("lookahead", [0, 2])
def test_default_stream_is_tflite_and_equals_keras_step(tmp_path, lookahead, user_cache):
    folder = make_model(tmp_path / "m", lookahead_frames=lookahead)
    lite = enhance.Enhancer.from_pretrained(folder)
    keras_enh = enhance.Enhancer(lite.model, lite.cfg, lite.source, engine="keras")
    assert lite.engine == "tflite"
    runner = lite.runner(streaming=True)
    assert isinstance(runner, tflite_step.TFLiteRunner)  # the default streaming path is the TFLite step
    assert len(runner._states) == 1  # its states packed in one tensor: one copy per frame
    # Masks, frame by frame (states carried), on feature frames of a real-looking signal.
    import spectral

    feats = spectral.features(spectral.stft(noisy(0.8037, 40), lite.sp), lite.fp, lite.sp)
    ref = M.StreamingMask(lite.model, lite.cfg)
    want = [m for m in map(ref.step, feats) if m is not None] + list(ref.flush())
    got = [m for m in map(runner.step, feats) if m is not None] + list(runner.flush())
    assert len(got) == len(want) == len(feats)
    np.testing.assert_allclose(np.stack(got), np.stack(want), atol=ATOL, rtol=0)
    # Waveforms through both streams, 10-ms blocks.
    x = noisy(1.1037, 41)
    outs = []
    for enh in (lite, keras_enh):
        s = enh.stream()
        outs.append(np.concatenate([s.process(x[i : i + 160]) for i in range(0, len(x), 160)] + [s.flush()]))
    np.testing.assert_allclose(outs[0], outs[1], atol=ATOL, rtol=0)
    assert np.abs(outs[0][lite.delay :] - x).max() > 1e-3  # the model does change the signal
    assert not list(user_cache.parent.glob("**/*.tflite"))  # cached beside the weights, not elsewhere


def test_converted_once_then_cached(tmp_path, counted_convert, user_cache):
    folder = make_model(tmp_path / "m")
    first = enhance.Enhancer.from_pretrained(folder)
    path = first.step_path()
    assert path.parent == folder and path.name.startswith("streaming_step_float32-")
    assert counted_convert == ["float32"]
    second = enhance.Enhancer.from_pretrained(folder)  # another process / run: the cache is used
    assert second.step_path() == path and counted_convert == ["float32"]
    assert not list(folder.glob(".*.tmp"))  # written atomically: no temp file left


def test_stale_cache_rebuilt(tmp_path, counted_convert, user_cache):
    folder = make_model(tmp_path / "m")
    enh = enhance.Enhancer.from_pretrained(folder)
    old = enh.step_path()
    weights = enh.model.get_weights()
    weights[0] = weights[0] + 0.01  # retrained weights in the same folder
    enh.model.set_weights(weights)
    M.save_trained(enh.model, enh.cfg, folder)
    new = enhance.Enhancer.from_pretrained(folder).step_path()
    assert new != old and new.is_file() and not old.exists()  # the stale conversion is replaced
    assert counted_convert == ["float32", "float32"]
    # The key covers the config too (a changed lookahead changes the model's output timing).
    model, cfg = M.load_trained(folder)
    cfg2 = utils.load_config(folder / "config.ini")
    cfg2["model"]["lookahead_frames"] = "1"
    assert tflite_step.cache_key(model, cfg, "float32") != tflite_step.cache_key(model, cfg2, "float32")
    assert tflite_step.cache_key(model, cfg, "float32") != tflite_step.cache_key(model, cfg, "dynamic_int8")


def test_read_only_model_folder_uses_user_cache(tmp_path, monkeypatch, capsys, user_cache):
    folder = make_model(tmp_path / "m")
    real = tflite_step._writable
    monkeypatch.setattr(tflite_step, "_writable", lambda f: f != folder and real(f))  # (root ignores chmod)
    path = enhance.Enhancer.from_pretrained(folder).step_path()
    assert path.parent == user_cache and path.is_file()
    assert not list(folder.glob("*.tflite"))
    assert f"{folder}: not writable" in capsys.readouterr().err
    # The user cache is found next time without converting again.
    monkeypatch.setattr(tflite_step, "convert", lambda *a: pytest.fail("converted again"))
    assert enhance.Enhancer.from_pretrained(folder).step_path() == path


def test_cli_engine_keras_equals_default(tmp_path, capsys, user_cache):
    folder = make_model(tmp_path / "m", lookahead_frames=2)
    x = noisy(1.2037, 42)
    sf.write(tmp_path / "a.wav", x, SR, subtype="FLOAT")
    outs = {}
    for engine in ("tflite", "keras", "tflite-int8"):
        out = tmp_path / engine
        rc, _, err = run_cli(capsys, tmp_path / "a.wav", "-o", out, "--model", folder, "--streaming",
                             "--engine", engine)  # fmt: skip
        assert rc == 0, err
        assert f"engine = {engine}" in (out / "enhance_config.ini").read_text()
        outs[engine], _ = sf.read(out / "a.wav", dtype="float32")
    np.testing.assert_allclose(outs["tflite"], outs["keras"], atol=ATOL, rtol=0)
    assert 1e-6 < np.abs(outs["tflite-int8"] - outs["tflite"]).max() < 0.05  # the int8 step: close
    with pytest.raises(SystemExit):
        enhance.main([str(tmp_path / "a.wav"), "-o", str(tmp_path / "x"), "--engine", "onnx"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_engine_streams_the_tflite_step(tmp_path, user_cache):
    """evaluate.py --engine tflite: each file streamed through the step, equal to the Keras estimate."""
    from conftest import make_test_set

    import evaluate
    import spectral

    folder = make_model(tmp_path / "m", lookahead_frames=1)
    make_test_set(tmp_path / "data")
    tasks = evaluate.read_manifest(tmp_path / "data" / "manifest_testing.csv")
    _, cfg = M.load_trained(folder)
    p = spectral.StftParams.from_config(cfg)
    est = {}
    for engine in ("keras", "tflite", "tflite-int8"):
        loaded = evaluate._load_model(folder, engine)
        est[engine] = [y for _, y, _ in evaluate._model_outputs(loaded, tasks, SR, p, 8)]
    assert evaluate._load_model(folder, "tflite")[3].step_path().name.startswith("streaming_step_float32-")
    for a, b in zip(est["tflite"], est["keras"]):
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)
    diff = max(np.abs(a - b).max() for a, b in zip(est["tflite-int8"], est["keras"]))
    assert 1e-6 < diff < 0.05  # int8 weights: close, not identical


def test_readme_live_source_example(tmp_path, monkeypatch, user_cache):
    """The README's Enhancer.stream() example, run as written on a tiny model: equals offline."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def microphone" in b)
    folder = make_model(tmp_path / "m", lookahead_frames=2)
    x = noisy(1.3037, 43)
    sf.write(tmp_path / "noisy_16k.wav", x, SR, subtype="FLOAT")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(enhance, "default_model_dir", lambda cfg=None: folder)
    scope = {}
    exec(code.replace("Enhancer.from_pretrained()", f"Enhancer.from_pretrained({str(folder)!r})"), scope)
    assert scope["enh"].engine == "tflite"
    np.testing.assert_allclose(scope["enhanced"], scope["enh"](x), atol=ATOL, rtol=0)
