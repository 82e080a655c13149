"""Denoises audio files with a trained model: offline (chunked, bounded memory) or streaming.

    python enhance.py noisy.wav more/ -o out/ [--model cp/NAME/best] [--streaming [--engine keras]]
                      [--channels each]

Inputs are files or folders (searched recursively for the extensions of every format libsndfile reads:
.wav .flac .ogg .aiff .au .mp3 ...), at any sample rate (resampled to the model's rate with soxr and
back), mono or multichannel, of any length. Each output keeps its input's name (folders keep their
relative layout under OUTDIR), sample rate and subtype (PCM_16 in -> PCM_16 out, float in -> float
out), is written to a temp file and renamed (mode 0666 & ~umask), and never replaces an input.

How a file is processed
    causal model, offline (default): the file is read, resampled, enhanced and written in blocks of
        [enhance] chunk_seconds. The STFT framing is causal (frame t covers samples
        [t*hop - 240, t*hop + 160)), so a `FrameStream` keeps the last 240 input samples, the previous
        STFT frame (delta phase), the LSTM states (a stateful whole-chunk call) and the overlap-add
        tail across blocks: the output equals whole-file processing (to float rounding) and memory
        does not grow with the file length.
    causal model, --streaming: the same chain fed 10-ms blocks, the model run frame by frame with its
        state (`HopStream`), exactly as a real-time system would; it equals the offline output. The
        network step is, by default, a TFLite model converted from the weights on first use and cached
        beside them (tflite_step.cached_step: keyed by a hash of weights + config, rebuilt when stale; a
        read-only model folder falls back to ~/.cache/.../tflite), run by LiteRT; --engine keras runs
        the Keras step instead (model.StreamingMask; same output to float rounding, ~5x slower), and
        --tflite DIR an export.py folder.
    bidirectional / seed models: they need the whole file at once; it is read into memory (no chunking
        is possible because the network looks at the future of every frame).

Latency and alignment
    A real-time system emits an enhanced sample only when the window frame(s) that cover it have been
    analysed and their masks computed: the algorithmic latency is the window plus the lookahead,
    25 ms + L * 10 ms (printed with --streaming). `Enhancer.stream()` returns exactly as many samples
    as it is given, delayed by `stream.delay` = win_length + L * hop samples (the first `delay` output
    samples are zeros); the written files have that delay removed, so they are aligned with the input.

Python API
    enh = Enhancer.from_pretrained("cp/NAME/best")        # or Enhancer.from_pretrained() (default model)
    clean = enh(noisy, sr)                                   # (N,) or (N, channels) at any rate; causal
                                                             # models in chunk_seconds blocks (bounded memory)
    stream = enh.stream()                                    # real-time, at enh.sample_rate (TFLite step;
                                                             # Enhancer.from_pretrained(p, engine="keras"))
    out = [stream.process(chunk) for chunk in chunks]        # any chunk sizes, even 1 sample
    out.append(stream.flush())                               # concat(out)[stream.delay:] == enh(x)
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

import STFT
import tflite_step
import utils

# ----------------------------------------------------------------------------- mask runners
# Two kinds of runner turn feature frames into mask frames, oldest first. With lookahead L the network's
# output n is the mask of frame n - L: the first L outputs are dropped and L zero frames are fed at the
# end, exactly as model.build_model pads and crops a whole clip.
#   frame runners (HopStream; model.StreamingMask, tflite_step.TFLiteRunner): one frame per call (real time)
#     step(features (F, C)) -> mask (F, 2) float32 of frame n - L, or None while the lookahead fills
#     flush() -> the remaining masks, a list or (m, F, 2) array (feeds the L zero frames), then resets;
#     reset()
#   block runners (FrameStream; KerasChunkRunner, tflite_step.TFLiteRunner): many frames per call, offline
#     push(features (k, F, C)) -> masks (m, F, 2) for the oldest frames whose mask is now known
#     flush() -> masks (m, F, 2) of every remaining frame, then resets; reset()


def chunk_model(model, cfg):
    """The causal network on a block of frames with its LSTM states in and out (shared weights).

    Inputs [features (1, T, F, C), h_0, c_0, ...] -> outputs [mask (1, T, F, 2), h_0', c_0', ...], without
    the lookahead pad/crop (the runner does it). Network frame n of consecutive blocks equals network
    frame n of the whole clip, because the state is all an LSTM carries from one frame to the next.
    """
    import keras

    import model as M

    p = M.ModelParams.from_config(cfg)
    n_bins, channels = M.feature_shape(cfg)
    feats = keras.Input(batch_shape=(1, None, n_bins, channels), name="chunk")
    states = [
        keras.Input(batch_shape=(1, p.lstm_units), name=f"{s}_{i}")
        for i in range(p.lstm_layers)
        for s in "hc"
    ]
    x = keras.layers.Reshape((-1, n_bins * channels), name="chunk_flatten")(feats)
    x = model.get_layer("projection")(x)
    new_states = []
    for i in range(p.lstm_layers):
        orig = model.get_layer(f"lstm_{i}")
        # Same layer class and weights, but returning its final state (Keras layers cannot change that).
        lstm = orig.__class__.from_config(
            {**orig.get_config(), "return_state": True, "name": f"chunk_lstm_{i}"}
        )
        x, h, c = lstm(x, initial_state=states[2 * i : 2 * i + 2])
        lstm.set_weights(orig.get_weights())
        new_states += [h, c]
    for i in range(p.dense_layers):
        x = model.get_layer(f"dense_{i}")(x)
    mask = model.get_layer("mask")(model.get_layer("to_bins")(model.get_layer("mask_logits")(x)))
    return keras.Model([feats, *states], [mask, *new_states], name="chunk_step")


def chunk_function(model, cfg):
    """tf.function(features (1, T, F, C), states) -> (masks (T, F, 2), states), traced once for any T."""
    import model as M

    tf = M.tf
    p = M.ModelParams.from_config(cfg)
    n_bins, channels = M.feature_shape(cfg)
    net = chunk_model(model, cfg)
    spec = tf.TensorSpec((1, None, n_bins, channels), tf.float32)
    state_spec = tuple(tf.TensorSpec((1, p.lstm_units), tf.float32) for _ in range(2 * p.lstm_layers))

    def run(feats, states):
        out = net([feats, *states], training=False)
        return out[0][0], tuple(out[1:])

    return tf.function(run, input_signature=[spec, state_spec])


class KerasChunkRunner:
    """Whole blocks of frames per call with the LSTM states carried: fast offline processing of long files.

    `fn` (chunk_function) can be shared by several runners (channels, files): each keeps its own state.
    """

    def __init__(self, model, cfg, fn=None):
        import model as M

        p = M.ModelParams.from_config(cfg)
        self.lookahead = p.lookahead_frames
        self.n_bins, self.channels = M.feature_shape(cfg)
        self._state_shapes = [(1, p.lstm_units)] * (2 * p.lstm_layers)
        self._tf = M.tf
        self._fn = fn or chunk_function(model, cfg)
        self.reset()

    def reset(self) -> None:
        self.states = tuple(self._tf.zeros(s, self._tf.float32) for s in self._state_shapes)
        self.frames_in = 0

    def push(self, feats: np.ndarray) -> np.ndarray:
        if len(feats) == 0:
            return np.zeros((0, self.n_bins, 2), np.float32)
        masks, self.states = self._fn(self._tf.constant(feats[None], self._tf.float32), self.states)
        drop = max(0, self.lookahead - self.frames_in)
        self.frames_in += len(feats)
        return masks.numpy()[drop:]

    def flush(self) -> np.ndarray:
        masks = self.push(np.zeros((self.lookahead, self.n_bins, self.channels), np.float32))
        self.reset()
        return masks


# ----------------------------------------------------------------------------- streaming transform


class FrameStream:
    """Exact streaming STFT -> features -> mask -> complex product -> iSTFT at the model rate, in blocks.

    The block-runner twin of HopStream (same interface and output): every process() call analyses all
    the frames its samples complete at once and hands them to the runner in one push (offline chunks).
    process(x) accepts any number of samples and returns the enhanced samples that no later input can
    change, aligned with the input (the k-th sample returned overall is enhanced input sample k);
    flush() returns the rest, so that the outputs add up to exactly as many samples as went in and
    equal STFT.istft(S_hat, length=N) of the whole signal. State carried between calls: the last
    win - hop input samples (frame history), the previous STFT frame (delta phase), the frames waiting
    for their mask (lookahead), the runner's recurrent state and the overlap-add accumulators.
    """

    def __init__(self, runner, sp: STFT.StftParams, fp: STFT.FeatureParams):
        self.runner, self.sp, self.fp = runner, sp, fp
        self.window = STFT.window(sp)
        self.reset()

    def reset(self) -> None:
        sp = self.sp
        self.runner.reset()
        self.buf = np.zeros(sp.pad_front, np.float32)  # history + samples not yet framed
        self.prev = None  # X[t - 1] for the delta phase of the next frame
        self.pending = np.zeros((0, sp.n_bins), np.complex64)  # frames waiting for their mask
        self.n_in = self.n_out = 0
        self.frames_in = 0  # frames analysed
        self.frames_out = 0  # frames synthesised
        # Overlap-add accumulators over padded sample positions [ola_start, ola_start + len).
        self.acc = np.zeros(0, np.float64)
        self.norm = np.zeros(0, np.float64)
        self.ola_start = 0

    @property
    def pending_samples(self) -> int:
        return self.n_in - self.n_out

    def process(self, x) -> np.ndarray:
        x = np.asarray(x, np.float32).reshape(-1)
        self.n_in += len(x)
        self.buf = np.concatenate([self.buf, x])
        k = (len(self.buf) - self.sp.pad_front) // self.sp.hop
        if k <= 0:
            return np.zeros(0, np.float32)
        X = self._analyse(k)
        masks = self.runner.push(self._features(X))
        return self._synthesise(X, masks, final=False)

    def flush(self) -> np.ndarray:
        """Zero-pads the last frame as STFT.stft does, drains the lookahead and returns the tail."""
        sp = self.sp
        missing = sp.n_frames(self.n_in) - self.frames_in
        X = np.zeros((0, sp.n_bins), np.complex64)
        masks = np.zeros((0, sp.n_bins, 2), np.float32)
        if missing > 0:
            need = sp.pad_front + missing * sp.hop - len(self.buf)
            self.buf = np.concatenate([self.buf, np.zeros(need, np.float32)])
            X = self._analyse(missing)
            masks = self.runner.push(self._features(X))
        masks = np.concatenate([masks, self.runner.flush()])
        out = self._synthesise(X, masks, final=True)
        self.reset()
        return out

    def _analyse(self, k: int) -> np.ndarray:
        sp = self.sp
        span = self.buf[: (k - 1) * sp.hop + sp.win_length]
        frames = np.lib.stride_tricks.sliding_window_view(span, sp.win_length)[:: sp.hop]
        self.buf = self.buf[k * sp.hop :]
        self.frames_in += k
        return np.fft.rfft(frames * self.window, n=sp.n_fft, axis=-1).astype(np.complex64)

    def _features(self, X: np.ndarray) -> np.ndarray:
        # The previous frame goes first so the delta phase of X[0] is the whole-signal one. The first frame
        # of a stream has none (its delta phase is 0 by definition: angle(X * conj(0)) could be pi).
        if self.prev is None:
            feats = STFT.features(X, self.fp, self.sp)
        else:
            feats = STFT.features(np.concatenate([self.prev[None], X]), self.fp, self.sp)[1:]
        self.prev = X[-1]
        return feats

    def _synthesise(self, X: np.ndarray, masks: np.ndarray, final: bool) -> np.ndarray:
        sp = self.sp
        self.pending = np.concatenate([self.pending, X]) if len(X) else self.pending
        m = len(masks)
        if m:
            S = (masks[..., 0] + 1j * masks[..., 1]).astype(np.complex64) * self.pending[:m]
            self.pending = self.pending[m:]
            frames = np.fft.irfft(S, n=sp.n_fft, axis=-1)[:, : sp.win_length].astype(np.float32) * self.window
            self._overlap_add(frames)
        # Padded positions before the next frame's start are final; at the end all of them are.
        done = len(self.acc) if final else self.frames_out * sp.hop - self.ola_start
        return self._emit(max(done, 0))

    def _overlap_add(self, frames: np.ndarray) -> None:
        sp = self.sp
        m = len(frames)
        start = self.frames_out * sp.hop - self.ola_start
        blocks = -(-sp.win_length // sp.hop)
        end = start + (m - 1 + blocks) * sp.hop
        if end > len(self.acc):
            self.acc = np.concatenate([self.acc, np.zeros(end - len(self.acc))])
            self.norm = np.concatenate([self.norm, np.zeros(end - len(self.norm))])
        w2 = self.window.astype(np.float64) ** 2
        for i in range(blocks):  # block i of every frame in one slice-add (blocks of one i never overlap)
            seg = frames[:, i * sp.hop : (i + 1) * sp.hop]
            width = seg.shape[1]
            lo = start + i * sp.hop
            self.acc[lo : lo + m * sp.hop].reshape(m, sp.hop)[:, :width] += seg
            self.norm[lo : lo + m * sp.hop].reshape(m, sp.hop)[:, :width] += w2[
                i * sp.hop : i * sp.hop + width
            ]
        self.frames_out += m

    def _emit(self, n: int) -> np.ndarray:
        y = self.acc[:n] / np.maximum(self.norm[:n], np.finfo(np.float32).tiny)
        first = self.ola_start  # padded position of y[0]; positions < pad_front precede the signal
        self.acc, self.norm, self.ola_start = self.acc[n:], self.norm[n:], self.ola_start + n
        y = y[max(0, self.sp.pad_front - first) :]
        y = y[: self.n_in - self.n_out]  # the zero padding after the last input sample is not output
        self.n_out += len(y)
        return y.astype(np.float32)


class HopStream:
    """FrameStream for a frame runner: one hop of input -> one frame through the network -> one hop out.

    Same interface and output as FrameStream (exactly as many samples out as in over process() calls
    plus flush(), equal to STFT.istft of the whole signal), but each 10-ms frame takes the short path a
    real-time system runs: window and rfft of the last win_length samples, the features of that one
    frame, runner.step, complex product, irfft and overlap-add into a win - hop tail, in fixed buffers.
    Every output sample lies at a padded position >= win - hop, where all the frames that cover it
    exist, so the overlap-add normalisation is one precomputed hop-periodic window sum.
    """

    def __init__(self, runner, sp: STFT.StftParams, fp: STFT.FeatureParams):
        self.runner, self.sp, self.fp = runner, sp, fp
        self.window = STFT.window(sp)
        w2 = self.window.astype(np.float64) ** 2
        norm = np.zeros(sp.hop)
        for i in range(0, sp.win_length, sp.hop):
            block = w2[i : i + sp.hop]
            norm[: len(block)] += block
        self.norm = np.maximum(norm, np.finfo(np.float32).tiny).astype(np.float32)
        f = np.arange(sp.n_bins)
        self.advance = 2 * np.pi * f * sp.hop / sp.n_fft  # expected phase advance (deviation features)
        self.frame = np.zeros(sp.win_length, np.float32)  # the samples of the frame being filled
        self.padded = np.zeros(sp.n_fft, np.float32)  # windowed frame, zero-padded to n_fft
        self.feats = np.zeros((sp.n_bins, fp.channels), np.float32)
        self._eps2 = np.float32(1e-24)  # STFT.compress eps (1e-12), squared: still a normal float32
        self._half_p1 = np.float32((fp.compression - 1.0) / 2.0)
        self.reset()

    def reset(self) -> None:
        sp = self.sp
        self.runner.reset()
        self.frame[:] = 0  # history before the signal: the STFT's front padding
        self.fill = 0  # new samples in the current hop
        self.prev = None  # X[t - 1] for the delta phase (none before the first frame)
        self.waiting = collections.deque()  # STFT frames waiting for their mask (lookahead)
        self.tail = np.zeros(sp.pad_front, np.float32)  # overlap-add sums of the next win - hop positions
        self.skip = sp.pad_front  # output positions before the signal's first sample
        self.n_in = self.n_out = self.frames_in = 0

    @property
    def pending_samples(self) -> int:
        return self.n_in - self.n_out

    def process(self, x) -> np.ndarray:
        x = np.asarray(x, np.float32).reshape(-1)
        self.n_in += len(x)
        out = []
        while len(x):
            start = self.sp.pad_front + self.fill
            take = min(self.sp.hop - self.fill, len(x))
            self.frame[start : start + take] = x[:take]
            self.fill += take
            x = x[take:]
            if self.fill == self.sp.hop:
                out.append(self._hop())
        return self._collect(out)

    def flush(self) -> np.ndarray:
        """Zero-pads the last frames as STFT.stft does, drains the lookahead and returns the tail."""
        out = []
        for _ in range(self.sp.n_frames(self.n_in) - self.frames_in):
            self.frame[self.sp.pad_front + self.fill :] = 0
            out.append(self._hop())
        out += [self._synthesise(mask) for mask in self.runner.flush()]
        y = self._collect(out)
        self.reset()
        return y

    def _hop(self) -> np.ndarray:
        """Analyses the full frame, runs the network and returns the output samples now final."""
        sp = self.sp
        np.multiply(self.frame, self.window, out=self.padded[: sp.win_length])
        X = np.fft.rfft(self.padded)  # complex64 (numpy >= 2 keeps float32 precision)
        self.frame[: sp.pad_front] = self.frame[sp.hop :]  # history for the next frame
        self.fill = 0
        self.frames_in += 1
        self._features(X)
        self.waiting.append(X)
        mask = self.runner.step(self.feats)
        return _EMPTY if mask is None else self._synthesise(mask)

    def _features(self, X: np.ndarray) -> None:
        """STFT.features of frame X (previous frame self.prev) into self.feats, in a few vector ops.

        The per-frame path avoids transcendental passes where it can (profiled: they were a third of
        the numpy time per hop): |X|^p / max(|X|, eps) as one power of |X|^2, and cos/sin of the delta
        phase as Re/Im of X conj(X[t-1]) over its modulus instead of angle() then cos() and sin(). Equal
        to STFT.features to float32 rounding (tests/test_enhance.py::test_hop_stream_*).
        """
        fp = self.fp
        re, im = X.real, X.imag
        m2 = re * re + im * im
        # |X|^p / max(|X|, eps) == max(|X|^2, eps^2)^((p-1)/2) for |X| >= eps (below: |Xc| < eps^p anyway)
        scale = np.power(np.maximum(m2, self._eps2), self._half_p1, dtype=np.float32)
        np.multiply(re, scale, out=self.feats[:, 0])
        np.multiply(im, scale, out=self.feats[:, 1])
        if fp.delta_phase:
            if self.prev is None:  # dphi[0] = 0 by definition (angle(X * conj(0)) could be pi)
                self.feats[:, 2:] = (1.0, 0.0)
            elif fp.deviation:
                d = STFT.wrap(np.angle(X * self.prev.conj()) - self.advance).astype(np.float32)
                np.cos(d, out=self.feats[:, 2])
                np.sin(d, out=self.feats[:, 3])
            else:
                z = X * self.prev.conj()
                r = np.hypot(z.real, z.imag)
                zero = r == 0  # angle(0) = 0: cos 1, sin 0
                r[zero] = 1.0
                np.divide(z.real, r, out=self.feats[:, 2])
                np.divide(z.imag, r, out=self.feats[:, 3])
                self.feats[zero, 2] = 1.0
        self.prev = X

    def _synthesise(self, mask: np.ndarray) -> np.ndarray:
        """Masks the oldest waiting frame, overlap-adds it and returns its first hop (now complete)."""
        sp = self.sp
        S = mask.view(np.complex64)[:, 0] * self.waiting.popleft()  # mask (F, 2) = (Re, Im) pairs
        y = np.fft.irfft(S, n=sp.n_fft)[: sp.win_length]
        y *= self.window
        y[: sp.pad_front] += self.tail
        self.tail = y[sp.hop :]
        out = y[: sp.hop] / self.norm
        if self.skip:  # the first frames start before the signal
            out, self.skip = out[self.skip :], max(self.skip - sp.hop, 0)
        return out

    def _collect(self, out: list) -> np.ndarray:
        y = out[0] if len(out) == 1 else np.concatenate(out) if out else _EMPTY
        y = y[: self.n_in - self.n_out]  # the zero padding after the last input sample is not output
        self.n_out += len(y)
        return y


_EMPTY = np.zeros(0, np.float32)


class RealtimeStream:
    """Real-time interface at the model rate: every call returns exactly len(chunk) samples.

    The output is the enhanced signal delayed by `delay` = win_length + lookahead * hop samples (the
    algorithmic latency; the first `delay` samples are zeros). flush() returns the remaining `delay`
    samples plus any not yet returned, so concat(outputs)[delay:] equals the offline output.
    """

    def __init__(self, frame_stream: HopStream | FrameStream, delay: int):
        self.frames, self.delay = frame_stream, int(delay)
        self.reset()

    def reset(self) -> None:
        self.frames.reset()
        self.queue = np.zeros(self.delay, np.float32)

    def process(self, chunk) -> np.ndarray:
        chunk = np.asarray(chunk, np.float32).reshape(-1)
        self.queue = np.concatenate([self.queue, self.frames.process(chunk)])
        out, self.queue = self.queue[: len(chunk)], self.queue[len(chunk) :]
        assert len(out) == len(chunk), "delay shorter than the latency"  # guaranteed by the framing
        return out

    def flush(self) -> np.ndarray:
        out = np.concatenate([self.queue, self.frames.flush()])
        self.queue = np.zeros(self.delay, np.float32)
        return out


class AlignedStream:
    """Any rate and channel count: resample (soxr stream) -> FrameStream per channel -> resample back.

    Outputs are aligned with the input (no delay; each call returns what is final). `hop_blocks`
    feeds the model 10-ms blocks, i.e. frame by frame as in real time, whatever the caller's block size.
    """

    def __init__(
        self, make_frames, sample_rate: int, model_rate: int, channels: int = 1, hop_blocks: int = 0
    ):
        import soxr

        self.streams = [make_frames() for _ in range(channels)]
        self.hop_blocks = hop_blocks
        same = sample_rate == model_rate
        self.rs_in = None if same else soxr.ResampleStream(sample_rate, model_rate, channels, quality="HQ")
        self.rs_out = None if same else soxr.ResampleStream(model_rate, sample_rate, channels, quality="HQ")
        self.channels = channels

    def process(self, x, last: bool = False) -> np.ndarray:
        x = np.asarray(x, np.float32).reshape(len(x), self.channels)
        if self.rs_in is not None:
            x = self.rs_in.resample_chunk(x, last=last)
        ys = [self._run(s, x[:, c]) for c, s in enumerate(self.streams)]
        if last:
            ys = [np.concatenate([y, s.flush()]) for y, s in zip(ys, self.streams)]
        y = np.stack(ys, axis=1)
        if self.rs_out is not None:
            y = self.rs_out.resample_chunk(y, last=last)
        return y.astype(np.float32, copy=False)

    def flush(self) -> np.ndarray:
        return self.process(np.zeros((0, self.channels), np.float32), last=True)

    def _run(self, stream: HopStream | FrameStream, x: np.ndarray) -> np.ndarray:
        if not self.hop_blocks or len(x) <= self.hop_blocks:
            return stream.process(x)
        parts = [stream.process(x[i : i + self.hop_blocks]) for i in range(0, len(x), self.hop_blocks)]
        return np.concatenate(parts)


# ----------------------------------------------------------------------------- the enhancer


default_model_dir = utils.default_model_dir  # (kept importable from here)


def _fix_length(y: np.ndarray, n: int) -> np.ndarray:
    if len(y) >= n:
        return y[:n]
    return np.concatenate([y, np.zeros((n - len(y),) + y.shape[1:], y.dtype)])


class BaseEnhancer:
    """Waveform, stream and file processing around a mask runner; subclasses supply the network.

    Subclasses set sp, fp, causal, lookahead, source and implement runner(streaming) and
    _enhance_model_rate(x (C, N)) -> (C, N).
    """

    sp: STFT.StftParams
    fp: STFT.FeatureParams
    causal: bool = True
    lookahead: int = 0
    source: str = ""

    @property
    def sample_rate(self) -> int:
        return self.sp.sample_rate

    @property
    def delay(self) -> int:
        """Samples (at the model rate) by which a real-time stream's output lags its input."""
        return self.sp.win_length + self.lookahead * self.sp.hop

    @property
    def latency_ms(self) -> float:
        """Algorithmic latency: window + lookahead (inf for non-causal models)."""
        return 1000.0 * self.delay / self.sample_rate if self.causal else math.inf

    def runner(self, streaming: bool):
        """A frame runner (step, frame by frame) when streaming, else a block runner (push)."""
        raise NotImplementedError

    def _enhance_model_rate(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def frame_stream(self, streaming: bool = True) -> HopStream | FrameStream:
        stream = HopStream if streaming else FrameStream
        return stream(self.runner(streaming), self.sp, self.fp)

    def _require_causal(self, what: str) -> None:
        if not self.causal:
            raise utils.PipelineError(
                f"{self.source or 'model'}: {what} needs a causal model (this one looks at the future)"
            )

    # --------------------------------------------------------------- waveforms

    @property
    def chunk_seconds(self) -> float:
        """[enhance] chunk_seconds of the model's config (30 s without one): the block size of __call__."""
        cfg = getattr(self, "cfg", None)
        return cfg.getfloat("enhance", "chunk_seconds", fallback=30.0) if cfg is not None else 30.0

    def __call__(self, wave, sr: int | None = None, chunk_seconds: float | None = None) -> np.ndarray:
        """Enhances a whole waveform (N,) or (N, channels) at rate `sr` (default: the model's); same shape.

        Causal models run in blocks of `chunk_seconds` (default: chunk_seconds) with the state carried,
        as files are, so the features of a 1-hour array never exist at once; the result equals whole().
        """
        wave, sr = self._check_wave(wave, sr)
        if wave.shape[0] == 0 or not self.causal:
            return self.whole(wave, sr)
        block = max(1, int(round((chunk_seconds or self.chunk_seconds) * sr)))
        x = wave.reshape(len(wave), -1)
        stream = AlignedStream(lambda: self.frame_stream(False), sr, self.sample_rate, x.shape[1])
        out, pos = np.zeros_like(x), 0  # filled in place: no list of blocks to concatenate
        for i in range(0, len(x) + 1, block):  # the last (possibly empty) block flushes the stream
            last = i + block > len(x)
            y = stream.process(x[i : i + block], last=last)[: len(x) - pos]
            out[pos : pos + len(y)] = y
            pos += len(y)
            if last:
                break
        return out.reshape(wave.shape)  # samples the resampler rounded away stay zero (as _fix_length)

    def whole(self, wave, sr: int | None = None) -> np.ndarray:
        """__call__ on the whole clip at once (the reference; the only way for non-causal models)."""
        wave, sr = self._check_wave(wave, sr)
        if wave.shape[0] == 0:
            return wave.copy()
        x = utils.resample(wave, sr, self.sample_rate)
        x2 = (x[:, None] if x.ndim == 1 else x).T  # (C, N); N may be 0 (1 sample at 44.1 kHz)
        y = self._enhance_model_rate(np.ascontiguousarray(x2)).T
        y = _fix_length(utils.resample(np.ascontiguousarray(y), self.sample_rate, sr), len(wave))
        return y.reshape(wave.shape)

    def _check_wave(self, wave, sr):
        wave = np.asarray(wave, np.float32)
        if wave.ndim not in (1, 2):
            raise ValueError(f"expected (N,) or (N, channels) audio, got shape {wave.shape}")
        return wave, sr or self.sample_rate

    def stream(self, sr: int | None = None, aligned: bool = False):
        """A streaming enhancer (frame by frame, recurrent state carried; causal models only).

        Default: RealtimeStream at the model rate (len(out) == len(chunk), output delayed by
        `stream.delay` samples). aligned=True: AlignedStream at any rate, no delay, variable-size outputs.
        """
        sr = sr or self.sample_rate
        if aligned:
            return AlignedStream(lambda: self.frame_stream(True), sr, self.sample_rate)
        if sr != self.sample_rate:
            raise ValueError(
                f"a real-time stream runs at the model rate ({self.sample_rate} Hz); resample outside "
                "or use stream(sr, aligned=True)"
            )
        return RealtimeStream(self.frame_stream(True), self.delay)

    # --------------------------------------------------------------- files

    def enhance_file(
        self, src, dst, channels: str = "mix", streaming: bool = False, chunk_seconds: float = 30.0
    ) -> dict:
        """Enhances one file into `dst` (atomically): {duration, seconds, rtf, ...}; AudioError if bad."""
        src, dst = Path(src), Path(dst)
        started = time.perf_counter()
        try:
            info = sf.info(str(src))
        except Exception as e:
            raise utils.AudioError(src, utils.unreadable(e)) from e
        if info.frames <= 0:
            raise utils.AudioError(src, "empty (0 samples)")
        out_channels = info.channels if channels == "each" else 1
        subtype = (
            info.subtype if sf.check_format(info.format, info.subtype) else sf.default_subtype(info.format)
        )
        writer = _Writer(dst, info.samplerate, out_channels, info.format, subtype, info.frames)
        if self.causal:
            block = max(1, int(round(chunk_seconds * info.samplerate)))
            stream = AlignedStream(
                lambda: self.frame_stream(streaming),
                info.samplerate,
                self.sample_rate,
                out_channels,
                hop_blocks=self.sp.hop if streaming else 0,
            )
            with writer:
                audible = False
                for x in _read_blocks(src, block):
                    audible = audible or bool(np.any(x))
                    writer.write(stream.process(_downmix(x, channels)))
                if not audible:
                    raise utils.AudioError(src, "silent (all samples are zero)")
                writer.write(stream.flush())
        else:  # bidirectional / seed: the whole file at once (no state to carry across chunks)
            x, sr = utils.read_audio(src, mono=False)
            with writer:
                writer.write(self(_downmix(x, channels), sr))
        seconds = time.perf_counter() - started
        duration = info.frames / info.samplerate
        return {"duration": duration, "seconds": seconds, "rtf": seconds / duration,
                "sample_rate": info.samplerate, "channels": out_channels, "subtype": subtype}  # fmt: skip


# engine -> TFLite step kind (None: the Keras step). tflite-int8: dynamic-range int8 weights.
ENGINES = {"tflite": "float32", "keras": None, "tflite-int8": "dynamic_int8"}
# int8 is offered: scored on the 168 held-out test mixtures (README, "int8") it moves SI-SDR by
# -0.003 dB and PESQ by +0.0002 against float32, within the 0.1 dB / 0.02 bar.
CLI_ENGINES = ("tflite", "keras", "tflite-int8")
DEFAULT_ENGINE = "tflite"


class Enhancer(BaseEnhancer):
    """A trained Keras model (model.save_trained folder) ready to denoise waveforms, files and streams.

    engine picks the network of the streaming path (stream(), --streaming): "tflite" (default) = the
    one-frame step converted to TFLite on first use, cached beside the weights (tflite_step.cached_step)
    and run by LiteRT, equal to the Keras step to float32 rounding (masks within 1e-4; see
    tests/test_enhance.py); "keras" = the Keras step (model.StreamingMask), ~5x slower per frame.
    Offline processing (__call__, files without --streaming) always runs Keras on whole blocks.
    """

    def __init__(self, model, cfg, source: str = "", engine: str = DEFAULT_ENGINE):
        import model as M

        if engine not in ENGINES:
            raise ValueError(f"engine={engine!r}: choose from {', '.join(ENGINES)}")
        self.model, self.cfg, self.source, self.engine = model, cfg, source, engine
        self.sp, self.fp = STFT.StftParams.from_config(cfg), STFT.FeatureParams.from_config(cfg)
        params = M.ModelParams.from_config(cfg)
        self.causal = params.streamable  # a future-context model runs whole clips, like a bidirectional one
        self.lookahead = params.lookahead_frames if self.causal else 0
        self._chunk_fn = None
        self._step_path = None

    @classmethod
    def from_pretrained(cls, path=None, engine: str = DEFAULT_ENGINE) -> Enhancer:
        """Loads a folder written by model.save_trained (default: see default_model_dir)."""
        import model as M

        path = Path(path) if path is not None else default_model_dir()
        model, cfg = M.load_trained(path)
        return cls(model, cfg, str(path), engine)

    def step_path(self) -> Path:
        """The cached TFLite step of this engine (converted now if it is not cached yet)."""
        if self._step_path is None:
            self._require_causal("a TFLite streaming step")
            folder = Path(self.source) if self.source else None
            if folder is not None and not (folder / "model.weights.h5").is_file():
                folder = None  # not a model folder: the user cache
            self._step_path = tflite_step.cached_step(self.model, self.cfg, ENGINES[self.engine], folder)
        return self._step_path

    def runner(self, streaming: bool):
        self._require_causal("streaming" if streaming else "chunked processing")
        if streaming:
            if self.engine != "keras" and (why := tflite_step.litert_missing()):
                print(f"{why}: streaming with the Keras step (slower)", file=sys.stderr)
                self.engine = "keras"
            if self.engine != "keras":
                return tflite_step.TFLiteRunner(self.step_path(), tflite_step.step_meta(self.cfg))
            import model as M

            return M.StreamingMask(self.model, self.cfg)
        if self._chunk_fn is None:  # traced once per enhancer, shared by every file and channel
            self._chunk_fn = chunk_function(self.model, self.cfg)
        return KerasChunkRunner(self.model, self.cfg, self._chunk_fn)

    def _enhance_model_rate(self, x: np.ndarray) -> np.ndarray:
        """(C, N) at the model rate -> (C, N): the whole-clip reference (STFT, model, iSTFT)."""
        import model as M

        S_hat = M.enhance_spectrogram(self.model, STFT.stft(x, self.sp), self.cfg)
        return STFT.istft(S_hat, self.sp, length=x.shape[-1])


EXPORT_METADATA = "metadata.json"


class TFLiteEnhancer(BaseEnhancer):
    """Enhances waveforms, streams and files with a TFLite streaming model written by export.py (LiteRT,
    no TensorFlow).

    Everything outside the network (STFT, features, complex product, iSTFT, lookahead delay, chunking)
    is this module's, so its output equals the Keras model's to float32 rounding.
    """

    def __init__(self, path, quantized: bool = False, num_threads: int = 1):
        import json

        path = Path(path)
        folder = path if path.is_dir() else path.parent
        meta_file = folder / EXPORT_METADATA
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

    def runner(self, streaming: bool = True) -> tflite_step.TFLiteRunner:
        return tflite_step.TFLiteRunner(self.path, self.meta, self.num_threads)  # frame and block runner

    def _enhance_model_rate(self, x: np.ndarray) -> np.ndarray:
        out = []
        for channel in x:
            stream = self.frame_stream(streaming=False)
            out.append(np.concatenate([stream.process(channel), stream.flush()]))
        return np.stack(out)


def _downmix(x: np.ndarray, channels: str) -> np.ndarray:
    return x if channels == "each" else x.mean(axis=1, keepdims=True)


def _read_blocks(path: Path, block: int):
    """(n, channels) float32 blocks; raises AudioError naming the file for unreadable or non-finite data."""
    try:
        with sf.SoundFile(str(path)) as f:
            while True:
                x = f.read(block, dtype="float32", always_2d=True)
                if len(x) == 0:
                    return
                if not np.all(np.isfinite(x)):
                    raise utils.AudioError(path, "contains NaN or Inf samples")
                yield x
    except utils.AudioError:
        raise
    except Exception as e:  # libsndfile raises several types; all mean "unreadable"
        raise utils.AudioError(path, utils.unreadable(e)) from e


class _Writer:
    """Writes blocks to a temp file beside `dst`, renamed over it on success; exactly `frames` samples."""

    def __init__(self, dst: Path, sr: int, channels: int, fmt: str, subtype: str, frames: int):
        self.dst, self.sr, self.channels, self.fmt, self.subtype = dst, sr, channels, fmt, subtype
        self.frames, self.written = frames, 0
        # PCM would wrap around on overshoot: clip there; float formats keep the values as they are.
        self.clip = not subtype.startswith(("FLOAT", "DOUBLE", "VORBIS", "OPUS"))

    def __enter__(self):
        self._replace = utils.atomic_path(self.dst)  # renamed over dst by __exit__, or removed
        self.tmp = self._replace.__enter__()
        try:
            self.file = sf.SoundFile(self.tmp, "w", self.sr, self.channels, self.subtype, format=self.fmt)
        except BaseException as e:  # __exit__ never runs when __enter__ fails: remove the temp file here
            self._replace.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def write(self, y: np.ndarray) -> None:
        y = np.asarray(y, np.float32).reshape(-1, self.channels)[: self.frames - self.written]
        if self.clip:
            y = np.clip(y, -1.0, 1.0)
        try:
            self.file.write(y)
        except sf.LibsndfileError as e:
            raise _write_error(e, self.dst) from e
        self.written += len(y)

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None and self.written < self.frames:  # the resampler's last sample can round away
                self.write(np.zeros((self.frames - self.written, self.channels), np.float32))
            try:
                self.file.close()
            except sf.LibsndfileError as e:
                raise _write_error(e, self.dst) from e
        except BaseException as e:
            self._replace.__exit__(type(e), e, e.__traceback__)  # removes the temp file
            raise
        self._replace.__exit__(exc_type, exc, tb)  # renames on success (fsync, mode 0666 & ~umask)
        return False


def _write_error(e: Exception, dst: Path) -> Exception:
    """libsndfile reports a full disk as "System error": say "disk full" when the disk is."""
    try:
        st = os.statvfs(dst.parent)
        full = st.f_bavail * st.f_frsize < 1 << 20
    except OSError:
        full = False
    return OSError(errno.ENOSPC, "No space left on device", str(dst)) if full else e


# ----------------------------------------------------------------------------- command line


def collect_inputs(inputs: list[str]) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(file, path relative to the output folder) for every input; plus one error line per bad input."""
    found, errors = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = utils.find_audio(path, utils.readable_extensions())
            if not files:
                errors.append(f"{path}: no audio files in this folder (any format libsndfile reads: .wav, "
                              ".flac, .ogg, .aiff, .au, .mp3, ...)")  # fmt: skip
            found += [(f, f.relative_to(path)) for f in files]
        elif path.is_file():
            found.append((path, Path(path.name)))
        else:
            errors.append(f"{path}: not found")
    return found, errors


def plan_outputs(found: list[tuple[Path, Path]], outdir: Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Output path per input; refuses any that would overwrite an input or another output."""
    inputs = {f.resolve() for f, _ in found}
    outdir = outdir.resolve()
    jobs, errors, taken = [], [], {}
    for src, rel in found:
        dst = outdir / rel
        if dst.resolve() in inputs or dst.parent.resolve() == src.resolve().parent:
            errors.append(
                f"{src}: refusing to overwrite the input (choose an -o folder other than the input's)"
            )
        elif dst in taken:
            errors.append(
                f"{src}: output {dst} would also be written for {taken[dst]} (enhance them separately)"
            )
        else:
            taken[dst] = src
            jobs.append((src, dst))
    return jobs, errors


def _load(args, cfg):
    if args.tflite:
        return TFLiteEnhancer.from_export(args.tflite)
    folder = args.model or default_model_dir(cfg)
    print(f"model: {folder}", file=sys.stderr)
    return Enhancer.from_pretrained(folder, engine=args.engine)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Denoise audio files with a trained model. Offline by default: long files are "
        "processed in [enhance] chunk_seconds blocks with the recurrent state carried across them (bounded "
        "memory, same result as whole-file processing). --streaming runs the model frame by frame (10 ms) "
        "like a real-time system. Outputs keep each input's name, sample rate and subtype and are aligned "
        "with the input.",
        epilog="example: python enhance.py noisy.wav recordings/ -o enhanced/files --model cp/default/best",
    )
    parser.add_argument("inputs", nargs="+", help="audio files or folders (searched recursively)")
    parser.add_argument(
        "-o", "--out", type=Path, default=None, help="output folder (default: [paths] enhanced_dir)"
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="folder with model.weights.h5 + config.ini (model.save_trained); default: "
        "<checkpoint_dir>/<[train] run_name>/best once trained, else the shipped pretrained/",
    )
    parser.add_argument(
        "--tflite",
        type=Path,
        default=None,
        help="use an exported TFLite model instead (export.py --out DIR; --model is then ignored)",
    )
    parser.add_argument(
        "--streaming", action="store_true", help="run the model frame by frame (causal models)"
    )
    parser.add_argument(
        "--engine",
        choices=CLI_ENGINES,
        default=DEFAULT_ENGINE,
        help="the network of --streaming: tflite = the one-frame step converted to TFLite on first use "
        "and cached beside the weights (else in ~/.cache), run by LiteRT (default); keras = the "
        "Keras step (slower, same output to float rounding); tflite-int8 = dynamic-range int8 "
        "weights (fastest; quality within 0.01 dB SI-SDR of float32, README)",
    )
    parser.add_argument(
        "--channels",
        choices=("mix", "each"),
        default="mix",
        help="multichannel input: mix = downmix to one output channel (default); each = every channel",
    )
    utils.add_config_args(parser)
    args = parser.parse_args(argv)
    utils.refuse_model_overrides(args.overrides, "enhance.py")
    cfg = utils.config_from_args(args)
    chunk_seconds = cfg.getfloat("enhance", "chunk_seconds", fallback=30.0)
    if not chunk_seconds > 0:
        raise utils.PipelineError(f"[enhance] chunk_seconds={chunk_seconds}: must be > 0")
    outdir = Path(args.out or utils.get_path(cfg, "enhanced_dir"))
    found, errors = collect_inputs(args.inputs)
    if outdir.exists() and not outdir.is_dir():
        is_input = any(outdir.resolve() == f.resolve() for f, _ in found)
        raise utils.PipelineError(
            f"{outdir}: -o must be a folder, and this is {'an input' if is_input else 'an existing'} file"
        )
    jobs, refused = plan_outputs(found, outdir)
    errors += refused
    for line in errors:
        print(f"failed: {line}", file=sys.stderr)
    if not jobs:
        print("no file was enhanced", file=sys.stderr)
        return 1
    created = not outdir.exists()
    outdir.mkdir(parents=True, exist_ok=True)
    try:
        with utils.folder_lock(outdir, "enhance.py"):
            return _enhance_all(args, cfg, jobs, errors, outdir, chunk_seconds)
    finally:
        if created:  # nothing enhanced: leave no empty folder behind
            with contextlib.suppress(OSError):
                outdir.rmdir()


