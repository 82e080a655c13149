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
                               numpy (`enhance.TFLiteEnhancer`, `enhance.py --tflite DIR`).
    model_dynamic_int8.tflite  with --quantize: the same with dynamic-range int8 weights.
    metadata.json              tensor names and shapes, state pairs, lookahead, STFT and feature settings.
    config.ini                 the model's resolved config.

Lookahead L > 0 is not in the TFLite graph: the step's n-th output is the mask of frame n - L, so a
runner keeps the last L STFT frames in a delay buffer, drops the first L outputs and feeds L zero frames
at the end of a stream (streaming.MaskRunner does it for every runner). States start at zero.

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

import spectral
import spectral_tf
import tflite_step
import utils

FLOAT_FILE = "model_float32.tflite"
QUANT_FILE = "model_dynamic_int8.tflite"
METADATA = tflite_step.EXPORT_METADATA


# ----------------------------------------------------------------------------- export (needs TensorFlow)

_step_function = tflite_step.step_function


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
    sp, fp = spectral.StftParams.from_config(cfg), spectral.FeatureParams.from_config(cfg)

    def fn(wave):
        X = spectral_tf.stft_tf(wave, sp)[None]  # (1, T, F)
        mask = model(spectral_tf.features_tf(X, fp, sp), training=False)  # lookahead pad/crop is in the model
        return {"enhanced": spectral_tf.istft_tf(M.apply_mask(X, mask)[0], sp, length=tf.shape(wave)[0])}

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
    return tflite_step.convert(model, cfg, "dynamic_int8" if quantize else "float32")


def export(model_dir, out, quantize: bool = False) -> dict:
    """Writes the SavedModel, TFLite model(s), metadata.json and config.ini into `out`; returns metadata."""
    import model as M

    model, cfg = M.load_trained(model_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    p = M.ModelParams.from_config(cfg)
    sp, fp = spectral.StftParams.from_config(cfg), spectral.FeatureParams.from_config(cfg)
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
        files = {"float32": FLOAT_FILE, **({"dynamic_range_int8": QUANT_FILE} if quantize else {})}
        for kind, name in files.items():
            with utils.atomic_write(out / name, "wb") as f:
                f.write(convert_tflite(model, cfg, quantize=kind != "float32"))
        meta["tflite"] = {
            "files": files,
            "signature": "serving_default",
            **_tflite_io(out / FLOAT_FILE),
            "states": [
                {"input": n, "output": f"{n}_out", "shape": [1, size], "initial": "zeros"}
                for n, size in M.state_specs(cfg)
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


def _interpreter(path: Path, num_threads: int = 1):
    return tflite_step.interpreter(path, num_threads)


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
        r = tflite_step.TFLiteRunner(out / name, {**meta, "lookahead_frames": 0})
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
    model_dir = args.model or utils.default_model_dir(cfg)
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
