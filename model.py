"""Models (by name), the bounded complex mask, the compressed loss and the streaming step.

Architectures (config `[model] architecture`):
    causal         per-frame Dense projection of the flattened (F * C) features, a stack of
                   unidirectional LSTMs, Dense layer(s), bounded complex mask. `lookahead_frames` = L
                   future frames come from delaying the output: the input gets L zero frames at its
                   end and the first L network outputs are dropped, so output frame t is network frame
                   t + L and depends on input frames <= t + L exactly. Streaming runs the same network
                   frame by frame, discards its first L outputs and feeds L zero frames at the end.
    bidirectional  the same with bidirectional LSTMs (the paper's non-causal reference; L is ignored).
    seed           the reference repo's stack (convs 1x7, 7x1, 5x5 dilated in time by 1..16, 1x1 to 8,
                   BLSTM 1023, Dense 873 relu, Dense 514), corrected: compressed features in, bounded
                   complex mask applied as a true complex product. Non-causal.

Bounded complex mask: the network emits z = (a, b) per bin and the mask is
    M = z * mask_bound * tanh(r) / r,   r = sqrt(a^2 + b^2 + eps)
i.e. phase angle(z) (free), magnitude mask_bound * tanh(|z|) (< mask_bound, smooth at z = 0). The
output layer starts with a small kernel and the bias a = atanh(1 / mask_bound) (clipped), so the initial
mask is close to 1 everywhere (S_hat ~ X) with some spread: neither zero nor saturated.

Run `python model.py --summary [--config FILE] [--set model.architecture=seed]` for parameter and
multiply-add counts and the algorithmic latency.
"""

from __future__ import annotations

import argparse
import configparser
import math
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import spectral
import streaming
import utils
from recurrent import FastGRU, FastLSTM

utils.quiet_tensorflow()
import keras  # noqa: E402  (after quiet_tensorflow)
import tensorflow as tf  # noqa: E402
from keras import layers, ops  # noqa: E402

ARCHITECTURES = ("causal", "bidirectional", "seed")
# How a causal model uses its L frames of lookahead: delay = the LSTMs run L frames ahead of the output
# (the paper's delayed output); context = each frame's projection is filtered over frames t..t+L
# before the LSTMs (the future as input; the lookahead study's variant, offline only).
LOOKAHEAD_MODES = ("delay", "context")
CELLS = ("lstm", "gru")
# [model] input_norm: the running mean of |Xc| per bin starts at INPUT_NORM_START (about the mean |Xc| of
# the test mixtures at data_prep's levels) and forgets with time constant INPUT_NORM_SECONDS.
INPUT_NORM_START = 0.5
INPUT_NORM_SECONDS = 1.0
WEIGHTS_FILE = "model.weights.h5"
CONFIG_FILE = "config.ini"


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ModelParams:
    architecture: str = "causal"
    lookahead_frames: int = 0
    lookahead_mode: str = "delay"
    projection_units: int = 256
    cell: str = "lstm"
    lstm_units: int = 256
    lstm_layers: int = 2
    input_norm: bool = False
    dense_units: int = 256
    dense_layers: int = 1
    mask_bound: float = 2.0
    seed_conv_filters: int = 32
    seed_blstm_units: int = 1023
    seed_dense_units: int = 873
    xla_lstm: bool = True

    @classmethod
    def from_config(cls, cfg) -> ModelParams:
        """From [model]; a key the config lacks (one that predates it) has config.ini's default."""
        kw = utils.config_values(cfg, "model", cls.__dataclass_fields__)
        for name in ("architecture", "lookahead_mode", "cell"):  # the keys that name a choice
            kw[name] = kw[name].lower()
        p = cls(**kw)
        p.validate(cfg)
        return p

    def validate(self, cfg=None) -> None:
        src = _source(cfg)
        if self.architecture not in ARCHITECTURES:
            raise utils.PipelineError(
                f"{src}: [model] architecture={self.architecture!r}: expected one of "
                + ", ".join(ARCHITECTURES)
            )
        if self.lookahead_frames < 0:
            raise utils.PipelineError(f"{src}: [model] lookahead_frames must be >= 0")
        if self.lookahead_mode not in LOOKAHEAD_MODES:
            raise utils.PipelineError(
                f"{src}: [model] lookahead_mode={self.lookahead_mode!r}: expected one of "
                + ", ".join(LOOKAHEAD_MODES)
            )
        if self.cell not in CELLS:
            raise utils.PipelineError(
                f"{src}: [model] cell={self.cell!r}: expected one of " + ", ".join(CELLS)
            )
        if self.input_norm and not self.causal:
            raise utils.PipelineError(f"{src}: [model] input_norm needs architecture=causal")
        if self.mask_bound <= 0:
            raise utils.PipelineError(f"{src}: [model] mask_bound must be > 0")
        sizes = ("projection_units", "lstm_units", "lstm_layers", "dense_units", "seed_conv_filters")
        for name in sizes + ("seed_blstm_units", "seed_dense_units"):
            if getattr(self, name) < 1:
                raise utils.PipelineError(f"{src}: [model] {name} must be >= 1")
        if self.dense_layers < 0:
            raise utils.PipelineError(f"{src}: [model] dense_layers must be >= 0")

    @property
    def causal(self) -> bool:
        return self.architecture == "causal"

    @property
    def future_context(self) -> bool:
        """Lookahead given as input context (a temporal filter over frames t..t+L) rather than as a
        delayed output: offline only, the streaming step carries no frame buffer."""
        return self.causal and self.lookahead_mode == "context" and self.lookahead_frames > 0

    @property
    def streamable(self) -> bool:
        return self.causal and not self.future_context


