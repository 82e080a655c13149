"""A small synthetic speech-like corpus, so the demo and the tests run without downloading anything.

    python data/demo_corpus.py OUT_DIR [--seed S] [--minutes-clean M] [--minutes-noise M] [--scale X]

writes OUT_DIR/{clean_train,clean_test,noise_train,noise_test}/*.wav (16 kHz, float32 WAV) in the
layout data/config.ini and tests/conftest.py use, in a few seconds.

THIS CORPUS ONLY PROVES THAT THE PIPELINE RUNS. Its "speech" is a source-filter toy: a glottal pulse
train with pitch glides (and noise for unvoiced sounds) through time-varying formant resonators,
shaped into syllables, words and phrases with pauses, by a few "talkers" with different pitch ranges
and vocal-tract lengths. Its noise is coloured noise (white / pink / brown), mains hum with harmonics,
keyboard-like clicks, babble of synthetic talkers and fan noise. Scores measured on it say nothing
about real speech; use real recordings (`make data`, or your own files) for any claim.

Sizes: --minutes-clean is the clean training audio (the test split gets a third of it), --minutes-noise
the training noise (the test split gets a third); --scale multiplies both. Training and testing use
different talkers and different noise instances. A second run with the same arguments is a no-op.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import fft, signal

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # run as `python data/demo_corpus.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import utils  # noqa: E402

SR = 16000
FRAME = 160  # control-track resolution: 10 ms
VERSION = 1
SPLITS = ("clean_train", "clean_test", "noise_train", "noise_test")
NOISE_KINDS = ("white", "pink", "brown", "hum", "keyboard", "babble", "fan")
TALKERS = {"train": 6, "test": 3}
UTTERANCE_S = (4.0, 8.0)  # longer than the demo's 3-s mixtures
MARKER = "demo_corpus.json"

# Adult male vowel formants (Hz), Peterson & Barney 1952; scaled per talker by vocal-tract length.
VOWELS = np.array([
    [270, 2290, 3010], [390, 1990, 2550], [530, 1840, 2480], [660, 1720, 2410], [730, 1090, 2440],
    [570, 840, 2410], [440, 1020, 2240], [300, 870, 2240], [640, 1190, 2390], [490, 1350, 1690],
], dtype=np.float64)  # fmt: skip
NASAL = np.array([250.0, 1100.0, 2300.0])
BANDWIDTHS = np.array([70.0, 100.0, 160.0])
FRICATIVES = {"s": (4000, 7500), "sh": (2200, 4200), "f": (1200, 7500)}  # noise bands (Hz)


@dataclass(frozen=True)
class Talker:
    f0: float  # median pitch (Hz)
    f0_range: float  # relative pitch excursion
    tract: float  # formant scale (shorter vocal tract -> higher formants)
    rate: float  # syllables per second
    breath: float  # aspiration noise relative to the voiced source


def make_talkers(rng: np.random.Generator, n: int) -> list[Talker]:
    """Talkers across pitch classes: low (male-like), middle (female-like), high (child-like)."""
    out = []
    for i in range(n):
        kind = (i + int(rng.integers(3))) % 3 if n > 2 else i % 2
        f0 = (rng.uniform(85, 150), rng.uniform(165, 250), rng.uniform(250, 320))[kind]
        tract = (rng.uniform(0.95, 1.05), rng.uniform(1.1, 1.2), rng.uniform(1.25, 1.35))[kind]
        out.append(Talker(f0, rng.uniform(0.1, 0.3), tract, rng.uniform(3.5, 5.5), rng.uniform(0.02, 0.08)))
    return out


# ----------------------------------------------------------------------------- speech


class Track:
    """Per-10-ms control values of one utterance, appended phone by phone."""

    def __init__(self):
        self.voiced, self.fric, self.f0, self.formants, self.kind = [], [], [], [], []

    def add(self, n, voiced=0.0, fric=0.0, f0=0.0, formants=None, kind="s"):
        n = max(1, int(n))
        voiced = np.broadcast_to(np.asarray(voiced, dtype=np.float64), (n,))
        f0 = np.broadcast_to(np.asarray(f0, dtype=np.float64), (n,))
        fric = np.broadcast_to(np.asarray(fric, dtype=np.float64), (n,))
        formants = np.broadcast_to(np.asarray(NASAL if formants is None else formants, float), (n, 3))
        self.voiced.append(voiced)
        self.fric.append(fric)
        self.f0.append(f0)
        self.formants.append(formants)
        self.kind += [kind] * n

    def arrays(self):
        return (np.concatenate(self.voiced), np.concatenate(self.fric), np.concatenate(self.f0),
                np.concatenate(self.formants), np.array(self.kind))  # fmt: skip


def _envelope(n: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(n)
    a, r = min(attack, n // 2), min(release, n // 2)
    env[:a] = 0.5 - 0.5 * np.cos(np.pi * np.arange(a) / max(a, 1))
    env[n - r :] = 0.5 + 0.5 * np.cos(np.pi * np.arange(r) / max(r, 1))
    return env


def _syllable(track: Track, rng: np.random.Generator, t: Talker, f0: float, stress: float) -> None:
    fps = SR // FRAME
    if rng.random() < 0.7:  # onset consonant
        if rng.random() < 0.5:
            track.add(rng.uniform(0.04, 0.11) * fps, fric=stress * rng.uniform(0.2, 0.45),
                      kind=rng.choice(list(FRICATIVES)))  # fmt: skip
        else:  # plosive: closure, then a short burst
            track.add(rng.uniform(0.03, 0.06) * fps)
            track.add(rng.uniform(1, 2.5), fric=stress * 0.6, kind=rng.choice(["s", "sh"]))
    n = max(4, int(rng.uniform(0.6, 1.4) * fps / t.rate))
    v0, v1 = VOWELS[rng.integers(len(VOWELS))], VOWELS[rng.integers(len(VOWELS))]
    glide = np.linspace(0, 1, n)[:, None] ** rng.uniform(0.7, 1.5)
    formants = t.tract * (v0 * (1 - glide) + v1 * glide) * rng.uniform(0.95, 1.05, 3)
    pitch = f0 * (1 + t.f0_range * stress * np.sin(np.linspace(0, np.pi, n)) * rng.uniform(-0.3, 0.8))
    track.add(n, voiced=stress * _envelope(n, 3, 5), f0=pitch, formants=formants)
    if rng.random() < 0.3:  # coda: nasal murmur or a fricative
        if rng.random() < 0.5:
            m = max(2, int(rng.uniform(0.04, 0.09) * fps))
            track.add(m, voiced=0.4 * stress * _envelope(m, 1, 3), f0=pitch[-1] * 0.97,
                      formants=NASAL * t.tract)  # fmt: skip
        else:
            track.add(rng.uniform(0.04, 0.1) * fps, fric=0.3 * stress, kind=rng.choice(list(FRICATIVES)))


def _controls(rng: np.random.Generator, t: Talker, seconds: float) -> Track:
    """Phrases of words of syllables with pitch declination; pauses between words and phrases."""
    track, fps = Track(), SR // FRAME
    track.add(rng.uniform(0.1, 0.3) * fps)
    total = int(seconds * fps) + 1
    while len(track.kind) < total:
        n_syl = int(rng.integers(4, 11))
        declination = np.linspace(1 + t.f0_range, 1 - t.f0_range / 2, n_syl)
        for k in range(n_syl):
            stress = rng.uniform(0.55, 1.0)
            _syllable(track, rng, t, t.f0 * declination[k] * rng.uniform(0.97, 1.03), stress)
            if rng.random() < 0.4:  # word boundary
                track.add(rng.uniform(0.02, 0.1) * fps)
        track.add(rng.uniform(0.2, 0.5) * fps)  # phrase pause
    return track


def _formant_filter(x: np.ndarray, formants: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """Cascade of 2-pole resonators, coefficients updated every 10-ms frame (state carried over)."""
    r = np.exp(-np.pi * bandwidths / SR)  # (3,)
    theta = 2 * np.pi * np.clip(formants, 50, 0.45 * SR) / SR  # (frames, 3)
    a1, a2 = -2 * r * np.cos(theta), np.broadcast_to(r * r, theta.shape)
    # one order-6 denominator per frame: the product of the three resonators' polynomials
    den = np.zeros((len(theta), 7))
    den[:, 0] = 1.0
    for k in range(3):
        prev = den.copy()
        den[:, 1:] += a1[:, k, None] * prev[:, :-1]
        den[:, 2:] += a2[:, k, None] * prev[:, :-2]
    gain = den.sum(axis=1)  # unity gain at DC
    y = np.zeros_like(x)
    zi = np.zeros(6)
    for i in range(len(theta)):
        seg = slice(i * FRAME, (i + 1) * FRAME)
        y[seg], zi = signal.lfilter([gain[i]], den[i], x[seg], zi=zi)
    return y


def harmonic_speech(seconds: float, seed: int, sr: int = SR) -> np.ndarray:
    """A quick voiced-speech stand-in for tests and benchmarks: harmonics of a gliding f0 under a
    syllable-rate envelope (no formants; `synth_speech` is the realistic one)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = np.clip(np.sin(2 * np.pi * 3.0 * t + rng.uniform(0, 6)), 0, None) ** 0.5
    return (0.3 * x * env / np.max(np.abs(x))).astype(np.float32)


