"""train.py: data order, loss, the step (skips, clipping, replicas), checkpoints, resume, TensorBoard."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import CORPUS, ROOT, SR, noise_like, requires_corpus, speech_like, write_config, write_split

import augment
import manifests
import mixing
import run_folder
import spectral
import STFT
import stft_cache
import train
import train_settings
import training_data
import utils
import validation
from train_settings import RunDirs, TrainParams
from trainer import Trainer, make_strategy, seed_everything

TRAIN_SECONDS = (1.2, 1.6, 0.7, 2.0, 1.4, 1.0)  # 0.7 s is shorter than the 1 s crop: padded
TEST_SECONDS = (1.5, 1.0, 2.0)
FAST = {
    "epochs": 1,
    "batch_size": 2,
    "crop_seconds": 1.0,
    "learning_rate": 1e-3,
    "validation_files": 2,
    "audio_examples": 1,
    "checkpoint_steps": 2,
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Tiny mixtures and their STFT caches, shared by the tests of this module (read-only)."""
    root = tmp_path_factory.mktemp("train_data")
    write_split(root / "data", "training", TRAIN_SECONDS, 0)
    write_split(root / "data", "testing", TEST_SECONDS, 500)
    cfg = utils.load_config(write_config(root))
    for split in manifests.SPLITS:
        STFT.build_cache(cfg, split)
    return root


def make_cfg(tmp_path: Path, data_root: Path, **train_values):
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = {"data_dir": str(data_root / "data"), "stft_dir": str(data_root)}
    return utils.load_config(write_config(tmp_path, {"paths": paths, "train": {**FAST, **train_values}}))


def fixed_batch(cfg, n: int = 2):
    cache = stft_cache.load_cache(stft_cache.cache_dir(cfg, "training"))
    crop = training_data.crop_frames(cfg, TrainParams.from_config(cfg))
    return training_data.load_crops(cache, np.arange(n), np.zeros(n, np.int64), crop)


def make_trainer(cfg):
    import tensorflow as tf

    params = TrainParams.from_config(cfg)
    seed_everything(params.seed, deterministic=False)
    return Trainer(cfg, params, tf.distribute.get_strategy())


# ----------------------------------------------------------------------------- data order


def test_epoch_plan_is_a_function_of_seed_epoch_and_example():
    n_frames = np.array([300, 120, 90, 500, 200])
    order, starts = training_data.epoch_plan(n_frames, seed=7, epoch=3, crop=100)
    again = training_data.epoch_plan(n_frames, seed=7, epoch=3, crop=100)
    assert np.array_equal(order, again[0]) and np.array_equal(starts, again[1])
    assert sorted(order) == list(range(5))
    assert np.all(starts >= 0) and np.all(starts + 100 <= np.maximum(n_frames[order], 100))
    assert starts[list(order).index(2)] == 0  # 90 frames < crop: starts at 0, padded later
    others = [training_data.epoch_plan(n_frames, seed=7, epoch=e, crop=100) for e in range(6)]
    assert len({tuple(o) for o, _ in others}) > 1  # the order changes between epochs
    assert len({tuple(o) for o, _ in [training_data.epoch_plan(n_frames, s, 0, 100) for s in range(6)]}) > 1


def test_load_crops_slices_the_cache_and_pads_short_examples(data_root, tmp_path):
    cfg = make_cfg(tmp_path, data_root)
    cache = stft_cache.load_cache(stft_cache.cache_dir(cfg, "training"))
    crop = training_data.crop_frames(cfg, TrainParams.from_config(cfg))
    assert crop == 100
    short = int(np.argmin(cache.n_frames))
    assert cache.n_frames[short] < crop
    noisy, clean, valid = training_data.load_crops(cache, np.array([3, short]), np.array([17, 0]), crop)
    n3, c3 = cache.example(3)
    assert np.array_equal(noisy[0], n3[17 : 17 + crop]) and np.array_equal(clean[0], c3[17 : 17 + crop])
    t = cache.n_frames[short]
    assert valid[0].all() and valid[1, :t].all() and not valid[1, t:].any()
    assert not noisy[1, t:].any() and not clean[1, t:].any()


def test_dataset_skip_resumes_the_same_batches(data_root, tmp_path):
    cfg = make_cfg(tmp_path, data_root)
    cache = stft_cache.load_cache(stft_cache.cache_dir(cfg, "training"))
    full = [b[0].numpy() for b in training_data.make_dataset(cache, 5, 1, 100, 2)]
    tail = [b[0].numpy() for b in training_data.make_dataset(cache, 5, 1, 100, 2, skip_batches=1)]
    assert len(full) == 3 and len(tail) == 2
    assert all(np.array_equal(a, b) for a, b in zip(full[1:], tail))
    other_epoch = [b[0].numpy() for b in training_data.make_dataset(cache, 5, 2, 100, 2)]
    assert not all(np.array_equal(a, b) for a, b in zip(full, other_epoch))


# ----------------------------------------------------------------------------- loss and step


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(data_root, tmp_path):
    cfg = make_cfg(tmp_path, data_root, learning_rate=3e-3)
    trainer = make_trainer(cfg)
    batch = fixed_batch(cfg)
    losses = [trainer.train_step(batch)[0] for _ in range(12)]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


def test_gradients_are_clipped_to_clip_norm(data_root, tmp_path):
    cfg = make_cfg(tmp_path, data_root, clip_norm=1e-3)
    trainer = make_trainer(cfg)
    loss, norm, grads = trainer.gradients(fixed_batch(cfg))
    assert norm == pytest.approx(float(np.sqrt(sum(np.sum(g**2) for g in grads))), rel=1e-4)
    assert norm > 1e-3  # so clipping is active; the step still reports the unclipped norm
    loss2, norm2, applied = trainer.train_step(fixed_batch(cfg))
    assert applied and loss2 == pytest.approx(loss, rel=1e-5) and norm2 == pytest.approx(norm, rel=1e-4)


def test_non_finite_loss_skips_the_update(data_root, tmp_path):
    cfg = make_cfg(tmp_path, data_root)
    trainer = make_trainer(cfg)
    noisy, clean, valid = fixed_batch(cfg)
    noisy = noisy.copy()
    noisy[0, 5, 7] = np.nan
    before = trainer.weights()
    loss, _norm, applied = trainer.train_step((noisy, clean, valid))
    assert not np.isfinite(loss) and applied is False
    assert all(np.array_equal(a, b) for a, b in zip(before, trainer.weights()))
    assert int(trainer.optimizer.iterations.numpy()) == 0
    _, _, applied = trainer.train_step(fixed_batch(cfg))
    assert applied and int(trainer.optimizer.iterations.numpy()) == 1
    assert all(np.isfinite(w).all() for w in trainer.weights())