def _source(cfg) -> str:
    return Path(getattr(cfg, "source", "config.ini")).name if cfg is not None else "model.py"


def _signal_params(cfg) -> tuple[spectral.StftParams, spectral.FeatureParams]:
    return spectral.StftParams.from_config(cfg), spectral.FeatureParams.from_config(cfg)


def feature_shape(cfg) -> tuple[int, int]:
    """(F, C): frequency bins and feature channels the model expects per frame."""
    sp, fp = _signal_params(cfg)
    return sp.n_bins, fp.channels


# ----------------------------------------------------------------------------- layers


@keras.saving.register_keras_serializable(package="se")
class BoundedComplexMask(layers.Layer):
    """(..., F, 2) logits z = (a, b) -> mask z * bound * tanh(r) / r with r = sqrt(a^2 + b^2 + eps)."""

    def __init__(self, bound: float = 2.0, eps: float = 1e-8, **kwargs):
        super().__init__(**kwargs)
        self.bound, self.eps = float(bound), float(eps)

    def call(self, z):
        r = ops.sqrt(ops.sum(ops.square(z), axis=-1, keepdims=True) + self.eps)
        return z * (self.bound * ops.tanh(r) / r)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "bound": self.bound, "eps": self.eps}


@keras.saving.register_keras_serializable(package="se")
class TimePad(layers.Layer):
    """Appends `frames` zero frames on the time axis (axis 1): the lookahead's future of the last frame."""

    def __init__(self, frames: int, **kwargs):
        super().__init__(**kwargs)
        self.frames = int(frames)

    def call(self, x):
        pad = [[0, 0], [0, self.frames]] + [[0, 0]] * (len(x.shape) - 2)
        return ops.pad(x, pad)

    def compute_output_shape(self, s):
        return (s[0], None if s[1] is None else s[1] + self.frames, *s[2:])

    def get_config(self):
        return {**super().get_config(), "frames": self.frames}


