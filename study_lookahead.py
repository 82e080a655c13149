"""The lookahead study: how much quality a causal model loses against a bidirectional one, and how
much lookahead buys back (the paper's central question), in one command.

    python study_lookahead.py [--config config.ini] [--set section.key=value ...]
                              [--lookaheads 0,1,2,5,10,20] [--no-bidirectional]
                              [--epochs E | --budget-minutes M] [--out results/lookahead]
                              [--limit N] [--workers N] [--no-oracles] [--quick] [--overwrite]

Needs the data-prep outputs and the STFT caches of the config (data/data_prep.py, then STFT.py; or
`make demo`). Trains the config's causal model at every lookahead L (frames of 10 ms) plus the
bidirectional model of the same sizes, evaluates each with evaluate.py and writes, in --out:

  table.md                  one row per system: lookahead, algorithmic latency (ms; "offline" for the
                            bidirectional model), parameters, multiply-adds per frame, mean SDR,
                            SI-SDR, SNRi, PESQ, STOI, and the paired per-file SI-SDR difference to the
                            bidirectional model (mean +- 95% CI half-width); noisy input and oracle
                            masks once. Also printed at the end.
  results.json              the same figures, the training budget and where every run lives
  quality_vs_latency.png    SI-SDR and PESQ against algorithmic latency; the bidirectional model
                            and the noisy input as horizontal lines
  config.ini                the resolved config of the study
  runs/<name>/              evaluate.py's outputs per model (results.csv, summary.json, ...)

Equal training budget: every model trains from the same STFT cache with the same [train] seed
(same data order, same crops), batch size, learning rate and number of epochs, hence the same number
of optimizer steps; only [model] architecture / lookahead_frames differ. --epochs E fixes the epoch
count; --budget-minutes M times the first epoch of the first configuration (including its one-time
graph compilation and validation) and sets E = max(1, floor(M * 60 / epoch seconds)) for every
configuration, so M is the training time of the first configuration (the bidirectional one takes
about 1.5x as long for the same steps). The timed epoch is the first epoch of that model's real
run, which then resumes to E epochs (with [train] validation_interval > 1 that run also validates
epoch 1). Without either option, [train] epochs of the config.

Runs: <checkpoint_dir>/<study>/<name>, <log_dir>/<study>/<name> (TensorBoard), name = lookahead_00,
lookahead_02, ..., bidirectional; <study> = --study (default study_lookahead). Resumable: a model whose
saved settings (hash of [STFT], [features], [model], [loss], [train] except epochs and bookkeeping keys,
and the training / testing data) match is not retrained when it has the requested epochs, is resumed
(train.py --resume) when it has fewer, and its evaluation is reused when the evaluation settings match
too. A run with other settings stops the study unless --overwrite (which retrains only those runs).

Scores: evaluate.py scores every test file; the table uses the files train.py did NOT validate on (it
picked each model's best epoch on the first [train] validation_files test files) whenever any remain.
"""

from __future__ import annotations

import argparse
import configparser
import csv
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import STFT
import train
import utils

STUDY = "study_lookahead"
DEFAULT_LOOKAHEADS = "0,1,2,5,10,20"
MODEL_SECTIONS = ("STFT", "features", "model", "loss")
# [train] keys that change neither the weights nor which epoch is kept: left out of the settings hash.
# They are train.py's resumable keys less validation_interval (it decides which epochs are validated,
# hence which one best/ holds: the model the study scores) and data_config (the study hashes it with
# the other training settings).
BOOKKEEPING_KEYS = set(train.RESUMABLE_TRAIN_KEYS) - {"validation_interval", "data_config"}
# --quick: a seconds-long end-to-end check (CI); applied before the user's --set, which may change them.
QUICK_SETS = (
    "model.projection_units=16",
    "model.lstm_units=16",
    "model.lstm_layers=1",
    "model.dense_units=16",
    "train.epochs=1",
    "train.validation_files=2",
    "train.audio_examples=1",
)
QUICK_LOOKAHEADS = "0,2"
QUICK_LIMIT = 4
COLUMNS = (("sdr", "SDR"), ("si_sdr", "SI-SDR"), ("snri", "SNRi"), ("pesq", "PESQ"), ("stoi", "STOI"))
PLOTTED = (("si_sdr", "SI-SDR (dB)"), ("pesq", "PESQ (MOS-LQO)"))

