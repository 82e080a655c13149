"""Training-data augmentations for on-the-fly mixing (mixing.OnTheFlyMixer): speech colouring and
rooms (eq, reverb) and noise made less like the training recordings (noise2, tilt, modulate,
transient). Each function draws from the generator it is given, always the same number of draws
whether it applies or not, so turning one augmentation on changes no other draw.

Numpy (and scipy for the filters) only: no TensorFlow.
"""

from __future__ import annotations

import math

import numpy as np

AUGMENTATIONS = ("eq", "reverb", "noise2", "tilt", "modulate", "transient")
# Each augmentation is drawn for half the examples, so the model keeps seeing dry, uncoloured speech
# like the test mixtures'.
AUGMENT_PROBABILITY = 0.5
EQ_GAIN_DB = 6.0  # shelf gains uniform in +-6 dB
EQ_LOW_HZ = (100.0, 800.0)  # low-shelf corner, log-uniform
EQ_HIGH_HZ = (1500.0, 6000.0)  # high-shelf corner, log-uniform (capped below Nyquist)
RT60_S = (0.2, 0.8)
DRR_DB = (-3.0, 10.0)  # direct-to-reverberant energy ratio of the synthetic room
EARLY_S = 0.05  # the reverb target keeps the direct path and the reflections of the first 50 ms
# Noise augmentations (unseen noise at test time): a second noise at -10..0 dB below the first; a
# spectral tilt of +-TILT_DB_PER_OCTAVE around 1 kHz; a slow random level envelope (control points
# every 1/MOD_RATE_HZ seconds, +-MOD_DB); TRANSIENTS short decaying bursts of another noise file,
# each TRANSIENT_DB above the noise's RMS.
NOISE2_DB = (-10.0, 0.0)
TILT_DB_PER_OCTAVE = 4.0
MOD_RATE_HZ = (0.5, 4.0)
MOD_DB = (3.0, 12.0)
TRANSIENTS = (1, 4)
TRANSIENT_S = (0.005, 0.1)
TRANSIENT_DB = (0.0, 15.0)


def shelf_sos(kind: str, f0: float, gain_db: float, sr: int) -> np.ndarray:
    """One RBJ-cookbook shelving biquad (slope 1) as a (1, 6) second-order section."""
    a = 10 ** (gain_db / 40)
    w0 = 2 * math.pi * f0 / sr
    cw, sq = math.cos(w0), 2 * math.sqrt(a) * math.sin(w0) / 2 * math.sqrt(2)
    s = 1 if kind == "low" else -1  # the high shelf is the low shelf with cos(w0) and b1, a1 negated
    b = [a * ((a + 1) - s * (a - 1) * cw + sq), s * 2 * a * ((a - 1) - s * (a + 1) * cw),
         a * ((a + 1) - s * (a - 1) * cw - sq)]  # fmt: skip
    den = [
        (a + 1) + s * (a - 1) * cw + sq,
        -s * 2 * ((a - 1) + s * (a + 1) * cw),
        (a + 1) + s * (a - 1) * cw - sq,
    ]
    return np.array([b + den]) / den[0]


def random_eq(x: np.ndarray, rng: np.random.Generator, sr: int) -> np.ndarray:
    """With AUGMENT_PROBABILITY: a random low shelf and a random high shelf (always the same 5 draws)."""
    from scipy import signal

    apply = rng.random() < AUGMENT_PROBABILITY
    f_low = math.exp(rng.uniform(*np.log(EQ_LOW_HZ)))
    f_high = min(math.exp(rng.uniform(*np.log(EQ_HIGH_HZ))), 0.45 * sr)
    g_low, g_high = rng.uniform(-EQ_GAIN_DB, EQ_GAIN_DB, 2)
    if not apply:
        return x
    sos = np.concatenate([shelf_sos("low", f_low, g_low, sr), shelf_sos("high", f_high, g_high, sr)])
    return signal.sosfilt(sos, x).astype(np.float32)


