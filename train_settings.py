"""The settings of a training run: [train] as TrainParams, the keys --resume may change, the run folders.

TrainParams' defaults are config.ini's (tests/test_config.py holds them equal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import augment
import utils

# What a checkpoint's weights, optimizer state, data order and best_si_sdr depend on: --resume refuses
# a change to these sections and [train] keys (validation_files too: best_si_sdr was measured on that
# subset). Every other [train] key is in RESUMABLE_TRAIN_KEYS: it may change on resume (data_config
# only where the [data] sources and SNR range it names stay the same: MIX_DATA_KEYS). The two lists
# cover TrainParams exactly (tests/test_train.py checks it); study_lookahead.py derives its
# bookkeeping keys from RESUMABLE_TRAIN_KEYS.
MODEL_SECTIONS = ("STFT", "features", "model", "loss")
FIXED_TRAIN_KEYS = (
    "seed", "batch_size", "crop_seconds", "learning_rate", "lr_halving_steps", "clip_norm",
    "validation_files", "on_the_fly", "examples_per_epoch", "level_db_min", "level_db_max", "augment",
    "warmup_steps", "cosine_steps", "init_weights",
)  # fmt: skip
# The first five are named in --resume's refusal: the ones a user changes on purpose.
RESUMABLE_TRAIN_KEYS = (
    "epochs", "validation_interval", "checkpoint_steps", "audio_examples", "max_nonfinite_steps",
    "deterministic", "run_name", "data_config", "patience", "min_delta", "min_epochs",
)  # fmt: skip


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 30
    batch_size: int = 8
    learning_rate: float = 2.1e-4
    # Steps over which the learning rate halves (smooth exponential decay); 0 = constant.
    lr_halving_steps: int = 0
    # Linear warm-up from 0 over warmup_steps, then (cosine_steps > 0) a cosine decay to
    # COSINE_FLOOR * learning_rate over cosine_steps, flat afterwards; excludes lr_halving_steps.
    warmup_steps: int = 0
    cosine_steps: int = 0
    # Start a new run from these weights (a model.weights.h5 of the same [model]; relative to the
    # config file's folder), e.g. fine-tuning pretrained/; empty = random initialisation.
    init_weights: str = ""
    # Early stopping: stop once `patience` validations in a row have not raised validation SI-SDR
    # by more than min_delta dB over the best before them (0 = train all epochs).
    patience: int = 0
    min_delta: float = 0.05
    # ... but never before this epoch: the first validations are noisy and a high learning rate has
    # not settled yet (a run must not "converge" on a lucky first epoch).
    min_epochs: int = 0
    crop_seconds: float = 2.0
    clip_norm: float = 5.0
    validation_files: int = 32
    validation_interval: int = 1
    checkpoint_steps: int = 200
    audio_examples: int = 3
    max_nonfinite_steps: int = 5
    seed: int = 1234
    run_name: str = "default"
    # TF op determinism (same weights from two runs): auto = on when no GPU is visible (it costs
    # little on CPU; some GPU kernels have no deterministic version), true, false.
    deterministic: str = "auto"
    # On-the-fly mixing (see mixing.OnTheFlyMixer): off = the cached mixtures of data_prep.
    on_the_fly: bool = False
    examples_per_epoch: int = 0  # 0 = as many as the cached training mixtures
    level_db_min: float = -10.0
    level_db_max: float = 6.0
    augment: str = ""  # comma-separated subset of augment.AUGMENTATIONS, stored sorted
    data_config: str = ""  # empty = data/config.ini

    @classmethod
    def from_config(cls, cfg) -> TrainParams:
        """From [train]; a key the config lacks (one that predates it) has config.ini's default."""
        src = f"{Path(utils.config_source(cfg)).name}: [train]"
        values = utils.config_values(cfg, "train", [f.name for f in fields(cls)])
        names = [a.lower() for a in values["augment"]]  # a list key: a tuple of the named ones
        unknown = sorted(set(names) - set(augment.AUGMENTATIONS))
        if unknown:
            raise utils.PipelineError(
                f"{src} augment={','.join(values['augment'])!r}: unknown {', '.join(unknown)} "
                f"(choose from {', '.join(augment.AUGMENTATIONS)})"
            )
        values["augment"] = ",".join(sorted(set(names)))  # "reverb,eq" and "eq,reverb" are one setting
        p = cls(**values)
        positive = ("epochs", "batch_size", "validation_interval", "checkpoint_steps", "max_nonfinite_steps")
        for name in positive:
            if getattr(p, name) < 1:
                raise utils.PipelineError(f"{src} {name}={getattr(p, name)}: must be >= 1")
        if p.deterministic.lower() not in ("auto", "true", "false"):
            raise utils.PipelineError(f"{src} deterministic={p.deterministic}: expected auto, true or false")
        if p.crop_seconds <= 0 or p.learning_rate <= 0:
            raise utils.PipelineError(f"{src} crop_seconds and learning_rate must be > 0")
        for name in ("lr_halving_steps", "warmup_steps", "cosine_steps", "patience", "min_epochs"):
            if getattr(p, name) < 0:
                raise utils.PipelineError(f"{src} {name}={getattr(p, name)}: must be >= 0")
        if not (math.isfinite(p.min_delta) and p.min_delta >= 0):
            raise utils.PipelineError(f"{src} min_delta={p.min_delta}: must be a number >= 0")
        if p.lr_halving_steps and p.cosine_steps:
            raise utils.PipelineError(f"{src} lr_halving_steps and cosine_steps: choose one decay")
        if p.examples_per_epoch < 0:
            raise utils.PipelineError(f"{src} examples_per_epoch={p.examples_per_epoch}: must be >= 0")
        if not (math.isfinite(p.level_db_min) and math.isfinite(p.level_db_max)) or (
            p.level_db_min > p.level_db_max
        ):
            raise utils.PipelineError(f"{src} needs finite level_db_min <= level_db_max")
        return p

    @property
    def augmentations(self) -> tuple[str, ...]:
        return tuple(a for a in self.augment.split(",") if a)


@dataclass(frozen=True)
class RunDirs:
    checkpoints: Path  # <checkpoint_dir>/<run>
    logs: Path  # <log_dir>/<run>
    enhanced: Path  # <enhanced_dir>/<run>

    @classmethod
    def from_config(cls, cfg, run_name: str) -> RunDirs:
        if not run_name or "/" in run_name or run_name in (".", ".."):
            raise utils.PipelineError(f"--run-name {run_name!r}: expected a plain folder name")
        p = cfg["paths"]
        return cls(*(Path(p[k]) / run_name for k in ("checkpoint_dir", "log_dir", "enhanced_dir")))

    @property
    def best(self) -> Path:
        return self.checkpoints / "best"
