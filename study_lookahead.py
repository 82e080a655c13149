"""The lookahead study: how much quality a causal model loses against a bidirectional one, and how
much lookahead buys back (the paper's central question), in one command.

    python study_lookahead.py [--config config.ini] [--set section.key=value ...]
                              [--lookaheads 0,1,2,5,10,20] [--no-bidirectional]
                              [--extra-seeds S,... [--extra-seed-lookaheads 0,20]]
                              [--context-lookaheads L,...]
                              [--baselines rnnoise,deepfilternet]
                              [--epochs E | --budget-minutes M] [--out results/lookahead]
                              [--limit N] [--workers N] [--no-oracles] [--quick] [--overwrite]

Needs the data-prep outputs and the STFT caches of the config (data/data_prep.py, then STFT.py; or
`make demo`). Trains the config's causal model at every lookahead L (frames of 10 ms) plus the
bidirectional model of the same sizes, evaluates each with evaluate.py and writes, in --out:

  table.md                  one row per system: lookahead, algorithmic latency (ms; "offline" for the
                            bidirectional model), parameters, multiply-adds per frame, mean SDR,
                            SI-SDR, SNRi, PESQ, STOI, and the paired per-file SI-SDR difference to the
                            bidirectional model of the same seed (mean +- 95% CI half-width); noisy
                            input, --baselines (at their published latency) and oracle masks once;
                            with --extra-seeds a second table: each retrained model's difference to
                            the bidirectional model per seed and averaged over seeds per file, and the
                            seed-to-seed difference. Also printed at the end.
  results.json              the same figures, each model's validation SI-SDR per epoch, whether it
                            converged, the training budget and where every run lives
  quality_vs_latency.png    SI-SDR and PESQ against algorithmic latency; other seeds hollow,
                            baselines at their published latency, the bidirectional model and the
                            noisy input as horizontal lines
  validation_curves.png     validation SI-SDR per epoch of every model, the kept epoch starred
  config.ini                the resolved config of the study
  runs/<label>/             evaluate.py's outputs per model (results.csv, summary.json, ...);
                            runs/references/ those of the noisy input, oracles and baselines

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
lookahead_02, ..., bidirectional; <study> = --study (default study_lookahead); --extra-seeds S runs in
<study>_seed<S>/ and shows as <name>_seed<S>. Convergence: with [train] patience P > 0 every model stops
once P validations in a row gained no more than [train] min_delta dB SI-SDR (run_folder.plateaued), with the
epoch count as the maximum; the table and results.json say which models "converged". Resumable: a model whose
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

import manifests
import run_folder
import STFT
import stft_cache
import train
import utils
from train_settings import RESUMABLE_TRAIN_KEYS, TrainParams

STUDY = "study_lookahead"
DEFAULT_LOOKAHEADS = "0,1,2,5,10,20"
MODEL_SECTIONS = ("STFT", "features", "model", "loss")
# [train] keys that change neither the weights nor which epoch is kept: left out of the settings hash.
# They are train.py's resumable keys less validation_interval (it decides which epochs are validated,
# hence which one best/ holds: the model the study scores) and data_config (the study hashes it with
# the other training settings).
BOOKKEEPING_KEYS = set(RESUMABLE_TRAIN_KEYS) - {"validation_interval", "data_config"}
# Keys added after studies were run, left out of the settings hash at their default (the behaviour
# runs made before them had), so that adding a key never invalidates a finished run.
LATER_KEYS = {
    ("model", "lookahead_mode"): "delay",
    ("model", "cell"): "lstm",
    ("model", "input_norm"): "false",
}
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

    name: str  # the run's name inside its study folder
    architecture: str
    lookahead: int
    cfg: configparser.ConfigParser
    out: Path  # evaluation folder <out>/runs/<label>
    seed: int
    label: str  # name in the table: the run name, plus _seed<S> for an --extra-seeds run
    mode: str = "delay"  # [model] lookahead_mode of a causal model

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


def make_entries(
    cfg,
    study: str,
    lookaheads: list[int],
    bidirectional: bool,
    out: Path,
    seed: int | None = None,
    context: list[int] = (),
) -> list[Entry]:
    """The causal model at each lookahead, then the bidirectional one, then the causal model with
    each `context` lookahead given as input ([model] lookahead_mode = context, named context_LL);
    runs under <dir>/<study>/. seed: another [train] seed for the same models, run under
    <dir>/<study>_seed<seed>/ and labelled <name>_seed<seed> (the study's own seed is [train] seed)."""
    specs = [(f"lookahead_{L:02d}", "causal", L, "delay") for L in lookaheads]
    if bidirectional:  # lookahead is ignored: keep the hash stable
        specs.append(("bidirectional", "bidirectional", 0, "delay"))
    specs += [(f"context_{L:02d}", "causal", L, "context") for L in context]
    folder = study if seed is None else f"{study}_seed{seed}"
    entries = []
    for name, arch, L, mode in specs:
        c = utils.copy_config(cfg)
        for key in ("checkpoint_dir", "log_dir", "enhanced_dir"):
            utils.set_value(c, "paths", key, utils.get_path(cfg, key) / folder)
        utils.set_value(c, "model", "architecture", arch)
        utils.set_value(c, "model", "lookahead_frames", L)
        utils.set_value(c, "model", "lookahead_mode", mode)
        if seed is not None:
            utils.set_value(c, "train", "seed", seed)
        label = name if seed is None else f"{name}_seed{seed}"
        seed_of = utils.config_value(c, "train", "seed")
        entries.append(Entry(name, arch, L, c, out / "runs" / label, seed_of, label, mode))
    return entries


def parse_seeds(text: str | None) -> list[int]:
    try:
        return list(dict.fromkeys(int(v) for v in (text or "").split(",") if v.strip()))
    except ValueError as e:
        raise utils.PipelineError(f"--extra-seeds {text!r}: expected comma-separated integers") from e


# ----------------------------------------------------------------------------- inputs


def check_inputs(cfg) -> None:
    """Data-prep manifests and up-to-date STFT caches of both splits, else one line saying what to run."""
    fix = "run data/data_prep.py and STFT.py with this config first (or `make demo`)"
    for split in manifests.SPLITS:
        manifest = manifests.path(cfg, split)
        if not manifest.is_file():
            raise utils.PipelineError(f"study_lookahead.py: {manifest} not found; {fix}")
        folder = stft_cache.cache_dir(cfg, split)
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
    for split in manifests.SPLITS:
        meta = json.loads((stft_cache.cache_dir(cfg, split) / "meta.json").read_text())
        out[split] = {k: meta.get(k) for k in ("manifest_sha256", "sources_sha256", "config_sha256")}
    return out


def train_settings(cfg, data: dict) -> dict:
    """Everything the trained weights depend on (epochs apart: a run may be extended by resuming)."""
    s = {
        sec: {k: _norm(v) for k, v in cfg.items(sec) if LATER_KEYS.get((sec, k)) != _norm(v)}
        for sec in MODEL_SECTIONS
        if cfg.has_section(sec)
    }
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
        print(f"{entry.label}: already trained ({epochs} epoch(s), same settings): not retrained", flush=True)
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
    print(f"{entry.label}: {verb} to {epochs} epoch(s) ({entry.architecture}, {latency})", flush=True)
    write_json(
        entry.marker, {"key": _digest(settings), "epochs": done if resume else 0, "settings": settings}
    )
    (entry.out / "study.json").unlink(missing_ok=True)  # any earlier evaluation is stale now
    cfg = utils.copy_config(entry.cfg)
    utils.set_value(cfg, "train", "epochs", epochs)
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
        "test_manifest": _file_sha(manifests.path(c, "testing")),
    }