log = utils.get_logger("study")


# ----------------------------------------------------------------------------- configurations


@dataclass
class Entry:
    """One model of the study: its config (architecture, lookahead, study paths) and folders."""

    name: str
    architecture: str
    lookahead: int
    cfg: configparser.ConfigParser
    out: Path  # evaluation folder <out>/runs/<name>

    @property
    def run_dir(self) -> Path:
        return utils.get_path(self.cfg, "checkpoint_dir") / self.name

    @property
    def log_dir(self) -> Path:
        return utils.get_path(self.cfg, "log_dir") / self.name

    @property
    def best(self) -> Path:
        return self.run_dir / "best"

    @property
    def marker(self) -> Path:
        """Settings and trained epochs of the run, beside (not inside) the run folder: train.py
        --overwrite empties the run folder."""
        return self.run_dir.with_name(f"{self.name}.study.json")

    @property
    def causal(self) -> bool:
        return self.architecture == "causal"


def parse_lookaheads(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise utils.PipelineError(f"--lookaheads {text!r}: expected comma-separated frame counts") from e
    if any(v < 0 for v in values):
        raise utils.PipelineError(f"--lookaheads {text!r}: frame counts must be >= 0")
    return list(dict.fromkeys(values))  # unique, in the given order (the first one is calibrated)


def copy_config(cfg) -> configparser.ConfigParser:
    new = configparser.ConfigParser(interpolation=None)
    new.optionxform = str
    new.read_dict(utils.config_to_dict(cfg))
    new.source = getattr(cfg, "source", "config.ini")  # type: ignore[attr-defined]
    return new


def _set(cfg, section: str, key: str, value) -> None:
    if not cfg.has_section(section):
        cfg.add_section(section)
    cfg.set(section, key, str(value))


def make_entries(cfg, study: str, lookaheads: list[int], bidirectional: bool, out: Path) -> list[Entry]:
    """The causal model at each lookahead, then the bidirectional one; runs under <dir>/<study>/."""
    specs = [(f"lookahead_{L:02d}", "causal", L) for L in lookaheads]
    if bidirectional:
        specs.append(("bidirectional", "bidirectional", 0))  # lookahead is ignored: keep the hash stable
    entries = []
    for name, arch, L in specs:
        c = copy_config(cfg)
        for key in ("checkpoint_dir", "log_dir", "enhanced_dir"):
            _set(c, "paths", key, utils.get_path(cfg, key) / study)
        _set(c, "model", "architecture", arch)
        _set(c, "model", "lookahead_frames", L)
        entries.append(Entry(name, arch, L, c, out / "runs" / name))
    return entries


# ----------------------------------------------------------------------------- inputs


def check_inputs(cfg) -> None:
    """Data-prep manifests and up-to-date STFT caches of both splits, else one line saying what to run."""
    fix = "run data/data_prep.py and STFT.py with this config first (or `make demo`)"
    for split in STFT.SPLITS:
        manifest = STFT.manifest_path(cfg, split)
        if not manifest.is_file():
            raise utils.PipelineError(f"study_lookahead.py: {manifest} not found; {fix}")
        folder = STFT.cache_dir(cfg, split)
        try:
            fresh = STFT.is_up_to_date(cfg, split)
        except utils.PipelineError as e:
            raise utils.PipelineError(f"study_lookahead.py: {e}; {fix}") from e
        if not fresh:
            state = "out of date" if (folder / "meta.json").is_file() else "missing"
            raise utils.PipelineError(f"study_lookahead.py: STFT cache {folder} {state}; {fix}")


# ----------------------------------------------------------------------------- settings hashes


def _norm(value: str):
    """Numbers compared as numbers (2.1e-4 == 0.00021), text case-insensitively."""
    text = str(value).strip()
    try:
        return repr(float(text))
    except ValueError:
        return text.lower()


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _file_sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def data_fingerprint(cfg) -> dict:
    """What the caches were built from (manifest and source-file hashes from their meta.json)."""
    out = {}
    for split in STFT.SPLITS:
        meta = json.loads((STFT.cache_dir(cfg, split) / "meta.json").read_text())
        out[split] = {k: meta.get(k) for k in ("manifest_sha256", "sources_sha256", "config_sha256")}
    return out


def train_settings(cfg, data: dict) -> dict:
    """Everything the trained weights depend on (epochs apart: a run may be extended by resuming)."""
    s = {sec: {k: _norm(v) for k, v in cfg.items(sec)} for sec in MODEL_SECTIONS if cfg.has_section(sec)}
    if cfg.has_section("train"):
        s["train"] = {k: _norm(v) for k, v in cfg.items("train") if k not in BOOKKEEPING_KEYS}
    s["data"] = data
    return s


def _differences(old: dict, new: dict) -> list[str]:
    diffs = []
    for sec in sorted(set(old) | set(new)):
        a, b = old.get(sec) or {}, new.get(sec) or {}
        if not isinstance(a, dict) or not isinstance(b, dict):
            continue
        diffs += [
            f"[{sec}] {k} {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
        ]
    return diffs


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, obj) -> None:
    with utils.atomic_write(path, "w") as f:
        json.dump(utils.json_safe(obj), f, indent=2)


