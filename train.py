"""Trains the complex-mask enhancer on the STFT cache (Training_STFT/), validating on Testing_STFT/.

    python train.py [--config config.ini] [--set train.epochs=5 ...] [--run-name NAME]
                    [--resume | --overwrite] [--strategy default|mirrored|multiworker]

Input: random crops of [train] crop_seconds from the memory-mapped cache, shuffled per epoch with a
seed derived from ([train] seed, epoch); crop offsets come from (seed, epoch, example), so an epoch's
batches are a pure function of the config and a resumed run sees exactly the batches it would have
seen. Examples shorter than the crop are zero-padded and their padding is masked out of the loss.
The step (tf.function + GradientTape + Adam) computes the features in-graph from the noisy STFT,
clips the gradient by its global norm and skips the update when the loss is not finite.

On-the-fly mixing ([train] on_the_fly = true; off by default; mixing.py and augment.py): instead of the
cached mixtures, each training example is mixed inside tf.data from the clean_train_path and
noise_train_path sources of
data/config.ini (or [train] data_config; --set data.clean_train_path=DIR etc. override them), decoded
once into memory: a random speech-active clean segment and a random noise segment of crop_seconds, an
SNR uniform in [SNR_lower, SNR_upper] applied by mixing.mix, a random level ([train] level_db_min ..
level_db_max), and optional augmentations ([train] augment = eq,reverb,noise2,tilt,modulate,transient:
speech/noise colouring, rooms, and noise made less like the training recordings). Example i of epoch e depends
only on (seed, e, i), so resume stays exact; [train] examples_per_epoch (0 = the cached count) sets the
epoch length. Validation is unchanged. The run's config.ini records the sources and SNR range used.

Fine-tuning: [train] init_weights = pretrained/model.weights.h5 starts a new run from those weights
(fresh optimizer and step counter). Learning rate: constant, halving every lr_halving_steps, or a
linear warm-up over warmup_steps then a cosine decay over cosine_steps.

Outputs, for run NAME:
    <checkpoint_dir>/NAME/        ckpt-* (last 3, every checkpoint_steps steps and every epoch end),
                                  config.ini (resolved), history.jsonl, best/ (model.save_trained of
                                  the best validation SI-SDR, with metrics.json)
    <log_dir>/NAME/train|validation   TensorBoard: per-step loss, learning rate, gradient norm;
                                  per-epoch losses, SDR, SI-SDR, SNR(i) of the model and of the noisy
                                  input; audio, spectrogram and mask images of fixed examples
    <enhanced_dir>/NAME/epoch_E/  the fixed validation examples (noisy, enhanced, clean wavs)

Validation scores waveforms against the TRUE clean speech read from disk: the model's output is
istft(M * X) with the model's own phase; the noisy input is scored beside it.
Validation uses the first [train] validation_files rows of the TEST split; best/metrics.json names
them (noisy file names and sha256s, the manifest's sha256; indices too) and evaluate.py also reports
its scores without them when it scores those files. A failed SDR / SI-SDR / SNR on a validation file
(silent or non-finite output) counts as FAILED_DB (-50 dB) in the mean.
Ctrl-C saves a checkpoint before exiting; `--resume` continues from the latest checkpoint exactly
(the update and the step counter change in one graph call). --resume refuses a change of [STFT],
[features], [model], [loss] or [train] seed, batch_size, crop_seconds, learning_rate, lr_halving_steps,
warmup_steps, cosine_steps, init_weights, clip_norm, validation_files, on_the_fly, examples_per_epoch,
level_db_min, level_db_max, augment (and, on the fly, of the sources and SNR range).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

import augment
import cluster
import manifests
import mixing
import STFT
import utils

log = utils.get_logger("train")

STRATEGIES = ("default", "mirrored", "multiworker")
# Metrics computed at validation (waveforms, against the true clean speech).
VAL_METRICS = ("sdr", "si_sdr", "snr")
# Validation examples per inference call (equal lengths only, so no padding).
VAL_BATCH = 8
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
# A validation file whose SDR / SI-SDR / SNR(i) failed (silent or non-finite output) counts as this
# many dB in the epoch mean, so silencing files can never raise the score that picks best/.
FAILED_DB = -50.0


# ----------------------------------------------------------------------------- settings


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


def _tf():
    utils.quiet_tensorflow()
    import tensorflow as tf

    return tf


# ----------------------------------------------------------------------------- data


def crop_frames(cfg, params: TrainParams) -> int:
    sp = STFT.StftParams.from_config(cfg)
    return max(1, round(params.crop_seconds * sp.sample_rate / sp.hop))


def epoch_plan(n_frames: np.ndarray, seed: int, epoch: int, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """The order of examples and each one's crop start (in frames) for `epoch`.

    A pure function of (seed, epoch) and the cache: the order from a generator seeded with
    (seed, epoch), the start of example i from a uniform draw indexed by i (so it depends on
    (seed, epoch, i), not on where i lands in the order).
    """
    n_frames = np.asarray(n_frames, dtype=np.int64)
    order = np.random.default_rng([seed, epoch, 0]).permutation(len(n_frames))
    u = np.random.default_rng([seed, epoch, 1]).random(len(n_frames))
    room = np.maximum(n_frames - crop, 0) + 1  # number of valid starts
    starts = np.minimum((u * room).astype(np.int64), room - 1)
    return order, starts[order]


def load_crops(cache, index: np.ndarray, start: np.ndarray, crop: int):
    """Slices crops from the memmaps; pads short examples with zeros and marks valid frames."""
    n, f = len(index), cache.noisy.shape[1]
    noisy = np.zeros((n, crop, f), np.complex64)
    clean = np.zeros((n, crop, f), np.complex64)
    valid = np.zeros((n, crop), np.float32)
    for k, (i, s) in enumerate(zip(index, start)):
        length = int(min(crop, cache.n_frames[i] - s))
        a = int(cache.offsets[i] + s)
        noisy[k, :length] = cache.noisy[a : a + length]
        clean[k, :length] = cache.clean[a : a + length]
        valid[k, :length] = 1.0
    return noisy, clean, valid


COSINE_FLOOR = 0.01  # cosine decay ends at 1 % of the peak learning rate


def learning_rate_schedule(params: TrainParams):
    """Adam's learning rate: constant; learning_rate * 0.5 ** (step / lr_halving_steps); or a linear
    warm-up over warmup_steps followed by a cosine decay over cosine_steps. A function of the
    optimizer's own step counter, so it resumes exactly from a checkpoint."""
    import keras

    if params.cosine_steps or params.warmup_steps:
        return keras.optimizers.schedules.CosineDecay(
            0.0 if params.warmup_steps else params.learning_rate,
            decay_steps=max(params.cosine_steps, 1) if params.cosine_steps else 10**12,
            alpha=COSINE_FLOOR if params.cosine_steps else 1.0,
            warmup_target=params.learning_rate if params.warmup_steps else None,
            warmup_steps=params.warmup_steps,
        )
    if params.lr_halving_steps == 0:
        return params.learning_rate
    return keras.optimizers.schedules.ExponentialDecay(params.learning_rate, params.lr_halving_steps, 0.5)