def ensure_evaluated(entry: Entry, settings: dict, limit, workers, oracles, progress) -> dict:
    """evaluate.evaluate on best/ unless <out>/runs/<name> holds an evaluation with these settings;
    returns the study record (settings, model figures)."""
    import evaluate

    record = read_json(entry.out / "study.json")
    if record and record.get("key") == _digest(settings) and (entry.out / "summary.json").is_file():
        print(f"{entry.label}: already evaluated (same settings): not re-evaluated", flush=True)
        return record
    extra = f" with oracles {','.join(oracles)}" if oracles else ""
    print(f"{entry.label}: evaluating {entry.best}{extra}", flush=True)
    summary = evaluate.evaluate(
        entry.cfg, entry.best, entry.out, limit, workers, oracles=oracles, progress=progress
    )
    part = summary.get("excluding_validation_files") or {}
    part = part if part.get("n_files") else summary  # the files the table uses (see collect)
    res = part["results"].get("model", {})
    print(
        f"{entry.label}: SI-SDR {_fmt(res.get('si_sdr', {}).get('mean'))} dB, PESQ "
        f"{_fmt(res.get('pesq', {}).get('mean'))} on {part['n_files']} test files"
        + (" (validation files left out)" if part is not summary else ""),
        flush=True,
    )
    record = {"key": _digest(settings), "settings": settings, "figures": model_figures(entry.cfg)}
    write_json(entry.out / "study.json", record)
    return record