# ----------------------------------------------------------------------------- training


def history(entry: Entry) -> list[dict]:
    path = entry.run_dir / "history.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_state(entry: Entry, settings: dict) -> tuple[str, int, list[str]]:
    """("absent" | "other" | "same", epochs trained, differences): "other" = a run with other or
    unknown settings is in the way."""
    if not (entry.run_dir.exists() or entry.log_dir.exists()):
        return "absent", 0, []
    marker = read_json(entry.marker)
    if not marker:
        return "other", 0, [f"{entry.marker.name} missing (not made by this study)"]
    if marker.get("key") != _digest(settings):
        return "other", 0, _differences(marker.get("settings", {}), settings) or ["settings hash differs"]
    return "same", int(marker.get("epochs", 0)), []


def ensure_trained(entry: Entry, epochs: int, settings: dict, overwrite: bool, progress: bool) -> bool:
    """Trains, resumes or skips the run so that it holds `epochs` epochs; True when it trained."""
    state, done, diffs = run_state(entry, settings)
    if state == "same" and done == epochs and (entry.best / "model.weights.h5").is_file():
        print(f"{entry.name}: already trained ({epochs} epoch(s), same settings): not retrained", flush=True)
        return False
    if state == "same" and done > epochs:
        state, diffs = "other", [f"{done} epochs trained, {epochs} requested"]
    if state == "other" and not overwrite:
        raise utils.PipelineError(
            f"study_lookahead.py: {entry.run_dir} holds a run with other settings ({'; '.join(diffs[:3])}); "
            "use --overwrite to retrain it or --study NAME for a separate study"
        )
    resume = state == "same"
    verb = f"resuming from epoch {done + 1}" if resume and done else "training"
    latency = "offline" if not entry.causal else f"lookahead {entry.lookahead} frames"
    print(f"{entry.name}: {verb} to {epochs} epoch(s) ({entry.architecture}, {latency})", flush=True)
    write_json(
        entry.marker, {"key": _digest(settings), "epochs": done if resume else 0, "settings": settings}
    )
    (entry.out / "study.json").unlink(missing_ok=True)  # any earlier evaluation is stale now
    cfg = copy_config(entry.cfg)
    _set(cfg, "train", "epochs", epochs)
    train.log.propagate = False  # TensorFlow may add a root handler: print each line once
    train.train(cfg, entry.name, resume=resume, overwrite=state == "other", progress=progress)
    write_json(entry.marker, {"key": _digest(settings), "epochs": epochs, "settings": settings})
    return True


def epochs_for_budget(minutes: float, epoch_seconds: float) -> int:
    return max(1, math.floor(minutes * 60.0 / max(epoch_seconds, 1e-9)))


def calibrate(entry: Entry, minutes: float, settings: dict, overwrite: bool, progress: bool) -> dict:
    """Seconds of the first epoch of `entry` (training + validation), trained now unless its run
    already has that epoch with the same settings, and the epoch count that fits `minutes`."""
    state, done, _ = run_state(entry, settings)
    if state != "same" or done < 1 or not history(entry):
        print(f"calibrating the budget: one epoch of {entry.name}", flush=True)
        ensure_trained(entry, 1, settings, overwrite, progress)
    first = history(entry)[0]
    seconds = float(first["train_seconds"]) + float(first["validation_seconds"])
    epochs = epochs_for_budget(minutes, seconds)
    print(
        f"budget {minutes:g} min / {seconds:.1f} s for the first epoch of {entry.name} -> {epochs} "
        "epoch(s) for every model",
        flush=True,
    )
    return {"budget_minutes": minutes, "config": entry.name, "epoch_seconds": seconds, "epochs": epochs}