def n_batches(n_examples: int, batch_size: int, drop_remainder: bool) -> int:
    return n_examples // batch_size if drop_remainder else math.ceil(n_examples / batch_size)


def make_dataset(cache, seed: int, epoch: int, crop: int, batch_size: int, skip_batches: int = 0,
                 drop_remainder: bool = False):  # fmt: skip
    """tf.data pipeline for one epoch: (noisy, clean, valid) batches of fixed-length crops.

    Only (index, start) pairs flow through the graph until the last moment; one numpy_function per
    batch slices the memmaps, so skipping batches on resume costs nothing.
    """
    tf = _tf()
    order, starts = epoch_plan(cache.n_frames, seed, epoch, crop)
    f = cache.noisy.shape[1]

    def load(index, start):
        return load_crops(cache, index, start, crop)

    def load_tf(index, start):
        noisy, clean, valid = tf.numpy_function(
            load, [index, start], [tf.complex64, tf.complex64, tf.float32], stateful=False
        )
        return (
            tf.ensure_shape(noisy, [None, crop, f]),
            tf.ensure_shape(clean, [None, crop, f]),
            tf.ensure_shape(valid, [None, crop]),
        )

    ds = tf.data.Dataset.from_tensor_slices((order, starts))
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).skip(skip_batches)
    ds = ds.map(load_tf, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


# ----------------------------------------------------------------------------- strategy


def make_strategy(name):
    """default: tf.distribute.get_strategy(); mirrored: every GPU, else every logical CPU device;
    multiworker: MultiWorkerMirroredStrategy (cluster from TF_CONFIG). A Strategy object passes."""
    tf = _tf()
    if not isinstance(name, str):
        return name
    if name == "default":
        return tf.distribute.get_strategy()
    if name not in STRATEGIES:
        raise utils.PipelineError(f"--strategy {name!r}: choose from {', '.join(STRATEGIES)}")
    # One instance per process: two strategies over the same devices would reuse collective keys.
    if name not in _STRATEGY_CACHE:
        if name == "mirrored":
            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
            _STRATEGY_CACHE[name] = tf.distribute.MirroredStrategy(devices=devices)
        else:
            cluster.configure_coordination(tf)  # bounded waits for a worker that is gone
            _STRATEGY_CACHE[name] = tf.distribute.MultiWorkerMirroredStrategy()
    return _STRATEGY_CACHE[name]


_STRATEGY_CACHE: dict = {}


def is_chief(strategy) -> bool:
    """Only the chief writes summaries, exports and the real checkpoints (multi-worker rule)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """Model, optimizer, the distributed train step and whole-utterance inference."""

    def __init__(self, cfg, params: TrainParams, strategy):
        import model as model_lib

        tf = _tf()
        self.tf, self.cfg, self.params, self.strategy = tf, cfg, params, strategy
        self.model_lib = model_lib
        self.sp = STFT.StftParams.from_config(cfg)
        self.fp = STFT.FeatureParams.from_config(cfg)
        self.loss_fn = model_lib.loss_from_config(cfg)  # callable(S, S_hat, mask=None)
        with strategy.scope():
            self.model = model_lib.build_model(cfg)
            import keras

            self.optimizer = keras.optimizers.Adam(learning_rate=learning_rate_schedule(params))
            self.optimizer.build(self.model.trainable_variables)
        # Training state saved in every checkpoint (data order = f(seed, epoch, batch)).
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.batch = tf.Variable(0, dtype=tf.int64, trainable=False, name="batch_in_epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.epoch_loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_loss_sum")
        self.epoch_loss_count = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch_loss_count")
        self.nonfinite_streak = tf.Variable(0, dtype=tf.int64, trainable=False, name="nonfinite_streak")
        self.best_si_sdr = tf.Variable(-np.inf, dtype=tf.float64, trainable=False, name="best_si_sdr")
        self.checkpoint = tf.train.Checkpoint(
            model=self.model,
            optimizer=self.optimizer,
            epoch=self.epoch,
            batch=self.batch,
            step=self.step,
            epoch_loss_sum=self.epoch_loss_sum,
            epoch_loss_count=self.epoch_loss_count,
            nonfinite_streak=self.nonfinite_streak,
            best_si_sdr=self.best_si_sdr,
        )
        self._step_fn = tf.function(self._step, reduce_retracing=True, autograph=False)
        f = self.sp.n_bins
        spec = tf.TensorSpec([None, None, f], tf.complex64)
        self.infer = tf.function(self._infer, input_signature=[spec, spec], autograph=False)

    def load_initial_weights(self, path: Path) -> None:
        """[train] init_weights: the starting point of a new run (fine-tuning); the optimizer and the
        step counter start afresh."""
        if not path.is_file():
            raise utils.PipelineError(f"{path}: [train] init_weights: file not found")
        try:
            self.model.load_weights(str(path))
        except Exception as e:  # Keras raises ValueError / OSError for another model or a bad file
            raise utils.PipelineError(
                f"{path}: [train] init_weights: cannot load into this [model] "
                f"({str(e).splitlines()[0][:160]})"
            ) from e
        log.info(f"initial weights: {path}")

    # -- the train step ------------------------------------------------------------------------
    def features(self, X):
        return STFT.features_tf(X, self.fp, self.sp)

    def forward(self, noisy, training: bool):
        mask = self.model(self.features(noisy), training=training)
        return self.model_lib.apply_mask(noisy, mask), mask

    def _replica_grads(self, noisy, clean, valid):
        """The batch loss is the model loss averaged over every valid (frame, bin) of the GLOBAL batch
        (padding excluded). A replica's share: its masked mean times its fraction of the global valid
        frames. Loss and gradients are then all-reduced, so every replica holds the full-batch values,
        identical to one replica on the whole batch."""
        tf = self.tf
        ctx = tf.distribute.get_replica_context()
        local = tf.reduce_sum(valid)
        total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local)
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            S_hat, _ = self.forward(noisy, training=True)
            loss = self.loss_fn(clean, S_hat, mask=valid) * (local / tf.maximum(total, 1.0))
        grads = tape.gradient(loss, variables)
        grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g) for g, v in zip(grads, variables)]
        loss, grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [loss, grads])
        return loss, grads

    def _replica_apply(self, grads, norm):
        tf = self.tf
        if self.params.clip_norm > 0:
            grads, _ = tf.clip_by_global_norm(grads, self.params.clip_norm, use_norm=norm)
        replicas = self.strategy.num_replicas_in_sync
        if replicas > 1:  # the optimizer sums over replicas again: hand it 1/R of the full gradient
            grads = [g / replicas for g in grads]
        self.optimizer.apply(grads, self.model.trainable_variables)

    def _step(self, noisy, clean, valid):
        tf, strategy = self.tf, self.strategy
        loss, grads = strategy.run(self._replica_grads, args=(noisy, clean, valid))
        first = strategy.experimental_local_results
        loss = first(loss)[0]
        norm = tf.linalg.global_norm([first(g)[0] for g in grads])
        finite = tf.math.logical_and(tf.math.is_finite(loss), tf.math.is_finite(norm))

        def apply():
            # In cross-replica context: a cond whose branch calls merge_call must live here.
            strategy.run(self._replica_apply, args=(grads, norm))
            return tf.constant(True)

        applied = tf.cond(finite, apply, lambda: tf.constant(False))
        self._count_step(loss, applied)
        return loss, norm, applied

    def _count_step(self, loss, applied):
        """Counts the step in the same graph call as the update: Ctrl-C lands before or after both,
        never between (new weights saved with the old counter would replay the batch on --resume)."""
        tf = self.tf
        self.step.assign_add(1)
        self.batch.assign_add(1)
        self.nonfinite_streak.assign(tf.where(applied, tf.constant(0, tf.int64), self.nonfinite_streak + 1))
        self.epoch_loss_sum.assign_add(
            tf.where(applied, tf.cast(loss, tf.float64), tf.constant(0.0, tf.float64))
        )
        self.epoch_loss_count.assign_add(tf.cast(applied, tf.int64))

    def _gradients(self, noisy, clean, valid):
        loss, grads = self.strategy.run(self._replica_grads, args=(noisy, clean, valid))
        first = self.strategy.experimental_local_results
        grads = [first(g)[0] for g in grads]
        return first(loss)[0], self.tf.linalg.global_norm(grads), grads

    def gradients(self, batch):
        """(loss, global grad norm, [grad arrays]) of the full batch, unclipped, nothing applied."""
        if not hasattr(self, "_gradients_fn"):
            self._gradients_fn = self.tf.function(self._gradients, reduce_retracing=True, autograph=False)
        loss, norm, grads = self._gradients_fn(*batch)
        return float(loss), float(norm), [g.numpy() for g in grads]

    def train_step(self, batch):
        """One update on a (noisy, clean, valid) batch (distributed when the strategy has replicas) and
        the step / batch / epoch-loss counters; returns (loss, grad_norm, applied) as Python values;
        a non-finite loss applies nothing."""
        loss, norm, applied = self._step_fn(*batch)
        return float(loss), float(norm), bool(applied)

    # -- inference ------------------------------------------------------------------------------
    def _infer(self, noisy, clean):
        tf = self.tf
        S_hat, mask = self.forward(noisy, training=False)
        n = tf.shape(clean)[1]
        losses = tf.map_fn(
            lambda i: self.loss_fn(clean[i : i + 1], S_hat[i : i + 1, :n]),
            tf.range(tf.shape(noisy)[0]),
            fn_output_signature=tf.float32,
        )
        return S_hat, mask, losses

    def enhance(self, noisy: np.ndarray, clean: np.ndarray):
        """Whole utterances of one length, noisy (B, T', F) and clean (B, T <= T', F) -> S_hat (B, T', F),
        mask (B, T', F, 2), losses (B,) over the first T frames.

        No padding: equal lengths make a batch exact for every architecture (a padded batch would
        change what a bidirectional model or a lookahead sees at the end)."""
        S_hat, mask, losses = self.infer(noisy, clean)
        return S_hat.numpy(), mask.numpy(), losses.numpy()

    def weights(self) -> list[np.ndarray]:
        return [np.array(v) for v in self.model.weights]


# ----------------------------------------------------------------------------- validation


@dataclass
class ValExample:
    row: dict
    noisy_stft: np.ndarray  # (T, F) from the cache
    clean_stft: np.ndarray
    noisy_wav: np.ndarray
    clean_wav: np.ndarray
    noisy_scores: dict


class Validator:
    """A fixed subset (the first validation_files rows of Testing_STFT) scored every validation
    epoch: loss on the STFTs, and SDR / SI-SDR / SNR(i) on waveforms against the true clean wav."""

    def __init__(self, cfg, params: TrainParams, cache):
        import metrics

        self.metrics = metrics
        self.sp = STFT.StftParams.from_config(cfg)
        n = min(params.validation_files, len(cache))
        # Manifest indices of the validation files (test split), stored in best/metrics.json so
        # evaluate.py can report the test scores without them.
        self.manifest_indices = [int(cache.rows[i]["manifest_index"]) for i in range(n)]
        # ... and by identity: the manifest's sha256, the noisy names and each noisy file's sha256
        # (indices alone would name the first files of any other test set)
        manifest = Path(cache.meta.get("manifest", ""))
        self.identity = {"manifest": str(manifest), "manifest_sha256": None, "noisy": []}
        if manifest.is_file():
            self.identity["manifest_sha256"] = utils.file_sha256(manifest)
            rows = manifests.read_rows(manifest, ("index", "noisy"))
            names = {r["index"].strip(): manifests.name(r["noisy"]) for r in rows}
            self.identity["noisy"] = [names.get(str(i), "") for i in self.manifest_indices]
        self.identity["noisy_sha256"] = [utils.file_sha256(cache.rows[i]["noisy"]) for i in range(n)]
        self.examples = []
        for i in range(n):
            row = cache.rows[i]
            noisy_stft, clean_stft = cache.example(i)
            clean_wav, _ = utils.read_audio(row["clean"], self.sp.sample_rate)
            noisy_wav, _ = utils.read_audio(row["noisy"], self.sp.sample_rate)
            values, _ = metrics.score(clean_wav, noisy_wav, sr=self.sp.sample_rate, metrics=VAL_METRICS)
            self.examples.append(ValExample(row, noisy_stft, clean_stft, noisy_wav, clean_wav, values))
        self.n_audio = min(params.audio_examples, n)

    def __len__(self):
        return len(self.examples)

    def batches(self) -> list[list[int]]:
        """Example indices grouped by length (data_prep's clips all have one), VAL_BATCH at most."""
        groups: dict[int, list[int]] = {}
        for k, ex in enumerate(self.examples):
            groups.setdefault(len(ex.noisy_stft), []).append(k)
        return [g[i : i + VAL_BATCH] for g in groups.values() for i in range(0, len(g), VAL_BATCH)]

    def run(self, trainer: Trainer):
        """Returns (means over the examples, outputs of the first n_audio examples)."""
        rows, outputs = {}, {}
        for group in self.batches():
            noisy = np.stack([self.examples[k].noisy_stft for k in group])
            clean = np.stack([self.examples[k].clean_stft for k in group])
            S_hat, mask, losses = trainer.enhance(noisy, clean)
            for j, k in enumerate(group):
                ex = self.examples[k]
                enhanced = STFT.istft(S_hat[j], self.sp, length=len(ex.noisy_wav))
                S_hat_j, mask_j = S_hat[j, : len(ex.clean_stft)], mask[j, : len(ex.clean_stft)]
                values, _ = self.metrics.score(
                    ex.clean_wav, enhanced, noisy=ex.noisy_wav, sr=self.sp.sample_rate, metrics=VAL_METRICS
                )
                values["loss"] = float(losses[j])
                values.update({f"{m}_noisy": ex.noisy_scores[m] for m in VAL_METRICS})
                rows[k] = values
                if k < self.n_audio:
                    outputs[k] = (ex, S_hat_j, mask_j, enhanced)
        return summarize_validation([rows[k] for k in sorted(rows)]), [outputs[k] for k in sorted(outputs)]


def summarize_validation(rows: list[dict]) -> dict:
    """Means over the validation files. A failed dB metric (NaN: silent or non-finite output; -inf)
    counts as FAILED_DB rather than being dropped, so a model that silences files cannot win best/;
    +inf (an exact estimate) counts as 100 dB. The loss averages its finite values. <m>_failed counts
    the model's failures per metric."""
    summary = {}
    for key in rows[0] if rows else ():
        a = np.array([r[key] for r in rows], np.float64)
        failed = np.isnan(a) | np.isneginf(a)
        if key == "loss":
            summary[key] = float(a[np.isfinite(a)].mean()) if np.isfinite(a).any() else math.nan
        else:
            summary[key] = float(np.nan_to_num(a, nan=FAILED_DB, neginf=FAILED_DB, posinf=100.0).mean())
        if key in (*VAL_METRICS, "snri"):
            summary[f"{key}_failed"] = int(failed.sum())
    if summary.get("si_sdr_failed"):
        log.warning(
            f"validation: SI-SDR failed on {summary['si_sdr_failed']} of {len(rows)} files "
            f"(silent or non-finite output), each counted as {FAILED_DB:g} dB"
        )
    return summary


# ----------------------------------------------------------------------------- summaries


def _colormap(x: np.ndarray, name: str) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 through a matplotlib colormap (no figure)."""
    import matplotlib

    rgba = matplotlib.colormaps[name](np.clip(x, 0.0, 1.0))
    return (rgba[..., :3] * 255).astype(np.uint8)


def spectrogram_image(X: np.ndarray, floor_db: float = 80.0, ref_db: float | None = None) -> np.ndarray:
    """(T, F) complex -> (F, T, 3) uint8 log-magnitude image, low frequencies at the bottom."""
    db = 20 * np.log10(np.abs(X).T + 1e-8)
    top = db.max() if ref_db is None else ref_db
    return _colormap((db - (top - floor_db)) / floor_db, "magma")[::-1]


def mask_image(m: np.ndarray, bound: float) -> np.ndarray:
    """(T, F) mask component in [-bound, bound] -> (F, T, 3) uint8 (diverging colours)."""
    return _colormap((m.T / max(bound, 1e-6) + 1.0) / 2.0, "RdBu_r")[::-1]


def write_examples_summary(writer, outputs, epoch: int, sample_rate: int, mask_bound: float) -> None:
    tf = _tf()
    with writer.as_default(step=epoch):
        for k, (ex, S_hat, mask, enhanced) in enumerate(outputs):
            tag = f"example_{k}"
            for name, wav in (("noisy", ex.noisy_wav), ("enhanced", enhanced), ("clean", ex.clean_wav)):
                audio = utils.peak_normalize(np.asarray(wav, np.float32))
                tf.summary.audio(f"{tag}/{name}", audio[None, :, None], sample_rate)
            ref = 20 * np.log10(np.abs(ex.noisy_stft).max() + 1e-8)  # one scale for all three
            images = {
                "spectrogram_noisy": spectrogram_image(ex.noisy_stft, ref_db=ref),
                "spectrogram_enhanced": spectrogram_image(S_hat, ref_db=ref),
                "spectrogram_clean": spectrogram_image(ex.clean_stft, ref_db=ref),
                "mask_real": mask_image(mask[..., 0], mask_bound),
                "mask_imag": mask_image(mask[..., 1], mask_bound),
            }
            for name, image in images.items():
                tf.summary.image(f"{tag}/{name}", image[None])


def write_examples_audio(folder: Path, outputs, sample_rate: int) -> None:
    """Listening copies of the fixed validation examples (peak-safe; scores use the raw signals)."""
    for k, (ex, _S_hat, _mask, enhanced) in enumerate(outputs):
        stem = f"{k:02d}_{Path(ex.row['noisy']).stem}"
        for name, wav in (("noisy", ex.noisy_wav), ("enhanced", enhanced), ("clean", ex.clean_wav)):
            utils.write_audio(folder / f"{stem}_{name}.wav", utils.peak_normalize(wav), sample_rate)


# ----------------------------------------------------------------------------- run folder


def _resume_conflicts(saved, cfg) -> list[str]:
    """Settings of MODEL_SECTIONS and FIXED_TRAIN_KEYS that differ between the saved and new config
    (numbers compared as numbers, so 2.1e-4 == 0.00021)."""

    def norm(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return v

    def get(items: dict, section: str, key: str):
        if key in items:
            return items[key]
        try:  # a key newer than the saved config: the run had its default
            return utils.config_default(section, key)
        except KeyError:
            return None

    diffs = []
    for section in MODEL_SECTIONS:
        sa = dict(saved.items(section)) if saved.has_section(section) else {}
        sb = dict(cfg.items(section)) if cfg.has_section(section) else {}
        for k in sorted(set(sa) | set(sb)):
            a, b = get(sa, section, k), get(sb, section, k)
            if norm(a) != norm(b):
                diffs.append(f"[{section}] {k} {a} -> {b}")
    pa, pb = TrainParams.from_config(saved), TrainParams.from_config(cfg)
    diffs += [f"[train] {k} {getattr(pa, k)} -> {getattr(pb, k)}" for k in FIXED_TRAIN_KEYS
              if getattr(pa, k) != getattr(pb, k)]  # fmt: skip
    if pa.on_the_fly and pb.on_the_fly:  # the sources and SNR range make the on-the-fly examples
        da, db = mixing.data_settings(saved), mixing.data_settings(cfg)
        keys = mixing.MIX_DATA_KEYS
        diffs += [f"[data] {k} {da[k]} -> {db[k]}" for k in keys if norm(da[k]) != norm(db[k])]
    return diffs


def prepare_run(cfg, dirs: RunDirs, resume: bool, overwrite: bool) -> bool:
    """Checks / clears the run folders; returns True when a checkpoint will be restored."""
    if resume and overwrite:
        raise utils.PipelineError("train.py: --resume and --overwrite exclude each other")
    _refuse_if_locked(dirs.checkpoints)
    exists = dirs.checkpoints.exists() or dirs.logs.exists()
    if exists and overwrite:
        for folder in (dirs.checkpoints, dirs.logs):
            shutil.rmtree(folder, ignore_errors=True)
        for folder in dirs.enhanced.glob("epoch_*"):
            shutil.rmtree(folder, ignore_errors=True)
        return False
    if exists and not resume:
        raise utils.PipelineError(
            f"train.py: run folder {dirs.checkpoints} exists; use --resume to continue it, "
            "another --run-name, or --overwrite to start it again"
        )
    if not resume:
        return False
    tf = _tf()
    if tf.train.latest_checkpoint(str(dirs.checkpoints)) is None:
        log.warning(f"--resume: no checkpoint in {dirs.checkpoints}; starting a new run")
        return False
    saved = dirs.checkpoints / "config.ini"
    if saved.is_file():  # refused before anything is written: the saved config.ini stays as it was
        diffs = _resume_conflicts(utils.load_config(saved), cfg)
        if diffs:
            raise utils.PipelineError(
                f"train.py: --resume with other settings than {saved} ({'; '.join(diffs[:3])}); only "
                f"{', '.join(RESUMABLE_TRAIN_KEYS[:4])} and {RESUMABLE_TRAIN_KEYS[4]} may change"
            )
    return True


@contextlib.contextmanager
def run_lock(folder: Path):
    """<run>/.lock holds the pid of the process training the run: a second one is refused."""
    _refuse_if_locked(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".lock"
    lock.write_text(f"{os.getpid()}\n")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()


def _refuse_if_locked(folder: Path) -> None:
    try:
        pid = int((folder / ".lock").read_text().strip() or 0)
    except (OSError, ValueError):
        return
    if pid and pid != os.getpid() and utils.pid_alive(pid):
        raise utils.PipelineError(f"train.py: run folder {folder} is being trained by process {pid}")


def plateaued(records: list[dict], patience: int, min_delta: float, min_epochs: int = 0) -> bool:
    """True when the last `patience` validated epochs of a history raised validation SI-SDR by no more
    than min_delta over the best validation before them (the run has converged by that rule), from
    epoch min_epochs on."""
    scores = [r["validation"]["si_sdr"] for r in records if r.get("validation")]
    if patience < 1 or len(scores) <= patience or records[-1]["epoch"] < min_epochs:
        return False
    return max(scores[-patience:]) <= max(scores[:-patience]) + min_delta


class History:
    """One JSON line per finished epoch (<run>/history.jsonl), rewritten atomically."""

    def __init__(self, path: Path, keep_before_epoch: int):
        self.path = path
        self.records = []
        if path.is_file():
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            self.records = [r for r in records if r["epoch"] <= keep_before_epoch]

    def add(self, record: dict) -> None:
        self.records.append(record)
        text = "".join(json.dumps(r, allow_nan=True) + "\n" for r in self.records)
        with utils.atomic_write(self.path, "w") as f:
            f.write(text)


# ----------------------------------------------------------------------------- training


def open_cache(cfg, split: str):
    """The STFT cache of a split; refuses an empty one or one made with other [STFT] settings."""
    folder = STFT.cache_dir(cfg, split)
    cache = STFT.load_cache(folder)
    if len(cache) == 0:
        raise utils.PipelineError(f"{folder}: the {split} cache is empty")
    if cache.params != STFT.StftParams.from_config(cfg):
        raise utils.PipelineError(f"{folder}: built with other [STFT] settings than the config; run STFT.py")
    return cache


def _seed_everything(seed: int, deterministic: bool | str) -> None:
    tf = _tf()
    import keras

    utils.set_seed(seed)
    tf.random.set_seed(seed)
    keras.utils.set_random_seed(seed)
    if str(deterministic).lower() == "auto":
        deterministic = not tf.config.list_physical_devices("GPU")
    if str(deterministic).lower() in ("true", "1"):
        tf.config.experimental.enable_op_determinism()


def _format_epoch(epoch: int, epochs: int, train_loss: float, val: dict | None, seconds: float, rate: float):
    text = f"epoch {epoch}/{epochs}  train loss {train_loss:.4f}"
    if val:
        text += (
            f"  val loss {val['loss']:.4f}  SI-SDR {val['si_sdr']:.2f} (noisy {val['si_sdr_noisy']:.2f})"
            f"  SDR {val['sdr']:.2f} (noisy {val['sdr_noisy']:.2f})  SNRi {val['snri']:.2f} dB"
        )
    return text + f"  {seconds:.1f} s  {rate:.1f} clips/s"


def _export_best(trainer: Trainer, cfg, dirs: RunDirs, epoch: int, val: dict, validator: Validator) -> None:
    """best/ = model.save_trained + metrics.json, swapped in by renames so it is never half-written.
    metrics.json names the test-split files validation used (evaluate.py reports scores without them)."""
    tmp, old = dirs.checkpoints / ".best.tmp", dirs.checkpoints / ".best.old"
    for folder in (tmp, old):
        shutil.rmtree(folder, ignore_errors=True)
    trainer.model_lib.save_trained(trainer.model, cfg, tmp)
    with utils.atomic_write(tmp / "metrics.json", "w") as f:
        record = {
            "epoch": epoch,
            "step": int(trainer.step.numpy()),
            "validation": val,
            "validation_split": "testing",
            "validation_manifest_indices": list(validator.manifest_indices),
            "validation_files": validator.identity,
        }
        json.dump(record, f, indent=2)
    if dirs.best.exists():
        dirs.best.rename(old)
    tmp.rename(dirs.best)
    shutil.rmtree(old, ignore_errors=True)


def _remove_checkpoint_temps(folder: Path) -> None:
    """The ckpt-N_temp/ folders TensorFlow writes a checkpoint into before renaming it."""
    for tmp in Path(folder).glob("ckpt-*_temp*"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _deferred_interrupt():
    """Holds Ctrl-C (and SIGTERM, see _terminate_as_interrupt) back while the training state changes,
    then raises KeyboardInterrupt: a checkpoint taken in the except-handler never sees half an epoch
    transition. A signal ignored (SIGINT of a background job) or handled by someone else is left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught, swapped = [], {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) in (signal.default_int_handler, _terminate_as_interrupt):
            swapped[sig] = signal.signal(sig, lambda *_: caught.append(True))
    try:
        yield
    finally:
        for sig, handler in swapped.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt


def _terminate_as_interrupt(signum, frame):
    """SIGTERM (a scheduler, `kill`, a container stop) saves and exits like Ctrl-C."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_saves():
    """Installs _terminate_as_interrupt for SIGTERM while training, when nobody else handles it."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Run:
    """One training run: the trainer plus its data, validation, summaries, checkpoints and history."""

    def __init__(self, cfg, params: TrainParams, dirs: RunDirs, strategy, restoring: bool, progress: bool):
        tf = _tf()
        self.summary = tf.summary
        self.cfg, self.params, self.dirs, self.progress = cfg, params, dirs, progress
        # The training cache is read for its mixtures, or on the fly for its size alone.
        need_cache = not params.on_the_fly or params.examples_per_epoch == 0
        self.train_cache = open_cache(cfg, "training") if need_cache else None
        test_cache = open_cache(cfg, "testing")
        self.crop = crop_frames(cfg, params)
        self.mixer = None
        if params.on_the_fly:
            self.mixer = mixing.OnTheFlyMixer.from_config(cfg, params, self.crop, progress)
        self.n_train = (
            params.examples_per_epoch if self.mixer and params.examples_per_epoch else len(self.train_cache)
        )
        self.strategy = strategy
        self.chief = is_chief(strategy)
        self.replicas = strategy.num_replicas_in_sync
        self.drop_remainder = self.replicas > 1  # every replica gets a non-empty share of every batch
        if params.batch_size % self.replicas:
            raise utils.PipelineError(
                f"[train] batch_size={params.batch_size}: not divisible by {self.replicas} replicas"
            )
        self.per_epoch = n_batches(self.n_train, params.batch_size, self.drop_remainder)
        if self.per_epoch == 0:
            raise utils.PipelineError(
                f"[train] batch_size={params.batch_size}: more than the {self.n_train} training examples"
            )
        self.trainer = Trainer(cfg, params, strategy)
        if params.init_weights and not restoring:
            self.trainer.load_initial_weights(Path(params.init_weights))
        # Non-chief workers take part in the collective save but write to a private folder.
        self.ckpt_dir = dirs.checkpoints if self.chief else dirs.checkpoints / f".worker_{os.getpid()}"
        _remove_checkpoint_temps(self.ckpt_dir)  # of a run killed while saving
        self.manager = tf.train.CheckpointManager(self.trainer.checkpoint, str(self.ckpt_dir), max_to_keep=3)
        if restoring:
            self.restore()
        dirs.checkpoints.mkdir(parents=True, exist_ok=True)
        if self.chief:
            utils.save_config(cfg, dirs.checkpoints / "config.ini")
        self.history = History(dirs.checkpoints / "history.jsonl", keep_before_epoch=self.value("epoch"))
        self.validator = Validator(cfg, params, test_cache)
        self.writers = {
            name: tf.summary.create_file_writer(str(dirs.logs / name))
            if self.chief
            else tf.summary.create_noop_writer()
            for name in ("train", "validation")
        }  # fmt: skip
        self.mask_bound = self.trainer.model_lib.ModelParams.from_config(cfg).mask_bound

    def value(self, name: str):
        """A training-state variable as a Python number."""
        return getattr(self.trainer, name).numpy().item()

    def restore(self) -> None:
        # Every worker restores the chief's latest checkpoint (a non-chief's own folder is private).
        path = (
            self.manager.latest_checkpoint
            if self.chief
            else _tf().train.latest_checkpoint(str(self.dirs.checkpoints))
        )
        self.trainer.checkpoint.restore(path).assert_existing_objects_matched()
        log.info(
            f"resumed {path}: epoch {self.value('epoch') + 1}, "
            f"batch {self.value('batch')}, step {self.value('step')}"
        )

    def save(self) -> str:
        with _deferred_interrupt():
            return self._save_checkpoint()

    def _save_checkpoint(self) -> str:
        """manager.save; on any error its ckpt-N_temp/ folder is removed and a full disk (or a
        read-only folder) is one line, not a TensorFlow traceback."""
        try:
            return self.manager.save(checkpoint_number=self.value("step"))
        except BaseException as e:
            _remove_checkpoint_temps(self.ckpt_dir)
            tf = _tf()
            if isinstance(e, tf.errors.OpError):
                text = (str(e.message).strip().splitlines() or [type(e).__name__])[0]
                reason = "disk full" if "No space left" in text else text[:200]
                raise utils.PipelineError(f"{self.ckpt_dir}: checkpoint not saved: {reason}") from e
            raise

    # -- the loop -------------------------------------------------------------------------------
    def fit(self) -> None:
        p = self.params
        clips = f"{self.n_train} on-the-fly mixtures" if self.mixer else f"{self.n_train} training clips"
        if self.mixer:
            log.info(f"on-the-fly mixing: {self.mixer.describe()}")
        log.info(
            f"run {self.dirs.checkpoints.name}: {clips}, {self.per_epoch} "
            f"batches of {p.batch_size} x {self.crop} frames per epoch, {len(self.validator)} validation "
            f"clips, {self.replicas} replica(s)"
        )
        if self.value("epoch") >= p.epochs:
            log.info(f"nothing to do: {self.value('epoch')} of [train] epochs={p.epochs} already trained")
        try:
            while self.value("epoch") < p.epochs and not self.converged():
                epoch = self.value("epoch")  # 0-based; shown 1-based
                seconds, clips = self.train_epoch(epoch)
                self.end_epoch(epoch, seconds, clips)
        except KeyboardInterrupt:
            path = self.save()
            log.warning(
                f"interrupted: checkpoint {path}; continue with "
                f"--resume --run-name {self.dirs.checkpoints.name}"
            )
            raise
        finally:
            for w in self.writers.values():
                w.flush()
            if not self.chief:
                shutil.rmtree(self.ckpt_dir, ignore_errors=True)

    def converged(self) -> bool:
        p = self.params
        if not plateaued(self.history.records, p.patience, p.min_delta, p.min_epochs):
            return False
        log.info(f"converged: no validation SI-SDR gain above {p.min_delta:g} dB in the last {p.patience} "
                 f"validations (epoch {self.value('epoch')}); stopping")  # fmt: skip
        return True

    def train_epoch(self, epoch: int) -> tuple[float, int]:
        """Runs the remaining batches of `epoch`; returns (seconds, clips)."""
        p, done = self.params, self.value("batch")
        if self.mixer:
            ds = mixing.make_mix_dataset(
                self.mixer, epoch, self.n_train, p.batch_size, done, self.drop_remainder
            )
        else:
            ds = make_dataset(
                self.train_cache, p.seed, epoch, self.crop, p.batch_size, done, self.drop_remainder
            )
        if self.replicas > 1:
            ds = self.strategy.experimental_distribute_dataset(ds)
        started, clips = time.perf_counter(), 0
        bar = _progress(self.per_epoch, done, epoch, p.epochs, enabled=self.progress and self.chief)
        for batch in ds:
            loss, norm, applied = self.trainer.train_step(batch)
            clips += p.batch_size if self.replicas > 1 else int(batch[0].shape[0])
            step = self.after_step(epoch, loss, norm, applied)
            bar.update(1)
            count = self.value("epoch_loss_count")
            if count:
                bar.set_postfix(loss=f"{self.value('epoch_loss_sum') / count:.4f}", refresh=False)
            if step % p.checkpoint_steps == 0 and self.value("batch") < self.per_epoch:
                self.save()  # (the epoch-end checkpoint follows the last batch anyway)
        bar.close()
        return time.perf_counter() - started, clips

    def after_step(self, epoch: int, loss: float, norm: float, applied: bool) -> int:
        """Logs the step (train_step counted it) and stops after max_nonfinite_steps skipped updates
        in a row."""
        t = self.trainer
        step = self.value("step")
        with self.writers["train"].as_default(step=step):
            self.summary.scalar("batch/loss", loss)
            self.summary.scalar("batch/grad_norm", norm)
            self.summary.scalar("batch/learning_rate", float(t.optimizer.learning_rate.numpy()))
        if not applied:
            streak = self.value("nonfinite_streak")
            log.warning(f"step {step}: non-finite loss ({loss}) or gradient norm ({norm}); update skipped")
            if streak >= self.params.max_nonfinite_steps:
                path = self.save()
                raise utils.PipelineError(
                    f"train.py: {streak} non-finite losses in a row (epoch {epoch + 1}, step {step}); "
                    "stopped. "
                    f"Last good weights: {path}; lower [train] learning_rate or check the data"
                )
        return step

    def end_epoch(self, epoch: int, train_seconds: float, clips: int) -> None:
        """Validation (every validation_interval epochs and the last), summaries, history, checkpoint."""
        p, t = self.params, self.trainer
        count = self.value("epoch_loss_count")
        train_loss = self.value("epoch_loss_sum") / count if count else math.nan
        val, val_seconds = None, 0.0
        if not len(self.validator) and self.chief:  # no validation set: the latest model is the best
            _export_best(t, self.cfg, self.dirs, epoch + 1, {}, [])
        elif (epoch + 1) % p.validation_interval == 0 or epoch + 1 == p.epochs:
            started = time.perf_counter()
            val = self.validate(epoch + 1)
            val_seconds = time.perf_counter() - started
        rate = clips / train_seconds if train_seconds > 0 else math.nan
        with self.writers["train"].as_default(step=epoch + 1):
            self.summary.scalar("epoch/loss", train_loss)
            self.summary.scalar("epoch/clips_per_second", rate)
        for w in self.writers.values():
            w.flush()
        log.info(_format_epoch(epoch + 1, p.epochs, train_loss, val, train_seconds + val_seconds, rate))
        if self.chief:
            self.history.add(
                {
                    "epoch": epoch + 1,
                    "step": self.value("step"),
                    "train_loss": train_loss,
                    "train_seconds": train_seconds,
                    "validation_seconds": val_seconds,
                    "clips": clips,
                    "clips_per_second": rate,
                    "validation": val,
                }  # fmt: skip
            )
        with _deferred_interrupt():
            t.epoch.assign_add(1)
            t.batch.assign(0)
            t.epoch_loss_sum.assign(0.0)
            t.epoch_loss_count.assign(0)
            self._save_checkpoint()

    def validate(self, epoch: int) -> dict:
        """Scores the fixed validation subset; writes summaries, listening copies and best/."""
        val, outputs = self.validator.run(self.trainer)
        if not self.chief:
            return val
        sp, writer = self.validator.sp, self.writers["validation"]
        with writer.as_default(step=epoch):
            for key, value in val.items():
                self.summary.scalar(f"epoch/{key}", value)
        write_examples_summary(writer, outputs, epoch, sp.sample_rate, self.mask_bound)
        write_examples_audio(self.dirs.enhanced / f"epoch_{epoch}", outputs, sp.sample_rate)
        si = val.get("si_sdr", math.nan)
        if math.isfinite(si) and si > self.value("best_si_sdr"):
            self.trainer.best_si_sdr.assign(si)
            _export_best(self.trainer, self.cfg, self.dirs, epoch, val, self.validator)
        return val


def train(cfg, run_name: str | None = None, resume: bool = False, strategy="default", overwrite: bool = False,
          progress: bool = True) -> Path:  # fmt: skip
    """Trains (or resumes) run `run_name` and returns its checkpoint folder <checkpoint_dir>/<run>.

    strategy: "default" | "mirrored" | "multiworker" or a tf.distribute.Strategy.
    """
    params = TrainParams.from_config(cfg)
    if params.patience and strategy == "multiworker":  # only the chief holds the history it stops on
        raise utils.PipelineError(
            "[train] patience: early stopping is not supported with --strategy multiworker"
        )
    if params.on_the_fly:
        cfg = mixing.with_data_settings(cfg)  # the run's config.ini then names its sources and SNR range
    dirs = RunDirs.from_config(cfg, run_name or params.run_name)
    # Multi-worker: the chief alone checks, clears and locks the (shared) run folder; the others
    # restore whatever checkpoint the chief restores.
    chief = strategy != "multiworker" or cluster.is_chief_task()
    if chief:
        restoring = prepare_run(cfg, dirs, resume, overwrite)
    else:
        restoring = resume and _tf().train.latest_checkpoint(str(dirs.checkpoints)) is not None
    with run_lock(dirs.checkpoints) if chief else contextlib.nullcontext(), _sigterm_saves():
        _seed_everything(params.seed, params.deterministic)
        try:
            Run(cfg, params, dirs, make_strategy(strategy), restoring, progress).fit()
        except Exception as e:
            reason = cluster.worker_failure(e) if strategy == "multiworker" else None
            if reason is None:
                raise
            raise utils.PipelineError(
                f"train.py: multi-worker training stopped: a worker is gone or unreachable ({reason}); "
                "restart every worker with --resume"
            ) from e
    return dirs.checkpoints


def _progress(total: int, initial: int, epoch: int, epochs: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False,
        disable=not enabled, dynamic_ncols=True,
    )  # fmt: skip


# ----------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    utils.add_config_args(parser)
    parser.add_argument(
        "--run-name", help="run folder name under checkpoint_dir, log_dir and enhanced_dir "
        "(default: [train] run_name, else 'default')",
    )  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run of that name first")
    parser.add_argument(
        "--strategy", choices=STRATEGIES, default="default",
        help="tf.distribute strategy: default (one device), mirrored (all GPUs, else all logical CPUs), "
        "multiworker (cluster from TF_CONFIG)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch)")
    args = parser.parse_args(argv)
    log.propagate = False  # TensorFlow may add a root handler: print each line once
    cfg = utils.config_from_args(args)
    folder = train(
        cfg, args.run_name, resume=args.resume, strategy=args.strategy, overwrite=args.overwrite,
        progress=not args.no_progress,
    )  # fmt: skip
    print(f"run folder: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