@keras.saving.register_keras_serializable(package="se")
class CausalInputNorm(layers.Layer):
    """Streaming-safe per-bin normalisation of the compressed spectrum: channels 0 and 1 (Re, Im of Xc)
    are divided by m_t = a m_(t-1) + (1 - a) |Xc_t|, a running mean over time (per bin, per clip) that
    starts at `start`; the other channels pass. The mask is still applied to the unnormalised X, so the
    network sees level- and tilt-free inputs and no gain needs undoing.

    x (B, T, F, C) -> same shape; or [x, state (B, F)] -> [y, state'], the state being m - start (zeros =
    a fresh clip), so that blocks and single frames continue exactly where the last call stopped.
    """

    def __init__(self, alpha: float, start: float = INPUT_NORM_START, eps: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.alpha, self.start, self.eps = float(alpha), float(start), float(eps)

    def call(self, inputs):
        stateful = isinstance(inputs, (list, tuple))
        x, state = inputs if stateful else (inputs, None)
        mag = tf.sqrt(tf.square(x[..., 0]) + tf.square(x[..., 1]))  # (B, T, F)
        m0 = (tf.zeros_like(mag[:, 0]) if state is None else state) + self.start
        a = self.alpha
        means = tf.scan(lambda m, v: a * m + (1 - a) * v, tf.transpose(mag, [1, 0, 2]), initializer=m0)
        means = tf.transpose(means, [1, 0, 2])
        scale = 1.0 / (means + self.eps)
        y = tf.concat([x[..., :2] * scale[..., None], x[..., 2:]], axis=-1)
        return [y, means[:, -1] - self.start] if stateful else y

    def compute_output_shape(self, s):
        return [s[0], s[1]] if isinstance(s, (list, tuple)) and isinstance(s[0], (list, tuple)) else s

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "start": self.start, "eps": self.eps}


@keras.saving.register_keras_serializable(package="se")
class TimeDrop(layers.Layer):
    """Drops the first `frames` frames (axis 1): output t becomes network frame t + frames."""

    def __init__(self, frames: int, **kwargs):
        super().__init__(**kwargs)
        self.frames = int(frames)

    def call(self, x):
        return x[:, self.frames :]

    def compute_output_shape(self, s):
        return (s[0], None if s[1] is None else s[1] - self.frames, *s[2:])

    def get_config(self):
        return {**super().get_config(), "frames": self.frames}


# ----------------------------------------------------------------------------- builders


def _mask_head(x, p: ModelParams, n_bins: int):
    """Linear (a, b) logits per bin -> bounded complex mask (B, T, F, 2)."""
    x = layers.Dense(
        2 * n_bins,
        name="mask_logits",
        kernel_initializer=keras.initializers.VarianceScaling(0.1, "fan_avg", "uniform", seed=1),
    )(x)
    x = layers.Reshape((-1, n_bins, 2), name="to_bins")(x)
    return BoundedComplexMask(p.mask_bound, name="mask")(x)


def _init_mask_bias(model: keras.Model, p: ModelParams) -> None:
    """Sets the real logit's bias so that the initial |mask| ~ 1 (capped below saturation)."""
    layer = model.get_layer("mask_logits")
    a0 = math.atanh(min(1.0 / p.mask_bound, 0.9))
    bias = np.zeros(layer.bias.shape, np.float32)
    bias[0::2] = a0  # (F, 2) layout: even entries are the real parts
    layer.bias.assign(bias)


RNN_LAYERS = {"lstm": FastLSTM, "gru": FastGRU}


def rnn_layer_name(p: ModelParams, i: int) -> str:
    """Name of the i-th causal recurrent layer (lstm_i or gru_i)."""
    return f"{p.cell}_{i}"


def _recurrent_stack(x, p: ModelParams, bidirectional: bool):
    rnn = RNN_LAYERS[p.cell]
    for i in range(p.lstm_layers):
        if bidirectional:
            x = layers.Bidirectional(
                rnn(p.lstm_units, xla=p.xla_lstm, return_sequences=True), name=f"b{rnn_layer_name(p, i)}"
            )(x)
        else:
            x = rnn(p.lstm_units, xla=p.xla_lstm, return_sequences=True, name=rnn_layer_name(p, i))(x)
    return x


def input_norm_alpha(cfg) -> float:
    """Per-frame forgetting factor of CausalInputNorm: exp(-hop / INPUT_NORM_SECONDS)."""
    sp, _ = _signal_params(cfg)
    return math.exp(-sp.hop / sp.sample_rate / INPUT_NORM_SECONDS)


def state_specs(cfg) -> list[tuple[str, int]]:
    """The streaming state of a causal model, in the order every stateful graph takes it: (name, size)
    for the input norm's running mean (norm, F) if any, then per layer h_i, c_i (LSTM) or h_i (GRU)."""
    p = ModelParams.from_config(cfg)
    specs = [("norm", feature_shape(cfg)[0])] if p.input_norm else []
    kinds = "hc" if p.cell == "lstm" else "h"
    return specs + [(f"{s}_{i}", p.lstm_units) for i in range(p.lstm_layers) for s in kinds]


