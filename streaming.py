"""Streaming STFT -> features -> mask -> iSTFT in numpy: what every streaming path shares.

No TensorFlow here: with a TFLite runner (tflite_step.TFLiteRunner) a model runs on LiteRT alone.
The Keras runners (model.StreamingMask, model.KerasChunkRunner), the TFLite runner and enhance.py's
enhancers all build on this module; it imports only spectral.py (signal definitions) and numpy.

Runners turn feature frames into mask frames, oldest first. With lookahead L the network's output n is
the mask of frame n - L: the first L outputs are dropped and L zero frames are fed at the end, exactly
as model.build_model pads and crops a whole clip. `MaskRunner` does that bookkeeping once; a runner
supplies the network:
    frame runners (for HopStream): one frame per call, as in real time
        step(features (F, C)) -> mask (F, 2) float32 of frame n - L, or None while the lookahead fills
    block runners (for FrameStream): many frames per call, offline
        push(features (k, F, C)) -> masks (m, F, 2) for the oldest frames whose mask is now known
    both: flush() -> masks (m, F, 2) of every remaining frame (feeds the L zero frames), then resets;
          reset()

    FrameStream     exact streaming transform in blocks (a block runner; offline chunks)
    HopStream       the same, one 10-ms hop at a time (a frame runner; real time)
    RealtimeStream  len(out) == len(chunk), delayed by the algorithmic latency
    AlignedStream   any rate (soxr streams) and channel count, no delay
"""

from __future__ import annotations

import collections

import numpy as np

import spectral


class MaskRunner:
    """The lookahead bookkeeping of every runner: drop the first L network outputs, feed L zero frames
    at the end. Subclasses implement `_network_frame` (one frame -> one mask) and `_reset_state`, and
    may override `_network_block` (k frames at once; default: frame by frame)."""

    lookahead: int
    n_bins: int
    channels: int

    def _network_frame(self, frame: np.ndarray) -> np.ndarray:
        """Features (F, C) -> network output (F, 2), the recurrent state carried."""
        raise NotImplementedError

    def _network_block(self, feats: np.ndarray) -> np.ndarray:
        """Features (k >= 1, F, C) -> network outputs (k, F, 2), the recurrent state carried."""
        return np.stack([self._network_frame(f) for f in feats])

    def _reset_state(self) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        self._reset_state()
        self.frames_in = 0  # network frames run so far (real + flushed)

    def step(self, frame: np.ndarray) -> np.ndarray | None:
        """One frame (F, C) -> mask (F, 2) of frame n - L, None for the first L frames."""
        mask = self._network_frame(frame)
        n = self.frames_in
        self.frames_in += 1
        return mask if n >= self.lookahead else None

    def push(self, feats: np.ndarray) -> np.ndarray:
        """Frames (k, F, C) -> the masks (m, F, 2) they complete."""
        if len(feats) == 0:
            return np.zeros((0, self.n_bins, 2), np.float32)
        masks = self._network_block(feats)
        drop = max(0, self.lookahead - self.frames_in)
        self.frames_in += len(feats)
        return masks[drop:]

    def flush(self) -> np.ndarray:
        """Feeds the L zero frames of the lookahead: the masks (m, F, 2) of the last frames; then resets."""
        masks = self.push(np.zeros((self.lookahead, self.n_bins, self.channels), np.float32))
        self.reset()
        return masks


class FrameStream:
    """Exact streaming STFT -> features -> mask -> complex product -> iSTFT at the model rate, in blocks.

    The block-runner twin of HopStream (same interface and output): every process() call analyses all
    the frames its samples complete at once and hands them to the runner in one push (offline chunks).
    process(x) accepts any number of samples and returns the enhanced samples that no later input can
    change, aligned with the input (the k-th sample returned overall is enhanced input sample k);
    flush() returns the rest, so that the outputs add up to exactly as many samples as went in and
    equal spectral.istft(S_hat, length=N) of the whole signal. State carried between calls: the last
    win - hop input samples (frame history), the previous STFT frame (delta phase), the frames waiting
    for their mask (lookahead), the runner's recurrent state and the overlap-add accumulators.
    """

    def __init__(self, runner, sp: spectral.StftParams, fp: spectral.FeatureParams):
        self.runner, self.sp, self.fp = runner, sp, fp
        self.window = spectral.window(sp)
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
        """Zero-pads the last frame as spectral.stft does, drains the lookahead and returns the tail."""
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
            feats = spectral.features(X, self.fp, self.sp)
        else:
            feats = spectral.features(np.concatenate([self.prev[None], X]), self.fp, self.sp)[1:]
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
    plus flush(), equal to spectral.istft of the whole signal), but each 10-ms frame takes the short path a
    real-time system runs: window and rfft of the last win_length samples, the features of that one
    frame, runner.step, complex product, irfft and overlap-add into a win - hop tail, in fixed buffers.
    Every output sample lies at a padded position >= win - hop, where all the frames that cover it
    exist, so the overlap-add normalisation is one precomputed hop-periodic window sum.
    """

    def __init__(self, runner, sp: spectral.StftParams, fp: spectral.FeatureParams):
        self.runner, self.sp, self.fp = runner, sp, fp
        self.window = spectral.window(sp)
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
        self._eps2 = np.float32(1e-24)  # spectral.compress eps (1e-12), squared: still a normal float32
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
        """Zero-pads the last frames as spectral.stft does, drains the lookahead and returns the tail."""
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
        """spectral.features of frame X (previous frame self.prev) into self.feats, in a few vector ops.

        The per-frame path avoids transcendental passes where it can (profiled: they were a third of
        the numpy time per hop): |X|^p / max(|X|, eps) as one power of |X|^2, and cos/sin of the delta
        phase as Re/Im of X conj(X[t-1]) over its modulus instead of angle() then cos() and sin(). Equal
        to spectral.features to float32 rounding (tests/test_enhance.py::test_hop_stream_*).
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
                d = spectral.wrap(np.angle(X * self.prev.conj()) - self.advance).astype(np.float32)
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
