"""THE transform and the network features in numpy: the parameters ([STFT] as StftParams, [features]
as FeatureParams), stft / istft and the features. spectral_tf.py holds their TensorFlow twins.

Framing (causal, streaming-compatible, never centred):
    frame t covers input samples [t*hop - (win - hop), t*hop + hop): the signal is preceded by
    win - hop zeros (the past of a stream that starts in silence), so frame t depends only on
    samples < (t + 1) * hop and features are causal. A clip of N samples gives
    T = ceil((N + win - hop) / hop) frames: the frames a stream emits until its last sample has
    passed through every window that covers it (the end is zero-padded, like flushing a stream).
    Without those flush frames the last samples would be seen only by the near-zero tail of the
    last window, and any mask applied there would be amplified ~1e8 times by the iSTFT
    normalisation. The periodic Hann window (400 samples) is zero-padded to n_fft = 512 at its
    end (as tf.signal.stft does) -> 257 bins.
iSTFT: weighted overlap-add (synthesis window = analysis window) divided by the summed squared
    window; every output sample of the clip sees the full overlap (sum >= 0.5), so STFT -> iSTFT
    is exact up to float error everywhere, edges included, and masks cannot blow up at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

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
        """From [STFT]; a missing or bad key is a one-line PipelineError naming it (never a KeyError)."""
        where = f"{Path(utils.config_source(cfg)).name}: [STFT]"
        if not cfg.has_section("STFT"):
            raise utils.PipelineError(f"{where} section is missing")
        window_type = utils.config_value(cfg, "STFT", "window_type")
        if window_type.lower() != "hann":
            raise utils.PipelineError(f"{where} window_type={window_type}: only hann is supported")

        def number(key: str):
            # no default: the transform a cache or model was made with must be stated, never assumed
            if not cfg.has_option("STFT", key):
                raise utils.PipelineError(f"{where} {key} is missing")
            return utils.config_value(cfg, "STFT", key)  # typed and > 0 (utils.LOWER_BOUNDS)

        def samples(key: str, sr: int) -> int:
            # a window or hop that is not a whole number of samples would be silently rounded
            exact = number(key) * sr
            if abs(exact - round(exact)) > 1e-6:
                raw = cfg.get("STFT", key).strip()
                raise utils.PipelineError(f"{where} {key}={raw} is {exact:.6g} samples at {sr} Hz, not whole")
            return round(exact)

        sr = number("sample_rate")
        p = cls(sr, samples("window_length", sr), samples("hop_size", sr), number("n_fft"))
        if not p.hop <= p.win_length <= p.n_fft:
            raise utils.PipelineError(
                f"{where} needs 0 < hop_size <= window_length <= n_fft samples "
                f"(got hop {p.hop}, window {p.win_length}, n_fft {p.n_fft})"
            )
        return p

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def pad_front(self) -> int:
        return self.win_length - self.hop

    def n_frames(self, n_samples: int) -> int:
        return math.ceil((n_samples + self.pad_front) / self.hop)


@dataclass(frozen=True)
class FeatureParams:
    compression: float = 0.3
    delta_phase: bool = True
    deviation: bool = False

    @classmethod
    def from_config(cls, cfg) -> FeatureParams:
        return cls(**utils.config_values(cfg, "features", [f.name for f in fields(cls)]))

    @property
    def channels(self) -> int:
        return 4 if self.delta_phase else 2


# Floor for the summed squared window in the iSTFT: only guards 0/0 outside the signal. A larger floor
# (1e-8 was used) breaks the last samples of a clip whose length is a multiple of hop, where only the
# tail of the last window (w^2 ~ 4e-9) covers them.
NORM_FLOOR = float(np.finfo(np.float32).tiny)


def window(p: StftParams) -> np.ndarray:
    """Periodic Hann window (the one that sums to a constant at 10 ms hop in overlap-add)."""
    n = np.arange(p.win_length)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / p.win_length)).astype(np.float32)


def stft(x: np.ndarray, p: StftParams = StftParams()) -> np.ndarray:
    """(..., N) float -> (..., T, F) complex64 with T = ceil((N + win - hop) / hop)."""
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[-1]
    t = p.n_frames(n)
    if t == 0:
        return np.zeros(x.shape[:-1] + (0, p.n_bins), dtype=np.complex64)
    pad = [(0, 0)] * (x.ndim - 1) + [(p.pad_front, t * p.hop - n)]
    xp = np.pad(x, pad)
    frames = np.lib.stride_tricks.sliding_window_view(xp, p.win_length, axis=-1)[..., :: p.hop, :][..., :t, :]
    return np.fft.rfft(frames * window(p), n=p.n_fft, axis=-1).astype(np.complex64)


def _overlap_add(frames: np.ndarray, hop: int) -> np.ndarray:
    """(..., T, W) -> (..., (T - 1) * hop + W): sums frame t into samples [t*hop, t*hop + W).

    The frames are cut into hop-sized blocks and block k of every frame is added with one
    slice-add, so the work is ceil(W / hop) vector ops (no np.add.at, no Python loop over frames).
    """
    t, w = frames.shape[-2:]
    k = -(-w // hop)
    if k * hop != w:
        frames = np.pad(frames, [(0, 0)] * (frames.ndim - 1) + [(0, k * hop - w)])
    blocks = frames.reshape(frames.shape[:-1] + (k, hop))
    out = np.zeros(frames.shape[:-2] + (t + k - 1, hop), dtype=frames.dtype)
    for i in range(k):
        out[..., i : i + t, :] += blocks[..., :, i, :]
    return out.reshape(frames.shape[:-2] + (-1,))[..., : (t - 1) * hop + w]


def istft(X: np.ndarray, p: StftParams = StftParams(), length: int | None = None) -> np.ndarray:
    """(..., T, F) complex -> (..., length) float32; inverse of `stft` (default length T * hop)."""
    X = np.asarray(X)
    t = X.shape[-2]
    length = t * p.hop if length is None else length
    if t == 0:
        return np.zeros(X.shape[:-2] + (length,), dtype=np.float32)
    w = window(p)
    frames = np.fft.irfft(X.astype(np.complex64, copy=False), n=p.n_fft, axis=-1)[..., : p.win_length] * w
    out = _overlap_add(frames.astype(np.float32, copy=False), p.hop)
    norm = _overlap_add(np.broadcast_to(w.astype(np.float64) ** 2, (t, p.win_length)), p.hop)
    y = (out / np.maximum(norm, NORM_FLOOR))[..., p.pad_front :]
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