# ----------------------------------------------------------------------------- whole runs


def read_events(folder: Path) -> dict:
    """{tag: [(step, kind)]} of every event file under folder (tensorboard's event reader)."""
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    tags = {}
    for tag in acc.Tags()["tensors"]:
        tags[tag] = [(e.step, acc.SummaryMetadata(tag).plugin_data.plugin_name) for e in acc.Tensors(tag)]
    return tags


@pytest.mark.slow
def test_run_writes_checkpoints_best_model_tensorboard_and_examples(data_root, tmp_path):
    import model

    cfg = make_cfg(tmp_path, data_root, epochs=2)
    folder = train.train(cfg, "run", progress=False)
    assert folder == Path(cfg["paths"]["checkpoint_dir"]) / "run"
    assert (folder / "config.ini").is_file() and (folder / "checkpoint").is_file()
    saved = utils.load_config(folder / "config.ini")
    assert saved["train"]["epochs"] == "2" and saved["train"]["run_name"] == "run"  # the run it made
    history = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and history[-1]["step"] == 6

    # best/ loads and computes what the trained weights compute
    metrics_json = json.loads((folder / "best" / "metrics.json").read_text())
    assert metrics_json["epoch"] in (1, 2)
    assert {"si_sdr", "sdr", "snri", "si_sdr_noisy", "loss"} <= set(metrics_json["validation"])
    best, best_cfg = model.load_trained(folder / "best")
    assert best_cfg["model"]["lstm_units"] == "32"
    feats = np.random.default_rng(0).standard_normal((1, 20, 257, 4)).astype(np.float32)
    assert np.isfinite(np.asarray(best(feats))).all()
    assert metrics_json["validation_manifest_indices"] == [0, 1]  # validation_files=2 of the test split
    # ... and by identity, so evaluate.py never takes the first files of another test set for them
    manifest = Path(cfg["paths"]["data_dir"]) / "manifest_testing.csv"
    with open(manifest, newline="") as f:
        first = [r["noisy"] for r in csv.DictReader(f)][:2]
    identity = metrics_json["validation_files"]
    assert identity["noisy"] == first and identity["manifest_sha256"] == utils.file_sha256(manifest)

    # evaluate.py scores best/ and reports the test scores without the validation files too
    import evaluate

    summary = evaluate.evaluate(cfg, folder / "best", tmp_path / "eval", limit=3, workers=1, oracles=False,
                                progress=False)  # fmt: skip
    assert summary["results"]["model"]["si_sdr"]["n"] == 3
    held = summary["excluding_validation_files"]
    assert held["n_excluded"] == 2 and held["n_files"] == 1
    assert held["results"]["model"]["si_sdr"]["n"] == 1
    # ... through the same scoring (metrics.score on the istft of the model's spectrum): its scores of
    # the two validation files average to what validation recorded for best/'s weights
    with open(tmp_path / "eval" / "results.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["index"] in ("0", "1")]
    for system, suffix in (("model", ""), ("noisy", "_noisy")):
        for key in ("sdr", "si_sdr", "snr"):
            mean = np.mean([float(r[key]) for r in rows if r["system"] == system])
            assert mean == pytest.approx(metrics_json["validation"][key + suffix], abs=1e-3), (system, key)
    snri = np.mean([float(r["snri"]) for r in rows if r["system"] == "model"])
    assert snri == pytest.approx(metrics_json["validation"]["snri"], abs=1e-3)

    # TensorBoard: step scalars, epoch scalars (train and validation), audio and images
    tr = read_events(Path(cfg["paths"]["log_dir"]) / "run" / "train")
    assert {"batch/loss", "batch/learning_rate", "batch/grad_norm", "epoch/loss"} <= set(tr)
    assert [s for s, _ in tr["batch/loss"]] == list(range(1, 7))
    va = read_events(Path(cfg["paths"]["log_dir"]) / "run" / "validation")
    for key in ("loss", "sdr", "si_sdr", "snri", "sdr_noisy", "si_sdr_noisy", "snr_noisy"):
        assert [s for s, _ in va[f"epoch/{key}"]] == [1, 2]
    for name in ("noisy", "enhanced", "clean"):
        assert va[f"example_0/{name}"][0][1] == "audio"
    for name in ("spectrogram_noisy", "spectrogram_enhanced", "spectrogram_clean", "mask_real", "mask_imag"):
        assert va[f"example_0/{name}"][0][1] == "images"

    # listening copies of the fixed validation example, one folder per validation epoch
    wavs = sorted(p.name for p in (Path(cfg["paths"]["enhanced_dir"]) / "run" / "epoch_2").glob("*.wav"))
    assert len(wavs) == 3 and [w.rsplit("_", 1)[1] for w in wavs] == [
        "clean.wav",
        "enhanced.wav",
        "noisy.wav",
    ]

    # an existing run is refused without --resume / --overwrite, with a one-line hint
    with pytest.raises(utils.PipelineError, match="--resume.*--run-name.*--overwrite"):
        train.train(cfg, "run", progress=False)


@pytest.mark.slow
def test_resume_after_interrupt_gives_the_weights_of_an_uninterrupted_run(data_root, tmp_path, monkeypatch):
    import model

    cfg = make_cfg(tmp_path / "a", data_root, epochs=2, checkpoint_steps=100)
    straight = model.load_trained(train.train(cfg, "run", progress=False) / "best")[0]
    ckpt_a = Path(cfg["paths"]["checkpoint_dir"]) / "run"

    # run b: 1 epoch, then resume to 2 epochs, interrupted (Ctrl-C) in the middle of epoch 2
    cfg_b = make_cfg(tmp_path / "b", data_root, epochs=1, checkpoint_steps=100)
    train.train(cfg_b, "run", progress=False)
    original = Trainer.train_step
    calls = {"n": 0}

    def interrupt_after_one(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", interrupt_after_one)
    overrides = ["train.epochs=2"]
    cfg_b2 = utils.load_config(tmp_path / "b" / "config.ini", overrides)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg_b2, "run", resume=True, progress=False)
    monkeypatch.setattr(Trainer, "train_step", original)
    resumed = model.load_trained(train.train(cfg_b2, "run", resume=True, progress=False) / "best")[0]

    weights = {}
    for name, cfg_x in (("a", cfg), ("b", cfg_b2)):
        trainer = make_trainer(cfg_x)
        folder = Path(cfg_x["paths"]["checkpoint_dir"]) / "run"
        trainer.checkpoint.restore(
            str(Path(utils.import_tensorflow().train.latest_checkpoint(str(folder))))
        ).expect_partial()
        assert int(trainer.step.numpy()) == 6 and int(trainer.epoch.numpy()) == 2
        weights[name] = trainer.weights()
    for wa, wb in zip(weights["a"], weights["b"]):
        np.testing.assert_allclose(wa, wb, atol=1e-5)
    assert ckpt_a.is_dir()
    # the best model (chosen by validation) is the same too
    assert_same_weights(straight.get_weights(), resumed.get_weights())
    # TensorBoard continuity: the resumed runs continue the step count in the same folder
    steps = [s for s, _ in read_events(Path(cfg_b2["paths"]["log_dir"]) / "run" / "train")["batch/loss"]]
    assert sorted(set(steps)) == list(range(1, 7))


def latest_weights(cfg, run: str = "run") -> list[np.ndarray]:
    """Weights of the run's latest checkpoint (after checking it finished both epochs)."""
    trainer = make_trainer(cfg)
    folder = Path(cfg["paths"]["checkpoint_dir"]) / run
    trainer.checkpoint.restore(
        utils.import_tensorflow().train.latest_checkpoint(str(folder))
    ).expect_partial()
    assert int(trainer.step.numpy()) == 6 and int(trainer.epoch.numpy()) == 2
    return trainer.weights()


@pytest.fixture(scope="module")
def straight_weights(data_root, tmp_path_factory) -> list[np.ndarray]:
    """Final weights of an uninterrupted 2-epoch run (3 batches per epoch)."""
    cfg = make_cfg(tmp_path_factory.mktemp("straight"), data_root, epochs=2, checkpoint_steps=100)
    train.train(cfg, "run", progress=False)
    return latest_weights(cfg)


def assert_same_weights(a, b):
    assert len(a) == len(b)
    for wa, wb in zip(a, b):
        np.testing.assert_allclose(wa, wb, atol=1e-5)


def interrupt_after_step(monkeypatch, n: int, error: BaseException):
    """Makes the n-th training step raise `error` right AFTER its update ran (the worst moment)."""
    original, calls = Trainer.train_step, {"n": 0}

    def step_then_raise(self, batch):
        calls["n"] += 1
        out = original(self, batch)
        if calls["n"] == n:
            raise error
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_raise)
    return lambda: monkeypatch.setattr(Trainer, "train_step", original)


