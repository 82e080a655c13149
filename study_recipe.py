"""The recipe study: which training recipe makes the shipped model hold up on noise it never heard,
compared at an equal number of optimizer steps, in one command.

    python study_recipe.py [--recipes base,noiseaug,...] [--steps 3000] [--seeds 1234]
                           [--corpus ../shared/corpus] [--out results/recipe_study]
                           [--start pretrained] [--jobs 2] [--compare-only] [--list]

Every recipe starts from --start (a model folder, default pretrained/): its config.ini, and for the
fine-tuning recipes its weights; the scratch_* recipes train from random weights. Each runs for
--steps optimizer steps, with the same seed, on-the-fly
mixtures from <corpus>/clean_train x noise_train (all noise pieces), batch 8 x 2 s, 500 steps per
epoch; only the recipe's own settings (RECIPES) differ. Each run is then scored by evaluate.py on
the 200 test mixtures of data_prep (clean_test x noise_test: speakers and noise recordings never
trained on), which this script prepares once in <out>/work.

Choosing: train.py keeps each run's best epoch by validation SI-SDR on the first 32 test files; the
study ranks recipes by that validation score only. Reporting: the other 168 files, mean +- 95% CI,
paired per-file differences to the reference recipe (--reference, default base), and SI-SDR at -5
and 0 dB input. Outputs in --out: table.md (also printed), results.json, logs/<run>.log,
cp/<run>/ (checkpoints, best/), eval/<run>/ (evaluate.py's outputs). Resumable: finished runs and
evaluations are reused, interrupted ones resume (train.py --resume).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import compare
import utils

ROOT = Path(__file__).resolve().parent
SHIPPED = ROOT / "pretrained"
STEPS_PER_EPOCH = 500  # examples_per_epoch 4000 / batch 8
# Settings every recipe shares (on top of <start>/config.ini): fine-tuning from the --start weights.
BASE_SETS = (
    "train.init_weights={start}/model.weights.h5",
    "train.examples_per_epoch=4000",
    "train.batch_size=8",
    "train.learning_rate=3e-4",
    "train.lr_halving_steps=1000",
    "train.checkpoint_steps=500",
)
# A run from random weights instead (the from-scratch candidates): stage 1's learning rate.
SCRATCH_SETS = ("train.init_weights=", "train.learning_rate=1e-3")
NOISE_AUG = "train.augment=eq,reverb,noise2,tilt,modulate,transient"
# name -> (what it tests, its settings on top of BASE_SETS)
START = "start"  # the shipped model itself, untouched: the point every recipe starts from
RECIPES = {
    START: ("pretrained/ as shipped (0 fine-tuning steps)", ()),
    "base": ("shipped recipe (eq, reverb; SNR -5..15 dB), all 294 noise pieces", ()),
    "noiseaug": (
        "+ noise augmentation: second noise, spectral tilt, level modulation, transients",
        (NOISE_AUG,),
    ),  # fmt: skip
    "cosine": (
        "base with 200 warm-up steps and a cosine decay instead of halving every 1000",
        ("train.lr_halving_steps=0", "train.warmup_steps=200", "train.cosine_steps={steps}"),
    ),  # fmt: skip
    "snr-10": ("base with SNR -10..15 dB", ("data.SNR_lower=-10",)),
    "noiseaug_snr-10": ("noiseaug with SNR -10..15 dB", (NOISE_AUG, "data.SNR_lower=-10")),
    "noiseaug_lr1e-3": ("noiseaug at learning rate 1e-3", (NOISE_AUG, "train.learning_rate=1e-3")),
    "noiseaug_lam0.3": ("noiseaug with loss weight lam 0.3 (complex term)", (NOISE_AUG, "loss.lam=0.3")),
    # From random weights (architecture and loss candidates cannot start from the shipped weights);
    # compare them with --reference scratch.
    "scratch": ("base from random weights, lr 1e-3 halving every 1000 steps", SCRATCH_SETS),
    "scratch_deep": ("scratch with 3 LSTM layers (x1.35 MACs)", (*SCRATCH_SETS, "model.lstm_layers=3")),
    "scratch_wide": ("scratch with 320 LSTM units (x1.35 MACs)", (*SCRATCH_SETS, "model.lstm_units=320")),
    "scratch_gru": ("scratch with GRU instead of LSTM cells (x0.83 MACs)", (*SCRATCH_SETS, "model.cell=gru")),
    "scratch_inorm": ("scratch with the causal per-bin input norm", (*SCRATCH_SETS, "model.input_norm=true")),
    "scratch_lam0.3": ("scratch with loss weight lam 0.3 (complex term)", (*SCRATCH_SETS, "loss.lam=0.3")),
}
TEST_FILES = 200
METRICS = ("si_sdr", "sdr", "pesq", "stoi")


def run_name(recipe: str, seed: int, first_seed: int) -> str:
    return recipe if seed == first_seed else f"{recipe}_seed{seed}"


def python() -> str:
    return sys.executable


def prepare_test_data(corpus: Path, work: Path) -> None:
    """data_prep's test mixtures (the README's shared set) and their STFT cache, once."""
    if (work / "Testing_STFT").is_dir() and (work / "data" / "manifest_testing.csv").is_file():
        return
    sets = [
        f"data.{kind}_path={corpus}/{kind}"
        for kind in ("clean_train", "noise_train", "clean_test", "noise_test")
    ]
    sets += [
        f"data.output_path={work}/data",
        "data.total_training_files=8",
        f"data.total_testing_files={TEST_FILES}",
    ]
    subprocess.run([python(), "data/data_prep.py", *_as_sets(sets)], cwd=ROOT, check=True)
    sets = [f"paths.data_dir={work}/data", f"paths.stft_dir={work}"]
    subprocess.run([python(), "STFT.py", *_as_sets(sets)], cwd=ROOT, check=True)


def _as_sets(sets: list[str]) -> list[str]:
    return [arg for s in sets for arg in ("--set", s)]


def train_command(
    recipe: str, name: str, seed: int, steps: int, corpus: Path, out: Path, start: Path = SHIPPED
) -> list[str]:
    work = out / "work"
    sets = [s.format(start=start, steps=steps) for s in (*BASE_SETS, *RECIPES[recipe][1])]
    sets += [f"paths.data_dir={work}/data", f"paths.stft_dir={work}", f"paths.checkpoint_dir={out}/cp"]
    sets += [
        f"paths.log_dir={out}/logs",
        f"paths.enhanced_dir={out}/enhanced",
        f"paths.results_dir={out}/eval",
    ]
    sets += [f"data.clean_train_path={corpus}/clean_train", f"data.noise_train_path={corpus}/noise_train"]
    sets += [f"train.seed={seed}", f"train.epochs={math.ceil(steps / STEPS_PER_EPOCH)}"]
    cmd = ["train.py", "--config", str(start / "config.ini"), "--run-name", name, "--resume", "--no-progress"]
    return [python(), *cmd, *_as_sets(sets)]


def train_and_evaluate(
    recipe: str, name: str, seed: int, steps: int, corpus: Path, out: Path, start: Path = SHIPPED
) -> None:
    best, ev = best_dir(recipe, name, out, start), out / "eval" / name
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    done = best / "metrics.json"
    trained = recipe == START or (done.is_file() and _steps_done(out / "cp" / name) >= steps)
    if not trained:
        with open(log, "a") as f:
            subprocess.run(train_command(recipe, name, seed, steps, corpus, out, start), cwd=ROOT, check=True,
                           stdout=f, stderr=subprocess.STDOUT)  # fmt: skip
    summary = ev / "summary.json"
    if summary.is_file() and summary.stat().st_mtime > (best / "model.weights.h5").stat().st_mtime:
        return
    work = out / "work"
    with open(log, "a") as f:
        subprocess.run([python(), "evaluate.py", "--model", str(best), "--out", str(ev), "--no-oracles",
                        "--set", f"paths.data_dir={work}/data", "--set", f"paths.stft_dir={work}"],
                       cwd=ROOT, check=True, stdout=f, stderr=subprocess.STDOUT)  # fmt: skip


def best_dir(recipe: str, name: str, out: Path, start: Path = SHIPPED) -> Path:
    return start if recipe == START else out / "cp" / name / "best"


def _steps_done(run: Path) -> int:
    hist = run / "history.jsonl"
    if not hist.is_file():
        return 0
    rows = [json.loads(line) for line in hist.read_text().splitlines() if line.strip()]
    return max((int(r.get("step", 0)) for r in rows), default=0)


def collect(names: dict[str, tuple[str, int]], reference: str, out: Path, start: Path = SHIPPED) -> dict:
    """Per run: validation SI-SDR (the choosing score), held-out means, paired differences to the
    reference run, SI-SDR at -5 and 0 dB input."""
    scores, val = {}, {}
    for name in names:
        ev, best = out / "eval" / name, best_dir(names[name][0], name, out, start)
        if not (ev / "results.csv").is_file():
            continue
        scores[name] = compare.read_scores(ev)
        meta = json.loads((best / "metrics.json").read_text())
        val[name] = meta
    if not scores:
        return {}
    first = next(iter(scores))
    validation = set(val[first].get("validation_manifest_indices", []))
    held = sorted(i for i in scores[first]["model"] if i not in validation)
    rows = {"noisy": {"validation_si_sdr": val[first]["validation"].get("si_sdr_noisy")}}
    noisy = scores[first]["noisy"]
    rows["noisy"].update({m: compare.stats([noisy[i][m] for i in held]) for m in METRICS})
    for snr in (-5, 0):
        rows["noisy"][f"si_sdr_at_{snr}"] = compare.stats(
            [noisy[i]["si_sdr"] for i in held if noisy[i]["snr_db"] == snr]
        )
    ref = scores.get(reference, {}).get("model")
    for name, s in scores.items():
        model = s["model"]
        recipe, seed = names[name]
        r = {"recipe": recipe, "seed": seed, "what": RECIPES[recipe][0], "settings": list(RECIPES[recipe][1]),
             "best_epoch": val[name]["epoch"], "best_step": val[name]["step"],
             "validation_si_sdr": val[name]["validation"]["si_sdr"]}  # fmt: skip
        r.update({m: compare.stats([model[i][m] for i in held]) for m in METRICS})
        for snr in (-5, 0):
            r[f"si_sdr_at_{snr}"] = compare.stats(
                [model[i]["si_sdr"] for i in held if model[i]["snr_db"] == snr]
            )
        if ref is not None:
            for m in ("si_sdr", "pesq", "stoi"):
                r[f"d_{m}"] = compare.stats([model[i][m] - ref[i][m] for i in held])
        rows[name] = r
    return {
        "reference": reference,
        "held_out_files": len(held),
        "validation_files": len(validation),
        "rows": rows,
    }


def _f(s, digits=2) -> str:
    if isinstance(s, dict):
        if s.get("mean") is None:
            return "-"
        ci = f" ± {s['ci95']:.{digits}f}" if s.get("ci95") is not None else ""
        return f"{s['mean']:.{digits}f}{ci}"
    return "-" if s is None else f"{s:.{digits}f}"


def format_table(res: dict) -> str:
    lines = [
        f"Held-out: {res['held_out_files']} test files; validation (choosing): {res['validation_files']} "
        f"files. Δ: paired per-file difference to `{res['reference']}` (mean ± 95% CI).",
        "",
        "| run | val SI-SDR | SI-SDR | ΔSI-SDR | PESQ | ΔPESQ | STOI | ΔSTOI | SI-SDR @ -5 dB "
        "| SI-SDR @ 0 dB | best step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res["rows"].items():
        lines.append(
            f"| {name} | {_f(r.get('validation_si_sdr'))} | {_f(r['si_sdr'])} | {_f(r.get('d_si_sdr'))} | "
            f"{_f(r['pesq'])} | {_f(r.get('d_pesq'))} | {_f(r['stoi'], 3)} | {_f(r.get('d_stoi'), 3)} | "
            f"{_f(r['si_sdr_at_-5'])} | {_f(r['si_sdr_at_0'])} | {r.get('best_step', '-')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="study_recipe.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma list of RECIPES (see --list)")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps per run (multiple of 500)")
    parser.add_argument(
        "--seeds", default="1234", help="comma list of [train] seeds; the first is the main one"
    )
    parser.add_argument("--reference", default="base", help="run the paired differences are taken against")
    parser.add_argument(
        "--start", type=Path, default=SHIPPED, metavar="MODEL_DIR",
        help="model folder whose config.ini every run starts from and whose weights the fine-tuning recipes "
        "start from ('start' scores it as is; default pretrained/)",
    )  # fmt: skip
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "recipe_study")
    parser.add_argument(
        "--jobs", type=int, default=2, help="runs trained at once (each gets the cores it can)"
    )
    parser.add_argument("--compare-only", action="store_true", help="only tabulate the finished runs")
    parser.add_argument("--list", action="store_true", help="print the recipes and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, (what, sets) in RECIPES.items():
            print(f"{name:18s} {what}\n{'':18s} {' '.join('--set ' + s for s in sets) or '(base settings)'}")
        return 0
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = sorted(set(recipes) - set(RECIPES))
    if unknown:
        raise utils.PipelineError(f"--recipes: unknown {', '.join(unknown)} (see --list)")
    if args.steps < 1 or args.steps % STEPS_PER_EPOCH:
        raise utils.PipelineError(f"--steps {args.steps}: must be a positive multiple of {STEPS_PER_EPOCH}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError as e:
        raise utils.PipelineError(f"--seeds {args.seeds!r}: expected integers") from e
    corpus, out, start = args.corpus.resolve(), args.out.resolve(), args.start.resolve()
    if not (start / "config.ini").is_file() or not (start / "model.weights.h5").is_file():
        raise utils.PipelineError(f"--start {args.start}: needs config.ini and model.weights.h5")
    names = {run_name(r, s, seeds[0]): (r, s) for s in seeds for r in recipes if r != START or s == seeds[0]}
    if not args.compare_only:
        if not (corpus / "clean_train").is_dir():
            raise utils.PipelineError(f"{corpus}: no clean_train/ (give --corpus)")
        prepare_test_data(corpus, out / "work")
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            jobs = [
                pool.submit(train_and_evaluate, r, n, s, args.steps, corpus, out, start)
                for n, (r, s) in names.items()
            ]
            for job in jobs:
                job.result()
    res = collect(names, args.reference, out, start)
    if not res:
        raise utils.PipelineError(f"{out}: no evaluated runs yet")
    res["steps"] = args.steps
    table = format_table(res)
    with utils.atomic_write(out / "results.json", "w") as f:
        json.dump(res, f, indent=2)
    with utils.atomic_write(out / "table.md", "w") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
