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
import math
import os
import shutil
import sys
import time
from pathlib import Path

import cluster
import mixing
import utils
from run_folder import (
    History,
    deferred_interrupt,
    export_best,
    plateaued,
    prepare_run,
    remove_checkpoint_temps,
    run_lock,
    save_checkpoint,
    sigterm_saves,
)
from tb_summaries import write_examples_audio, write_examples_summary
from train_settings import RunDirs, TrainParams
from trainer import STRATEGIES, Trainer, is_chief, make_strategy, seed_everything
from training_data import crop_frames, make_dataset, n_batches, open_cache
from validation import Validator

log = utils.get_logger("train")


def _format_epoch(epoch: int, epochs: int, train_loss: float, val: dict | None, seconds: float, rate: float):
    text = f"epoch {epoch}/{epochs}  train loss {train_loss:.4f}"
    if val:
        text += (
            f"  val loss {val['loss']:.4f}  SI-SDR {val['si_sdr']:.2f} (noisy {val['si_sdr_noisy']:.2f})"
            f"  SDR {val['sdr']:.2f} (noisy {val['sdr_noisy']:.2f})  SNRi {val['snri']:.2f} dB"
        )
    return text + f"  {seconds:.1f} s  {rate:.1f} clips/s"


class Run:
    """One training run: the trainer plus its data, validation, summaries, checkpoints and history."""

    def __init__(self, cfg, params: TrainParams, dirs: RunDirs, strategy, restoring: bool, progress: bool):
        tf = utils.import_tensorflow()
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
        remove_checkpoint_temps(self.ckpt_dir)  # of a run killed while saving
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
            else utils.import_tensorflow().train.latest_checkpoint(str(self.dirs.checkpoints))
        )
        self.trainer.checkpoint.restore(path).assert_existing_objects_matched()
        log.info(
            f"resumed {path}: epoch {self.value('epoch') + 1}, "
            f"batch {self.value('batch')}, step {self.value('step')}"
        )

    def save(self) -> str:
        with deferred_interrupt():
            return save_checkpoint(self.manager, self.ckpt_dir, self.value("step"))

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
            export_best(t, self.cfg, self.dirs, epoch + 1, {}, [])
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
        with deferred_interrupt():
            t.epoch.assign_add(1)
            t.batch.assign(0)
            t.epoch_loss_sum.assign(0.0)
            t.epoch_loss_count.assign(0)
            save_checkpoint(self.manager, self.ckpt_dir, self.value("step"))

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
            export_best(self.trainer, self.cfg, self.dirs, epoch, val, self.validator)
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
    cfg = utils.copy_config(cfg)
    utils.set_value(cfg, "train", "run_name", dirs.checkpoints.name)  # the saved config names its run
    # Multi-worker: the chief alone checks, clears and locks the (shared) run folder; the others
    # restore whatever checkpoint the chief restores.
    chief = strategy != "multiworker" or cluster.is_chief_task()
    if chief:
        restoring = prepare_run(cfg, dirs, resume, overwrite)
    else:
        tf = utils.import_tensorflow()
        restoring = resume and tf.train.latest_checkpoint(str(dirs.checkpoints)) is not None
    with run_lock(dirs.checkpoints) if chief else contextlib.nullcontext(), sigterm_saves():
        seed_everything(params.seed, params.deterministic)
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