@pytest.mark.slow
def test_ctrl_c_right_after_an_update_resumes_exactly(data_root, tmp_path, monkeypatch, straight_weights):
    """KeyboardInterrupt after the step's update ran but before the loop saw its result: the saved
    checkpoint must count that batch, so --resume does not apply it twice."""
    cfg = make_cfg(tmp_path, data_root, epochs=2, checkpoint_steps=100)
    restore = interrupt_after_step(monkeypatch, 2, KeyboardInterrupt())  # Ctrl-C just after the graph call
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg, "run", progress=False)
    restore()
    train.train(cfg, "run", resume=True, progress=False)
    assert_same_weights(latest_weights(cfg), straight_weights)


@pytest.mark.slow
def test_sigterm_saves_like_ctrl_c_and_resumes_exactly(data_root, tmp_path, monkeypatch, straight_weights):
    """kill (SIGTERM, as a scheduler or a container stop sends it) mid-run: a checkpoint is saved and
    --resume finishes with the weights of an uninterrupted run; the handler is gone afterwards."""
    import os
    import signal

    cfg = make_cfg(tmp_path, data_root, epochs=2, checkpoint_steps=100)
    original, calls = Trainer.train_step, {"n": 0}

    def step_then_term(self, batch):
        calls["n"] += 1
        out = original(self, batch)
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_term)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg, "run", progress=False)
    monkeypatch.setattr(Trainer, "train_step", original)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    folder = Path(cfg["paths"]["checkpoint_dir"]) / "run"
    assert (
        utils.import_tensorflow().train.latest_checkpoint(str(folder)).endswith("ckpt-4")
    )  # saved at the signal
    train.train(cfg, "run", resume=True, progress=False)
    assert_same_weights(latest_weights(cfg), straight_weights)


@pytest.mark.slow
def test_crash_without_the_ctrl_c_save_resumes_from_the_last_step_checkpoint(
    data_root, tmp_path, monkeypatch, straight_weights
):
    """kill -9 semantics: a RuntimeError skips the Ctrl-C save; checkpoint_steps=1 left one per step."""
    cfg = make_cfg(tmp_path, data_root, epochs=2, checkpoint_steps=1)
    restore = interrupt_after_step(monkeypatch, 5, RuntimeError("killed"))  # epoch 2, batch 2; never saved
    with pytest.raises(RuntimeError, match="killed"):
        train.train(cfg, "run", progress=False)
    folder = Path(cfg["paths"]["checkpoint_dir"]) / "run"
    assert Path(utils.import_tensorflow().train.latest_checkpoint(str(folder))).name == "ckpt-4"
    restore()
    train.train(cfg, "run", resume=True, progress=False)
    assert_same_weights(latest_weights(cfg), straight_weights)


def fake_run_folder(cfg, run: str = "run") -> Path:
    """A run folder with a (tiny) checkpoint and cfg saved as its config.ini, as train.py leaves it."""
    tf = utils.import_tensorflow()
    folder = Path(cfg["paths"]["checkpoint_dir"]) / run
    folder.mkdir(parents=True)
    tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1)), str(folder), 1).save()
    utils.save_config(cfg, folder / "config.ini")
    return folder


def test_learning_rate_halves_every_lr_halving_steps(tmp_path):
    cfg = utils.load_config(utils.DEFAULT_CONFIG, ["train.learning_rate=1e-3"])
    assert training_data.learning_rate_schedule(TrainParams.from_config(cfg)) == pytest.approx(1e-3)
    cfg = utils.load_config(utils.DEFAULT_CONFIG, ["train.learning_rate=1e-3", "train.lr_halving_steps=100"])
    schedule = training_data.learning_rate_schedule(TrainParams.from_config(cfg))
    for step, expected in [(0, 1e-3), (100, 5e-4), (250, 1e-3 * 0.5**2.5)]:
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(utils.PipelineError, match="lr_halving_steps"):
        TrainParams.from_config(utils.load_config(utils.DEFAULT_CONFIG, ["train.lr_halving_steps=-1"]))


def test_every_train_key_is_either_fixed_or_resumable_and_defaults_match_config_ini():
    from dataclasses import fields

    names = [f.name for f in fields(TrainParams)]
    assert sorted(train_settings.FIXED_TRAIN_KEYS + train_settings.RESUMABLE_TRAIN_KEYS) == sorted(names)
    assert not set(train_settings.FIXED_TRAIN_KEYS) & set(train_settings.RESUMABLE_TRAIN_KEYS)
    # one default per key: TrainParams' defaults are config.ini's
    shipped = utils.load_config(utils.DEFAULT_CONFIG)
    assert TrainParams.from_config(shipped) == TrainParams()