def _enhance_all(args, cfg, jobs, errors, outdir: Path, chunk_seconds: float) -> int:
    for _, dst in jobs:  # a killed run's hidden temp files (we hold the folder's lock: none is live)
        for tmp in utils.remove_stale_temps(dst):
            print(f"removed {tmp} (left by an interrupted run)", file=sys.stderr)
    enhancer = _load(args, cfg)
    if args.streaming:
        enhancer._require_causal("--streaming")
        window_ms = 1000 * enhancer.sp.win_length / enhancer.sample_rate
        print(
            f"streaming: {enhancer.sp.hop} samples per step, algorithmic latency "
            f"{enhancer.latency_ms:.1f} ms (window {window_ms:.0f} ms + lookahead {enhancer.lookahead} "
            "frames); output realigned with the input"
        )
    elif not enhancer.causal:
        print(
            f"{enhancer.source}: no streaming step (non-causal, or [model] lookahead_mode=context): "
            "each file is processed whole, in memory (no chunking)"
        )
    run_cfg = _run_config(cfg, enhancer, args)
    utils.remove_stale_temps(outdir / "enhance_config.ini")
    _refuse_another_model(outdir, run_cfg)

    failed, written = len(errors), False
    for src, dst in jobs:
        try:
            r = enhancer.enhance_file(src, dst, args.channels, args.streaming, chunk_seconds)
        except Exception as e:  # one bad file (bad audio, disk full, libsndfile, TF...) never stops the run
            print(f"failed: {_failure(src, e)}", file=sys.stderr)
            failed += 1
            continue
        if not written:  # with the first file: never for a run that enhanced nothing
            utils.save_config(run_cfg, outdir / "enhance_config.ini")
            written = True
        print(
            f"{src} -> {dst}: {r['duration']:.2f} s, {r['sample_rate']} Hz, {r['channels']} ch "
            f"{r['subtype']}, {r['seconds']:.2f} s (real-time factor {r['rtf']:.3f})"
        )
    if failed:
        print(f"{failed} input(s) failed, {len(jobs) - (failed - len(errors))} enhanced", file=sys.stderr)
        return 1
    return 0