def room_impulse_response(rng: np.random.Generator, sr: int) -> np.ndarray:
    """A synthetic room: a unit direct path, then Gaussian noise whose amplitude falls 60 dB in RT60
    (uniform in RT60_S), scaled to a direct-to-reverberant ratio uniform in DRR_DB. Length RT60."""
    rt60, drr = rng.uniform(*RT60_S), rng.uniform(*DRR_DB)
    n = max(2, int(rt60 * sr))
    k = np.arange(1, n)
    tail = rng.standard_normal(n - 1) * np.exp(-math.log(1000.0) * k / (rt60 * sr))
    tail *= math.sqrt(10 ** (-drr / 10) / np.sum(tail**2))
    return np.concatenate([[1.0], tail])


def reverberate(x: np.ndarray, h: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """(reverberant x, its direct path + reflections of the first EARLY_S), both len(x), float64.
    The crop is convolved on its own, so its first RT60 lacks the tail of the speech before it."""
    from scipy import signal

    early = h[: int(EARLY_S * sr) + 1]
    return signal.fftconvolve(x, h)[: len(x)], signal.fftconvolve(x, early)[: len(x)]


def spectral_tilt(x: np.ndarray, rng: np.random.Generator, sr: int) -> np.ndarray:
    """With AUGMENT_PROBABILITY: gain slope * log2(f / 1 kHz) dB (f floored at 50 Hz), slope uniform in
    +-TILT_DB_PER_OCTAVE, applied in the frequency domain of the whole segment."""
    apply, slope = rng.random() < AUGMENT_PROBABILITY, rng.uniform(-TILT_DB_PER_OCTAVE, TILT_DB_PER_OCTAVE)
    if not apply:
        return x
    f = np.fft.rfftfreq(len(x), 1 / sr)
    gain = 10 ** (slope * np.log2(np.maximum(f, 50.0) / 1000.0) / 20)
    return np.fft.irfft(np.fft.rfft(x) * gain, len(x)).astype(np.float32)


def level_modulation(x: np.ndarray, rng: np.random.Generator, sr: int) -> np.ndarray:
    """With AUGMENT_PROBABILITY: x times a slow random envelope, linear in dB between control points
    MOD_RATE_HZ apart, each uniform in +-depth dB, depth uniform in MOD_DB."""
    apply, rate, depth = rng.random() < AUGMENT_PROBABILITY, rng.uniform(*MOD_RATE_HZ), rng.uniform(*MOD_DB)
    n_points = int(len(x) / sr * rate) + 2
    points = rng.uniform(-depth, depth, n_points)
    if not apply:
        return x
    t = np.arange(len(x)) / sr * rate
    return (x * 10 ** (np.interp(t, np.arange(n_points), points) / 20)).astype(np.float32)


def add_transients(noise: np.ndarray, pick, rng: np.random.Generator, sr: int) -> np.ndarray:
    """With AUGMENT_PROBABILITY: TRANSIENTS bursts cut from pick(rng) (another noise segment), each of
    TRANSIENT_S with an exponential decay, TRANSIENT_DB above the noise's RMS, at random times."""
    if rng.random() >= AUGMENT_PROBABILITY:
        return noise
    out, rms = noise.astype(np.float64), float(np.sqrt(np.mean(noise.astype(np.float64) ** 2))) + 1e-9
    source = pick(rng)
    for _ in range(int(rng.integers(TRANSIENTS[0], TRANSIENTS[1] + 1))):
        n = max(2, int(rng.uniform(*TRANSIENT_S) * sr))
        at, src = int(rng.integers(0, len(noise) - n + 1)), int(rng.integers(0, len(source) - n + 1))
        burst = source[src : src + n] * np.exp(-5.0 * np.arange(n) / n)
        burst *= rms * 10 ** (rng.uniform(*TRANSIENT_DB) / 20) / (np.sqrt(np.mean(burst**2)) + 1e-12)
        out[at : at + n] += burst
    return out.astype(np.float32)