def synth_speech(rng: np.random.Generator, talker: Talker, seconds: float) -> np.ndarray:
    """One utterance of `seconds` (float32), normalised to a random level between -28 and -20 dBFS."""
    voiced, fric, f0, formants, kind = _controls(rng, talker, seconds).arrays()
    n = len(voiced) * FRAME
    t_frames = (np.arange(len(voiced)) + 0.5) * FRAME
    t = np.arange(n)
    f0s = np.interp(t, t_frames, np.where(f0 > 0, f0, talker.f0)) * (1 + 0.01 * rng.standard_normal(n))
    venv = np.interp(t, t_frames, voiced)
    # glottal source: a pulse at every pitch period, smoothed (spectral tilt), with aspiration noise
    phase = np.cumsum(f0s / SR)
    pulses = np.zeros(n)
    at = np.nonzero(np.diff(np.floor(phase), prepend=0) > 0)[0]
    pulses[at] = 1 + 0.05 * rng.standard_normal(len(at))  # shimmer
    source = signal.lfilter([1.0], [1, -1.9, 0.9025], pulses)  # double pole at 0.95
    breath = signal.lfilter([1.0], [1, -0.9], rng.standard_normal(n))  # aspiration, tilted like the source
    source = _unit(source) + talker.breath * _unit(breath)
    voiced_sig = np.diff(_formant_filter(source * venv, formants, BANDWIDTHS * talker.tract), prepend=0.0)
    # unvoiced sounds: band-limited noise per fricative kind, switched frame by frame
    unvoiced = np.zeros(n)
    noise = rng.standard_normal(n)
    for name, (lo, hi) in FRICATIVES.items():
        sos = signal.butter(4, [lo, min(hi, 0.45 * SR)], btype="bandpass", fs=SR, output="sos")
        weight = np.interp(t, t_frames, np.where(kind == name, fric, 0.0))
        unvoiced += weight * signal.sosfilt(sos, noise)
    v_rms = np.sqrt(np.mean(voiced_sig[venv > 0.3] ** 2)) if np.any(venv > 0.3) else 1.0
    u_rms = np.sqrt(np.mean(unvoiced[fric_on] ** 2)) if np.any(fric_on := unvoiced != 0) else 1.0
    x = voiced_sig / (v_rms + 1e-12) + 0.6 * unvoiced / (u_rms + 1e-12)
    x = x[: int(seconds * SR)]
    x += 1e-4 * rng.standard_normal(len(x)) * np.std(x)  # a faint recording floor in the pauses
    return _level(x, rng.uniform(-28, -20))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.std(x) + 1e-12)