def _failure(src: Path, e: Exception) -> str:
    """One line: an AudioError already names the file and the reason; anything else gets its type."""
    if isinstance(e, utils.AudioError):
        return str(e)
    if isinstance(e, OSError):
        return f"{src}: {utils.os_error_line(e)}"
    lines = str(e).strip().splitlines()
    return f"{src}: {type(e).__name__}: {lines[0][:200] if lines else '(no message)'}"


def _refuse_another_model(outdir: Path, run_cfg) -> None:
    """A folder holds the files of one model: its enhance_config.ini (written by an earlier run) must
    name the model of this run, else the folder's files would silently come from two models."""
    path = outdir / "enhance_config.ini"
    if not path.is_file():
        return
    import configparser

    saved = configparser.ConfigParser(interpolation=None)
    try:  # read as written: it holds run keys ([enhance] model, ...) that config.ini does not have
        saved.read(path)
        old = saved.get("enhance", "model", fallback="")
    except configparser.Error:
        old = ""
    new = run_cfg.get("enhance", "model")
    if old and old != new:
        raise utils.PipelineError(
            f"{outdir}: holds files enhanced with another model ({old}, see enhance_config.ini); "
            "choose another -o folder or empty this one"
        )


def _run_config(cfg, enhancer, args):
    """The model's config plus this run's [enhance] settings: what produced the files."""
    import configparser

    run = configparser.ConfigParser(interpolation=None)
    run.optionxform = str
    if enhancer.cfg is not None:
        run.read_dict(utils.config_to_dict(enhancer.cfg))
    section = dict(cfg.items("enhance")) if cfg.has_section("enhance") else {}
    section.update(
        {
            "model": str(enhancer.source),
            "streaming": str(args.streaming),
            "channels": args.channels,
            "engine": getattr(enhancer, "engine", "tflite (exported)"),
        }
    )
    run["enhance"] = section
    return run


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
