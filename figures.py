"""The README's pictures of the shipped model, made by one command (small PNGs under assets/).

    python figures.py [--model pretrained] [--eval results/shipped_work/eval]
                      [--data results/shipped_work/data] [--out assets] [--examples 2]

  training_curves.png    validation SDR, SI-SDR and SNRi per epoch of the model's training
                         (<model>/history.jsonl, the run's history as train.py wrote it)
  examples.png           for --examples held-out test mixtures (the first one at 0 dB and at 5 dB
                         input that train.py did not validate on): noisy, enhanced and clean
                         spectrograms on one dB scale, and the real and imaginary parts of the
                         model's complex mask
  quality_vs_snr.png     SI-SDR and PESQ against input SNR: noisy input, the model and every
                         system in <eval>/results.csv (run evaluate.py with --baselines first)
  noise_kinds.md         mean SI-SDR and PESQ per noise kind (the noise recording's name without
                         its piece number) and system, over the files train.py did not validate on

--eval is an evaluate.py output folder of the same model on the test mixtures of --data (a
data_prep output folder); README's "The shipped model against the baselines" gives the commands.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

import numpy as np

import compare
import utils

ROOT = Path(__file__).resolve().parent
# Display names and colours, so every figure names a system the same way.
SYSTEMS = {
    "noisy": ("noisy input", "0.5"),
    "model": ("this model", "C3"),
    "rnnoise": ("RNNoise", "C0"),
    "deepfilternet": ("DeepFilterNet3", "C2"),
    "noisereduce": ("spectral gating", "C1"),
}
FLOOR_DB = 80.0  # spectrogram dynamic range shown
MASK_SCALE = 1.0  # mask colours span +-1 (the bound is 2, but almost all values lie within +-1)


def _save(fig, path: Path) -> None:
    with utils.atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=80, bbox_inches="tight")


def training_curves(history: Path, out: Path) -> None:
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("validation")]
    if not rows:
        raise utils.PipelineError(f"{history}: no validated epochs")
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for key, label in (("sdr", "SDR"), ("si_sdr", "SI-SDR")):
        axes[0].plot(epochs, [r["validation"][key] for r in rows], label=label)
    axes[0].axhline(rows[0]["validation"]["si_sdr_noisy"], color="0.5", ls="--", label="noisy SI-SDR")
    axes[1].plot(epochs, [r["validation"]["snri"] for r in rows], color="C3")
    axes[0].set(xlabel="epoch", ylabel="dB", title="validation SDR / SI-SDR")
    axes[1].set(xlabel="epoch", ylabel="dB", title="validation SNR improvement")
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    _save(fig, out)
    plt.close(fig)


def read_results(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def quality_vs_snr(results: list[dict], out: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    systems = [s for s in SYSTEMS if any(r["system"] == s for r in results)]
    for ax, (metric, label) in zip(axes, (("si_sdr", "SI-SDR (dB)"), ("pesq", "PESQ-WB")), strict=True):
        for s in systems:
            by_snr: dict[float, list[float]] = {}
            for r in results:
                if r["system"] == s and r.get(metric) not in (None, "", "nan"):
                    by_snr.setdefault(float(r["snr_db"]), []).append(float(r[metric]))
            snrs = sorted(by_snr)
            name, colour = SYSTEMS[s]
            ax.plot(snrs, [np.nanmean(by_snr[x]) for x in snrs], "o-", color=colour, label=name,
                    lw=2.5 if s == "model" else 1.2)  # fmt: skip
        ax.set(xlabel="input SNR (dB)", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _save(fig, out)
    plt.close(fig)


def noise_kind(source: str) -> str:
    """berlinnoise_traffic_9a12b4b8_02.flac -> berlinnoise_traffic: the name without the piece number
    and the recording's hash."""
    parts = Path(source).stem.split("_")
    while len(parts) > 1 and (parts[-1].isdigit() or re.fullmatch(r"[0-9a-f]{8}", parts[-1])):
        parts.pop()
    return "_".join(parts)