# ----------------------------------------------------------------------------- evaluation


def model_figures(cfg) -> dict:
    """Parameters, multiply-adds per frame and algorithmic latency (builds the model: imports TF)."""
    import model as model_lib

    s = model_lib.summary(cfg)
    return {
        "parameters": int(s["parameters"]),
        "macs_per_frame": int(s["macs_per_frame"]),
        "algorithmic_latency_ms": float(s["algorithmic_latency_ms"]),
    }


def eval_settings(entry: Entry, train_key: str, epochs: int, limit, oracles: list[str]) -> dict:
    best = read_json(entry.best / "metrics.json") or {}
    c = entry.cfg
    return {
        "train_key": train_key,
        "epochs": epochs,
        "best": {k: best.get(k) for k in ("epoch", "step")},
        "metrics": _norm(c.get("evaluate", "metrics", fallback="")),
        "limit": limit,
        "oracles": oracles,
        "test_manifest": _file_sha(STFT.manifest_path(c, "testing")),
    }


def ensure_evaluated(entry: Entry, settings: dict, limit, workers, oracles, progress) -> dict:
    """evaluate.evaluate on best/ unless <out>/runs/<name> holds an evaluation with these settings;
    returns the study record (settings, model figures)."""
    import evaluate

    record = read_json(entry.out / "study.json")
    if record and record.get("key") == _digest(settings) and (entry.out / "summary.json").is_file():
        print(f"{entry.name}: already evaluated (same settings): not re-evaluated", flush=True)
        return record
    extra = f" with oracles {','.join(oracles)}" if oracles else ""
    print(f"{entry.name}: evaluating {entry.best}{extra}", flush=True)
    summary = evaluate.evaluate(
        entry.cfg, entry.best, entry.out, limit, workers, oracles=oracles, progress=progress
    )
    part = summary.get("excluding_validation_files") or {}
    part = part if part.get("n_files") else summary  # the files the table uses (see collect)
    res = part["results"].get("model", {})
    print(
        f"{entry.name}: SI-SDR {_fmt(res.get('si_sdr', {}).get('mean'))} dB, PESQ "
        f"{_fmt(res.get('pesq', {}).get('mean'))} on {part['n_files']} test files"
        + (" (validation files left out)" if part is not summary else ""),
        flush=True,
    )
    record = {"key": _digest(settings), "settings": settings, "figures": model_figures(entry.cfg)}
    write_json(entry.out / "study.json", record)
    return record


# ----------------------------------------------------------------------------- results


def _stats(values) -> dict:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"mean": None, "ci95_half_width": None, "n": 0}
    half = 1.96 * float(np.std(v, ddof=1)) / math.sqrt(v.size) if v.size > 1 else None
    return {"mean": float(v.mean()), "ci95_half_width": half, "n": int(v.size)}


def read_scores(path: Path, system: str, metric: str) -> dict[int, float]:
    """{manifest index: value} of one system and metric in an evaluate.py results.csv."""
    with open(path, newline="") as f:
        return {int(r["index"]): float(r[metric]) for r in csv.DictReader(f) if r["system"] == system}


def held_out(entries: list[Entry]) -> set[int]:
    """Test files that train.py validated on (the same first validation_files for every model)."""
    held = set()
    for e in entries:
        held |= {
            int(i) for i in (read_json(e.best / "metrics.json") or {}).get("validation_manifest_indices", [])
        }
    return held