def _build_recurrent(p: ModelParams, n_bins: int, channels: int, alpha: float) -> keras.Model:
    inp = keras.Input((None, n_bins, channels), name="features")
    lookahead = p.lookahead_frames if p.causal else 0
    x = CausalInputNorm(alpha, name="input_norm")(inp) if p.input_norm else inp
    x = TimePad(lookahead, name="lookahead_pad")(x) if lookahead else x
    x = layers.Reshape((-1, n_bins * channels), name="flatten_bins")(x)
    x = layers.Dense(p.projection_units, activation="relu", name="projection")(x)
    if p.future_context:  # T + L padded frames -> T: frame t sees projections t..t+L
        x = layers.DepthwiseConv1D(lookahead + 1, padding="valid", name="future_context")(x)
    x = _recurrent_stack(x, p, bidirectional=not p.causal)
    if lookahead and not p.future_context:
        x = TimeDrop(lookahead, name="lookahead_drop")(x)
    for i in range(p.dense_layers):
        x = layers.Dense(p.dense_units, activation="relu", name=f"dense_{i}")(x)
    return keras.Model(inp, _mask_head(x, p, n_bins), name=p.architecture)


def _build_seed(p: ModelParams, n_bins: int, channels: int) -> keras.Model:
    inp = keras.Input((None, n_bins, channels), name="features")
    x = inp
    convs = [((1, 7), (1, 1)), ((7, 1), (1, 1))] + [((5, 5), (d, 1)) for d in (1, 2, 4, 8, 16)]
    for i, (kernel, dilation) in enumerate(convs):
        x = layers.Conv2D(
            p.seed_conv_filters,
            kernel,
            padding="same",
            dilation_rate=dilation,
            activation="relu",
            name=f"conv_{i}",
        )(x)
    x = layers.Conv2D(8, 1, activation="relu", name=f"conv_{len(convs)}")(x)
    # The seed concatenated channel after channel along frequency: (T, F, 8) -> (T, 8, F) -> (T, 8F).
    x = layers.Permute((1, 3, 2), name="channels_first")(x)
    x = layers.Reshape((-1, 8 * n_bins), name="flatten_bins")(x)
    x = layers.Bidirectional(
        FastLSTM(p.seed_blstm_units, xla=p.xla_lstm, return_sequences=True), name="blstm_0"
    )(x)
    x = layers.Dense(p.seed_dense_units, activation="relu", name="dense_0")(x)
    return keras.Model(inp, _mask_head(x, p, n_bins), name="seed")


def build_model(cfg) -> keras.Model:
    """Features (B, T, F, C) float32 -> bounded complex mask (B, T, F, 2) float32; T is dynamic."""
    p = ModelParams.from_config(cfg)
    n_bins, channels = feature_shape(cfg)
    if p.architecture == "seed":
        model = _build_seed(p, n_bins, channels)
    else:
        model = _build_recurrent(p, n_bins, channels, input_norm_alpha(cfg))
    _init_mask_bias(model, p)
    return model


# ----------------------------------------------------------------------------- mask and loss


def apply_mask(X, M):
    """True complex product S_hat = (M_re + j M_im) * X with the UNCOMPRESSED noisy STFT X (B, T, F)."""
    X = tf.convert_to_tensor(X, tf.complex64)
    M = tf.convert_to_tensor(M, tf.float32)
    return tf.complex(M[..., 0], M[..., 1]) * X


def _compressed_parts(S, power: float, eps: float):
    """(|S|^p, Re S_c, Im S_c) with |S| = sqrt(re^2 + im^2 + eps): smooth, finite gradient at S = 0."""
    re, im = tf.math.real(S), tf.math.imag(S)
    mag2 = re * re + im * im + eps
    mag_p = tf.pow(mag2, power / 2)
    scale = tf.pow(mag2, (power - 1) / 2)  # |S|^p / |S|
    return mag_p, re * scale, im * scale


