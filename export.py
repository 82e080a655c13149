"""Exports a trained model: a SavedModel (whole clip) and a TFLite streaming model (one 10-ms frame).

    python export.py --model cp/NAME/best --out exported/ [--quantize]

Writes into --out:
    saved_model/               tf.saved_model: signature "serving_default" features (B, T, F, C) -> mask
                               (B, T, F, 2) for any B and T; "enhance" wave (N,) float32 at the model
                               rate -> enhanced (N,) (STFT, features, mask, iSTFT all in the graph: no
                               Python signal code needed); causal models also get "step" (one frame
                               and the LSTM states in, mask and new states out).
    model_float32.tflite       causal models only: the streaming step, frame (1, F, C) + states h_i, c_i
                               (1, units) in -> mask (1, F, 2) + h_i_out, c_i_out out. The STFT, the features,
                               the complex product and the iSTFT stay outside the graph (as DTLN does), in
                               numpy (`TFLiteEnhancer` below, `enhance.py --tflite DIR`).
    model_dynamic_int8.tflite  with --quantize: the same with dynamic-range int8 weights.
    metadata.json              tensor names and shapes, state pairs, lookahead, STFT and feature settings.
    config.ini                 the model's resolved config.

Lookahead L > 0 is not in the TFLite graph: the step's n-th output is the mask of frame n - L, so a
runner keeps the last L STFT frames in a delay buffer, drops the first L outputs and feeds L zero frames
at the end of a stream (what model.StreamingMask and enhance.FrameStream do). States start at zero.

TFLite inference uses the LiteRT interpreter (`ai-edge-litert`; tf.lite.Interpreter is gone from
TensorFlow 2.21). The variables are frozen into constants before conversion: a converted graph that
still reads resource variables runs without error but returns garbage (NaN) in LiteRT.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import enhance
import STFT
import utils

FLOAT_FILE = "model_float32.tflite"
QUANT_FILE = "model_dynamic_int8.tflite"
METADATA = "metadata.json"


# ----------------------------------------------------------------------------- export (needs TensorFlow)


def _state_names(n_layers: int) -> list[str]:
    return [f"{s}_{i}" for i in range(n_layers) for s in "hc"]


def _step_function(model, cfg):
    """tf.function(frame, h_0, c_0, ...) -> {"mask", "h_0_out", ...} running model.streaming_step_model."""
    import model as M

    tf = M.tf
    p = M.ModelParams.from_config(cfg)
    n_bins, channels = M.feature_shape(cfg)
    step = M.streaming_step_model(model, cfg)
    names = _state_names(p.lstm_layers)
    specs = [tf.TensorSpec((1, n_bins, channels), tf.float32, name="frame")]
    specs += [tf.TensorSpec((1, p.lstm_units), tf.float32, name=n) for n in names]

    def fn(*args):
        out = step(list(args), training=False)
        return {"mask": out[0], **{f"{n}_out": s for n, s in zip(names, out[1:])}}

    return tf.function(fn, input_signature=specs), specs


def _clip_function(model, cfg):
    import model as M

    tf = M.tf
    n_bins, channels = M.feature_shape(cfg)
    spec = tf.TensorSpec((None, None, n_bins, channels), tf.float32, name="features")
    return tf.function(lambda features: {"mask": model(features, training=False)}, input_signature=[spec])


def _wave_function(model, cfg):
    """tf.function(wave (N,)) -> {"enhanced": (N,)} at the model rate, the whole chain in the graph.

    Built from the TF twins of the STFT code (same framing, features and iSTFT as training), so a
    SavedModel user needs no Python signal code: this equals enhance.Enhancer's offline output.
    """
    import model as M

    tf = M.tf
    sp, fp = STFT.StftParams.from_config(cfg), STFT.FeatureParams.from_config(cfg)

    def fn(wave):
        X = STFT.stft_tf(wave, sp)[None]  # (1, T, F)
        mask = model(STFT.features_tf(X, fp, sp), training=False)  # lookahead pad/crop is in the model
        return {"enhanced": STFT.istft_tf(M.apply_mask(X, mask)[0], sp, length=tf.shape(wave)[0])}

    return tf.function(fn, input_signature=[tf.TensorSpec((None,), tf.float32, name="wave")])


def save_savedmodel(model, cfg, folder: Path, causal: bool) -> dict:
    """tf.saved_model.save of a tf.Module holding the model; written to a temp folder and renamed."""
    import shutil
    import tempfile

    import model as M

    tf = M.tf
    module = tf.Module()
    module.model = model
    module.clip = _clip_function(model, cfg)
    module.enhance = _wave_function(model, cfg)
    signatures = {
        "serving_default": module.clip.get_concrete_function(),
        "enhance": module.enhance.get_concrete_function(),
    }
    if causal:
        module.step, _ = _step_function(model, cfg)
        signatures["step"] = module.step.get_concrete_function()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        tf.saved_model.save(module, str(tmp), signatures=signatures)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {name: _signature_info(fn) for name, fn in signatures.items()}


def _signature_info(fn) -> dict:
    ins = fn.structured_input_signature[0]
    outs = fn.structured_outputs
    return {
        "inputs": {s.name: [-1 if d is None else d for d in s.shape] for s in ins},
        "outputs": {k: [-1 if d is None else d for d in v.shape] for k, v in outs.items()},
    }


def convert_tflite(model, cfg, quantize: bool) -> bytes:
    """The streaming step as a TFLite flatbuffer (float32, or dynamic-range int8 weights)."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    import model as M

    tf = M.tf
    step, specs = _step_function(model, cfg)
    concrete = step.get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)  # weights -> constants (see the module docstring)

    def fn(*args):  # re-wrapped so the TFLite signature keeps the input and output names
        flat = frozen(*args)
        return {
            k: tf.identity(v) for k, v in tf.nest.pack_sequence_as(concrete.structured_outputs, flat).items()
        }

    wrapped = tf.function(fn, input_signature=specs)
    module = tf.Module()
    module.fn = wrapped
    converter = tf.lite.TFLiteConverter.from_concrete_functions([wrapped.get_concrete_function()], module)
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def export(model_dir, out, quantize: bool = False) -> dict:
    """Writes the SavedModel, TFLite model(s), metadata.json and config.ini into `out`; returns metadata."""
    import model as M

    model, cfg = M.load_trained(model_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    p = M.ModelParams.from_config(cfg)
    sp, fp = STFT.StftParams.from_config(cfg), STFT.FeatureParams.from_config(cfg)
    meta = {
        "format_version": 1,
        "model": str(Path(model_dir).resolve()),
        "architecture": p.architecture,
        "causal": p.causal,
        "lookahead_frames": p.lookahead_frames if p.causal else None,
        "algorithmic_latency_ms": M.algorithmic_latency_ms(cfg) if p.causal else None,
        "stft": {
            "sample_rate": sp.sample_rate,
            "win_length": sp.win_length,
            "hop": sp.hop,
            "n_fft": sp.n_fft,
            "n_bins": sp.n_bins,
            "window": "periodic hann, zero-padded at its end to n_fft",
            "framing": "causal, not centred: frame t covers samples [t*hop - (win_length-hop), t*hop + hop)",
            "istft": "weighted overlap-add (synthesis window = analysis window) / summed squared window",
        },
        "features": {
            "compression": fp.compression,
            "delta_phase": fp.delta_phase,
            "deviation": fp.deviation,
            "channels": ["Re Xc", "Im Xc"] + (["cos dphi", "sin dphi"] if fp.delta_phase else []),
            "definition": "Xc = |X|^p exp(j angle X); dphi[t] = angle(X[t] conj(X[t-1])), dphi[0] = 0",
        },
        "mask": "(F, 2) = (Re, Im) of a complex mask; S_hat = (Re + j Im) * X, X = uncompressed noisy STFT",
        "saved_model": {
            "path": "saved_model",
            "signatures": save_savedmodel(model, cfg, out / "saved_model", p.causal),
        },
    }
    if p.causal:
        names = _state_names(p.lstm_layers)
        files = {"float32": FLOAT_FILE, **({"dynamic_range_int8": QUANT_FILE} if quantize else {})}
        for kind, name in files.items():
            with utils.atomic_write(out / name, "wb") as f:
                f.write(convert_tflite(model, cfg, quantize=kind != "float32"))
        meta["tflite"] = {
            "files": files,
            "signature": "serving_default",
            **_tflite_io(out / FLOAT_FILE),
            "states": [
                {"input": n, "output": f"{n}_out", "shape": [1, p.lstm_units], "initial": "zeros"}
                for n in names
            ],
            "lookahead": "output n is the mask of frame n - L: delay the STFT frames by L, drop the first L "
            "outputs, feed L zero frames at the end of a stream",
        }
    else:
        meta["tflite"] = None
        meta["tflite_skipped"] = (
            f"architecture={p.architecture} is not causal: no frame-by-frame streaming model"
        )
    utils.save_config(cfg, out / "config.ini")
    with utils.atomic_write(out / METADATA, "w") as f:
        json.dump(meta, f, indent=2)
    return meta


def _tflite_io(path: Path) -> dict:
    """Signature names plus the underlying tensor names/shapes of a TFLite file."""
    it = _interpreter(path)
    sig = it.get_signature_runner()
    details = sig.get_input_details(), sig.get_output_details()
    return {
        "inputs": [{"name": k, "tensor": v["name"], "shape": v["shape"].tolist(), "dtype": "float32"}
                   for k, v in sorted(details[0].items())],
        "outputs": [{"name": k, "tensor": v["name"], "shape": v["shape"].tolist(), "dtype": "float32"}
                    for k, v in sorted(details[1].items())],
    }  # fmt: skip


# ----------------------------------------------------------------------------- TFLite inference (no TF)


def _interpreter(path: Path, num_threads: int = 1):
    """A LiteRT interpreter with its default XNNPACK delegate, which takes the whole step graph (every op).

    Measured on one core (EPYC, default model): invoke 64 us float32 / 17 us int8 with XNNPACK against
    92-115 / 50 us with the built-in kernels alone; experimental_preserve_all_tensors only adds memory.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise utils.PipelineError(
            "ai_edge_litert: not installed (pip install ai-edge-litert; TF 2.21 has no tf.lite.Interpreter)"
        ) from e
    it = Interpreter(model_path=str(path), num_threads=num_threads)
    it.allocate_tensors()
    return it


class TFLiteRunner:
    """enhance.py's frame runner (step, for HopStream) and block runner (push, for FrameStream) over the
    TFLite step: LiteRT tensors set and read by index.

    The plain Interpreter calls (set_tensor, invoke, get_tensor) are used instead of the signature
    runner, which resizes and reallocates every input tensor on each call. The states stay in the
    interpreter: after each step the output states are copied into the state inputs, ready for the next.
    """

    def __init__(self, path: Path, meta: dict, num_threads: int = 1):
        self.interpreter = _interpreter(path, num_threads)
        sig = self.interpreter.get_signature_runner(meta["tflite"]["signature"])
        ins, outs = sig.get_input_details(), sig.get_output_details()
        del sig  # a live signature runner counts as a tensor view: invoke() would refuse to run
        states = meta["tflite"]["states"]
        self._frame, self._mask = ins["frame"]["index"], outs["mask"]["index"]
        self._states = [(ins[s["input"]]["index"], outs[s["output"]]["index"]) for s in states]
        self._zeros = [np.zeros(s["shape"], np.float32) for s in states]
        self.lookahead = int(meta["lookahead_frames"])
        self.n_bins = int(meta["stft"]["n_bins"])
        self.channels = len(meta["features"]["channels"])
        self.reset()

    def reset(self) -> None:
        for (state, _), zeros in zip(self._states, self._zeros):
            self.interpreter.set_tensor(state, zeros)
        self.frames_in = 0

    def step(self, frame: np.ndarray) -> np.ndarray | None:
        """One frame (F, C) float32 -> mask (F, 2) of frame n - L, None for the first L frames."""
        it = self.interpreter
        it.set_tensor(self._frame, frame[None])
        it.invoke()
        for state, new in self._states:
            it.set_tensor(state, it.get_tensor(new))
        self.frames_in += 1
        return it.get_tensor(self._mask)[0] if self.frames_in > self.lookahead else None

    def push(self, feats: np.ndarray) -> np.ndarray:
        """Frames (k, F, C) -> the masks (m, F, 2) they complete (offline blocks: batched STFT outside)."""
        masks = [m for m in map(self.step, feats) if m is not None]
        return np.stack(masks) if masks else np.zeros((0, self.n_bins, 2), np.float32)

    def flush(self) -> np.ndarray:
        """Feeds the L zero frames of the lookahead: the masks (m, F, 2) of the last frames; then resets."""
        masks = self.push(np.zeros((self.lookahead, self.n_bins, self.channels), np.float32))
        self.reset()
        return masks


class TFLiteEnhancer(enhance.BaseEnhancer):
    """Enhances waveforms, streams and files with an exported TFLite streaming model (LiteRT, no TensorFlow).

    Everything outside the network (STFT, features, complex product, iSTFT, lookahead delay, chunking)
    is enhance.py's, so its output equals the Keras model's to float32 rounding.
    """

    def __init__(self, path, quantized: bool = False, num_threads: int = 1):
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        meta_file = folder / METADATA
        if not meta_file.is_file():
            raise utils.PipelineError(f"{meta_file}: not found (expected a folder written by export.py)")
        self.meta = json.loads(meta_file.read_text())
        if not self.meta.get("tflite"):
            raise utils.PipelineError(
                f"{folder}: {self.meta.get('tflite_skipped', 'no TFLite model exported')}"
            )
        files = self.meta["tflite"]["files"]
        if path.is_dir():
            key = "dynamic_range_int8" if quantized else "float32"
            if key not in files:
                raise utils.PipelineError(f"{folder}: no {key} model (export with --quantize)")
            path = folder / files[key]
        if not path.is_file():
            raise utils.PipelineError(f"{path}: not found")
        self.path, self.num_threads = path, num_threads
        s, f = self.meta["stft"], self.meta["features"]
        self.sp = STFT.StftParams(s["sample_rate"], s["win_length"], s["hop"], s["n_fft"])
        self.fp = STFT.FeatureParams(f["compression"], f["delta_phase"], f["deviation"])
        self.causal, self.lookahead = True, int(self.meta["lookahead_frames"])
        self.source = str(path)
        config = folder / "config.ini"
        self.cfg = utils.load_config(config) if config.is_file() else None

    @classmethod
    def from_export(cls, path, quantized: bool = False, num_threads: int = 1) -> TFLiteEnhancer:
        return cls(path, quantized, num_threads)

    def runner(self, streaming: bool = True) -> TFLiteRunner:
        return TFLiteRunner(self.path, self.meta, self.num_threads)  # frame and block runner in one

    def _enhance_model_rate(self, x: np.ndarray) -> np.ndarray:
        out = []
        for channel in x:
            stream = self.frame_stream(streaming=False)
            out.append(np.concatenate([stream.process(channel), stream.flush()]))
        return np.stack(out)


# ----------------------------------------------------------------------------- command line


def _self_check(out: Path, model_dir, meta: dict) -> str:
    """Runs 100 random frames through the Keras step and each TFLite file: max |mask difference|."""
    import model as M

    model, cfg = M.load_trained(model_dir)
    rng = np.random.default_rng(0)
    n_bins, channels = M.feature_shape(cfg)
    feats = rng.standard_normal((100, n_bins, channels)).astype(np.float32)
    step, _ = _step_function(model, cfg)
    states = {s["input"]: np.zeros(s["shape"], np.float32) for s in meta["tflite"]["states"]}
    want = []
    for f in feats:
        result = step(f[None], *states.values())
        states = {k: result[f"{k}_out"] for k in states}
        want.append(result["mask"].numpy()[0])
    want = np.stack(want)
    parts = []
    for kind, name in meta["tflite"]["files"].items():
        r = TFLiteRunner(out / name, {**meta, "lookahead_frames": 0})
        got = r.push(feats)
        parts.append(f"{kind} max |mask - Keras| = {np.abs(got - want).max():.2e}")
    return "; ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Export a trained model: SavedModel (whole clip: features -> mask) and, for causal "
        "models, a TFLite streaming step (one frame's features and the LSTM states in, mask and new states "
        "out; STFT/iSTFT outside the graph) plus metadata.json. Run enhanced audio through it with "
        "`python enhance.py --tflite DIR ...`.",
        epilog="example: python export.py --model cp/default/best --out exported/ --quantize",
    )
    parser.add_argument("--model", type=Path, default=None, help="folder written by model.save_trained "
                        "(default: as enhance.py: pretrained/ or <checkpoint_dir>/<run>/best)")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--quantize", action="store_true", help="also write a dynamic-range int8 TFLite model"
    )
    utils.add_config_args(parser)
    args = parser.parse_args(argv)
    utils.refuse_model_overrides(args.overrides, "export.py")
    cfg = utils.config_from_args(args)
    model_dir = args.model or enhance.default_model_dir(cfg)
    meta = export(model_dir, args.out, args.quantize)
    signatures = ", ".join(meta["saved_model"]["signatures"])
    print(f"SavedModel: {args.out / 'saved_model'}  (signatures: {signatures})")
    if meta["tflite"]:
        for kind, name in meta["tflite"]["files"].items():
            size = (args.out / name).stat().st_size / 1e6
            print(f"TFLite {kind}: {args.out / name} ({size:.2f} MB)")
        print(f"check: {_self_check(args.out, model_dir, meta)}")
        latency, lookahead = meta["algorithmic_latency_ms"], meta["lookahead_frames"]
        print(f"algorithmic latency {latency:.1f} ms (lookahead {lookahead} frames)")
    else:
        print(f"TFLite: skipped ({meta['tflite_skipped']})")
    print(f"metadata: {args.out / METADATA}")
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
