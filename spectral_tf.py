"""The TensorFlow twins of spectral.py's transform and features (one definition: the same framing,
window and iSTFT normalisation; tests/test_stft.py checks that they agree), used inside the training
and export graphs."""

from __future__ import annotations

import sys

import numpy as np

import utils
from spectral import NORM_FLOOR, FeatureParams, StftParams, window


def _tf():
    if "tensorflow" not in sys.modules:  # (also keeps autograph from converting os.environ calls)
        utils.quiet_tensorflow()
    import tensorflow as tf

    return tf


def stft_tf(x, p: StftParams = StftParams()):
    """TensorFlow twin of `stft`: (..., N) -> (..., T, F) complex64 with the same framing."""
    tf = _tf()
    x = tf.convert_to_tensor(x, tf.float32)
    n = tf.shape(x)[-1]
    t = (n + p.pad_front + p.hop - 1) // p.hop
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
    y = y / tf.maximum(norm, NORM_FLOOR)
    y = y[..., p.pad_front :]
    if length is not None:  # like `istft`: cut, or zero-pad past the last frame
        y = y[..., :length]
        extra = tf.maximum(length - tf.shape(y)[-1], 0)
        pads = tf.concat([tf.zeros([tf.rank(y) - 1, 2], tf.int32), [[0, extra]]], axis=0)
        y = tf.pad(y, pads)
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
