"""The TFLite streaming step shared by enhance.py and export.py: conversion, LiteRT runner, cache.

Dependencies flow one way: enhance.py and export.py import this module; it imports neither (only
streaming.py, whose MaskRunner does the runner's lookahead bookkeeping). Running a step needs no
TensorFlow: only convert() and cache_key() import it.

    convert(model, cfg, kind)        -> flatbuffer bytes of the one-frame step (needs TensorFlow)
    TFLiteRunner(path, meta)         frame runner (step) and block runner (push) over LiteRT (no TF)
    step_meta(cfg)                   what TFLiteRunner needs (states, lookahead, shapes), from a config
    cached_step(model, cfg, kind, folder)
                                     the step converted on first use and cached beside the weights,
                                     keyed by a hash of the weights + config + kind + converter version;
                                     its states packed in one tensor (one copy per frame: step_meta)

Kinds: "float32"; "dynamic_int8" (dynamic-range quantization: int8 weights, float activations).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

import streaming
import utils

KINDS = ("float32", "dynamic_int8")
CACHE_VERSION = 2  # (2: packed states) bump when the conversion changes: every cached step is then rebuilt
CACHE_PREFIX = "streaming_step"
EXPORT_METADATA = "metadata.json"  # written by export.py, read by enhance.TFLiteEnhancer
PROJECT = "speech-enhancement-wilson2018"


# ----------------------------------------------------------------------------- conversion (needs TF)


def step_function(model, cfg, packed: bool = False):
    """tf.function(frame, h_0, c_0, ...) -> {"mask", "h_0_out", ...} running model.streaming_step_model
    (states: model.state_specs).

    packed=True: all the states in one tensor, tf.function(frame, state (1, total size)) ->
    {"mask", "state_out"} (the states concatenated in order): one state copy per frame instead of one per
    state (enhance.py's cached step; export.py keeps the named states of its documented signature).
    """
    import model as M

    tf = M.tf
    n_bins, channels = M.feature_shape(cfg)
    step = M.streaming_step_model(model, cfg)
    names, sizes = zip(*M.state_specs(cfg))
    specs = [tf.TensorSpec((1, n_bins, channels), tf.float32, name="frame")]
    if packed:
        specs.append(tf.TensorSpec((1, sum(sizes)), tf.float32, name="state"))

        def fn(frame, state):
            out = step([frame, *tf.split(state, list(sizes), axis=-1)], training=False)
            return {"mask": out[0], "state_out": tf.concat(out[1:], axis=-1)}

        return tf.function(fn, input_signature=specs), specs
    specs += [tf.TensorSpec((1, size), tf.float32, name=n) for n, size in zip(names, sizes)]

    def fn(*args):
        out = step(list(args), training=False)
        return {"mask": out[0], **{f"{n}_out": s for n, s in zip(names, out[1:])}}

    return tf.function(fn, input_signature=specs), specs


def convert(model, cfg, kind: str = "float32", packed: bool = False) -> bytes:
    """The streaming step as a TFLite flatbuffer: float32, or dynamic-range int8 weights.

    The variables are frozen into constants first: a converted graph that still reads resource
    variables runs without error but returns garbage (NaN) in LiteRT.
    """
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    import model as M

    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: choose from {', '.join(KINDS)}")
    tf = M.tf
    step, specs = step_function(model, cfg, packed)
    concrete = step.get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)

    def fn(*args):  # re-wrapped so the TFLite signature keeps the input and output names
        flat = frozen(*args)
        return {
            k: tf.identity(v) for k, v in tf.nest.pack_sequence_as(concrete.structured_outputs, flat).items()
        }

    wrapped = tf.function(fn, input_signature=specs)
    module = tf.Module()
    module.fn = wrapped
    converter = tf.lite.TFLiteConverter.from_concrete_functions([wrapped.get_concrete_function()], module)
    if kind == "dynamic_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


# ----------------------------------------------------------------------------- inference (no TF)


def interpreter(path: Path, num_threads: int = 1):
    """A LiteRT interpreter with its default XNNPACK delegate, which takes the whole step graph (every op).

    Measured on one core (EPYC, default model): invoke 64 us float32 / 17 us int8 with XNNPACK against
    92-115 / 50 us with the built-in kernels alone. One thread: a 10-ms step is too small to split.
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


def litert_missing() -> str | None:
    """Why the TFLite engine cannot run here (None when it can)."""
    import importlib.util

    if importlib.util.find_spec("ai_edge_litert") is None:
        return "ai-edge-litert is not installed (pip install ai-edge-litert)"
    return None


def step_meta(cfg, packed: bool = True) -> dict:
    """The part of export.py's metadata.json that TFLiteRunner reads, from a model config (for a step
    converted with `packed` states, as cached_step does)."""
    import model as M
    import spectral

    p = M.ModelParams.from_config(cfg)
    specs = M.state_specs(cfg)
    sp, fp = spectral.StftParams.from_config(cfg), spectral.FeatureParams.from_config(cfg)
    return {
        "lookahead_frames": p.lookahead_frames,
        "stft": {"n_bins": sp.n_bins},
        "features": {"channels": ["Re Xc", "Im Xc"] + (["cos dphi", "sin dphi"] if fp.delta_phase else [])},
        "tflite": {
            "signature": "serving_default",
            "states": [
                {"input": n, "output": f"{n}_out", "shape": [1, size], "initial": "zeros"}
                for n, size in specs
            ]
            if not packed
            else [
                {
                    "input": "state",
                    "output": "state_out",
                    "shape": [1, sum(size for _, size in specs)],
                    "initial": "zeros",
                }
            ],  # fmt: skip
        },
    }


class TFLiteRunner(streaming.MaskRunner):
    """A frame runner (step, for streaming.HopStream) and block runner (push, for streaming.FrameStream)
    over the TFLite step: LiteRT tensors set and read by index.

    The plain Interpreter calls (set_tensor, invoke, get_tensor) are used instead of the signature
    runner, which resizes and reallocates every input tensor on each call. The states stay in the
    interpreter: after each step the output states are copied into the state inputs, ready for the next.
    """

    def __init__(self, path: Path, meta: dict, num_threads: int = 1):
        self.interpreter = interpreter(path, num_threads)
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

    def _reset_state(self) -> None:
        for (state, _), zeros in zip(self._states, self._zeros):
            self.interpreter.set_tensor(state, zeros)

    def _network_frame(self, frame: np.ndarray) -> np.ndarray:
        it = self.interpreter
        it.set_tensor(self._frame, frame[None])
        it.invoke()
        for state, new in self._states:
            it.set_tensor(state, it.get_tensor(new))
        return it.get_tensor(self._mask)[0]


# ----------------------------------------------------------------------------- cache


def cache_key(model, cfg, kind: str) -> str:
    """sha256 (hex, 16 chars) of the weights, the model's signal + network config, the kind, the versions."""
    import model as M

    h = hashlib.sha256()
    for w in model.get_weights():
        w = np.ascontiguousarray(w)
        h.update(f"{w.dtype.str}{w.shape}".encode())
        h.update(w.tobytes())
    relevant = {s: dict(cfg.items(s)) for s in ("STFT", "features", "model") if cfg.has_section(s)}
    h.update(json.dumps(relevant, sort_keys=True).encode())
    h.update(f"{kind}|{CACHE_VERSION}|tf {M.tf.__version__}".encode())
    return h.hexdigest()[:16]


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / PROJECT / "tflite"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
        return True
    except OSError:
        return False


def cache_folders(model_dir: Path | None) -> list[Path]:
    """Where a cached step is looked for and written, in order: beside the weights, the user's cache
    (~/.cache/<project>/tflite), the temp folder."""
    folders = [Path(model_dir)] if model_dir is not None else []
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return folders + [user_cache_dir(), Path(tempfile.gettempdir()) / f"{PROJECT}-tflite-{uid}"]


def cached_step(model, cfg, kind: str = "float32", model_dir: Path | str | None = None, log=None) -> Path:
    """The TFLite step of `model` for `kind`, converted on first use and cached; returns its path.

    The file is named <CACHE_PREFIX>_<kind>-<key>.tflite (key = cache_key): a changed weight, config
    or converter version gives another name, so a stale file is never used; it is replaced (older
    files of that kind beside the weights are removed). Written atomically (temp file + rename), so
    concurrent first uses at worst convert twice. A folder that cannot be written (a read-only
    install) is skipped for the next one, with a note on `log` (default stderr).
    """
    log = log or (lambda line: print(line, file=sys.stderr))
    name = f"{CACHE_PREFIX}_{kind}-{cache_key(model, cfg, kind)}.tflite"
    folders = cache_folders(Path(model_dir) if model_dir is not None else None)
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    data = None
    for i, folder in enumerate(folders):
        if not _writable(folder):
            if i + 1 < len(folders):
                log(f"{folder}: not writable; the TFLite {kind} step is cached in {folders[i + 1]} instead")
            continue
        if data is None:
            log(f"converting the model to a TFLite {kind} streaming step (once; cached as {folder / name})")
            data = convert(model, cfg, kind, packed=True)
        try:
            with utils.atomic_write(folder / name, "wb") as f:
                f.write(data)
        except OSError as e:
            log(f"{folder / name}: {utils.os_error_line(e)}; trying the next cache folder")
            continue
        stale = folder.glob(f"{CACHE_PREFIX}_{kind}-*.tflite") if model_dir is not None and i == 0 else ()
        for old in stale:  # older conversions of this model folder (shared caches hold other models)
            if old.name != name:
                try:
                    old.unlink()
                except OSError:
                    pass
        return folder / name
    raise utils.PipelineError(
        f"no writable folder for the TFLite step cache (tried {', '.join(map(str, folders))}); "
        "use --engine keras"
    )
