"""Paired comparison of two evaluations: per-file differences of one system against another, on the
same test files, overall and per input SNR.

    python compare.py NEW OLD [--system model] [--old-system model] [--exclude-validation DIR ...]
                      [--metrics si_sdr,pesq,stoi] [--json OUT]

NEW and OLD are evaluate.py output folders (or their results.csv). Each file scored in both counts
once: the difference NEW - OLD is taken per file, then averaged (mean +- 95% CI half-width, 1.96 x
std / sqrt(n)); a pairing removes the spread between files, so it resolves far smaller changes than
two independent means do. --exclude-validation DIR leaves out the test files a model in DIR chose its
checkpoint on (the validation_manifest_indices of DIR/metrics.json; repeatable), so that what is
reported was never used for choosing. Compare two systems of one evaluation by giving the same
folder twice, e.g. `compare.py EVAL EVAL --system model --old-system rnnoise`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

import utils

DEFAULT_METRICS = "si_sdr,sdr,pesq,stoi"
NOT_SCORES = ("index", "snr_db", "system", "failures", "noisy_file")  # results.csv columns


def results_csv(path: Path) -> Path:
    path = Path(path)
    csv_path = path / "results.csv" if path.is_dir() else path
    if not csv_path.is_file():
        raise utils.PipelineError(f"{csv_path}: no evaluate.py results.csv here")
    return csv_path


def read_scores(path: Path) -> dict[str, dict[int, dict]]:
    """system -> manifest index -> {"snr_db": ..., metric: value} from an evaluate.py results.csv
    (a folder or the file); empty cells (a metric not computed or failed) are left out."""
    out: dict[str, dict[int, dict]] = {}
    with open(results_csv(path), newline="") as f:
        for r in csv.DictReader(f):
            row = {"snr_db": float(r["snr_db"])}
            for key, value in r.items():
                if key not in NOT_SCORES and value not in (None, ""):
                    row[key] = float(value)
            out.setdefault(r["system"], {})[int(r["index"])] = row
    return out


def stats(values) -> dict:
    """Mean and 95% CI half-width (normal approximation) of the finite values; ci95 None below 2."""
    v = np.asarray([x for x in values if math.isfinite(x)], float)
    if len(v) < 2:
        return {"mean": float(v.mean()) if len(v) else None, "ci95": None, "n": len(v)}
    return {"mean": float(v.mean()), "ci95": float(1.96 * v.std(ddof=1) / math.sqrt(len(v))), "n": len(v)}


def validation_files(model_dirs: list[Path]) -> set[int]:
    held = set()
    for d in model_dirs:
        path = Path(d) / "metrics.json"
        if not path.is_file():
            raise utils.PipelineError(
                f"{path}: missing (--exclude-validation expects a trained model folder)"
            )
        held |= {int(i) for i in json.loads(path.read_text()).get("validation_manifest_indices", [])}
    return held


def compare(new: dict[int, dict], old: dict[int, dict], metrics: list[str], exclude: set[int]) -> dict:
    """Means of both systems and their paired difference per metric, overall and per input SNR, over
    the files both scored (minus `exclude`)."""
    files = sorted(set(new) & set(old) - exclude)
    if not files:
        raise utils.PipelineError("compare.py: the two evaluations share no test files")

    def block(idx: list[int]) -> dict:
        out = {}
        for m in metrics:
            pairs = [(new[i][m], old[i][m]) for i in idx if m in new[i] and m in old[i]]
            out[m] = {"new": stats([a for a, _ in pairs]), "old": stats([b for _, b in pairs]),
                      "delta": stats([a - b for a, b in pairs])}  # fmt: skip
        return out

    snrs = sorted({new[i]["snr_db"] for i in files})
    return {
        "files": len(files),
        "excluded": len(exclude & (set(new) & set(old))),
        "overall": block(files),
        "per_snr": {f"{s:g}": block([i for i in files if new[i]["snr_db"] == s]) for s in snrs},
    }


def _pm(st: dict, digits: int) -> str:
    if st["mean"] is None:
        return "-"
    ci = "" if st["ci95"] is None else f" ± {st['ci95']:.{digits}f}"
    return f"{st['mean']:+.{digits}f}{ci}"


def _digits(metric: str) -> int:
    return 3 if metric == "stoi" else 2


def format_tables(res: dict, new_label: str, old_label: str, metrics: list[str]) -> str:
    lines = [
        f"Paired per-file difference {new_label} − {old_label} on {res['files']} test files"
        + (f" ({res['excluded']} validation files left out)" if res["excluded"] else "")
        + ": mean ± 95% CI.",
        "",
        f"| metric | {new_label} | {old_label} | Δ |",
        "|---|---|---|---|",
    ]
    for m in metrics:
        b, d = res["overall"][m], _digits(m)
        lines.append(f"| {m} | {b['new']['mean']:.{d}f} | {b['old']['mean']:.{d}f} | {_pm(b['delta'], d)} |")
    snrs = list(res["per_snr"])
    lines += ["", "Δ per input SNR:", "", "| metric | " + " | ".join(f"{s} dB" for s in snrs) + " |"]
    lines.append("|---" * (len(snrs) + 1) + "|")
    for m in metrics:
        cells = [_pm(res["per_snr"][s][m]["delta"], _digits(m)) for s in res["per_snr"]]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("new", type=Path, help="evaluate.py output folder (or results.csv) of the new system")
    parser.add_argument("old", type=Path, help="the one it is compared against (may be the same folder)")
    parser.add_argument("--system", default="model", help="system in NEW (default model)")
    parser.add_argument("--old-system", default="model", help="system in OLD (default model)")
    parser.add_argument("--exclude-validation", type=Path, action="append", default=[], metavar="DIR",
                        help="leave out the validation files of the model in DIR (repeatable)")  # fmt: skip
    parser.add_argument(
        "--metrics", help=f"comma list (default: those of {DEFAULT_METRICS} that were scored)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    new_all, old_all = read_scores(args.new), read_scores(args.old)
    for scores, system, path in ((new_all, args.system, args.new), (old_all, args.old_system, args.old)):
        if system not in scores:
            raise utils.PipelineError(f"{results_csv(path)}: no system {system!r} (has {', '.join(scores)})")
    new, old = new_all[args.system], old_all[args.old_system]
    present = set().union(*new.values()) & set().union(*old.values())
    metrics = [
        m for m in (args.metrics or DEFAULT_METRICS).split(",") if m and (args.metrics or m in present)
    ]
    missing = [m for m in metrics if m not in present]
    if not metrics:
        raise utils.PipelineError(f"compare.py: none of {DEFAULT_METRICS} was scored in both evaluations")
    if missing:
        raise utils.PipelineError(f"compare.py: metric(s) {', '.join(missing)} not in the results")
    res = compare(new, old, metrics, validation_files(args.exclude_validation))
    new_label = f"{args.new.name}:{args.system}" if args.new != args.old else args.system
    old_label = f"{args.old.name}:{args.old_system}" if args.new != args.old else args.old_system
    print(format_tables(res, new_label, old_label, metrics), end="")
    if args.json:
        with utils.atomic_write(args.json, "w") as f:
            json.dump({"new": str(args.new), "old": str(args.old), "system": args.system,
                       "old_system": args.old_system, **res}, f, indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