def _level(x: np.ndarray, dbfs: float, peak: float = 0.95) -> np.ndarray:
    x = x * (10 ** (dbfs / 20) / (np.sqrt(np.mean(x * x)) + 1e-12))
    m = np.max(np.abs(x))
    return (x * (peak / m) if m > peak else x).astype(np.float32)


# ----------------------------------------------------------------------------- noise


def coloured(rng: np.random.Generator, n: int, alpha: float) -> np.ndarray:
    """Gaussian noise with a 1/f^alpha power spectrum (0 white, 1 pink, 2 brown), above 20 Hz."""
    m = fft.next_fast_len(n)  # odd lengths make the FFT slow
    spec = fft.rfft(rng.standard_normal(m))
    f = fft.rfftfreq(m, 1 / SR)
    spec *= np.where(f < 20, 0.0, np.maximum(f, 20.0) ** (-alpha / 2))
    return fft.irfft(spec, m)[:n]


def hum(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / SR
    mains = rng.choice([50.0, 60.0]) * (1 + 0.002 * np.sin(2 * np.pi * 0.1 * t))
    phase = 2 * np.pi * np.cumsum(mains) / SR
    x = sum(rng.uniform(0.2, 1.0) / k**rng.uniform(0.5, 1.2) * np.sin(k * phase + rng.uniform(0, 6))
            for k in range(1, 25))  # fmt: skip
    return _unit(x) + 0.05 * _unit(coloured(rng, n, 1))


def keyboard(rng: np.random.Generator, n: int) -> np.ndarray:
    """Key presses: a short resonant click and a low thock at Poisson times, over a faint room noise."""
    x = 0.01 * _unit(coloured(rng, n, 1))
    t = 0
    while True:
        t += int(rng.exponential(SR / rng.uniform(4, 9)))
        if t >= n - SR // 20:
            break
        m = int(rng.uniform(0.03, 0.05) * SR)
        k = np.arange(m) / SR
        click = rng.standard_normal(m) * np.exp(-k / rng.uniform(0.002, 0.006))
        sos = signal.butter(
            2, [rng.uniform(1000, 2500), rng.uniform(3000, 6000)], "bandpass", fs=SR, output="sos"
        )
        thock = np.sin(2 * np.pi * rng.uniform(100, 300) * k) * np.exp(-k / 0.01)
        x[t : t + m] += rng.uniform(0.3, 1.0) * (signal.sosfilt(sos, click) + 0.3 * thock)
    return x


def babble(rng: np.random.Generator, n: int) -> np.ndarray:
    talkers = make_talkers(rng, int(rng.integers(4, 9)))
    return sum(rng.uniform(0.5, 1.0) * synth_speech(rng, t, n / SR + 0.1)[:n] for t in talkers)


def fan(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / SR
    sos = signal.butter(2, [rng.uniform(60, 120), rng.uniform(800, 2000)], "bandpass", fs=SR, output="sos")
    band = signal.sosfilt(sos, rng.standard_normal(n))
    blade = rng.uniform(80, 160)
    tones = sum(np.sin(2 * np.pi * k * blade * t) / k for k in (1, 2, 3))
    am = 1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.3, 2) * t)
    return am * (band / np.std(band) + 0.3 * tones)


