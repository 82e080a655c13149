"""What data/data_prep.py will do for a split, decided before anything is written: the [data] settings
(`Settings`), the sources scanned and checked (`plan_split`), the hash of settings and source list
that lets a re-run resume (`state_digest`), the worker's job (`Job`) and fresh / resume / overwrite
(`check_state`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import manifests
import mixing
import prep_outputs
import prep_sources
import utils

SPLIT_KEYS = {
    "training": ("clean_train_path", "noise_train_path", "total_training_files"),
    "testing": ("clean_test_path", "noise_test_path", "total_testing_files"),
}
VERSION = 2  # bump when the mixing algorithm changes, so old outputs are not silently resumed


@dataclass(frozen=True)
class Settings:
    sample_rate: int
    file_length: float
    snr_levels: tuple[float, ...]
    seed: int
    output_path: Path
    workers: int
    clean: dict
    noise: dict
    totals: dict

    @property
    def n_samples(self) -> int:
        return int(round(self.file_length * self.sample_rate))

    @classmethod
    def from_config(cls, cfg, workers: int | None = None) -> Settings:
        source = getattr(cfg, "source", "config")
        if not cfg.has_section("data"):
            raise utils.PipelineError(f"{source}: no [data] section")

        def get(key):
            # no default: the sources and the mixtures' recipe are stated in full (paths have no
            # sensible default outside the file that names them)
            if not cfg.has_option("data", key):
                raise utils.PipelineError(f"{source}: [data] {key} is missing")
            return utils.config_value(cfg, "data", key)  # typed, finite, in range (utils.LOWER_BOUNDS)

        levels = np.linspace(get("SNR_lower"), get("SNR_upper"), get("total_snrlevels"))
        s = cls(
            sample_rate=get("sample_rate"),
            file_length=get("file_length"),
            snr_levels=tuple(float(v) + 0.0 for v in levels),  # + 0.0: -0.0 -> 0.0, never "-0" in names
            seed=get("seed"),
            output_path=Path(get("output_path")),
            workers=get("workers") if workers is None else workers,
            clean={split: Path(get(keys[0])) for split, keys in SPLIT_KEYS.items()},
            noise={split: Path(get(keys[1])) for split, keys in SPLIT_KEYS.items()},
            totals={split: get(keys[2]) for split, keys in SPLIT_KEYS.items()},
        )
        problems = [
            (s.n_samples < 1, "file_length must be > 0"),  # > 0 but shorter than one sample
            (s.workers < 0, "workers must be >= 0"),  # --workers is not checked by the config
        ]
        for bad, what in problems:
            if bad:
                raise utils.PipelineError(f"{source}: [data] {what}")
        return s


@dataclass(frozen=True)
class Job:
    """Everything a worker process needs to make any mixture of one split."""

    split: str
    seed: int
    sample_rate: int
    n_samples: int
    snr_levels: tuple
    clean: tuple
    noise: tuple
    clean_dir: str
    noise_dir: str
    output_path: str
    bad: tuple = ()  # (path, reason) of files the main process already found unusable


def state_digest(settings: Settings, split: str, clean_list, noise_list) -> tuple[str, dict]:
    state = {
        "version": VERSION,
        "split": split,
        "sample_rate": settings.sample_rate,
        "file_length": settings.file_length,
        "total": settings.totals[split],
        "snr_levels": list(settings.snr_levels),
        "seed": settings.seed,
        "clean_path": str(settings.clean[split]),
        "noise_path": str(settings.noise[split]),
        "activity": [
            mixing.ACTIVITY_FRAME_S,
            mixing.ACTIVITY_RANGE_DB,
            mixing.ACTIVITY_MIN_FRACTION,
            mixing.SILENCE_RMS,
            mixing.MIN_NOISE_S,
        ],
        "clean_files": clean_list,
        "noise_files": noise_list,
    }
    digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()
    return digest, state


@dataclass
class SplitPlan:
    split: str
    job: Job
    total: int
    digest: str
    state: dict
    skipped: list  # (path, reason) found by the header scan
    action: str = "fresh"  # fresh | resume | overwrite

    @property
    def state_path(self) -> Path:
        return Path(self.job.output_path) / f"data_prep_state_{self.split}.json"


def plan_split(settings: Settings, split: str) -> SplitPlan:
    """Scans one split's sources; raises PipelineError (nothing written yet) when they are unusable."""
    out = settings.output_path
    # data_prep's outputs inside a source folder are not sources
    exclude = [out / f.format(s) for f in manifests.FOLDERS for s in manifests.SPLITS]
    n = settings.n_samples
    clean, skip_c, list_c = prep_sources.scan_sources(settings.clean[split], n, settings.sample_rate, exclude)
    min_noise = int(math.ceil(mixing.MIN_NOISE_S * settings.sample_rate))
    noise, skip_n, list_n = prep_sources.scan_sources(
        settings.noise[split], min_noise, settings.sample_rate, exclude
    )
    decoded_bad = []
    for kind, usable, folder, least, skipped in (
        ("clean", clean, settings.clean[split], n, skip_c),
        ("noise", noise, settings.noise[split], min_noise, skip_n),
    ):
        found, bad = (
            prep_sources.first_usable(usable, kind, settings.sample_rate, least) if usable else (None, [])
        )
        if found is None:
            why = utils.why_none_usable(skipped + bad, len(usable) + len(skipped))
            raise utils.PipelineError(f"{folder}: no usable {kind} audio for the {split} split{why}")
        decoded_bad += bad
    digest, state = state_digest(settings, split, list_c, list_n)
    job = Job(
        split=split,
        seed=settings.seed,
        sample_rate=settings.sample_rate,
        n_samples=n,
        snr_levels=settings.snr_levels,
        clean=tuple(clean),
        noise=tuple(noise),
        clean_dir=str(settings.clean[split]),
        noise_dir=str(settings.noise[split]),
        output_path=str(out),
        bad=tuple(decoded_bad),  # workers skip them without decoding them again
    )
    return SplitPlan(split, job, settings.totals[split], digest, state, skip_c + skip_n + decoded_bad)


def check_state(plan: SplitPlan, overwrite: bool) -> None:
    """Decides fresh / resume / overwrite; refuses to mix into outputs made with other settings."""
    out = Path(plan.job.output_path)
    existing = prep_outputs.split_outputs(out, plan.split)
    old = None
    if plan.state_path.exists():
        try:
            old = json.loads(plan.state_path.read_text()).get("hash")
        except (OSError, ValueError, AttributeError):
            old = None
    if old == plan.digest:
        plan.action = "resume"
    elif not existing:
        plan.action = "fresh"
    elif overwrite:
        plan.action = "overwrite"
    else:
        why = "different settings or sources" if old else "no matching data_prep_state file"
        raise utils.PipelineError(
            f"{out}: {plan.split} outputs there were made with {why}; use --overwrite to replace them"
        )
