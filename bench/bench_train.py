"""Benchmarks train.py end to end: training clips/s, seconds per epoch, validation share of an epoch.

Runs the real loop (tf.data over the memory-mapped cache, GradientTape step, TensorBoard, checkpoints,
validation on waveforms) with the config.ini model and [train] settings (crop_seconds included;
--crop-seconds overrides it) and --epochs epochs, on synthetic speech-like mixtures made in a temp
folder (the speed does not depend on the audio). The first epoch includes tracing, so figures come from
the last epoch. Seconds per epoch are also projected to data/config.ini's total_training_files, and
checked against the targets: >= 15 training clips/s, validation < 10 % of a (projected) epoch.

    nice .venv/bin/python bench/bench_train.py                 # ~2 minutes on 2 cores
    nice .venv/bin/python bench/bench_train.py --train-clips 400 --set model.lstm_units=128
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import utils  # noqa: E402

SR = 16000
TARGET_CLIPS_PER_S = 15.0  # training throughput target
TARGET_VAL_SHARE = 10.0  # validation must take < 10 % of an epoch


def synthetic_pair(seconds: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A harmonic, syllable-modulated speech stand-in and coloured noise at -5..10 dB."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = rng.uniform(90, 220) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    speech = sum(np.sin(k * phase) / k for k in range(1, 15))
    speech *= np.clip(np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6)), 0, None)
    noise = np.convolve(rng.standard_normal(t.size), np.ones(3) / 3, mode="same")
    snr = rng.uniform(-5, 10)
    noise *= np.sqrt(np.sum(speech**2) / np.sum(noise**2) / 10 ** (snr / 10))
    gain = 0.9 / max(np.abs(speech + noise).max(), 1e-9)
    return (speech * gain).astype(np.float32), (noise * gain).astype(np.float32)


def write_split(data: Path, split: str, n: int, seconds: float, seed: int) -> None:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):
        clean, noise = synthetic_pair(seconds, rng)
        names = {"clean": f"c_{split}/{k}.wav", "noise": f"z_{split}/{k}.wav", "noisy": f"n_{split}/{k}.wav"}
        for key, sig in (("clean", clean), ("noise", noise), ("noisy", clean + noise)):
            (data / names[key]).parent.mkdir(parents=True, exist_ok=True)
            sf.write(data / names[key], sig, SR, subtype="FLOAT")
        rows.append({"index": k, **names, "snr_db": 0})
    with open(data / f"manifest_{split}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    utils.add_config_args(parser)
    parser.add_argument("--train-clips", type=int, default=240, help="training mixtures (default 240)")
    parser.add_argument(
        "--clip-seconds", type=float, default=3.0, help="mixture length (data_prep file_length)"
    )
    parser.add_argument(
        "--crop-seconds", type=float, help="[train] crop_seconds (default: the config's, 2.0 in config.ini)"
    )
    parser.add_argument("--epochs", type=int, default=2, help="epochs (figures from the last; default 2)")
    parser.add_argument("--strategy", default="default", help="train.py --strategy")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp folder)")
    args = parser.parse_args(argv)

    import train
    import train_settings

    train.log.propagate = False  # one line per epoch (TensorFlow may add a root log handler)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        work = (args.keep or Path(tmp)).resolve()
        cfg = utils.load_config(args.config, args.overrides)
        if args.crop_seconds is not None:
            cfg.set("train", "crop_seconds", str(args.crop_seconds))
        params = train_settings.TrainParams.from_config(cfg)
        for key in ("data_dir", "stft_dir", "checkpoint_dir", "log_dir", "enhanced_dir", "results_dir"):
            cfg.set("paths", key, str(work / key.replace("_dir", "")))
        cfg.set("train", "epochs", str(args.epochs))
        cfg.set("train", "validation_interval", "1")
        data = work / "data"
        print(
            f"making {args.train_clips} + {params.validation_files} synthetic mixtures in {work} ...",
            flush=True,
        )
        write_split(data, "training", args.train_clips, args.clip_seconds, 0)
        write_split(data, "testing", params.validation_files, args.clip_seconds, 1)
        import manifests
        import STFT

        for split in manifests.SPLITS:
            STFT.build_cache(cfg, split)
        t0 = time.perf_counter()
        folder = train.train(cfg, "bench", strategy=args.strategy, overwrite=True)
        total = time.perf_counter() - t0
        history = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]

    last = history[-1]
    rate, val_s = last["clips_per_second"], last["validation_seconds"]
    epoch_s = last["train_seconds"] + val_s
    data_cfg = utils.load_config(utils.DATA_CONFIG)
    full = data_cfg.getint("data", "total_training_files")
    full_train_s = full / rate
    m = cfg["model"]
    lines = [
        f"model: {m.get('architecture')} (projection {m.get('projection_units')}, "
        f"LSTM {m.get('lstm_layers')} x {m.get('lstm_units')}, dense {m.get('dense_units')}), "
        f"batch {params.batch_size}, "
        f"crop {params.crop_seconds:g} s, strategy {args.strategy}",
        f"training:          {rate:.1f} clips/s ({last['clips']} clips in {last['train_seconds']:.1f} s, "
        f"epoch {last['epoch']})",
        f"validation:        {val_s:.2f} s for {params.validation_files} whole clips of "
        f"{args.clip_seconds:g} s "
        "(loss, SDR / SI-SDR / SNR on waveforms, TensorBoard audio + images, wavs)",
        f"this epoch:        {epoch_s:.1f} s, validation {100 * val_s / epoch_s:.1f} % of it",
        f"projected epoch:   {full_train_s + val_s:.1f} s for {full} clips (data/config.ini "
        f"total_training_files), validation {100 * val_s / (full_train_s + val_s):.1f} % of it",
        f"whole run:         {total:.1f} s for {args.epochs} epoch(s) (the first includes tracing)",
    ]
    val_share = 100 * val_s / (full_train_s + val_s)
    for ok, text in (
        (rate >= TARGET_CLIPS_PER_S, f"training {rate:.1f} clips/s (target >= {TARGET_CLIPS_PER_S:g})"),
        (val_share < TARGET_VAL_SHARE, f"validation {val_share:.1f} % of a projected epoch "
                                       f"(target < {TARGET_VAL_SHARE:g} %)"),
    ):  # fmt: skip
        lines.append(f"{'target met:' if ok else 'target MISSED:':<19}{text}")
    print("\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