def compressed_loss(S, S_hat, power: float = 0.3, lam: float = 0.113, eps: float = 1e-8, mask=None):
    """Wilson et al.: mean(| |S|^p - |S_hat|^p |^2) + lam * mean(|S_c - S_hat_c|^2), a tf.float32 scalar.

    S, S_hat: complex (B, T, F). `mask` (B, T) (1 = valid frame, 0 = padding) turns both means into
    weighted means over the valid frames, so padded batches give the loss of their real content.
    """
    S = tf.convert_to_tensor(S, tf.complex64)
    S_hat = tf.convert_to_tensor(S_hat, tf.complex64)
    m, re, im = _compressed_parts(S, power, eps)
    m_hat, re_hat, im_hat = _compressed_parts(S_hat, power, eps)
    per_bin = tf.square(m - m_hat) + lam * (tf.square(re - re_hat) + tf.square(im - im_hat))
    if mask is None:
        return tf.reduce_mean(per_bin)
    w = tf.cast(tf.convert_to_tensor(mask), tf.float32)[..., None]
    total = tf.reduce_sum(w) * tf.cast(tf.shape(per_bin)[-1], tf.float32)
    return tf.reduce_sum(per_bin * w) / tf.maximum(total, 1.0)


def loss_from_config(cfg):
    """compressed_loss with [loss] power / lam / epsilon: callable(S, S_hat, mask=None)."""
    power, lam, eps = utils.config_values(cfg, "loss", ("power", "lam", "epsilon")).values()

    def loss(S, S_hat, mask=None):
        return compressed_loss(S, S_hat, power, lam, eps, mask)

    return loss


# ----------------------------------------------------------------------------- inference

_MASK_FNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def mask_function(model: keras.Model):
    """A cached tf.function features (B, T, F, C) -> mask, traced once for any B and T."""
    fn = _MASK_FNS.get(model)
    if fn is None:
        spec = tf.TensorSpec([None, None, *model.input_shape[2:]], tf.float32)
        fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        _MASK_FNS[model] = fn
    return fn


def enhance_spectrogram(model: keras.Model, X, cfg) -> np.ndarray:
    """numpy noisy STFT (T, F) or (B, T, F) -> enhanced STFT S_hat (same shape) complex64."""
    sp, fp = _signal_params(cfg)
    X = np.asarray(X, dtype=np.complex64)
    if X.ndim not in (2, 3) or X.shape[-1] != sp.n_bins:
        raise utils.PipelineError(
            f"model.py: expected a (T, {sp.n_bins}) or (B, T, {sp.n_bins}) STFT, got {X.shape}"
        )
    single = X.ndim == 2
    Xb = X[None] if single else X
    mask = mask_function(model)(tf.constant(spectral.features(Xb, fp, sp)))
    S_hat = apply_mask(tf.constant(Xb), mask).numpy()
    return S_hat[0] if single else S_hat


# ----------------------------------------------------------------------------- save / load


def save_trained(model: keras.Model, cfg, folder) -> None:
    """Writes folder/model.weights.h5 and folder/config.ini, each via a temp file + rename.

    The weights are replaced first and the config last, so a crash leaves either the old pair or the
    new weights with the old config only when both describe the same architecture (a retrain).
    """
    folder = Path(folder)
    with utils.atomic_path(folder / WEIGHTS_FILE, suffix=".weights.h5") as tmp:  # Keras wants the suffix
        model.save_weights(str(tmp), overwrite=True)
    utils.save_config(cfg, folder / CONFIG_FILE)


def load_trained(folder) -> tuple[keras.Model, configparser.ConfigParser]:
    """Rebuilds the model from folder/config.ini with build_model and loads folder/model.weights.h5."""
    folder = Path(folder)
    weights, config = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    for f in (weights, config):
        if not f.is_file():
            raise utils.PipelineError(f"{f}: not found (expected a folder written by save_trained)")
    cfg = utils.load_config(config)
    model = build_model(cfg)
    try:
        model.load_weights(weights)
    except ValueError as e:
        raise utils.PipelineError(f"{weights}: does not match the model in {config} ({e})") from e
    except OSError as e:  # h5py: truncated or not HDF5 at all
        first = (str(e).splitlines() or [type(e).__name__])[0][:150]
        raise utils.PipelineError(f"{weights}: not a readable weights file ({first})") from e
    return model, cfg


