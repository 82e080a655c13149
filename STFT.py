"""THE transform and features, in numpy and TensorFlow with one definition; also the cache script.

Framing (causal, streaming-compatible, never centred):
    frame t covers input samples [t*hop - (win - hop), t*hop + hop): the signal is preceded by
    win - hop zeros (the past of a stream that starts in silence) and its end is zero-padded to a
    whole hop. A clip of N samples gives T = ceil(N / hop) frames, and frame t depends only on
    samples < (t + 1) * hop, so features are causal. The periodic Hann window (400 samples) is
    zero-padded to n_fft = 512 at its end (as tf.signal.stft does) -> 257 bins.
iSTFT: weighted overlap-add (synthesis window = analysis window) divided by the summed squared
    window, which is > 0 for every output sample, so STFT -> iSTFT is exact up to float error
    everywhere, edges included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import utils


@dataclass(frozen=True)
class StftParams:
    sample_rate: int = 16000
    win_length: int = 400
    hop: int = 160
    n_fft: int = 512

    @classmethod
    def from_config(cls, cfg) -> StftParams:
        s = cfg["STFT"]
        if s.get("window_type", "hann").lower() != "hann":
            raise utils.PipelineError(f"[STFT] window_type={s.get('window_type')}: only hann is supported")
        sr = s.getint("sample_rate")
        return cls(
            sr, round(s.getfloat("window_length") * sr), round(s.getfloat("hop_size") * sr), s.getint("n_fft")
        )

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def pad_front(self) -> int:
        return self.win_length - self.hop

    def n_frames(self, n_samples: int) -> int:
        return math.ceil(n_samples / self.hop)


@dataclass(frozen=True)
class FeatureParams:
    compression: float = 0.3
    delta_phase: bool = True
    deviation: bool = False

    @classmethod
    def from_config(cls, cfg) -> FeatureParams:
        f = cfg["features"]
        return cls(f.getfloat("compression"), f.getboolean("delta_phase"), f.getboolean("deviation"))

    @property
    def channels(self) -> int:
        return 4 if self.delta_phase else 2


def window(p: StftParams) -> np.ndarray:
    """Periodic Hann window (the one that sums to a constant at 10 ms hop in overlap-add)."""
    n = np.arange(p.win_length)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / p.win_length)).astype(np.float32)


# ----------------------------------------------------------------------------- numpy


def stft(x: np.ndarray, p: StftParams = StftParams()) -> np.ndarray:
    """(..., N) float -> (..., T, F) complex64 with T = ceil(N / hop)."""
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[-1]
    t = p.n_frames(n)
    pad = [(0, 0)] * (x.ndim - 1) + [(p.pad_front, t * p.hop - n)]
    xp = np.pad(x, pad)
    frames = np.lib.stride_tricks.sliding_window_view(xp, p.win_length, axis=-1)[..., :: p.hop, :][..., :t, :]
    return np.fft.rfft(frames * window(p), n=p.n_fft, axis=-1).astype(np.complex64)


def istft(X: np.ndarray, p: StftParams = StftParams(), length: int | None = None) -> np.ndarray:
    """(..., T, F) complex -> (..., length) float32; inverse of `stft` (default length T * hop)."""
    X = np.asarray(X)
    t = X.shape[-2]
    w = window(p)
    frames = np.fft.irfft(X, n=p.n_fft, axis=-1)[..., : p.win_length] * w
    total = p.pad_front + t * p.hop
    out = np.zeros(X.shape[:-2] + (total,), dtype=np.float64)
    norm = np.zeros(total, dtype=np.float64)
    for i in range(p.win_length // p.hop + 1):  # overlap-add by hop-sized blocks: a few vector ops
        seg = frames[..., :, i * p.hop : (i + 1) * p.hop]
        if seg.shape[-1] == 0:
            break
        width = seg.shape[-1]
        idx = (np.arange(t)[:, None] * p.hop + i * p.hop + np.arange(width)[None, :]).reshape(-1)
        np.add.at(out, (..., idx), seg.reshape(seg.shape[:-2] + (-1,)))
        np.add.at(norm, idx, np.tile(w[i * p.hop : i * p.hop + width] ** 2, t))
    y = out / np.maximum(norm, 1e-8)
    y = y[..., p.pad_front :]
    length = t * p.hop if length is None else length
    if y.shape[-1] < length:
        y = np.pad(y, [(0, 0)] * (y.ndim - 1) + [(0, length - y.shape[-1])])
    return y[..., :length].astype(np.float32)


def compress(X: np.ndarray, power: float, eps: float = 1e-12) -> np.ndarray:
    """|X|^p * exp(j angle X): compresses the magnitude, keeps the phase (never pow(complex, p))."""
    mag = np.abs(X)
    return (X * (mag**power / np.maximum(mag, eps))).astype(X.dtype)


def wrap(phi: np.ndarray) -> np.ndarray:
    """Wraps angles to (-pi, pi]."""
    return np.pi - np.mod(np.pi - phi, 2 * np.pi)


def delta_phase(X: np.ndarray, p: StftParams = StftParams(), deviation: bool = False) -> np.ndarray:
    """Causal phase advance along time: angle(X[t] * conj(X[t-1])), 0 at t = 0.

    deviation=True subtracts the advance 2*pi*f*hop/n_fft expected at bin f's centre frequency.
    """
    d = np.zeros(X.shape, dtype=np.float32)
    d[..., 1:, :] = np.angle(X[..., 1:, :] * np.conj(X[..., :-1, :]))
    if deviation:
        f = np.arange(X.shape[-1])
        d[..., 1:, :] = wrap(d[..., 1:, :] - 2 * np.pi * f * p.hop / p.n_fft)
    return d


def features(X: np.ndarray, fp: FeatureParams = FeatureParams(), p: StftParams = StftParams()) -> np.ndarray:
    """Model input (..., T, F, C) float32: Re, Im of the compressed STFT (+ cos, sin delta phase).

    cos/sin make the phase feature continuous across the +-pi wrap; no weighting is applied, the
    magnitudes of all channels are already O(1) after compression.
    """
    Xc = compress(X, fp.compression)
    chans = [Xc.real, Xc.imag]
    if fp.delta_phase:
        d = delta_phase(X, p, fp.deviation)
        chans += [np.cos(d), np.sin(d)]
    return np.stack(chans, axis=-1).astype(np.float32)


# ----------------------------------------------------------------------------- TensorFlow


def _tf():
    utils.quiet_tensorflow()
    import tensorflow as tf

    return tf


def stft_tf(x, p: StftParams = StftParams()):
    """TensorFlow twin of `stft`: (..., N) -> (..., T, F) complex64 with the same framing."""
    tf = _tf()
    x = tf.convert_to_tensor(x, tf.float32)
    n = tf.shape(x)[-1]
    t = (n + p.hop - 1) // p.hop
    rank = tf.rank(x)
    pads = tf.concat([tf.zeros([rank - 1, 2], tf.int32), [[p.pad_front, t * p.hop - n]]], axis=0)
    xp = tf.pad(x, pads)
    w = tf.constant(window(p))
    return tf.signal.stft(xp, p.win_length, p.hop, p.n_fft, window_fn=lambda *_a, **_k: w, pad_end=False)


def istft_tf(X, p: StftParams = StftParams(), length=None):
    """TensorFlow twin of `istft`: weighted overlap-add normalised by the summed squared window."""
    tf = _tf()
    X = tf.convert_to_tensor(X, tf.complex64)
    w = tf.constant(window(p))
    frames = tf.signal.irfft(X, fft_length=[p.n_fft])[..., : p.win_length] * w
    y = tf.signal.overlap_and_add(frames, p.hop)
    t = tf.shape(X)[-2]
    w2 = tf.tile(tf.reshape(w**2, [1, -1]), [t, 1])
    norm = tf.signal.overlap_and_add(w2, p.hop)
    y = y / tf.maximum(norm, 1e-8)
    y = y[..., p.pad_front :]
    if length is not None:
        y = y[..., :length]
    return y


def compress_tf(X, power: float, eps: float = 1e-12):
    tf = _tf()
    mag = tf.abs(X)
    scale = tf.pow(mag, power) / tf.maximum(mag, eps)
    return X * tf.cast(scale, X.dtype)


def delta_phase_tf(X, p: StftParams = StftParams(), deviation: bool = False):
    tf = _tf()
    d = tf.math.angle(X[..., 1:, :] * tf.math.conj(X[..., :-1, :]))
    if deviation:
        f = tf.range(tf.shape(X)[-1], dtype=tf.float32)
        d = d - 2 * np.pi * f * p.hop / p.n_fft
        d = np.pi - tf.math.floormod(np.pi - d, 2 * np.pi)
    return tf.concat([tf.zeros_like(d[..., :1, :]), d], axis=-2)


def features_tf(X, fp: FeatureParams = FeatureParams(), p: StftParams = StftParams()):
    """TensorFlow twin of `features` (used inside the training graph)."""
    tf = _tf()
    Xc = compress_tf(X, fp.compression)
    chans = [tf.math.real(Xc), tf.math.imag(Xc)]
    if fp.delta_phase:
        d = delta_phase_tf(X, p, fp.deviation)
        chans += [tf.cos(d), tf.sin(d)]
    return tf.stack(chans, axis=-1)