def collect(entries: list[Entry], records: dict, study: dict) -> dict:
    """results.json: one system per row (noisy input, models, oracles) with means on the chosen files."""
    import train

    summaries = {e.name: read_json(e.out / "summary.json") for e in entries}
    excluded = all(
        (summaries[e.name].get("excluding_validation_files") or {}).get("n_files") for e in entries
    )
    part = (lambda s: s["excluding_validation_files"]) if excluded else (lambda s: s)
    held = held_out(entries) if excluded else set()
    first = part(summaries[entries[0].name])

    def means(results: dict) -> dict:
        return {
            k: {"mean": results[k]["mean"], "ci95": results[k]["ci95"], "n": results[k]["n"]}
            for k, _ in COLUMNS
            if k in results
        }

    bidir = next((e for e in entries if not e.causal), None)
    ref = read_scores(bidir.out / "results.csv", "model", "si_sdr") if bidir else {}
    systems = [{"name": "noisy", "kind": "input", "metrics": means(first["results"]["noisy"])}]
    for e in entries:
        fig = records[e.name]["figures"]
        hist = history(e)
        row = {
            "name": e.name,
            "kind": "model",
            "architecture": e.architecture,
            "lookahead_frames": e.lookahead if e.causal else None,
            "algorithmic_latency_ms": fig["algorithmic_latency_ms"],
            "latency": "offline" if not e.causal else f"{fig['algorithmic_latency_ms']:g} ms",
            "parameters": fig["parameters"],
            "macs_per_frame": fig["macs_per_frame"],
            "epochs": len(hist),
            "optimizer_steps": hist[-1]["step"] if hist else None,
            # stopped by [train] patience / min_delta (train.plateaued), not by the epoch limit
            "converged": train.plateaued(hist, study["patience"], study["min_delta"]),
            "train_seconds": sum(h["train_seconds"] + h["validation_seconds"] for h in hist),
            "best_epoch": (read_json(e.best / "metrics.json") or {}).get("epoch"),
            "metrics": means(part(summaries[e.name])["results"]["model"]),
            "run_dir": str(e.run_dir),
            "evaluation_dir": str(e.out),
        }
        if bidir is not None:  # paired per file: the same test files, model minus bidirectional
            own = read_scores(e.out / "results.csv", "model", "si_sdr")
            both = sorted(set(own) & set(ref) - held)
            row["delta_si_sdr_vs_bidirectional"] = _stats([own[i] - ref[i] for i in both])
        systems.append(row)
    for name, results in first["results"].items():
        if name.startswith("oracle_"):
            systems.append({"name": name, "kind": "oracle", "metrics": means(results)})
    steps = {s["optimizer_steps"] for s in systems if s["kind"] == "model"}
    return {
        **study,
        "equal_optimizer_steps": len(steps) == 1,
        "evaluation": {
            "n_files": first["n_files"],
            "files": "excluding train.py's validation files" if excluded else "all scored test files",
            "n_excluded": first.get("n_excluded", 0),
            "ci_method": "mean +- 1.96 * std(ddof=1) / sqrt(n); deltas paired per file",
        },
        "systems": systems,
    }