@pytest.mark.slow
def test_resume_refuses_changed_loss_and_training_settings(data_root, tmp_path):
    cfg = make_cfg(tmp_path, data_root)
    folder = fake_run_folder(cfg)
    saved = (folder / "config.ini").read_bytes()
    refused = ["loss.lam=0.2", "model.lstm_units=16", "train.seed=7", "train.batch_size=3",
               "train.crop_seconds=0.5", "train.learning_rate=1e-4", "train.clip_norm=1",
               "train.validation_files=1", "train.lr_halving_steps=100"]  # fmt: skip
    for override in refused:
        changed = utils.load_config(tmp_path / "config.ini", [override])
        key = override.split("=")[0].split(".")[1]
        with pytest.raises(utils.PipelineError, match=rf"--resume with other settings.*{key}"):
            train.train(changed, "run", resume=True, progress=False)
        assert (folder / "config.ini").read_bytes() == saved  # the refused config was not written
    allowed = [
        "train.epochs=5",
        "train.validation_interval=2",
        "train.checkpoint_steps=7",
        "train.audio_examples=0",
        "train.learning_rate=1e-3",  # saved as 0.001: the same number
    ]
    dirs = RunDirs.from_config(cfg, "run")
    assert (
        run_folder.prepare_run(utils.load_config(tmp_path / "config.ini", allowed), dirs, True, False) is True
    )


@pytest.mark.slow
def test_non_finite_losses_in_a_row_stop_with_a_checkpoint(data_root, tmp_path, caplog):
    import shutil

    # a private copy of the caches whose training spectra are all NaN
    root = tmp_path / "nan_data"
    shutil.copytree(data_root / "Training_STFT", root / "Training_STFT")
    shutil.copytree(data_root / "Testing_STFT", root / "Testing_STFT")
    arr = np.load(root / "Training_STFT" / "noisy.npy", mmap_mode="r+")
    arr[:] = np.nan
    arr.flush()
    del arr
    paths = {"data_dir": str(data_root / "data"), "stft_dir": str(root)}
    cfg = utils.load_config(
        write_config(tmp_path, {"paths": paths, "train": {**FAST, "max_nonfinite_steps": 2, "epochs": 3}})
    )
    with pytest.raises(utils.PipelineError, match="2 non-finite losses in a row"):
        train.train(cfg, "nan", progress=False)
    assert any("update skipped" in r.message for r in caplog.records)
    trainer = make_trainer(cfg)
    folder = Path(cfg["paths"]["checkpoint_dir"]) / "nan"
    latest = utils.import_tensorflow().train.latest_checkpoint(str(folder))
    assert latest is not None
    trainer.checkpoint.restore(latest).expect_partial()
    assert int(trainer.step.numpy()) == 2 and int(trainer.optimizer.iterations.numpy()) == 0
    assert all(np.isfinite(w).all() for w in trainer.weights())


def test_validation_counts_a_failed_file_as_very_bad_not_as_missing(data_root, tmp_path):
    cfg = make_cfg(tmp_path, data_root, validation_files=3)
    params = TrainParams.from_config(cfg)
    validator = validation.Validator(cfg, params, stft_cache.load_cache(stft_cache.cache_dir(cfg, "testing")))

    class Silencer:  # a "model" that outputs silence for the first validation file only
        def enhance(self, noisy, clean):
            first = noisy.shape[1] == len(validator.examples[0].noisy_stft)  # the test clips' lengths differ
            S_hat = noisy * (0 if first else 1)
            return S_hat, np.zeros((*noisy.shape, 2), np.float32), np.zeros(len(noisy), np.float32)

    identity = validation.summarize_validation(
        [{"si_sdr": ex.noisy_scores["si_sdr"], "loss": 0.1} for ex in validator.examples]
    )
    val, _ = validator.run(Silencer())
    assert val["si_sdr_failed"] == 1 and val["sdr_failed"] == 1 and val["snr_failed"] == 0
    # the silenced file weighs in at FAILED_DB: silencing cannot beat passing the input through
    others = [ex.noisy_scores["si_sdr"] for ex in validator.examples[1:]]
    assert val["si_sdr"] == pytest.approx((validation.FAILED_DB + sum(others)) / 3, abs=0.1)
    assert val["si_sdr"] < identity["si_sdr"]
    rows = [{"si_sdr": 10.0, "loss": 1.0}, {"si_sdr": 10.0, "loss": np.nan}, {"si_sdr": np.nan, "loss": 3.0}]
    summary = validation.summarize_validation(rows)
    assert summary["si_sdr"] < validation.summarize_validation([{"si_sdr": 8.0, "loss": 1.0}] * 3)["si_sdr"]
    assert summary["loss"] == 2.0 and summary["si_sdr_failed"] == 1


# ----------------------------------------------------------------------------- replicas