def noise_kinds_table(results: list[dict], data: Path, exclude: set[int]) -> str:
    with open(data / "manifest_testing.csv", newline="") as f:
        kind = {int(r["index"]): noise_kind(r["noise_source"]) for r in csv.DictReader(f)}
    systems = [s for s in SYSTEMS if any(r["system"] == s for r in results)]
    kinds = sorted(set(kind.values()))
    lines = ["| noise kind | files | " + " | ".join(f"{SYSTEMS[s][0]} SI-SDR / PESQ" for s in systems) + " |",
             "|---|---|" + "---|" * len(systems)]  # fmt: skip
    for k in kinds:
        cells = []
        for s in systems:
            rows = [r for r in results if r["system"] == s and int(r["index"]) not in exclude
                    and kind.get(int(r["index"])) == k]  # fmt: skip
            cells.append(" / ".join(f"{np.nanmean([float(r[m]) for r in rows]):.{d}f}"
                                    for m, d in (("si_sdr", 2), ("pesq", 2))))  # fmt: skip
        n = sum(1 for i, v in kind.items() if v == k and i not in exclude)
        lines.append(f"| {k} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def validation_indices(model_dir: Path) -> set[int]:
    has_metrics = (model_dir / "metrics.json").is_file()
    return compare.validation_files([model_dir]) if has_metrics else set()


def pick_examples(data: Path, exclude: set[int], n: int) -> list[dict]:
    """The first manifest rows at 0 dB, then 5 dB, ... input that are not validation files."""
    with open(data / "manifest_testing.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["index"]) not in exclude]
    picked = []
    for snr in (0, 5, -5, 10, 15):
        picked += [r for r in rows if float(r["snr_db"]) == snr][:1]
    return picked[:n]


def examples(model_dir: Path, data: Path, out: Path, n: int) -> None:
    import matplotlib.pyplot as plt

    import model as model_lib
    import spectral

    net, cfg = model_lib.load_trained(model_dir)
    sp, fp = spectral.StftParams.from_config(cfg), spectral.FeatureParams.from_config(cfg)
    rows = pick_examples(data, validation_indices(model_dir), n)
    if not rows:
        raise utils.PipelineError(f"{data}/manifest_testing.csv: no test mixtures to show")
    fig, axes = plt.subplots(len(rows), 5, figsize=(15, 2.8 * len(rows)), squeeze=False)
    for k, row in enumerate(rows):
        noisy, _ = utils.read_audio(data / row["noisy"], sp.sample_rate)
        clean, _ = utils.read_audio(data / row["clean"], sp.sample_rate)
        X, S = spectral.stft(noisy, sp), spectral.stft(clean, sp)
        mask = model_lib.mask_function(net)(spectral.features(X[None], fp, sp).astype(np.float32)).numpy()[0]
        M = mask[..., 0] + 1j * mask[..., 1] if mask.ndim == 3 else mask
        Y = X * M
        ref = 20 * np.log10(np.max(np.abs(X)) + 1e-12)
        extent = (0, X.shape[0] * sp.hop / sp.sample_rate, 0, sp.sample_rate / 2000)
        panels = [("noisy", X), ("enhanced", Y), ("clean", S)]
        for j, (title, Z) in enumerate(panels):
            db = 20 * np.log10(np.abs(Z).T + 1e-12)
            axes[k, j].imshow(db, origin="lower", aspect="auto", extent=extent, cmap="magma",
                              vmin=ref - FLOOR_DB, vmax=ref)  # fmt: skip
            axes[k, j].set_title(f"{title} (input {float(row['snr_db']):g} dB)", fontsize=9)
        # The imaginary part is small (the phase correction of a mask of mostly real gain): its own
        # scale, the 99.9th percentile of |imag|, named in the title.
        imag_scale = max(float(np.quantile(np.abs(M.imag), 0.999)), 1e-3)
        parts = (
            ("mask, real part", M.real, MASK_SCALE),
            (f"mask, imaginary part (±{imag_scale:.2g})", M.imag, imag_scale),
        )
        for j, (title, part, scale) in enumerate(parts, 3):
            im = axes[k, j].imshow(part.T, origin="lower", aspect="auto", extent=extent, cmap="RdBu_r",
                                   vmin=-scale, vmax=scale)  # fmt: skip
            axes[k, j].set_title(title, fontsize=9)
            fig.colorbar(im, ax=axes[k, j], fraction=0.05)
        for ax in axes[k]:
            ax.set(xlabel="s", ylabel="kHz")
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="figures.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "pretrained", help="model folder")
    parser.add_argument("--eval", type=Path, default=ROOT / "results" / "shipped_work" / "eval",
                        help="evaluate.py output folder of that model (with --baselines)")  # fmt: skip
    parser.add_argument("--data", type=Path, default=ROOT / "results" / "shipped_work" / "data",
                        help="data_prep output folder of the test mixtures")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "assets", help="where the PNGs go")
    parser.add_argument("--examples", type=int, default=2, help="test mixtures in examples.png")
    args = parser.parse_args(argv)
    for path, what in ((args.model / "history.jsonl", "--model"), (args.eval / "results.csv", "--eval"),
                       (args.data / "manifest_testing.csv", "--data")):  # fmt: skip
        if not path.is_file():
            raise utils.PipelineError(f"{path}: not found ({what})")
    args.out.mkdir(parents=True, exist_ok=True)
    training_curves(args.model / "history.jsonl", args.out / "training_curves.png")
    quality_vs_snr(read_results(args.eval / "results.csv"), args.out / "quality_vs_snr.png")
    examples(args.model, args.data, args.out / "examples.png", args.examples)
    table = noise_kinds_table(
        read_results(args.eval / "results.csv"), args.data, validation_indices(args.model)
    )
    with utils.atomic_write(args.out / "noise_kinds.md", "w") as f:
        f.write(table)
    print(table)
    for name in ("training_curves.png", "examples.png", "quality_vs_snr.png", "noise_kinds.md"):
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