# ----------------------------------------------------------------------------- references


# Published algorithmic latencies of the baselines, by the definition the models' column uses (analysis
# window + lookahead): RNNoise a 20-ms window and no lookahead (Valin, MMSP 2018); DeepFilterNet3 a 20-ms
# window and two 10-ms frames of lookahead, the 40 ms its paper states (Schroeter et al., 2023).
# noisereduce estimates its noise from the whole file: offline.
BASELINE_LATENCY_MS = {"rnnoise": 20.0, "deepfilternet": 40.0, "noisereduce": None}


def parse_baselines(text: str | None) -> list[str]:
    import evaluate

    names = list(dict.fromkeys(b.strip() for b in (text or "").split(",") if b.strip()))
    for b in names:
        reason = evaluate.baseline_available(b)
        if reason:
            raise utils.PipelineError(f"--baselines {b}: {reason}")
    return names


def ensure_references(cfg, folder: Path, oracles, baselines, limit, workers, progress) -> None:
    """evaluate.py without a model (noisy input, oracle masks, baselines) into `folder`, once: reused
    while the same systems, metrics and test files are asked for."""
    import evaluate

    settings = {
        "oracles": list(oracles),
        "baselines": list(baselines),
        "metrics": _norm(cfg.get("evaluate", "metrics", fallback="")),
        "limit": limit,
        "test_manifest": _file_sha(manifests.path(cfg, "testing")),
    }
    record = read_json(folder / "study.json")
    if record and record.get("key") == _digest(settings) and (folder / "results.csv").is_file():
        print("references: already evaluated (same settings): not re-evaluated", flush=True)
        return
    print(f"references: evaluating {', '.join([*oracles, *baselines])}", flush=True)
    (folder / "study.json").unlink(missing_ok=True)
    evaluate.evaluate(cfg, None, folder, limit, workers, oracles=list(oracles), baselines=baselines,
                      progress=progress)  # fmt: skip
    write_json(folder / "study.json", {"key": _digest(settings), "settings": settings})


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


def csv_means(path: Path, system: str, held: set[int]) -> dict:
    """Mean and 95% CI of every table metric of `system` in a results.csv, validation files left out
    (the same files the models' means use)."""
    import evaluate

    out = {}
    for k, _ in COLUMNS:
        try:
            scores = read_scores(path, system, k)
        except KeyError:  # metric not computed
            continue
        st = evaluate._stats(np.array([v for i, v in scores.items() if i not in held], float))
        out[k] = {"mean": st["mean"], "ci95": st["ci95"], "n": st["n"]}
    return out


def _paired(own: dict[int, float], ref: dict[int, float], held: set[int]) -> dict:
    both = sorted(set(own) & set(ref) - held)
    return _stats([own[i] - ref[i] for i in both])