def _fmt(x, digits: int = 2) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def format_table(results: dict) -> str:
    ev = results["evaluation"]
    lines = [
        "# Lookahead study: quality against algorithmic latency\n",
        (
            f"Every model: at most {results['epochs']} epoch(s), stopped once {results['patience']} "
            f'validations gained <= {results["min_delta"]:g} dB SI-SDR ("converged"); batch '
            if results.get("patience")
            else f"Every model: {results['epochs']} epoch(s), {results['optimizer_steps']} optimizer steps "
            "of batch "
        )
        + f"{results['batch_size']}, seed {results['seed']}, {results['training_clips']} training clips. "
        f"Scores: mean over {ev['n_files']} test files ({ev['files']}); "
        "ΔSI-SDR = paired per-file difference to the bidirectional model, ± 95% CI half-width.\n",
        "| system | lookahead (frames) | latency (ms) | parameters | MACs/frame | "
        + " | ".join(label for _, label in COLUMNS)
        + " | ΔSI-SDR vs bidirectional (dB) | train time (min) | steps (converged) |",
        "|---" * (len(COLUMNS) + 8) + "|",
    ]
    for s in results["systems"]:
        cells = [s["name"]]
        if s["kind"] == "model":
            lat = s["algorithmic_latency_ms"]
            cells += [
                "-" if s["lookahead_frames"] is None else str(s["lookahead_frames"]),
                "offline" if lat is None or not math.isfinite(lat) else f"{lat:g}",
                f"{s['parameters']:,}",
                f"{s['macs_per_frame'] / 1e6:.3f} M",
            ]
        else:
            cells += ["-"] * 4
        for k, _ in COLUMNS:
            cells.append(_fmt((s["metrics"].get(k) or {}).get("mean"), 3 if k == "stoi" else 2))
        delta = s.get("delta_si_sdr_vs_bidirectional")
        if delta and delta["mean"] is not None:
            half = delta["ci95_half_width"]
            cells.append(f"{delta['mean']:+.2f}" + (f" ± {half:.2f}" if half is not None else ""))
        else:
            cells.append("-")
        cells.append(f"{s['train_seconds'] / 60:.1f}" if s["kind"] == "model" else "-")
        if s["kind"] == "model":
            cells.append(f"{s['optimizer_steps']} ({'yes' if s.get('converged') else 'no'})")
        else:
            cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """SI-SDR and PESQ against algorithmic latency: causal models as points (labelled L), the
    bidirectional model and the noisy input as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = results["systems"]
    causal = sorted(
        (s for s in systems if s["kind"] == "model" and s["lookahead_frames"] is not None),
        key=lambda s: s["lookahead_frames"],
    )
    bidir = next((s for s in systems if s["kind"] == "model" and s["lookahead_frames"] is None), None)
    noisy = next(s for s in systems if s["kind"] == "input")
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(10, 4))
    fig.subplots_adjust(left=0.07, right=0.98, top=0.88, bottom=0.13, wspace=0.25)

    def mean(s, k) -> float:
        m = (s["metrics"].get(k) or {}).get("mean")
        return math.nan if m is None else m

    # Means only: between-file spread dwarfs the (paired) differences between models; the table
    # gives the paired SI-SDR difference with its confidence interval.
    for ax, (k, label) in zip(axes, PLOTTED):
        x = [s["algorithmic_latency_ms"] for s in causal]
        y = [mean(s, k) for s in causal]
        if causal:
            ax.plot(x, y, marker="o", label="causal model")
            ax.margins(x=0.12)
            for s, xi, yi in zip(causal, x, y):
                if math.isfinite(yi):
                    ax.annotate(
                        f"L={s['lookahead_frames']}",
                        (xi, yi),
                        textcoords="offset points",
                        xytext=(4, 4),
                        fontsize=8,
                    )
        for s, style, color, name in (
            (bidir, "--", "C1", "bidirectional (offline)"),
            (noisy, ":", "0.4", "noisy input"),
        ):
            if s is not None and math.isfinite(mean(s, k)):
                ax.axhline(mean(s, k), linestyle=style, color=color, label=name)
        if not any(math.isfinite(v) for v in y) and (bidir is None or not math.isfinite(mean(bidir, k))):
            ax.text(0.5, 0.5, f"{k} not computed", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("algorithmic latency (ms)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(
        f"Mean quality against algorithmic latency ({results['epochs']} epoch(s) per model, "
        f"{results['evaluation']['n_files']} test files)",
        fontsize=10,
    )
    with utils.atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="study_lookahead.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    utils.add_config_args(parser)
    parser.add_argument(
        "--lookaheads",
        help=f"causal lookaheads in 10-ms frames (default {DEFAULT_LOOKAHEADS}; --quick: "
        f"{QUICK_LOOKAHEADS}); the first one calibrates --budget-minutes",
    )
    parser.add_argument("--no-bidirectional", action="store_true", help="leave out the bidirectional model")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, help="epochs for every model (default: [train] epochs)")
    budget.add_argument(
        "--budget-minutes",
        type=float,
        metavar="M",
        help="training minutes of the first configuration: its first epoch is timed and every model gets "
        "max(1, floor(M * 60 / epoch seconds)) epochs",
    )
    parser.add_argument("--out", type=Path, help="output folder (default <results_dir>/lookahead[_quick])")
    parser.add_argument(
        "--study",
        help=f"runs go to <checkpoint_dir>/STUDY/ and <log_dir>/STUDY/ (default {STUDY}, "
        f"--quick: {STUDY}_quick)",
    )
    parser.add_argument(
        "--limit", type=int, help=f"score only the first N test files (--quick: {QUICK_LIMIT})"
    )
    parser.add_argument(
        "--workers", type=int, help="scoring processes (default [evaluate] workers; --quick: 1)"
    )
    parser.add_argument(
        "--no-oracles", action="store_true", help="leave out the oracle masks (default with --quick)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a seconds-long check of the machinery (CI): lookaheads 0,2 + bidirectional, 16-unit one-layer "
        "models, 1 epoch, 2 validation files, 4 test files, no oracles",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="retrain runs whose saved settings differ instead of stopping",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    started = time.time()
    log.propagate = False
    cfg = utils.load_config(args.config, [*(QUICK_SETS if args.quick else ()), *args.overrides])
    lookaheads = parse_lookaheads(args.lookaheads or (QUICK_LOOKAHEADS if args.quick else DEFAULT_LOOKAHEADS))
    if not lookaheads and args.no_bidirectional:
        raise utils.PipelineError("study_lookahead.py: nothing to train (no lookaheads, --no-bidirectional)")
    bad_epochs = args.epochs is not None and args.epochs < 1
    if bad_epochs or args.budget_minutes is not None and not args.budget_minutes > 0:
        raise utils.PipelineError("study_lookahead.py: --epochs and --budget-minutes must be > 0")
    limit = args.limit if args.limit is not None else (QUICK_LIMIT if args.quick else None)
    if limit is not None and limit < 1:
        raise utils.PipelineError(f"--limit {limit}: must be >= 1")
    workers = args.workers if args.workers is not None else (1 if args.quick else None)
    study = args.study or (f"{STUDY}_quick" if args.quick else STUDY)
    if not study or "/" in study or study in (".", ".."):
        raise utils.PipelineError(f"--study {study!r}: expected a plain folder name")
    suffix = "_quick" if args.quick else ""
    out = (args.out or utils.get_path(cfg, "results_dir") / f"lookahead{suffix}").resolve()
    check_inputs(cfg)

    params = train.TrainParams.from_config(cfg)
    oracles = (
        []
        if args.no_oracles or args.quick
        else [o.strip() for o in cfg.get("evaluate", "oracles", fallback="").split(",") if o.strip()]
    )
    entries = make_entries(cfg, study, lookaheads, not args.no_bidirectional, out)
    data = data_fingerprint(cfg)
    settings = {e.name: train_settings(e.cfg, data) for e in entries}
    print(f"Lookahead study {study}: {', '.join(e.name for e in entries)}; outputs in {out}", flush=True)

    calibration = None
    if args.budget_minutes is not None:
        first = entries[0]
        calibration = calibrate(
            first, args.budget_minutes, settings[first.name], args.overwrite, not args.no_progress
        )
        epochs = calibration["epochs"]
    else:
        epochs = args.epochs if args.epochs is not None else params.epochs
    _set(cfg, "train", "epochs", epochs)
    out.mkdir(parents=True, exist_ok=True)
    utils.save_config(cfg, out / "config.ini")

    records = {}
    for k, e in enumerate(entries):
        print(f"\n== [{k + 1}/{len(entries)}] {e.name}", flush=True)
        ensure_trained(e, epochs, settings[e.name], args.overwrite, not args.no_progress)
        eset = eval_settings(e, _digest(settings[e.name]), epochs, limit, oracles if k == 0 else [])
        records[e.name] = ensure_evaluated(e, eset, limit, workers, eset["oracles"], not args.no_progress)

    train_cache = STFT.load_cache(STFT.cache_dir(cfg, "training"))
    study_info = {
        "study": study,
        "epochs": epochs,
        "budget": {"mode": "budget_minutes", **calibration} if calibration else {"mode": "epochs"},
        "seed": params.seed,
        "batch_size": params.batch_size,
        "crop_seconds": params.crop_seconds,
        "learning_rate": params.learning_rate,
        "patience": params.patience,
        "min_delta": params.min_delta,
        "training_clips": len(train_cache),
        "optimizer_steps": epochs * math.ceil(len(train_cache) / params.batch_size),
        "lookaheads": lookaheads,
        "config": str(out / "config.ini"),
    }
    results = collect(entries, records, study_info)
    write_json(out / "results.json", results)
    table = format_table(results)
    with utils.atomic_write(out / "table.md", "w") as f:
        f.write(table)
    plot(results, out / "quality_vs_latency.png")
    print("\n" + table)
    print(
        f"Study finished in {(time.time() - started) / 60:.1f} min: {out / 'table.md'}, "
        f"{out / 'results.json'}, {out / 'quality_vs_latency.png'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