REPLICA_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import stft_cache, train, training_data, utils
    from train_settings import TrainParams
    from trainer import Trainer, make_strategy, seed_everything
    cfg = utils.load_config(sys.argv[1])
    params = TrainParams.from_config(cfg)
    cache = stft_cache.load_cache(stft_cache.cache_dir(cfg, "training"))
    crop = training_data.crop_frames(cfg, params)
    batch = training_data.load_crops(cache, np.arange(4), np.array([0, 5, 0, 9]), crop)
    out = {}
    for name in ("default", "mirrored"):
        seed_everything(params.seed, deterministic=False)
        strategy = make_strategy(name)
        trainer = Trainer(cfg, params, strategy)
        ds = tf.data.Dataset.from_tensors(batch)
        if strategy.num_replicas_in_sync > 1:
            ds = strategy.experimental_distribute_dataset(ds)
        b = next(iter(ds))
        loss, norm, grads = trainer.gradients(b)
        losses = [trainer.train_step(b)[0] for _ in range(3)]
        out[name] = strategy.num_replicas_in_sync
        out[name + "_losses"] = np.array([loss, norm] + losses)
        for i, g in enumerate(grads):
            out[f"{name}_grad{i}"] = g
        for i, w in enumerate(trainer.weights()):
            out[f"{name}_weight{i}"] = w
        for i, v in enumerate(trainer.optimizer.variables):  # Adam's moments see the gradient scale
            out[f"{name}_opt{i}"] = np.array(v)
    np.savez(sys.argv[2], **out)
    # the whole loop under MirroredStrategy: distributed dataset, validation, checkpoints
    folder = train.train(cfg, "mirrored", strategy="mirrored", progress=False)
    print("history", (folder / "history.jsonl").read_text().strip())
    """
)


@pytest.mark.slow
def test_two_replicas_give_the_loss_and_gradients_of_one(data_root, tmp_path):
    cfg_path = write_config(
        tmp_path,
        {"paths": {"data_dir": str(data_root / "data"), "stft_dir": str(data_root)},
         "train": {**FAST, "batch_size": 4, "clip_norm": 0.05}},
    )  # fmt: skip
    out = tmp_path / "replicas.npz"
    result = subprocess.run(
        [sys.executable, "-c", REPLICA_SCRIPT, str(cfg_path), str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,  # -c: the current folder is on sys.path
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    r = np.load(out)
    assert int(r["default"]) == 1 and int(r["mirrored"]) == 2
    history = json.loads(result.stdout.split("history", 1)[1])
    assert history["step"] == 1 and history["clips"] == 4 and np.isfinite(history["validation"]["si_sdr"])
    np.testing.assert_allclose(r["mirrored_losses"], r["default_losses"], rtol=1e-5)
    grads = sorted(k for k in r.files if k.startswith("default_grad"))
    assert grads
    for k in grads:
        np.testing.assert_allclose(r[k.replace("default", "mirrored")], r[k], rtol=1e-4, atol=1e-7)
    for k in (k for k in r.files if k.startswith(("default_weight", "default_opt"))):
        np.testing.assert_allclose(r[k.replace("default", "mirrored")], r[k], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- real speech


def mix_real(corpus: Path, data: Path, split: str, n: int, seconds: float, seed: int) -> None:
    """Mixtures of real speech and noise segments at -5..5 dB, in data_prep's layout."""
    rng = np.random.default_rng(seed)
    sub = "train" if split == "training" else "test"
    cleans = [utils.read_audio(p, SR)[0] for p in sorted((corpus / f"clean_{sub}").glob("*.flac"))]
    noises = [utils.read_audio(p, SR)[0] for p in sorted((corpus / f"noise_{sub}").glob("*.flac"))]
    length = int(seconds * SR)
    rows = []
    for k in range(n):
        c, z = cleans[k % len(cleans)], noises[rng.integers(len(noises))]
        a, b = rng.integers(max(1, len(c) - length)), rng.integers(max(1, len(z) - length))
        clean, noise = np.resize(c[a : a + length], length), np.resize(z[b : b + length], length)
        snr = float(rng.uniform(-5, 5))
        noise = noise * np.sqrt(np.sum(clean**2) / (np.sum(noise**2) + 1e-12) / 10 ** (snr / 10))
        gain = 0.9 / max(1.0, np.abs(clean + noise).max())
        clean, noise = (clean * gain).astype(np.float32), (noise * gain).astype(np.float32)
        names = {"clean": f"c/{split}_{k}.wav", "noise": f"z/{split}_{k}.wav", "noisy": f"n/{split}_{k}.wav"}
        for key, sig in (("clean", clean), ("noise", noise), ("noisy", clean + noise)):
            (data / names[key]).parent.mkdir(parents=True, exist_ok=True)
            sf.write(data / names[key], sig, SR, subtype="FLOAT")
        rows.append({"index": k, **names, "snr_db": snr})
    with open(data / f"manifest_{split}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def prepare_real(corpus: Path, data: Path, n_train: int, n_test: int) -> None:
    """Mixtures of real speech and noise at -5..5 dB with data/data_prep.py (own mixing without it)."""
    if not (ROOT / "data" / "data_prep.py").is_file():
        mix_real(corpus, data, "training", n_train, 2.0, 0)
        mix_real(corpus, data, "testing", n_test, 2.0, 1)
        return
    from data import data_prep

    sets = {"clean_train_path": corpus / "clean_train", "noise_train_path": corpus / "noise_train",
            "clean_test_path": corpus / "clean_test", "noise_test_path": corpus / "noise_test",
            "output_path": data, "file_length": 2, "total_training_files": n_train,
            "total_testing_files": n_test, "SNR_lower": -5, "SNR_upper": 5, "total_snrlevels": 5}  # fmt: skip
    data_prep.main([arg for k, v in sets.items() for arg in ("--set", f"data.{k}={v}")] + ["--workers", "1"])


@pytest.mark.slow
@pytest.mark.corpus
@requires_corpus
def test_short_training_on_real_speech_beats_the_noisy_input(tmp_path):
    """About a minute: 240 mixtures of held-out-speaker-free training speech, a small causal model."""
    prepare_real(CORPUS, tmp_path / "data", 240, 16)
    cfg = utils.load_config(
        write_config(
            tmp_path,
            {"model": {"projection_units": 64, "lstm_units": 64, "lstm_layers": 1, "dense_units": 64},
             "train": {"epochs": 6, "batch_size": 8, "learning_rate": 2e-3, "crop_seconds": 2.0,
                       "validation_files": 16, "validation_interval": 2, "audio_examples": 1}},
        )
    )  # fmt: skip
    for split in manifests.SPLITS:
        STFT.build_cache(cfg, split)
    folder = train.train(cfg, "real", progress=False)
    history = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    val = json.loads((folder / "best" / "metrics.json").read_text())["validation"]
    assert val["si_sdr"] - val["si_sdr_noisy"] >= 2.0, history


# ----------------------------------------------------------------------------- on-the-fly mixing


@pytest.fixture
def mix_sources(tmp_path) -> dict:
    """Clean and noise folders for on-the-fly mixing: usable files plus a too-short, a silent and an
    unreadable clean file (skipped) and a noise shorter than the crop (looped)."""
    clean, noise = tmp_path / "src" / "clean", tmp_path / "src" / "noise"
    for folder in (clean, noise):
        folder.mkdir(parents=True)
    for i in range(3):
        sf.write(clean / f"speech_{i}.wav", speech_like(2.5, 900 + i), SR, subtype="FLOAT")
    sf.write(clean / "short.wav", speech_like(0.5, 950), SR, subtype="FLOAT")
    sf.write(clean / "silent.wav", np.zeros(SR * 2, np.float32), SR, subtype="FLOAT")
    (clean / "broken.wav").write_bytes(b"not audio")
    sf.write(noise / "long.wav", noise_like(3.0, 960), SR, subtype="FLOAT")
    sf.write(noise / "short.flac", noise_like(0.6, 961), SR)
    return {"clean_train_path": str(clean), "noise_train_path": str(noise)}


def otf_cfg(tmp_path: Path, data_root: Path, sources: dict, **train_values):
    """make_cfg with on-the-fly mixing from `sources` (a [data] section in the file: the --set route)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = {"data_dir": str(data_root / "data"), "stft_dir": str(data_root)}
    train_values = {**FAST, "on_the_fly": "true", **train_values}
    return utils.load_config(write_config(tmp_path, {"paths": paths, "train": train_values, "data": sources}))


def make_mixer(cfg) -> mixing.OnTheFlyMixer:
    params = TrainParams.from_config(cfg)
    return mixing.OnTheFlyMixer.from_config(cfg, params, training_data.crop_frames(cfg, params))


def snr_db(speech: np.ndarray, noise: np.ndarray) -> float:
    s, n = speech.astype(np.float64), noise.astype(np.float64)
    return float(10 * np.log10(np.sum(s * s) / np.sum(n * n)))


def test_on_the_fly_settings_are_parsed_and_checked(tmp_path):
    cfg = utils.load_config(write_config(tmp_path), ["train.on_the_fly=yes", "train.augment= reverb, EQ "])
    p = TrainParams.from_config(cfg)
    assert p.on_the_fly is True and p.augment == "eq,reverb" and p.augmentations == ("eq", "reverb")
    assert TrainParams.from_config(utils.load_config(write_config(tmp_path))).on_the_fly is False
    for bad, match in (("train.on_the_fly=maybe", "true or false"), ("train.augment=eq,echo", "unknown echo"),
                       ("train.level_db_min=9", "level_db_min <= level_db_max"),
                       ("train.examples_per_epoch=-1", ">= 0")):  # fmt: skip
        with pytest.raises(utils.PipelineError, match=match):
            TrainParams.from_config(utils.load_config(write_config(tmp_path), [bad]))
    # sources and SNR range: data/config.ini (or [train] data_config), then --set data.KEY=VALUE
    data_cfg = tmp_path / "mydata.ini"
    data_cfg.write_text("[data]\nclean_train_path = c\nnoise_train_path = n\nSNR_lower = -2\nSNR_upper = 4\n")
    cfg = utils.load_config(write_config(tmp_path), ["train.data_config=mydata.ini", "data.SNR_upper=9"])
    d = mixing.data_settings(cfg)
    assert d["clean_train_path"] == str(tmp_path / "c") and d["SNR_lower"] == "-2" and d["SNR_upper"] == "9"


def test_mixer_skips_bad_sources_and_hits_the_drawn_snr(data_root, tmp_path, mix_sources):
    mixer = make_mixer(otf_cfg(tmp_path, data_root, mix_sources))
    assert len(mixer.clean) == 3 and len(mixer.noise) == 2  # short, silent and broken clean files skipped
    assert mixer.n_samples == 100 * 160 and mixer.snr_range == (-5.0, 15.0)  # data/config.ini's range
    examples = [mixer.example(0, i) for i in range(12)]
    for ex in examples:
        assert ex.noisy.dtype == np.float32 and len(ex.noisy) == mixer.n_samples
        assert -5 <= ex.snr_db <= 15 and ex.level_db <= 6 + 1e-9
        assert snr_db(ex.clean, ex.noise) == pytest.approx(ex.snr_db, abs=0.01)  # the level gain keeps it
        np.testing.assert_allclose(ex.noisy, ex.clean + ex.noise, atol=1e-6)
        assert np.abs(ex.noisy).max() <= 0.99 + 1e-6
    assert len({round(ex.snr_db, 6) for ex in examples}) == 12  # continuous, not data_prep's 5 levels
    assert max(ex.level_db for ex in examples) - min(ex.level_db for ex in examples) > 3
    # the STFT the step consumes is the crop's own (its first `crop` frames)
    noisy, clean = mixer.spectra(0, 3)
    assert noisy.shape == (100, 257) and np.array_equal(clean, spectral.stft(mixer.example(0, 3).clean)[:100])


def test_augmentations_keep_the_snr_and_change_no_other_draw(data_root, tmp_path, mix_sources):
    dry = make_mixer(otf_cfg(tmp_path / "dry", data_root, mix_sources))
    wet = make_mixer(otf_cfg(tmp_path / "wet", data_root, mix_sources, augment="eq,reverb"))
    reverberant = 0
    for i in range(16):
        a, b = dry.example(2, i), wet.example(2, i)
        assert a.snr_db == b.snr_db
        speech = b.noisy.astype(np.float64) - b.noise  # what the noise was scaled against
        assert snr_db(speech, b.noise) == pytest.approx(b.snr_db, abs=0.01)
        reverberant += not np.allclose(speech, b.clean, atol=1e-5)  # target = early part of the room
    assert 2 <= reverberant <= 14  # AUGMENT_PROBABILITY = 0.5 of 16 examples


def test_shelving_eq_and_synthetic_room():
    from scipy import signal

    for kind, probe in (("low", 0), ("high", -1)):
        _, h = signal.sosfreqz(augment.shelf_sos(kind, 500.0 if kind == "low" else 3000.0, -5.0, SR), 512)
        assert 20 * np.log10(abs(h[probe])) == pytest.approx(-5.0, abs=0.05)
        assert 20 * np.log10(abs(h[-1 - probe])) == pytest.approx(0.0, abs=0.3)  # the other end untouched
    h = augment.room_impulse_response(np.random.default_rng(3), SR)
    rt60 = len(h) / SR
    assert h[0] == 1.0 and augment.RT60_S[0] <= rt60 <= augment.RT60_S[1]
    drr = 10 * np.log10(1.0 / np.sum(h[1:] ** 2))
    assert augment.DRR_DB[0] - 1e-9 <= drr <= augment.DRR_DB[1] + 1e-9
    win = int(0.02 * SR)
    e1, e2 = (np.sum(h[int(f * len(h)) : int(f * len(h)) + win] ** 2) for f in (0.2, 0.7))
    assert 10 * np.log10(e1 / e2) == pytest.approx(30.0, abs=5.0)  # 60 dB per RT60
    x = speech_like(1.0, 5)
    wet, early = augment.reverberate(x, h, SR)
    np.testing.assert_allclose(early, signal.fftconvolve(x, h[: int(0.05 * SR) + 1])[: len(x)], atol=1e-9)
    assert len(wet) == len(x) and not np.allclose(wet, early)


def test_mix_dataset_is_deterministic_whatever_the_parallelism(data_root, tmp_path, mix_sources):
    mixer = make_mixer(otf_cfg(tmp_path, data_root, mix_sources, augment="eq,reverb"))

    def batches(epoch, parallel, skip=0, drop=False):
        ds = mixing.make_mix_dataset(mixer, epoch, 7, 2, skip, drop_remainder=drop, parallel=parallel)
        return [tuple(t.numpy() for t in b) for b in ds]

    one, four = batches(1, 1), batches(1, 4)
    assert [b[0].shape for b in one] == [(2, 100, 257)] * 3 + [(1, 100, 257)]
    for a, b in zip(one, four, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
        assert a[2].all()
    # batch b holds examples 2b, 2b + 1 (computed alone, in any order), so skipping batches resumes
    assert np.array_equal(one[1][1][1], mixer.spectra(1, 3)[1])
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(one[2:], batches(1, 2, skip=2), strict=True))
    assert len(batches(1, 2, drop=True)) == 3
    assert not np.array_equal(one[0][0], batches(2, 1)[0][0])  # another epoch, other mixtures


@pytest.mark.slow
def test_on_the_fly_training_runs_end_to_end_without_the_training_cache(data_root, tmp_path, mix_sources):
    import shutil

    stft = tmp_path / "stft"  # only the test split's cache: examples_per_epoch replaces its count
    shutil.copytree(data_root / "Testing_STFT", stft / "Testing_STFT")
    cfg = otf_cfg(tmp_path, data_root, mix_sources, epochs=2, examples_per_epoch=4, augment="eq,reverb")
    cfg.set("paths", "stft_dir", str(stft))
    folder = train.train(cfg, "otf", progress=False)
    history = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 4] and all(h["clips"] == 4 for h in history)
    assert np.isfinite(history[-1]["validation"]["si_sdr"]) and (folder / "best" / "metrics.json").is_file()
    saved = utils.load_config(folder / "config.ini")  # names the sources and SNR range it used
    assert saved["data"]["noise_train_path"] == mix_sources["noise_train_path"]
    assert saved["data"]["SNR_lower"] == "-5" and Path(saved["train"]["data_config"]).is_absolute()
    for override in ("train.on_the_fly=false", "train.examples_per_epoch=0"):  # these read its size
        other = utils.load_config(cfg.source, [override, f"paths.stft_dir={stft}"])
        with pytest.raises(utils.PipelineError, match="Training_STFT: not a readable STFT cache"):
            train.train(other, override.split("=")[0].split(".")[1], progress=False)


@pytest.mark.slow
def test_on_the_fly_resume_after_a_crash_is_exact(data_root, tmp_path, mix_sources, monkeypatch):
    """The crash test above, on the fly: 2 epochs of 3 batches, killed after step 5, resumed."""
    run = {"epochs": 2, "examples_per_epoch": 6, "augment": "eq,reverb"}
    cfg_a = otf_cfg(tmp_path / "a", data_root, mix_sources, **run, checkpoint_steps=100)
    train.train(cfg_a, "run", progress=False)
    cfg_b = otf_cfg(tmp_path / "b", data_root, mix_sources, **run, checkpoint_steps=1)
    restore = interrupt_after_step(monkeypatch, 5, RuntimeError("killed"))
    with pytest.raises(RuntimeError, match="killed"):
        train.train(cfg_b, "run", progress=False)
    restore()
    train.train(cfg_b, "run", resume=True, progress=False)
    assert_same_weights(latest_weights(cfg_b), latest_weights(cfg_a))


@pytest.mark.slow
def test_resume_refuses_changed_on_the_fly_settings(data_root, tmp_path, mix_sources):
    cfg = otf_cfg(tmp_path, data_root, mix_sources)
    fake_run_folder(mixing.with_data_settings(cfg))
    other = tmp_path / "other_noise"
    other.mkdir()
    refused = ["train.on_the_fly=false", "train.augment=eq", "train.examples_per_epoch=8",
               "train.level_db_max=0", f"data.noise_train_path={other}", "data.SNR_lower=0"]  # fmt: skip
    for override in refused:
        changed = utils.load_config(tmp_path / "config.ini", [override])
        key = override.split("=")[0].split(".")[1]
        with pytest.raises(utils.PipelineError, match=rf"--resume with other settings.*{key}"):
            train.train(changed, "run", resume=True, progress=False)
    dirs = RunDirs.from_config(cfg, "run")
    allowed = utils.load_config(tmp_path / "config.ini", ["train.epochs=4", "data.SNR_upper=15.0"])
    assert run_folder.prepare_run(allowed, dirs, True, False) is True


# ----------------------------------------------------------------------------- recipe options


def test_noise_augmentations_keep_the_snr_and_change_no_other_draw(data_root, tmp_path, mix_sources):
    base = make_mixer(otf_cfg(tmp_path / "base", data_root, mix_sources))
    aug = make_mixer(
        otf_cfg(tmp_path / "aug", data_root, mix_sources, augment="noise2,tilt,modulate,transient")
    )
    changed = 0
    for i in range(16):
        a, b = base.example(1, i), aug.example(1, i)
        assert a.snr_db == b.snr_db and np.isfinite(b.noisy).all()
        assert snr_db(b.clean, b.noise) == pytest.approx(b.snr_db, abs=0.01)  # SNR counts the whole noise
        # the speech draw is untouched: the target is the same speech up to the mixing gains
        assert abs(np.corrcoef(a.clean, b.clean)[0, 1]) > 0.999
        changed += not np.allclose(
            a.noise / (np.std(a.noise) + 1e-12), b.noise / (np.std(b.noise) + 1e-12), atol=1e-3
        )
    assert changed >= 12  # four augmentations at 0.5 each: all four skipped in about 1 of 16


def test_spectral_tilt_level_modulation_and_transients():
    rng_apply = next(s for s in range(100) if np.random.default_rng(s).random() < augment.AUGMENT_PROBABILITY)
    x = np.random.default_rng(0).standard_normal(SR).astype(np.float32)
    y = augment.spectral_tilt(x, np.random.default_rng(rng_apply), SR)
    slope = np.random.default_rng(rng_apply)
    slope.random()
    slope = slope.uniform(-augment.TILT_DB_PER_OCTAVE, augment.TILT_DB_PER_OCTAVE)
    f = np.fft.rfftfreq(SR, 1 / SR)
    ratio = np.abs(np.fft.rfft(y)) / np.abs(np.fft.rfft(x))
    assert 20 * np.log10(ratio[f == 4000][0] / ratio[f == 1000][0]) == pytest.approx(2 * slope, abs=0.01)
    m = augment.level_modulation(x, np.random.default_rng(rng_apply), SR)
    gain_db = 20 * np.log10(np.abs(m) / np.maximum(np.abs(x), 1e-12) + 1e-12)
    assert len(m) == len(x) and np.ptp(gain_db[np.abs(x) > 1e-3]) > 3  # the level moves by dB, slowly
    assert np.max(np.abs(np.diff(gain_db[np.abs(x) > 0.1]))) < 0.5
    quiet = 0.01 * x
    t = augment.add_transients(quiet, lambda r: x, np.random.default_rng(rng_apply), SR)
    assert len(t) == len(quiet) and np.max(np.abs(t)) > 5 * np.max(np.abs(quiet))  # bursts above the floor
    never = next(s for s in range(100) if np.random.default_rng(s).random() >= augment.AUGMENT_PROBABILITY)
    for fn in (augment.spectral_tilt, augment.level_modulation):
        assert fn(x, np.random.default_rng(never), SR) is x


def test_warm_up_and_cosine_decay(tmp_path):
    sets = ["train.learning_rate=1e-3", "train.warmup_steps=100", "train.cosine_steps=1000"]
    schedule = training_data.learning_rate_schedule(
        TrainParams.from_config(utils.load_config(utils.DEFAULT_CONFIG, sets))
    )
    lr = {s: float(schedule(s)) for s in (0, 50, 100, 600, 1100, 5000)}
    assert lr[0] == pytest.approx(0) and lr[50] == pytest.approx(5e-4) and lr[100] == pytest.approx(1e-3)
    floor = training_data.COSINE_FLOOR * 1e-3
    assert lr[600] == pytest.approx(floor + (1e-3 - floor) * 0.5, rel=1e-4)  # half way down the cosine
    assert lr[1100] == pytest.approx(floor, rel=1e-4) and lr[5000] == pytest.approx(floor, rel=1e-4)
    with pytest.raises(utils.PipelineError, match="choose one decay"):
        TrainParams.from_config(
            utils.load_config(utils.DEFAULT_CONFIG, ["train.lr_halving_steps=10", "train.cosine_steps=10"])
        )


@pytest.mark.slow
def test_init_weights_start_a_new_run_from_saved_weights(data_root, tmp_path):
    import model as model_lib

    source = make_trainer(make_cfg(tmp_path / "src", data_root, seed="7"))
    model_lib.save_trained(source.model, source.cfg, tmp_path / "init")
    cfg = make_cfg(
        tmp_path / "run", data_root, init_weights=str(tmp_path / "init" / "model.weights.h5"), epochs="1"
    )
    params = TrainParams.from_config(cfg)
    run = train.Run(cfg, params, RunDirs.from_config(cfg, "run"), make_strategy("default"),
                    restoring=False, progress=False)  # fmt: skip
    for a, b in zip(run.trainer.model.get_weights(), source.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert run.value("step") == 0  # a new run: the optimizer and counters start afresh
    missing = make_cfg(tmp_path / "bad", data_root, init_weights=str(tmp_path / "nope.weights.h5"))
    with pytest.raises(utils.PipelineError, match="nope.weights.h5: .*not found"):
        train.train(missing, "bad", progress=False)
    other = make_cfg(tmp_path / "other", data_root, init_weights=str(tmp_path / "init" / "model.weights.h5"))
    other.set("model", "lstm_units", "24")
    with pytest.raises(utils.PipelineError, match="cannot load into this"):
        train.train(other, "other", progress=False)


@pytest.mark.slow
def test_disk_full_while_checkpointing_is_one_line_and_leaves_no_temp(data_root, tmp_path, monkeypatch):
    """TensorFlow writes ckpt-N_temp/ then renames it: a full disk leaves neither it nor a traceback;
    one left by a killed run is removed by the next one."""
    import tensorflow as tf

    cfg = make_cfg(tmp_path, data_root, epochs=1, checkpoint_steps=1)
    folder = Path(cfg["paths"]["checkpoint_dir"]) / "run"
    real = tf.train.CheckpointManager.save

    def full(self, checkpoint_number=None, **kw):
        (Path(self.directory) / f"ckpt-{checkpoint_number}_temp" / "part-0").mkdir(parents=True)
        raise tf.errors.UnknownError(None, None, "x.data-00000-of-00001; No space left on device")

    monkeypatch.setattr(tf.train.CheckpointManager, "save", full)
    rc = utils.run_main(train.main, ["--config", cfg.source, "--run-name", "run", "--no-progress"])
    assert rc == 2
    assert not list(folder.glob("ckpt-*_temp*"))
    monkeypatch.setattr(tf.train.CheckpointManager, "save", real)
    (folder / "ckpt-99_temp").mkdir()  # as a kill -9 while saving leaves it
    train.train(cfg, "run", resume=True, progress=False)
    assert not list(folder.glob("ckpt-*_temp*")) and list(folder.glob("ckpt-*.index"))


def test_checkpoint_error_message(tmp_path, capsys):
    import tensorflow as tf

    class Manager:
        @staticmethod
        def save(checkpoint_number):
            (tmp_path / f"ckpt-{checkpoint_number}_temp").mkdir()
            raise tf.errors.UnknownError(None, None, "write failed: No space left on device\nmore")

    with pytest.raises(utils.PipelineError) as e:
        run_folder.save_checkpoint(Manager(), tmp_path, 3)
    assert str(e.value) == f"{tmp_path}: checkpoint not saved: disk full"
    assert list(tmp_path.iterdir()) == []


def test_plateau_rule():
    def rows(*scores):
        return [{"epoch": i + 1, "validation": {"si_sdr": s}} for i, s in enumerate(scores)]

    assert not run_folder.plateaued(rows(1.0, 2.0, 2.5), 2, 0.05)  # still rising
    assert run_folder.plateaued(rows(1.0, 2.0, 2.04, 2.05), 2, 0.05)  # two epochs within 0.05 of 2.0
    assert not run_folder.plateaued(rows(1.0, 2.0, 2.04, 2.06), 2, 0.05)
    assert not run_folder.plateaued(rows(3.0, 2.0), 2, 0.05)  # too few validations to judge
    assert not run_folder.plateaued(rows(3.0, 2.0, 1.0), 0, 0.05)  # patience 0: never
    assert run_folder.plateaued(rows(3.0, 2.0, 1.0), 2, 0.05, min_epochs=3)
    assert not run_folder.plateaued(rows(3.0, 2.0, 1.0), 2, 0.05, min_epochs=4)  # a lucky first epoch
    unvalidated = [{"epoch": 9, "validation": None}]
    assert run_folder.plateaued(rows(2.0, 1.0) + unvalidated, 1, 0.0)  # epochs without validation are skipped


@pytest.mark.slow
def test_early_stopping_ends_the_run_and_a_resume_does_not_restart_it(data_root, tmp_path):
    cfg = make_cfg(tmp_path, data_root, epochs="6", patience="1", min_delta="1000")
    folder = train.train(cfg, "run", progress=False)
    lines = (folder / "history.jsonl").read_text().splitlines()
    assert len(lines) == 2  # epoch 2 gained less than 1000 dB over epoch 1: stopped
    train.train(cfg, "run", resume=True, progress=False)
    assert len((folder / "history.jsonl").read_text().splitlines()) == 2
    with pytest.raises(utils.PipelineError, match="min_delta"):
        TrainParams.from_config(utils.load_config(utils.DEFAULT_CONFIG, ["train.min_delta=-1"]))


def test_resume_treats_a_newer_key_as_its_default(tmp_config):
    # a run saved before [model] lookahead_mode existed had the delayed output: it resumes unchanged
    saved = utils.load_config(tmp_config)
    saved.remove_option("model", "lookahead_mode")
    assert run_folder._resume_conflicts(saved, utils.load_config(tmp_config)) == []
    other = utils.load_config(tmp_config, ["model.lookahead_mode=context"])
    assert run_folder._resume_conflicts(saved, other) == ["[model] lookahead_mode delay -> context"]