def seed_summary(entries: list[Entry], held: set[int]) -> dict:
    """For every model trained with several seeds: its paired SI-SDR difference to the bidirectional
    model of the same seed, per seed and averaged over the seeds per file, and the seed-to-seed
    difference of the model itself (how far one seed moves a point)."""
    scores = {e.label: read_scores(e.out / "results.csv", "model", "si_sdr") for e in entries}
    bidir = {e.seed: e for e in entries if not e.causal}
    out = {}
    for name in dict.fromkeys(e.name for e in entries):
        runs = [e for e in entries if e.name == name]
        if len(runs) < 2:
            continue
        files = set.intersection(*(set(scores[e.label]) for e in runs)) - held
        row = {"seeds": [e.seed for e in runs]}
        if all(e.seed in bidir for e in runs):
            files &= set.intersection(*(set(scores[bidir[e.seed].label]) for e in runs))
            per_seed = {e.seed: {i: scores[e.label][i] - scores[bidir[e.seed].label][i] for i in files}
                        for e in runs}  # fmt: skip
            row["delta_si_sdr_vs_bidirectional_per_seed"] = {
                str(s): _stats(list(d.values())) for s, d in per_seed.items()
            }
            row["delta_si_sdr_vs_bidirectional_mean_over_seeds"] = _stats(
                [np.mean([per_seed[e.seed][i] for e in runs]) for i in sorted(files)]
            )
        a, b = runs[0], runs[1]
        row["seed_difference_si_sdr"] = _stats(
            [scores[b.label][i] - scores[a.label][i] for i in sorted(files)]
        )
        out[name] = row
    return out


def collect(entries: list[Entry], records: dict, study: dict, references: Path | None = None) -> dict:
    """results.json: one system per row (noisy input, models, baselines, oracles) with means on the
    chosen files, and the seed summary."""
    summaries = {e.label: read_json(e.out / "summary.json") for e in entries}
    excluded = all(
        (summaries[e.label].get("excluding_validation_files") or {}).get("n_files") for e in entries
    )
    part = (lambda s: s["excluding_validation_files"]) if excluded else (lambda s: s)
    held = held_out(entries) if excluded else set()
    first = part(summaries[entries[0].label])

    def means(results: dict) -> dict:
        return {
            k: {"mean": results[k]["mean"], "ci95": results[k]["ci95"], "n": results[k]["n"]}
            for k, _ in COLUMNS
            if k in results
        }

    # each model against the bidirectional model of its own seed (else the study seed's)
    bidirs = {e.seed: e for e in entries if not e.causal}
    main_bidir = next((e for e in entries if not e.causal), None)
    ref_scores = {s: read_scores(e.out / "results.csv", "model", "si_sdr") for s, e in bidirs.items()}
    systems = [{"name": "noisy", "kind": "input", "metrics": means(first["results"]["noisy"])}]
    for e in entries:
        fig = records[e.label]["figures"]
        hist = history(e)
        row = {
            "name": e.label,
            "kind": "model",
            "architecture": e.architecture,
            "lookahead_frames": e.lookahead if e.causal else None,
            "lookahead_mode": e.mode if e.causal else None,
            "seed": e.seed,
            "algorithmic_latency_ms": fig["algorithmic_latency_ms"],
            "latency": "offline" if not e.causal else f"{fig['algorithmic_latency_ms']:g} ms",
            "parameters": fig["parameters"],
            "macs_per_frame": fig["macs_per_frame"],
            "epochs": len(hist),
            "optimizer_steps": hist[-1]["step"] if hist else None,
            # stopped by [train] patience / min_delta (run_folder.plateaued), not by the epoch limit
            "converged": run_folder.plateaued(
                hist, study["patience"], study["min_delta"], study["min_epochs"]
            ),
            "train_seconds": sum(h["train_seconds"] + h["validation_seconds"] for h in hist),
            "best_epoch": (read_json(e.best / "metrics.json") or {}).get("epoch"),
            "validation_si_sdr": [(h.get("validation") or {}).get("si_sdr") for h in hist],
            # the smooth signal beside the noisy validation: mean training loss per epoch
            "train_loss": [h.get("train_loss") for h in hist],
            "train_loss_change_last_epoch": (
                hist[-1]["train_loss"] / hist[-2]["train_loss"] - 1.0 if len(hist) > 1 else None
            ),
            "metrics": means(part(summaries[e.label])["results"]["model"]),
            "run_dir": str(e.run_dir),
            "evaluation_dir": str(e.out),
        }
        if main_bidir is not None:  # paired per file: the same test files, model minus bidirectional
            ref = bidirs.get(e.seed, main_bidir)
            row["delta_reference"] = ref.label
            own = read_scores(e.out / "results.csv", "model", "si_sdr")
            row["delta_si_sdr_vs_bidirectional"] = _paired(own, ref_scores[ref.seed], held)
        systems.append(row)
    if references is not None:
        csv_path = references / "results.csv"
        names = list(dict.fromkeys(r["system"] for r in csv.DictReader(open(csv_path, newline=""))))
        for name in (n for n in names if n in BASELINE_LATENCY_MS):
            row = {"name": name, "kind": "baseline", "algorithmic_latency_ms": BASELINE_LATENCY_MS[name],
                   "metrics": csv_means(csv_path, name, held)}  # fmt: skip
            if main_bidir is not None:
                row["delta_reference"] = main_bidir.label
                own = read_scores(csv_path, name, "si_sdr")
                row["delta_si_sdr_vs_bidirectional"] = _paired(own, ref_scores[main_bidir.seed], held)
            systems.append(row)
        for name in (n for n in names if n.startswith("oracle_")):
            systems.append({"name": name, "kind": "oracle", "metrics": csv_means(csv_path, name, held)})
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
        "seeds": seed_summary(entries, held),
    }


