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
        [t*hop - 240, t*hop + 160)), so a `streaming.FrameStream` keeps the last 240 input samples,
        the previous STFT frame (delta phase), the LSTM states (a stateful whole-chunk call) and the
        overlap-add tail across blocks: the output equals whole-file processing (to float rounding)
        and memory does not grow with the file length.
    causal model, --streaming: the same chain fed 10-ms blocks, the model run frame by frame with its
        state (`streaming.HopStream`), exactly as a real-time system would; it equals the offline
        output. The network step is, by default, a TFLite model converted from the weights on first
        use and cached beside them (tflite_step.cached_step: keyed by a hash of weights + config,
        rebuilt when stale; a read-only model folder falls back to ~/.cache/.../tflite), run by
        LiteRT; --engine keras runs the Keras step instead (model.StreamingMask; same output to float
        rounding, ~5x slower), and --tflite DIR an export.py folder.
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
import contextlib
import errno
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

import spectral
import tflite_step
import utils
from streaming import AlignedStream, FrameStream, HopStream, RealtimeStream  # (`streaming` is a flag here)

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

    sp: spectral.StftParams
    fp: spectral.FeatureParams
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
        """[enhance] chunk_seconds of the model's config (config.ini's without one): the block size of
        __call__."""
        return utils.config_value(getattr(self, "cfg", None), "enhance", "chunk_seconds")

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
        self, src, dst, channels: str = "mix", streaming: bool = False, chunk_seconds: float | None = None
    ) -> dict:
        """Enhances one file into `dst` (atomically): {duration, seconds, rtf, ...}; AudioError if bad.
        chunk_seconds: the block size of causal models (default: the chunk_seconds property)."""
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
            block = max(1, int(round((chunk_seconds or self.chunk_seconds) * info.samplerate)))
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
        self.sp, self.fp = spectral.StftParams.from_config(cfg), spectral.FeatureParams.from_config(cfg)
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
        import model as M

        if self._chunk_fn is None:  # traced once per enhancer, shared by every file and channel
            self._chunk_fn = M.chunk_function(self.model, self.cfg)
        return M.KerasChunkRunner(self.model, self.cfg, self._chunk_fn)

    def _enhance_model_rate(self, x: np.ndarray) -> np.ndarray:
        """(C, N) at the model rate -> (C, N): the whole-clip reference (STFT, model, iSTFT)."""
        import model as M

        S_hat = M.enhance_spectrogram(self.model, spectral.stft(x, self.sp), self.cfg)
        return spectral.istft(S_hat, self.sp, length=x.shape[-1])


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
        meta_file = folder / tflite_step.EXPORT_METADATA
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
        self.sp = spectral.StftParams(s["sample_rate"], s["win_length"], s["hop"], s["n_fft"])
        self.fp = spectral.FeatureParams(f["compression"], f["delta_phase"], f["deviation"])
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
    chunk_seconds = utils.config_value(cfg, "enhance", "chunk_seconds")  # > 0: utils.LOWER_BOUNDS
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