# ----------------------------------------------------------------------------- streaming


def _require_causal(cfg) -> ModelParams:
    p = ModelParams.from_config(cfg)
    if not p.causal:
        raise utils.PipelineError(
            f"model.py: streaming needs [model] architecture=causal "
            f"(got {p.architecture}, which sees the future)"
        )
    if p.future_context:
        raise utils.PipelineError(
            "model.py: streaming needs [model] lookahead_mode=delay (lookahead_mode=context runs "
            "whole clips only)"
        )
    return p


def _per_layer(states: list, p: ModelParams) -> list[list]:
    """The recurrent states of state_specs (after any norm state) grouped per layer: [h, c] or [h]."""
    k = 2 if p.cell == "lstm" else 1
    return [states[i * k : (i + 1) * k] for i in range(p.lstm_layers)]


def _stateful_norm(model: keras.Model, graph: str) -> CausalInputNorm:
    """The model's input norm for a stateful graph: a twin built from its config (it has no weights;
    Keras cannot reuse a layer called without state in a graph that calls it with state)."""
    config = model.get_layer("input_norm").get_config()
    return CausalInputNorm.from_config({**config, "name": f"{graph}_input_norm"})


def streaming_step_model(model: keras.Model, cfg) -> keras.Model:
    """One 10-ms step of a causal model, sharing its layers (and weights), for streaming and TFLite.

    Inputs  [frame (1, F, C), *states] (state_specs: [norm (1, F)], h_0, c_0, h_1, ... each (1, size))
    Outputs [mask (1, F, 2), *new states]             (network frame n for input frame n)
    Lookahead L is handled outside, as StreamingMask does: discard the first L masks (mask n is
    output frame n - L) and at the end of a stream feed L zero frames to emit the last L masks. Start
    with all-zero states (what Keras uses for a whole clip). Feature frame n is spectral.features(X)[n],
    which needs X[n - 1] for the delta phase (zero phase advance at n = 0).
    Converts with tf.lite.TFLiteConverter.from_keras_model: signature inputs frame, h_0, c_0, ...;
    outputs output_0 (mask), output_1... (new states in the input order).
    """
    p = _require_causal(cfg)
    n_bins, channels = feature_shape(cfg)
    frame = keras.Input(batch_shape=(1, n_bins, channels), name="frame")
    states = [keras.Input(batch_shape=(1, size), name=name) for name, size in state_specs(cfg)]
    x, rest, new_states = frame, list(states), []
    if p.input_norm:
        x, norm = _stateful_norm(model, "step")([layers.Reshape((1, n_bins, channels))(x), rest.pop(0)])
        x = layers.Reshape((n_bins, channels))(x)
        new_states.append(norm)
    x = layers.Reshape((n_bins * channels,), name="step_flatten")(x)
    x = model.get_layer("projection")(x)
    for i, mine in enumerate(_per_layer(rest, p)):
        x, new = model.get_layer(rnn_layer_name(p, i)).cell(x, mine)
        new_states += list(new) if isinstance(new, (list, tuple)) else [new]
    for i in range(p.dense_layers):
        x = model.get_layer(f"dense_{i}")(x)
    z = layers.Reshape((n_bins, 2), name="step_to_bins")(model.get_layer("mask_logits")(x))
    mask = model.get_layer("mask")(z)
    return keras.Model([frame, *states], [mask, *new_states], name="streaming_step")