def _fmt(x, digits: int = 2) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _pm(st: dict | None) -> str:
    if not st or st.get("mean") is None:
        return "-"
    half = st.get("ci95_half_width")
    return f"{st['mean']:+.2f}" + (f" ± {half:.2f}" if half is not None else "")


def format_table(results: dict) -> str:
    ev = results["evaluation"]
    clips = f"{results['training_clips']} training clips" + (
        " per epoch, mixed on the fly" if results.get("on_the_fly") else ""
    )
    lines = [
        "# Lookahead study: quality against algorithmic latency\n",
        (
            f"Every model: at most {results['epochs']} epoch(s), stopped once {results['patience']} "
            f'validations gained <= {results["min_delta"]:g} dB SI-SDR ("converged")'
            + (f", not before epoch {results['min_epochs']}" if results.get("min_epochs") else "")
            + "; batch "
            if _stops_early(results)
            else f"Every model: {results['epochs']} epoch(s), {results['optimizer_steps']} optimizer steps "
            + (
                f'("converged": its last {results["patience"]} validations gained <= '
                f"{results['min_delta']:g} dB SI-SDR over the best before them)"
                if results.get("patience")
                else ""
            )
            + " of batch "
        )
        + f"{results['batch_size']}, seed {results['seed']}, {clips}. "
        f"Scores: mean over {ev['n_files']} test files ({ev['files']}); "
        "ΔSI-SDR = paired per-file difference to the bidirectional model (of the same seed), ± 95% CI "
        "half-width. Baselines at their published latency (window + lookahead).\n",
        "| system | lookahead (frames) | latency (ms) | parameters | MACs/frame | "
        + " | ".join(label for _, label in COLUMNS)
        + " | ΔSI-SDR vs bidirectional (dB) | train time (min) | steps (converged) "
        + "| Δ train loss, last epoch |",
        "|---" * (len(COLUMNS) + 9) + "|",
    ]
    for s in results["systems"]:
        cells = [s["name"]]
        lat = s.get("algorithmic_latency_ms")
        if s["kind"] == "model":
            cells += [
                "-"
                if s["lookahead_frames"] is None
                else f"{s['lookahead_frames']}"
                + (" (input)" if s.get("lookahead_mode") == "context" else ""),
                "offline" if lat is None or not math.isfinite(lat) else f"{lat:g}",
                f"{s['parameters']:,}",
                f"{s['macs_per_frame'] / 1e6:.3f} M",
            ]
        elif s["kind"] == "baseline":
            cells += ["-", "offline" if lat is None else f"{lat:g} (published)", "-", "-"]
        else:
            cells += ["-"] * 4
        for k, _ in COLUMNS:
            cells.append(_fmt((s["metrics"].get(k) or {}).get("mean"), 3 if k == "stoi" else 2))
        cells.append(_pm(s.get("delta_si_sdr_vs_bidirectional")))
        cells.append(f"{s['train_seconds'] / 60:.1f}" if s["kind"] == "model" else "-")
        if s["kind"] == "model":
            cells.append(f"{s['optimizer_steps']} ({'yes' if s.get('converged') else 'no'})")
            change = s.get("train_loss_change_last_epoch")
            cells.append("-" if change is None else f"{100 * change:+.1f}%")
        else:
            cells += ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = results.get("seeds") or {}
    if seeds:
        lines += [
            "\nSeeds: ΔSI-SDR to the bidirectional model of the same seed (dB, ± 95% CI over files), "
            "its per-file mean over the seeds, and how far the second seed moves the model itself.\n",
            "| model | seeds | ΔSI-SDR per seed | ΔSI-SDR, mean over seeds | second seed − first (SI-SDR) |",
            "|---|---|---|---|---|",
        ]
        for name, row in seeds.items():
            per = row.get("delta_si_sdr_vs_bidirectional_per_seed") or {}
            lines.append(
                f"| {name} | {', '.join(map(str, row['seeds']))} | "
                + (" / ".join(_pm(st) for st in per.values()) or "-")
                + f" | {_pm(row.get('delta_si_sdr_vs_bidirectional_mean_over_seeds'))} | "
                f"{_pm(row.get('seed_difference_si_sdr'))} |"
            )
    return "\n".join(lines) + "\n"