def synth_noise(rng: np.random.Generator, kind: str, seconds: float) -> np.ndarray:
    n = int(seconds * SR)
    makers = {
        "white": lambda: coloured(rng, n, 0),
        "pink": lambda: coloured(rng, n, 1),
        "brown": lambda: coloured(rng, n, 2),
        "hum": lambda: hum(rng, n),
        "keyboard": lambda: keyboard(rng, n),
        "babble": lambda: babble(rng, n),
        "fan": lambda: fan(rng, n),
    }
    return _level(makers[kind](), rng.uniform(-32, -22))


# ----------------------------------------------------------------------------- corpus


def plan(seed: int, minutes_clean: float, minutes_noise: float) -> dict[str, list[tuple[str, float, int]]]:
    """File names, durations and per-file seeds for every split (cheap; no audio)."""
    out = {}
    for split_id, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, split_id])
        part = 1.0 if split.endswith("train") else 1 / 3
        files = []
        if split.startswith("clean"):
            total, k = minutes_clean * part * 60, 0
            n_talkers = TALKERS[split.split("_")[1]]
            first = 0 if split.endswith("train") else TALKERS["train"]  # test talkers are other people
            while total > 0 or k == 0:
                secs = float(rng.uniform(*UTTERANCE_S))
                files.append((f"talker{first + k % n_talkers:02d}_{k // n_talkers:03d}.wav", secs, k))
                total -= secs
                k += 1
        else:
            secs = max(1.0, minutes_noise * part * 60 / len(NOISE_KINDS))
            files = [(f"{kind}_00.wav", secs, k) for k, kind in enumerate(NOISE_KINDS)]
        out[split] = files
    return out


