"""export.py: SavedModel == Keras; TFLite streaming step (LiteRT) == Keras; metadata; enhance.py --tflite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import SR, make_model, noisy

import enhance
import export
import model as M
import utils

tf = M.tf
litert = pytest.importorskip(
    "ai_edge_litert.interpreter",
    reason="ai-edge-litert is not installed (.venv/bin/pip install ai-edge-litert)",
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny causal model with 2 frames of lookahead, exported with the quantized variant."""
    root = tmp_path_factory.mktemp("export")
    model_dir = make_model(root, lookahead_frames=2)
    export.export(model_dir, root / "exp", quantize=True)
    return model_dir, root / "exp"


def test_files_and_metadata(exported):
    model_dir, out = exported
    meta = json.loads((out / "metadata.json").read_text())
    _, cfg = M.load_trained(model_dir)
    assert (out / "saved_model" / "saved_model.pb").is_file() and (out / "config.ini").is_file()
    assert set(meta["tflite"]["files"]) == {"float32", "dynamic_range_int8"}
    for name in meta["tflite"]["files"].values():
        assert (out / name).stat().st_size > 1000
    assert meta["lookahead_frames"] == 2 and meta["algorithmic_latency_ms"] == pytest.approx(45.0)
    stft = {k: meta["stft"][k] for k in ("sample_rate", "win_length", "hop", "n_fft")}
    assert stft == {"sample_rate": 16000, "win_length": 400, "hop": 160, "n_fft": 512}
    units = cfg.getint("model", "lstm_units")
    assert [s["input"] for s in meta["tflite"]["states"]] == ["h_0", "c_0", "h_1", "c_1"]
    assert all(s["shape"] == [1, units] for s in meta["tflite"]["states"])
    inputs = {d["name"]: d["shape"] for d in meta["tflite"]["inputs"]}
    outputs = {d["name"]: d["shape"] for d in meta["tflite"]["outputs"]}
    assert inputs["frame"] == [1, 257, 4] and outputs["mask"] == [1, 257, 2]
    assert outputs["h_1_out"] == [1, units]
    assert meta["saved_model"]["signatures"]["serving_default"]["inputs"]["features"] == [-1, -1, 257, 4]


def test_savedmodel_matches_keras(exported, rng):
    model_dir, out = exported
    model, cfg = M.load_trained(model_dir)
    loaded = tf.saved_model.load(str(out / "saved_model"))
    x = rng.standard_normal((2, 23, 257, 4)).astype(np.float32)
    got = loaded.signatures["serving_default"](features=tf.constant(x))["mask"].numpy()
    np.testing.assert_allclose(got, M.mask_function(model)(x).numpy(), atol=1e-5, rtol=0)
    # The step signature equals model.streaming_step_model.
    step = M.streaming_step_model(model, cfg)
    states = [np.zeros((1, cfg.getint("model", "lstm_units")), np.float32)] * 4
    want = step([x[:1, 0], *states])
    names = ["h_0", "c_0", "h_1", "c_1"]
    got = loaded.signatures["step"](
        frame=tf.constant(x[:1, 0]), **{n: tf.constant(s) for n, s in zip(names, states)}
    )
    np.testing.assert_allclose(got["mask"].numpy(), want[0].numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["c_1_out"].numpy(), want[4].numpy(), atol=1e-5, rtol=0)


def test_savedmodel_enhance_signature(exported):
    """wave -> wave in the SavedModel (STFT, features, mask, iSTFT in the graph) == Enhancer offline."""
    model_dir, out = exported
    meta = json.loads((out / "metadata.json").read_text())
    sig = meta["saved_model"]["signatures"]["enhance"]
    assert sig == {"inputs": {"wave": [-1]}, "outputs": {"enhanced": [-1]}}
    enhance_fn = tf.saved_model.load(str(out / "saved_model")).signatures["enhance"]
    enh = enhance.Enhancer.from_pretrained(model_dir)
    for x in (noisy(0.0031, 25), noisy(1.5037, 24)):  # also shorter than one hop
        got = enhance_fn(wave=tf.constant(x))["enhanced"].numpy()
        assert got.shape == x.shape
        np.testing.assert_allclose(got, enh(x), atol=1e-4, rtol=0)
    assert np.abs(got - x).max() > 1e-3  # the model does change the signal


def test_tflite_float32_matches_keras(exported):
    """A waveform through LiteRT (frame by frame, lookahead as a frame delay) == Keras offline."""
    model_dir, out = exported
    x = noisy(1.5037, 21)
    want = enhance.Enhancer.from_pretrained(model_dir)(x)
    lite = enhance.TFLiteEnhancer.from_export(out)
    np.testing.assert_allclose(lite(x), want, atol=1e-4, rtol=0)
    # Streaming through TFLite with odd chunks: the same after the documented delay.
    stream = lite.stream()
    y = np.concatenate([stream.process(x[i : i + 97]) for i in range(0, len(x), 97)] + [stream.flush()])
    np.testing.assert_allclose(y[stream.delay :], want, atol=1e-4, rtol=0)


