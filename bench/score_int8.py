"""Scores the int8 TFLite streaming step against float32 (TFLite and Keras) on the test mixtures.

    nice python bench/score_int8.py --model pretrained --set paths.data_dir=DATA --out results/int8

Runs evaluate.py once per engine (keras: whole clip; tflite: float32 step streamed; tflite-int8:
dynamic-range int8 step streamed; no oracles, no page examples) into OUT/<engine>/, then prints, over
the test files that were not train.py's validation files, the mean SI-SDR, PESQ and STOI of each engine
and the paired change int8 - float32 (TFLite) with its 95% CI, and whether it is within the bar for
offering int8 (|dPESQ| <= 0.02 and |dSI-SDR| <= 0.1 dB). The table is also written to OUT/int8.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import evaluate  # noqa: E402
import utils  # noqa: E402

ENGINES = ("keras", "tflite", "tflite-int8")
METRICS = (("si_sdr", "SI-SDR (dB)", 0.1), ("pesq", "PESQ", 0.02), ("stoi", "STOI", None))


def _model_rows(path: Path) -> dict[int, dict]:
    with open(path, newline="") as f:
        return {int(r["index"]): r for r in csv.DictReader(f) if r["system"] == "model"}


def compare(out: Path, model_dir: Path, manifest: Path) -> str:
    rows = {e: _model_rows(out / e / "results.csv") for e in ENGINES}
    tasks = evaluate.read_manifest(manifest)
    held = evaluate.validation_exclusions(model_dir, manifest, tasks)
    if not held:  # an older metrics.json (indices only) of a manifest at another path: data_prep.py is
        # deterministic, so the README's command rebuilds the same manifest; its indices are used
        record = json.loads((model_dir / "metrics.json").read_text())
        held = {int(i) for i in record.get("validation_manifest_indices", [])}
        print(f"validation files: the {len(held)} manifest indices of {model_dir / 'metrics.json'}")
    keep = sorted(set.intersection(*(set(r) for r in rows.values())) - held)
    lines = [f"{len(keep)} test files (train.py's {len(held)} validation files left out)\n",
             "| metric | Keras (whole clip) | TFLite float32 (streamed) | TFLite int8 (streamed) | "
             "int8 - float32, 95% CI | within bar |", "|---|---|---|---|---|---|"]  # fmt: skip
    for key, label, bar in METRICS:
        v = {e: np.array([float(rows[e][i][key]) for i in keep]) for e in ENGINES}
        d = v["tflite-int8"] - v["tflite"]
        ci = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
        ok = "" if bar is None else ("yes" if abs(d.mean()) <= bar else "no")
        lines.append(f"| {label} | {v['keras'].mean():.3f} | {v['tflite'].mean():.3f} | "
                     f"{v['tflite-int8'].mean():.3f} | {d.mean():+.4f} ± {ci:.4f} | {ok} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=utils.PRETRAINED_DIR)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--compare-only", action="store_true", help="reuse OUT/<engine>/results.csv")
    utils.add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = utils.config_from_args(args)
    for engine in () if args.compare_only else ENGINES:
        print(f"--- {engine}", flush=True)
        rc = evaluate.main([
            "--model", str(args.model), "--out", str(args.out / engine), "--no-oracles", "--page-examples",
            "0", "--workers", str(args.workers), "--engine", engine,
            *(x for o in args.overrides for x in ("--set", o)), *(["--config", str(args.config)] if
                                                                 args.config else []),
        ])  # fmt: skip
        if rc:
            return rc
    table = compare(args.out, args.model.resolve(), utils.get_path(cfg, "data_dir") / "manifest_testing.csv")
    print(table)
    with utils.atomic_write(args.out / "int8.md", "w") as f:
        f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