def make_demo_corpus(
    out_dir: Path | str,
    seed: int = 0,
    minutes_clean: float = 3.0,
    minutes_noise: float = 1.5,
    scale: float = 1.0,
    progress: bool = True,
) -> Path:
    """Writes the corpus (or finds it complete and up to date) and returns out_dir."""
    from tqdm import tqdm

    out = Path(out_dir).resolve()
    params = {"version": VERSION, "seed": seed, "minutes_clean": minutes_clean * scale,
              "minutes_noise": minutes_noise * scale}  # fmt: skip
    files = plan(seed, params["minutes_clean"], params["minutes_noise"])
    names = [f"{split}/{name}" for split, items in files.items() for name, _, _ in items]
    marker = out / MARKER
    if marker.is_file():
        try:
            old = json.loads(marker.read_text())
        except ValueError:
            old = {}
        if old.get("params") == params and all((out / n).is_file() for n in names):
            return out
        for name in old.get("files", []):  # ours, from an older run with other settings
            if "/" in name and not name.startswith((".", "/")) and ".." not in name:
                (out / name).unlink(missing_ok=True)
    for split_id, (split, items) in enumerate(files.items()):
        split_rng = np.random.default_rng([seed, split_id, 10**6])
        talkers = make_talkers(split_rng, TALKERS[split.split("_")[1]])
        for name, secs, k in tqdm(items, desc=f"demo corpus {split}", disable=None if progress else True):
            rng = np.random.default_rng([seed, split_id, k])
            if split.startswith("clean"):
                x = synth_speech(rng, talkers[k % len(talkers)], secs)
            else:
                x = synth_noise(rng, NOISE_KINDS[k], secs)
            utils.write_audio(out / split / name, x, SR)
    with utils.atomic_write(marker, "w") as f:
        json.dump({"params": params, "files": names}, f, indent=1)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="It only proves that the pipeline runs; see the module doc.",
    )
    parser.add_argument("out_dir", type=Path, help="folder to write clean_train/ clean_test/ noise_*/ into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes-clean", type=float, default=3.0, help="clean training minutes (test: 1/3)")
    parser.add_argument("--minutes-noise", type=float, default=1.5, help="training noise minutes (test: 1/3)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies both sizes (e.g. 0.25)")
    args = parser.parse_args(argv)
    if min(args.minutes_clean, args.minutes_noise, args.scale) <= 0:
        raise utils.PipelineError("--minutes-clean, --minutes-noise and --scale must be > 0")
    out = make_demo_corpus(args.out_dir, args.seed, args.minutes_clean, args.minutes_noise, args.scale)
    print(f"demo corpus in {out} (synthetic: proves the pipeline runs, says nothing about real speech)")
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