def _mean(s, k) -> float:
    m = (s["metrics"].get(k) or {}).get("mean")
    return math.nan if m is None else m


def _stops_early(results: dict) -> bool:
    """The convergence rule may end a run before the epoch limit (else it is only checked after)."""
    return bool(results.get("patience")) and results.get("min_epochs", 0) < results["epochs"]


def _budget_words(results: dict) -> str:
    if _stops_early(results):
        return f"to convergence, at most {results['epochs']} epochs"
    return f"{results['epochs']} epoch(s) per model"


def plot(results: dict, path: Path) -> None:
    """SI-SDR and PESQ against algorithmic latency: causal models as points (labelled L; other seeds
    hollow), baselines at their published latency, the bidirectional model and the noisy input as
    horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = results["systems"]
    seed = results["seed"]
    models = [s for s in systems if s["kind"] == "model"]
    delayed = [
        s for s in models if s["lookahead_frames"] is not None and s.get("lookahead_mode") != "context"
    ]
    causal = sorted((s for s in delayed if s.get("seed", seed) == seed), key=lambda s: s["lookahead_frames"])
    others = [s for s in delayed if s.get("seed", seed) != seed]
    context = sorted(
        (s for s in models if s.get("lookahead_mode") == "context"), key=lambda s: s["lookahead_frames"]
    )
    bidirs = [s for s in models if s["lookahead_frames"] is None]
    baselines = [s for s in systems if s["kind"] == "baseline" and s["algorithmic_latency_ms"] is not None]
    noisy = next(s for s in systems if s["kind"] == "input")
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(11, 4.2))
    fig.subplots_adjust(left=0.07, right=0.98, top=0.88, bottom=0.13, wspace=0.25)

    # Means only: between-file spread dwarfs the (paired) differences between models; the table
    # gives the paired SI-SDR difference with its confidence interval.
    for ax, (k, label) in zip(axes, PLOTTED):
        x = [s["algorithmic_latency_ms"] for s in causal]
        y = [_mean(s, k) for s in causal]
        if causal:
            ax.plot(x, y, marker="o", label=f"causal model (seed {seed})")
            ax.margins(x=0.12)
            for s, xi, yi in zip(causal, x, y):
                if math.isfinite(yi):
                    ax.annotate(f"L={s['lookahead_frames']}", (xi, yi), textcoords="offset points",
                                xytext=(4, 4), fontsize=8)  # fmt: skip
        if context:
            cx, cy = [s["algorithmic_latency_ms"] for s in context], [_mean(s, k) for s in context]
            ax.plot(
                cx, cy, marker="^", linestyle="none", color="C6", label="causal, lookahead as input (context)"
            )
        if others:
            ax.scatter([s["algorithmic_latency_ms"] for s in others], [_mean(s, k) for s in others],
                       facecolors="none", edgecolors="C0", label="causal model, other seed")  # fmt: skip
        for j, s in enumerate(baselines):
            ax.scatter([s["algorithmic_latency_ms"]], [_mean(s, k)], marker="sD^v"[j % 4], color=f"C{j + 2}",
                       label=f"{s['name']} (published latency)")  # fmt: skip
        for s in bidirs:
            main = s.get("seed", seed) == seed
            if math.isfinite(_mean(s, k)):
                name = "bidirectional (offline)" + ("" if main else ", other seed")
                style = "--" if main else "-."
                ax.axhline(_mean(s, k), linestyle=style, color="C1", alpha=1 if main else 0.5, label=name)
        if math.isfinite(_mean(noisy, k)):
            ax.axhline(_mean(noisy, k), linestyle=":", color="0.4", label="noisy input")
        if not any(math.isfinite(v) for v in y) and not any(math.isfinite(_mean(s, k)) for s in bidirs):
            ax.text(0.5, 0.5, f"{k} not computed", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("algorithmic latency (ms)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(
        f"Mean quality against algorithmic latency ({_budget_words(results)}, "
        f"{results['evaluation']['n_files']} test files)",
        fontsize=10,
    )
    with utils.atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def plot_curves(results: dict, path: Path) -> None:
    """Validation SI-SDR (what the convergence rule reads; the kept epoch starred) and mean training
    loss of every model per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [s for s in results["systems"] if s["kind"] == "model"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    fig.subplots_adjust(left=0.06, right=0.83, top=0.88, bottom=0.12, wspace=0.25)
    for j, s in enumerate(models):
        style = "--" if s.get("seed", results["seed"]) != results["seed"] else "-"
        color = f"C{j % 10}"
        for ax, key in zip(axes, ("validation_si_sdr", "train_loss")):
            y = [math.nan if v is None else v for v in s.get(key) or []]
            if not y:
                continue
            ax.plot(range(1, len(y) + 1), y, linestyle=style, color=color, label=s["name"])
            best = s.get("best_epoch")
            if key == "validation_si_sdr" and best and best <= len(y):
                ax.plot([best], [y[best - 1]], marker="*", color=color, markersize=9)
    for ax, label in zip(axes, ("validation SI-SDR (dB)", "training loss (epoch mean)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"Training curves ({_budget_words(results)}; * = kept epoch)", fontsize=10)
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
    parser.add_argument(
        "--extra-seeds",
        metavar="S[,S...]",
        help="train the --extra-seed-lookaheads models (and the bidirectional one) again with these [train] "
        "seeds, to show how far a seed moves each point",
    )
    parser.add_argument(
        "--extra-seed-lookaheads",
        default="0,20",
        help="causal lookaheads retrained with --extra-seeds (default 0,20)",
    )
    parser.add_argument(
        "--context-lookaheads",
        default="",
        metavar="L[,L...]",
        help="also train the causal model with these lookaheads given as input ([model] lookahead_mode = "
        "context: frames t..t+L filtered before the LSTMs, no output delay), named context_LL",
    )
    parser.add_argument(
        "--baselines",
        help="also score these on the same test files and place them at their published latency "
        "(any of noisereduce, rnnoise, deepfilternet; `make peers`)",
    )
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
    lookaheads = parse_lookaheads(
        args.lookaheads
        if args.lookaheads is not None
        else (QUICK_LOOKAHEADS if args.quick else DEFAULT_LOOKAHEADS)
    )
    seeds = parse_seeds(args.extra_seeds)
    seed_lookaheads = parse_lookaheads(args.extra_seed_lookaheads)
    context = [L for L in parse_lookaheads(args.context_lookaheads) if L > 0]  # context L=0 is lookahead_00
    if not lookaheads and args.no_bidirectional and not args.context_lookaheads:
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

    params = TrainParams.from_config(cfg)
    oracles = [] if args.no_oracles or args.quick else list(utils.config_value(cfg, "evaluate", "oracles"))
    if params.seed in seeds:
        raise utils.PipelineError(f"--extra-seeds: {params.seed} is the study's own [train] seed")
    baselines = parse_baselines(args.baselines)
    entries = make_entries(cfg, study, lookaheads, not args.no_bidirectional, out, context=context)
    for seed in seeds:
        entries += make_entries(cfg, study, seed_lookaheads, not args.no_bidirectional, out, seed)
    if not entries:
        raise utils.PipelineError("study_lookahead.py: nothing to train (no lookaheads, --no-bidirectional)")
    data = data_fingerprint(cfg)
    settings = {e.label: train_settings(e.cfg, data) for e in entries}
    print(f"Lookahead study {study}: {', '.join(e.label for e in entries)}; outputs in {out}", flush=True)

    calibration = None
    if args.budget_minutes is not None:
        first = entries[0]
        calibration = calibrate(
            first, args.budget_minutes, settings[first.label], args.overwrite, not args.no_progress
        )
        epochs = calibration["epochs"]
    else:
        epochs = args.epochs if args.epochs is not None else params.epochs
    utils.set_value(cfg, "train", "epochs", epochs)
    out.mkdir(parents=True, exist_ok=True)
    utils.save_config(cfg, out / "config.ini")

    references = out / "runs" / "references" if oracles or baselines else None
    if references is not None:
        ensure_references(cfg, references, oracles, baselines, limit, workers, not args.no_progress)
    records = {}
    for k, e in enumerate(entries):
        print(f"\n== [{k + 1}/{len(entries)}] {e.label}", flush=True)
        ensure_trained(e, epochs, settings[e.label], args.overwrite, not args.no_progress)
        eset = eval_settings(e, _digest(settings[e.label]), epochs, limit, [])
        records[e.label] = ensure_evaluated(e, eset, limit, workers, [], not args.no_progress)

    clips = params.examples_per_epoch if params.on_the_fly and params.examples_per_epoch else None
    clips = clips or len(stft_cache.load_cache(stft_cache.cache_dir(cfg, "training")))
    study_info = {
        "study": study,
        "epochs": epochs,
        "budget": {"mode": "budget_minutes", **calibration} if calibration else {"mode": "epochs"},
        "seed": params.seed,
        "extra_seeds": seeds,
        "batch_size": params.batch_size,
        "crop_seconds": params.crop_seconds,
        "learning_rate": params.learning_rate,
        "patience": params.patience,
        "min_delta": params.min_delta,
        "min_epochs": params.min_epochs,
        "on_the_fly": params.on_the_fly,
        "training_clips": clips,  # per epoch
        "optimizer_steps": epochs * math.ceil(clips / params.batch_size),  # the most any model may take
        "lookaheads": lookaheads,
        "config": str(out / "config.ini"),
    }
    results = collect(entries, records, study_info, references)
    write_json(out / "results.json", results)
    table = format_table(results)
    with utils.atomic_write(out / "table.md", "w") as f:
        f.write(table)
    plot(results, out / "quality_vs_latency.png")
    plot_curves(results, out / "validation_curves.png")
    print("\n" + table)
    print(
        f"Study finished in {(time.time() - started) / 60:.1f} min: {out / 'table.md'}, "
        f"{out / 'results.json'}, {out / 'quality_vs_latency.png'}, {out / 'validation_curves.png'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