class StreamingMask(streaming.MaskRunner):
    """A frame runner (streaming.HopStream): frame-by-frame masks of a causal model, equal to the
    whole-clip output (to float rounding).

    step(frame (F, C) float32) -> mask (F, 2) for input frame n - L, or None while the first L frames
    (the lookahead) fill; flush() feeds L zero frames, exactly like the whole-clip padding, returns the
    remaining masks (m, F, 2) and resets. The states (state_specs) are carried explicitly
    between calls of one tf.function with a fixed signature: ~0.4 ms per 10-ms frame on one core for
    the default model (bench/bench_model.py), mostly call overhead.
    """

    def __init__(self, model: keras.Model, cfg):
        p = _require_causal(cfg)
        self.lookahead = p.lookahead_frames
        self.n_bins, self.channels = feature_shape(cfg)
        self.step_model = streaming_step_model(model, cfg)
        self._state_shapes = [(1, size) for _, size in state_specs(cfg)]
        tensor_specs = tuple(tf.TensorSpec(s, tf.float32) for s in self._state_shapes)
        frame_spec = tf.TensorSpec((self.n_bins, self.channels), tf.float32)
        self._fn = tf.function(self._step_graph, input_signature=[frame_spec, tensor_specs])
        self.reset()

    def _step_graph(self, frame, states):
        out = self.step_model([frame[None], *states], training=False)
        return out[0][0], tuple(out[1:])

    def _reset_state(self) -> None:
        self.states = tuple(tf.zeros(s, tf.float32) for s in self._state_shapes)

    def _network_frame(self, frame) -> np.ndarray:
        mask, self.states = self._fn(tf.constant(np.asarray(frame, np.float32)), self.states)
        return mask.numpy()


def chunk_model(model, cfg):
    """The causal network on a block of frames with its LSTM states in and out (shared weights).

    Inputs [features (1, T, F, C), *states] -> outputs [mask (1, T, F, 2), *new states] (state_specs),
    without the lookahead pad/crop (the runner does it). Network frame n of consecutive blocks equals
    network frame n of the whole clip, because the states are all the network carries from one frame to
    the next. Refuses non-streamable models (bidirectional, lookahead_mode=context).
    """
    p = _require_causal(cfg)
    n_bins, channels = feature_shape(cfg)
    feats = keras.Input(batch_shape=(1, None, n_bins, channels), name="chunk")
    states = [keras.Input(batch_shape=(1, size), name=name) for name, size in state_specs(cfg)]
    x, rest, new_states = feats, list(states), []
    if p.input_norm:
        x, norm = _stateful_norm(model, "chunk")([x, rest.pop(0)])
        new_states.append(norm)
    x = keras.layers.Reshape((-1, n_bins * channels), name="chunk_flatten")(x)
    x = model.get_layer("projection")(x)
    for i, mine in enumerate(_per_layer(rest, p)):
        orig = model.get_layer(rnn_layer_name(p, i))
        # Same layer class and weights, but returning its final state (Keras layers cannot change that).
        rnn = orig.__class__.from_config(
            {**orig.get_config(), "return_state": True, "name": f"chunk_rnn_{i}"}
        )
        x, *new = rnn(x, initial_state=mine)
        rnn.set_weights(orig.get_weights())
        new_states += new
    for i in range(p.dense_layers):
        x = model.get_layer(f"dense_{i}")(x)
    mask = model.get_layer("mask")(model.get_layer("to_bins")(model.get_layer("mask_logits")(x)))
    return keras.Model([feats, *states], [mask, *new_states], name="chunk_step")


def chunk_function(model, cfg):
    """tf.function(features (1, T, F, C), states) -> (masks (T, F, 2), states), traced once for any T."""
    n_bins, channels = feature_shape(cfg)
    net = chunk_model(model, cfg)
    spec = tf.TensorSpec((1, None, n_bins, channels), tf.float32)
    state_spec = tuple(tf.TensorSpec((1, size), tf.float32) for _, size in state_specs(cfg))

    def run(feats, states):
        out = net([feats, *states], training=False)
        return out[0][0], tuple(out[1:])

    return tf.function(run, input_signature=[spec, state_spec])


class KerasChunkRunner(streaming.MaskRunner):
    """A block runner (streaming.FrameStream): whole blocks of frames per call with the LSTM states
    carried, for fast offline processing of long files.

    `fn` (chunk_function) can be shared by several runners (channels, files): each keeps its own state.
    """

    def __init__(self, model: keras.Model, cfg, fn=None):
        p = _require_causal(cfg)
        self.lookahead = p.lookahead_frames
        self.n_bins, self.channels = feature_shape(cfg)
        self._state_shapes = [(1, size) for _, size in state_specs(cfg)]
        self._fn = fn or chunk_function(model, cfg)
        self.reset()

    def _reset_state(self) -> None:
        self.states = tuple(tf.zeros(s, tf.float32) for s in self._state_shapes)

    def _network_block(self, feats: np.ndarray) -> np.ndarray:
        masks, self.states = self._fn(tf.constant(feats[None], tf.float32), self.states)
        return masks.numpy()