def test_tflite_stream_resets_its_states(exported):
    """The LSTM states live in the interpreter: flush() zeroes them, so a second pass is identical."""
    _, out = exported
    stream = enhance.TFLiteEnhancer.from_export(out).frame_stream()
    x = noisy(0.5037, 27)
    first = np.concatenate([stream.process(x), stream.flush()])
    second = np.concatenate([stream.process(x[:1000]), stream.process(x[1000:]), stream.flush()])
    assert len(first) == len(x)
    np.testing.assert_array_equal(second, first)


def test_tflite_runs_without_tensorflow(exported):
    """An exported model runs on numpy + LiteRT alone (streaming.py, tflite_step.TFLiteRunner), and
    export.py does not import enhance.py (dependencies point one way: enhance -> streaming <- export)."""
    _, out = exported
    code = (
        "import sys, numpy as np, enhance, export; "
        "y = enhance.TFLiteEnhancer.from_export(sys.argv[1])(np.ones(4000, np.float32)); "
        "assert y.shape == (4000,); "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code, str(out)], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    assert "import enhance" not in (root / "export.py").read_text()


def test_tflite_quantized_close(exported):
    model_dir, out = exported
    x = noisy(1.5037, 22)
    want = enhance.Enhancer.from_pretrained(model_dir)(x)
    got = enhance.TFLiteEnhancer.from_export(out, quantized=True)(x)
    snr = 10 * np.log10(np.sum(want**2) / np.sum((want - got) ** 2))
    assert 15 < snr < 200  # int8 weights: close to float, but not identical


def test_enhance_cli_with_tflite(exported, tmp_path, capsys):
    model_dir, out = exported
    x = noisy(1.2037, 23)
    sf.write(tmp_path / "g.wav", x, SR, subtype="FLOAT")
    rc = enhance.main([str(tmp_path / "g.wav"), "-o", str(tmp_path / "lite"), "--tflite", str(out)])
    assert rc == 0, capsys.readouterr().err
    y, _ = sf.read(tmp_path / "lite" / "g.wav", dtype="float32")
    np.testing.assert_allclose(y, enhance.Enhancer.from_pretrained(model_dir)(x), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_cli_self_check(exported, tmp_path, capsys):
    """export.py's printed check: the TFLite step against the Keras step on random frames."""
    model_dir, _ = exported
    assert export.main(["--model", str(model_dir), "--out", str(tmp_path / "exp")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("check:"))
    assert float(line.split("float32 max |mask - Keras| = ")[1].split(";")[0]) < 1e-4


@pytest.mark.slow
def test_cli_and_non_causal(tmp_path, capsys):
    bidir = make_model(tmp_path / "bi", architecture="bidirectional")
    assert export.main(["--model", str(bidir), "--out", str(tmp_path / "exp")]) == 0
    assert "TFLite: skipped" in capsys.readouterr().out
    meta = json.loads((tmp_path / "exp" / "metadata.json").read_text())
    assert meta["tflite"] is None and not meta["causal"]
    assert list(meta["saved_model"]["signatures"]) == ["serving_default", "enhance"]  # no "step"
    x = noisy(0.7037, 26)
    got = tf.saved_model.load(str(tmp_path / "exp" / "saved_model")).signatures["enhance"](
        wave=tf.constant(x)
    )
    np.testing.assert_allclose(got["enhanced"].numpy(), enhance.Enhancer.from_pretrained(bidir)(x), atol=1e-4)
    with pytest.raises(utils.PipelineError, match="not causal"):
        enhance.TFLiteEnhancer.from_export(tmp_path / "exp")


def test_gru_and_input_norm_export(tmp_path):
    """A GRU model with the causal input norm: its states (norm, h_0, h_1) are named in the metadata,
    and LiteRT frame by frame (exported and cached packed steps) == Keras offline."""
    model_dir = make_model(tmp_path, cell="gru", input_norm="true", lookahead_frames=1)
    out = tmp_path / "exp"
    export.export(model_dir, out)
    meta = json.loads((out / "metadata.json").read_text())
    assert [(s["input"], s["shape"]) for s in meta["tflite"]["states"]] == [
        ("norm", [1, 257]), ("h_0", [1, 32]), ("h_1", [1, 32])
    ]  # fmt: skip
    x = 3.0 * noisy(1.5037, 23)  # far from the norm's starting mean: its state matters
    want = enhance.Enhancer.from_pretrained(model_dir)(x)
    np.testing.assert_allclose(enhance.TFLiteEnhancer.from_export(out)(x), want, atol=1e-4, rtol=0)
    stream = enhance.Enhancer.from_pretrained(model_dir).stream()  # the cached packed step
    y = np.concatenate([stream.process(x[i : i + 160]) for i in range(0, len(x), 160)] + [stream.flush()])
    np.testing.assert_allclose(y[stream.delay :], want, atol=1e-4, rtol=0)
