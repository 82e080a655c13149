"""How clean speech and noise are mixed, for data/data_prep.py's cached mixtures and for on-the-fly
training mixtures ([train] on_the_fly = true), plus the on-the-fly pipeline itself.

    active_fraction, is_silent    speech activity and silence of a segment
    draw, start_at                the random draws of one attempt at a segment, and its first sample
    mix(clean, noise, snr)        exact SNR, noisy = clean + noise, one anti-clipping gain (PEAK)

On the fly, clean and noise sources are decoded once into memory and mixed at random inside tf.data
with these definitions plus the augmentations of augment.py. Example i of epoch e depends only on
([train] seed, e, i), so a resumed run sees exactly the examples it would have seen.

    data_settings(cfg)            the [data] sources and SNR range in use (MIX_DATA_KEYS)
    OnTheFlyMixer                 one mixture (`example`) and its STFT (`spectra`)
    load_sources(folder, ...)     the usable audio of a folder, decoded once
    make_mix_dataset(mixer, ...)  the tf.data pipeline of one epoch (what training_data.make_dataset
                                  gives for the cached mixtures)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import manifests
import spectral
import utils
from augment import (
    AUGMENT_PROBABILITY,
    NOISE2_DB,
    add_transients,
    level_modulation,
    random_eq,
    reverberate,
    room_impulse_response,
    spectral_tilt,
)

log = utils.get_logger("train")  # its warnings are the training run's

# ----------------------------------------------------------------------------- the mixing definitions
# prep_run.Mixer (data/data_prep.py's cached mixtures) and OnTheFlyMixer below both mix with these.

PEAK = 0.99  # max |noisy| after the common anti-clipping gain
ACTIVITY_FRAME_S = 0.02
ACTIVITY_RANGE_DB = 40.0
ACTIVITY_MIN_FRACTION = 0.5
SILENCE_RMS = 1e-5  # -100 dBFS: a segment this quiet is treated as silent
MIN_NOISE_S = 0.5  # shorter noise files are skipped (looping them would sound like a buzz)
MAX_ATTEMPTS = 100  # draws per mixture before giving up on finding an active clean segment


def draw(rng: np.random.Generator, count: int) -> tuple[int, float]:
    """A source index and a start fraction: the two draws of every attempt at a segment.

    Both are drawn before any I/O, whether the file then turns out bad, too short or silent, so a
    mixture's random stream never depends on what a process read before (data_prep: the worker count
    and the order chunks finish).
    """
    return int(rng.integers(count)), float(rng.random())


def start_at(u: float, length: int, n: int) -> int:
    """The first sample of an n-sample segment of a length-sample source from a uniform u in [0, 1):
    any start that fits, or any sample of a source shorter than n (its segment loops)."""
    count = length - n + 1 if length >= n else length
    return min(int(u * count), count - 1)  # u * count may round up to count


def active_fraction(x: np.ndarray, sample_rate: int) -> float:
    """Fraction of 20-ms frames within 40 dB of the loudest frame (0 for a silent segment)."""
    flen = max(1, int(round(ACTIVITY_FRAME_S * sample_rate)))
    nf = len(x) // flen
    if nf == 0:
        return 0.0
    frames = np.asarray(x[: nf * flen], dtype=np.float64).reshape(nf, flen)
    energy = np.einsum("ij,ij->i", frames, frames)
    top = energy.max()
    if top <= flen * SILENCE_RMS**2:
        return 0.0
    return float(np.mean(energy >= top * 10 ** (-ACTIVITY_RANGE_DB / 10)))


def is_silent(x: np.ndarray) -> bool:
    x = np.asarray(x, dtype=np.float64)
    return not np.all(np.isfinite(x)) or float(np.sqrt(np.mean(x * x))) < SILENCE_RMS


def mix(clean: np.ndarray, noise: np.ndarray, snr_db: float, peak: float = PEAK):
    """Scales noise to `snr_db` against clean and mixes; returns float32 (clean, noise, noisy, gain).

    The SNR holds exactly on the returned (float32) signals, noisy == clean + noise exactly in float32,
    and max|noisy| <= peak (up to float32 rounding) through one gain applied to all three.
    """
    c = np.asarray(clean, dtype=np.float64)
    n = np.asarray(noise, dtype=np.float64)
    ec, en = float(np.einsum("i,i->", c, c)), float(np.einsum("i,i->", n, n))  # np.dot: BLAS threads, slow
    if not (ec > 0 and en > 0):
        raise ValueError("clean and noise must both have energy")
    n = n * math.sqrt(ec / (en * 10 ** (snr_db / 10)))
    top = float(np.max(np.abs(c + n)))
    gain = peak / top if top > peak else 1.0
    c32 = (c * gain).astype(np.float32)
    n32 = (n * gain).astype(np.float32)
    return c32, n32, c32 + n32, gain


# [data] settings on-the-fly mixing reads (data/config.ini, [train] data_config, or --set data.KEY=...).
MIX_DATA_KEYS = ("clean_train_path", "noise_train_path", "SNR_lower", "SNR_upper")
MIX_SNR_KEYS = ("SNR_lower", "SNR_upper")


def data_config_path(cfg) -> Path:
    """[train] data_config (a relative path is relative to cfg's own file), else data/config.ini."""
    raw = utils.config_value(cfg, "train", "data_config")
    if not raw:
        return utils.DATA_CONFIG
    return (Path(getattr(cfg, "source", "config.ini")).resolve().parent / raw).resolve()


def data_settings(cfg) -> dict:
    """The MIX_DATA_KEYS of data_config_path(cfg)'s [data] section, with cfg's own [data] keys
    (--set data.KEY=VALUE) on top."""
    path = data_config_path(cfg)
    dcfg = utils.load_config(path)
    values = dict(dcfg.items("data")) if dcfg.has_section("data") else {}
    if cfg.has_section("data"):
        values.update(cfg.items("data"))
    missing = [k for k in MIX_DATA_KEYS if not str(values.get(k, "")).strip()]
    if missing:
        raise utils.PipelineError(
            f"{path}: [data] {', '.join(missing)} missing (needed by [train] on_the_fly)"
        )
    if "sample_rate" in values:  # mixed at the model's rate: [STFT] sample_rate (decoded at it below)
        own = cfg.has_option("data", "sample_rate")  # a --set data.sample_rate=... override
        source = getattr(cfg, "source", "config.ini")
        rate = spectral.StftParams.from_config(cfg).sample_rate
        utils.check_sample_rates(values["sample_rate"], source if own else path, rate, source)
    return {k: values[k].strip() for k in MIX_DATA_KEYS}


def with_data_settings(cfg):
    """A copy of cfg whose [data] section holds the resolved MIX_DATA_KEYS: saved beside the run, it
    names the sources and SNR range the run was trained on and reproduces them on --resume."""
    values = data_settings(cfg)
    out = utils.copy_config(cfg)
    for key, value in values.items():
        utils.set_value(out, "data", key, value)
    utils.set_value(out, "train", "data_config", data_config_path(cfg))  # absolute: the copy lives elsewhere
    return out


@dataclass(frozen=True)
class MixedExample:
    noisy: np.ndarray  # float32 (n,) = speech + noise, speech = clean (reverberant with reverb)
    clean: np.ndarray  # the training target
    noise: np.ndarray
    snr_db: float  # 10 log10(sum speech^2 / sum noise^2), speech = noisy - noise
    level_db: float  # the level gain applied after mixing (after the peak cap)


class OnTheFlyMixer:
    """Training mixtures drawn at random from clean and noise sources held in memory.

    Example `index` of `epoch` depends only on ([train] seed, epoch, index): a generator
    default_rng([seed, epoch, index]) is split into independent streams for the SNR, the clean draw,
    the noise draw, the level, the EQ and the room, so turning an augmentation on changes no other draw
    and the result never depends on which thread made it or in what order. Per example:
      * a clean segment of crop length from a uniformly drawn file and offset, redrawn until
        active_fraction >= 0.5 (the most active of MAX_ATTEMPTS draws otherwise);
      * a noise segment likewise (a file shorter than the crop is looped), redrawn while silent;
      * noise augmentations, each with AUGMENT_PROBABILITY and its own draws: noise2 adds a second
        noise segment NOISE2_DB below the first; tilt (spectral_tilt), modulate (level_modulation),
        transient (add_transients);
      * [augment] eq: random shelves on the speech and (drawn separately) on the noise; the target is
        the EQ'd speech. reverb: the speech convolved with room_impulse_response; the target is the
        direct path + early reflections (EARLY_S); each with AUGMENT_PROBABILITY;
      * SNR uniform in [SNR_lower, SNR_upper], mix (exact SNR of speech to noise, one
        anti-clipping gain on everything);
      * a level gain uniform in [level_db_min, level_db_max] dB on noisy, target and noise alike (SNR
        unchanged), lowered where max|noisy| would pass PEAK.
    The spectra are spectral.stft of the crop; its first `crop` frames are kept (the flush frames are
    dropped, as a crop of a cached clip ends inside the clip).
    """

    def __init__(self, clean: list[np.ndarray], noise: list[np.ndarray], sp, crop: int, seed: int,
                 snr_range: tuple[float, float], level_db: tuple[float, float],
                 augment: tuple[str, ...] = ()):  # fmt: skip
        self.clean, self.noise, self.sp, self.crop, self.seed = clean, noise, sp, crop, seed
        self.snr_range, self.level_db, self.augment = snr_range, level_db, tuple(augment)
        self.n_samples = crop * sp.hop

    @classmethod
    def from_config(cls, cfg, params, crop: int, progress: bool = False) -> OnTheFlyMixer:
        """From the config's [data] sources and SNR range and the TrainParams `params` (train_settings.py);
        `crop` in frames."""
        sp = spectral.StftParams.from_config(cfg)
        d = data_settings(cfg)
        # typed and finite (parse_value); the one check left is their order
        snr_range = tuple(utils.parse_value("data", k, d[k], f"[data] {k}={d[k]!r}") for k in MIX_SNR_KEYS)
        if not snr_range[0] <= snr_range[1]:
            raise utils.PipelineError(
                f"[data] SNR_lower={snr_range[0]} SNR_upper={snr_range[1]}: need lower <= upper"
            )
        clean = load_sources(Path(d["clean_train_path"]), "clean", sp.sample_rate, crop * sp.hop, progress)
        noise = load_sources(Path(d["noise_train_path"]), "noise", sp.sample_rate, 0, progress)
        return cls(clean, noise, sp, crop, params.seed, snr_range, (params.level_db_min, params.level_db_max),
                   params.augmentations)  # fmt: skip

    def describe(self) -> str:
        minutes = [sum(map(len, xs)) / self.sp.sample_rate / 60 for xs in (self.clean, self.noise)]
        aug = ",".join(self.augment) or "none"
        return (f"{len(self.clean)} clean files ({minutes[0]:.1f} min), {len(self.noise)} noise files "
                f"({minutes[1]:.1f} min), SNR {self.snr_range[0]:g}..{self.snr_range[1]:g} dB, level "
                f"{self.level_db[0]:g}..{self.level_db[1]:g} dB, augment {aug}")  # fmt: skip

    def _pick_clean(self, rng: np.random.Generator) -> np.ndarray:
        n, best = self.n_samples, (-1.0, None)
        for _ in range(MAX_ATTEMPTS):
            i, u = draw(rng, len(self.clean))
            x = self.clean[i]
            start = start_at(u, len(x), n)
            seg = x[start : start + n]
            frac = active_fraction(seg, self.sp.sample_rate)
            if frac >= ACTIVITY_MIN_FRACTION:
                return seg
            best = max(best, (frac, seg), key=lambda b: b[0])
        return best[1]

    def _pick_noise(self, rng: np.random.Generator) -> np.ndarray:
        n = self.n_samples
        for _ in range(MAX_ATTEMPTS):
            i, u = draw(rng, len(self.noise))
            x = self.noise[i]
            start = start_at(u, len(x), n)
            seg = np.take(x, np.arange(start, start + n), mode="wrap")  # short noise loops
            if not is_silent(seg):
                break
        return seg

    def example(self, epoch: int, index: int) -> MixedExample:
        sr = self.sp.sample_rate
        # spawn(n)'s first children do not depend on n: the streams added later leave older draws alone.
        r_snr, r_clean, r_noise, r_level, r_eq, r_room, r_noise2, r_tilt, r_mod, r_trans = (
            np.random.default_rng([self.seed, epoch, index]).spawn(10)
        )
        speech = self._pick_clean(r_clean)
        noise = self._pick_noise(r_noise)
        if "noise2" in self.augment and r_noise2.random() < AUGMENT_PROBABILITY:
            other, rel_db = self._pick_noise(r_noise2), r_noise2.uniform(*NOISE2_DB)
            scale = math.sqrt(
                float(np.mean(noise.astype(np.float64) ** 2)) / (float(np.mean(other**2)) + 1e-12)
            )
            noise = (noise + other * np.float32(scale * 10 ** (rel_db / 20))).astype(np.float32)
        if "tilt" in self.augment:
            noise = spectral_tilt(noise, r_tilt, sr)
        if "modulate" in self.augment:
            noise = level_modulation(noise, r_mod, sr)
        if "transient" in self.augment:
            noise = add_transients(noise, self._pick_noise, r_trans, sr)
        snr = float(r_snr.uniform(*self.snr_range))
        level_db = float(r_level.uniform(*self.level_db))
        if "eq" in self.augment:
            speech, noise = random_eq(speech, r_eq, sr), random_eq(noise, r_eq, sr)
        target = None  # None: the target is the mixed speech itself
        if "reverb" in self.augment and r_room.random() < AUGMENT_PROBABILITY:
            speech, target = reverberate(speech, room_impulse_response(r_room, sr), sr)
        speech, noise, noisy, gain = mix(speech, noise, snr)
        clean = speech if target is None else (target * gain).astype(np.float32)
        g = min(10 ** (level_db / 20), PEAK / max(float(np.max(np.abs(noisy))), 1e-12))
        f32 = np.float32(g)
        return MixedExample(noisy * f32, clean * f32, noise * f32, snr, 20 * math.log10(g))

    def spectra(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(noisy, clean) STFTs (crop, F) complex64 of example `index`."""
        ex = self.example(epoch, index)
        X = spectral.stft(np.stack([ex.noisy, ex.clean]), self.sp)[:, : self.crop]
        return X[0], X[1]


def load_sources(folder: Path, kind: str, sample_rate: int, min_samples: int, progress: bool = False):
    """Every usable audio file under folder, decoded once (mono float32 at sample_rate, read-only).
    Unreadable, NaN, silent or (clean) shorter-than-crop files are skipped with a warning; data_prep's
    own output folders inside it are ignored."""
    from tqdm import tqdm

    outputs = manifests.output_folders()
    files = [p for p in utils.find_audio(folder) if not outputs & set(p.relative_to(folder).parts)]
    least = max(min_samples, int(MIN_NOISE_S * sample_rate) if kind == "noise" else 1)
    arrays, skipped = [], []
    for path in tqdm(files, desc=f"decoding {kind}", unit="file", leave=False, disable=not progress):
        try:
            x = utils.read_audio(path, sample_rate)[0]
        except utils.AudioError as e:
            skipped.append((path, e.reason))
            continue
        if len(x) < least:
            skipped.append((path, f"too short ({len(x) / sample_rate:.2f} s < {least / sample_rate:g} s)"))
        elif (active_fraction(x, sample_rate) == 0) if kind == "clean" else is_silent(x):
            skipped.append((path, "silent"))
        else:
            x.setflags(write=False)  # shared by every thread of the input pipeline
            arrays.append(x)
    short = [p for p, r in skipped if r.startswith("too short")]
    for path, reason in [(p, r) for p, r in skipped if not r.startswith("too short")]:
        log.warning(f"on-the-fly {kind}: skipped {path}: {reason}")
    if short:
        log.warning(f"on-the-fly {kind}: skipped {len(short)} files shorter than {least / sample_rate:g} s")
    if not arrays:
        why = utils.why_none_usable(skipped, len(files))
        raise utils.PipelineError(f"{folder}: no usable {kind} audio for on-the-fly mixing{why}")
    return arrays


def make_mix_dataset(
    mixer: OnTheFlyMixer,
    epoch: int,
    n_examples: int,
    batch_size: int,
    skip_batches: int = 0,
    drop_remainder: bool = False,
    parallel: int | None = None,
):
    """tf.data pipeline for one on-the-fly epoch: the (noisy, clean, valid) batches of make_dataset.

    Example indices flow through the graph; one numpy_function per example mixes it and computes its
    STFT, `parallel` (default AUTOTUNE) at a time, in order. Batch b holds examples b*B .. b*B + B - 1,
    so resuming after k batches starts at example k*B and sees what the run would have seen.
    """
    utils.quiet_tensorflow()
    import tensorflow as tf

    crop, f = mixer.crop, mixer.sp.n_bins

    def load(index):
        noisy, clean = mixer.spectra(epoch, int(index))
        return noisy, clean, np.ones(crop, np.float32)

    def load_tf(index):
        noisy, clean, valid = tf.numpy_function(
            load, [index], [tf.complex64, tf.complex64, tf.float32], stateful=False
        )
        return (tf.ensure_shape(noisy, [crop, f]), tf.ensure_shape(clean, [crop, f]),
                tf.ensure_shape(valid, [crop]))  # fmt: skip

    ds = tf.data.Dataset.range(min(skip_batches * batch_size, n_examples), n_examples)
    ds = ds.map(load_tf, num_parallel_calls=parallel or tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)