# ----------------------------------------------------------------------------- figures


def algorithmic_latency_ms(cfg) -> float:
    """Window length + lookahead * hop in ms (25 + 10 L by default); inf for non-causal models."""
    sp, _ = _signal_params(cfg)
    p = ModelParams.from_config(cfg)
    if not p.causal:
        return math.inf
    return 1000.0 * (sp.win_length + p.lookahead_frames * sp.hop) / sp.sample_rate


def _layer_macs(layer) -> int:
    if isinstance(layer, layers.Bidirectional):
        return _layer_macs(layer.forward_layer) + _layer_macs(layer.backward_layer)
    if isinstance(layer, (layers.LSTM, layers.GRU)):
        return int(np.prod(layer.cell.kernel.shape) + np.prod(layer.cell.recurrent_kernel.shape))
    if isinstance(layer, layers.DepthwiseConv1D):  # over time: one output frame per frame
        return int(np.prod(layer.kernel.shape))
    if isinstance(layer, layers.Conv2D):  # per frame: every output bin of one frame
        return int(np.prod(layer.kernel.shape)) * int(layer.output.shape[2])
    if isinstance(layer, layers.Dense):
        return int(np.prod(layer.kernel.shape))
    return 0


def count_macs_per_frame(model_or_cfg) -> int:
    """Approximate multiply-adds per 10-ms frame (Dense, LSTM and conv weights; elementwise ops ignored)."""
    model = build_model(model_or_cfg) if isinstance(model_or_cfg, configparser.ConfigParser) else model_or_cfg
    return sum(_layer_macs(layer) for layer in model.layers)


def summary(cfg) -> dict:
    p = ModelParams.from_config(cfg)
    model = build_model(cfg)
    sp, _ = _signal_params(cfg)
    macs = count_macs_per_frame(model)
    return {
        "architecture": p.architecture,
        "causal": p.causal,
        "lookahead_frames": p.lookahead_frames if p.causal else None,
        "parameters": int(model.count_params()),
        "macs_per_frame": macs,
        "macs_per_second": macs * sp.sample_rate / sp.hop,
        "algorithmic_latency_ms": algorithmic_latency_ms(cfg),
        "mask_bound": p.mask_bound,
        "input_shape": tuple(model.input_shape[1:]),
        "model": model,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Model figures: parameters, multiply-adds per 10-ms frame and algorithmic latency of the "
        "model that config.ini ([model], [features], [STFT]) describes.",
        epilog="example: python model.py --summary --set model.architecture=seed",
    )
    utils.add_config_args(parser)
    parser.add_argument("--summary", action="store_true", help="print the model's figures")
    parser.add_argument("--layers", action="store_true", help="also print the Keras layer table")
    args = parser.parse_args(argv)
    if not (args.summary or args.layers):
        parser.print_help()
        return 0
    cfg = utils.config_from_args(args)
    s = summary(cfg)
    if args.layers:
        s["model"].summary()
    kind = f"causal, lookahead {s['lookahead_frames']} frames" if s["causal"] else "non-causal"
    lat = s["algorithmic_latency_ms"]
    print(f"architecture:          {s['architecture']} ({kind})")
    print(
        f"input -> output:       (T, {s['input_shape'][1]}, {s['input_shape'][2]}) features -> "
        f"(T, {s['input_shape'][1]}, 2) complex mask, |mask| <= {s['mask_bound']:g}"
    )
    print(f"parameters:            {s['parameters']:,}")
    print(f"multiply-adds / frame: {s['macs_per_frame'] / 1e6:.3f} M ({s['macs_per_second'] / 1e6:.0f} M/s)")
    print(
        "algorithmic latency:   "
        + (f"{lat:.1f} ms" if math.isfinite(lat) else "unbounded (needs the whole clip)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
