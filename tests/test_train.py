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
from conftest import CORPUS, ROOT, SR, noise_like, requires_corpus, speech_like, write_config

import STFT
import train
import utils

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


def write_split(data: Path, split: str, seconds, seed: int) -> None:
    """noisy = clean + noise pairs and a manifest in data_prep's layout (CONTRACT.md)."""
    rows = []
    for n, secs in enumerate(seconds):
        clean = speech_like(secs, seed + n)
        noise = noise_like(secs, seed + 50 + n)
        snr = float([0, 5, -5][n % 3])
        noise = noise * np.sqrt(np.sum(clean**2) / np.sum(noise**2) / 10 ** (snr / 10))
        noisy = (clean + noise).astype(np.float32)
        names = {
            "clean": f"CleanSpeech_{split}/clnsp{n}.wav",
            "noise": f"Noise_{split}/noisy{n}_SNRdb_{snr:g}.wav",
            "noisy": f"NoisySpeech_{split}/noisy{n}_SNRdb_{snr:g}_clnsp{n}.wav",
        }
        for key, sig in (("clean", clean), ("noise", noise.astype(np.float32)), ("noisy", noisy)):
            (data / names[key]).parent.mkdir(parents=True, exist_ok=True)
            sf.write(data / names[key], sig, SR, subtype="FLOAT")
        rows.append({"index": n, **names, "snr_db": snr, "clean_source": "synthetic", "clean_start_s": 0,
                     "noise_source": "synthetic", "noise_start_s": 0, "gain": 1.0})  # fmt: skip
    with open(data / f"manifest_{split}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Tiny mixtures and their STFT caches, shared by the tests of this module (read-only)."""
    root = tmp_path_factory.mktemp("train_data")
    write_split(root / "data", "training", TRAIN_SECONDS, 0)
    write_split(root / "data", "testing", TEST_SECONDS, 500)
    cfg = utils.load_config(write_config(root))
    for split in STFT.SPLITS:
        STFT.build_cache(cfg, split)
    return root


def make_cfg(tmp_path: Path, data_root: Path, **train_values):
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = {"data_dir": str(data_root / "data"), "stft_dir": str(data_root)}
    return utils.load_config(write_config(tmp_path, {"paths": paths, "train": {**FAST, **train_values}}))


def fixed_batch(cfg, n: int = 2):
    cache = STFT.load_cache(STFT.cache_dir(cfg, "training"))
    crop = train.crop_frames(cfg, train.TrainParams.from_config(cfg))
    return train.load_crops(cache, np.arange(n), np.zeros(n, np.int64), crop)


def make_trainer(cfg):
    import tensorflow as tf

    params = train.TrainParams.from_config(cfg)
    train._seed_everything(params.seed, deterministic=False)
    return train.Trainer(cfg, params, tf.distribute.get_strategy())


# ----------------------------------------------------------------------------- data order


def test_epoch_plan_is_a_function_of_seed_epoch_and_example():
    n_frames = np.array([300, 120, 90, 500, 200])
    order, starts = train.epoch_plan(n_frames, seed=7, epoch=3, crop=100)
    again = train.epoch_plan(n_frames, seed=7, epoch=3, crop=100)
    assert np.array_equal(order, again[0]) and np.array_equal(starts, again[1])
    assert sorted(order) == list(range(5))
    assert np.all(starts >= 0) and np.all(starts + 100 <= np.maximum(n_frames[order], 100))
    assert starts[list(order).index(2)] == 0  # 90 frames < crop: starts at 0, padded later
    others = [train.epoch_plan(n_frames, seed=7, epoch=e, crop=100) for e in range(6)]
    assert len({tuple(o) for o, _ in others}) > 1  # the order changes between epochs
    assert len({tuple(o) for o, _ in [train.epoch_plan(n_frames, s, 0, 100) for s in range(6)]}) > 1


def test_load_crops_slices_the_cache_and_pads_short_examples(data_root, tmp_path):
    cfg = make_cfg(tmp_path, data_root)
    cache = STFT.load_cache(STFT.cache_dir(cfg, "training"))
    crop = train.crop_frames(cfg, train.TrainParams.from_config(cfg))
    assert crop == 100
    short = int(np.argmin(cache.n_frames))
    assert cache.n_frames[short] < crop
    noisy, clean, valid = train.load_crops(cache, np.array([3, short]), np.array([17, 0]), crop)
    n3, c3 = cache.example(3)
    assert np.array_equal(noisy[0], n3[17 : 17 + crop]) and np.array_equal(clean[0], c3[17 : 17 + crop])
    t = cache.n_frames[short]
    assert valid[0].all() and valid[1, :t].all() and not valid[1, t:].any()
    assert not noisy[1, t:].any() and not clean[1, t:].any()


def test_dataset_skip_resumes_the_same_batches(data_root, tmp_path):
    cfg = make_cfg(tmp_path, data_root)
    cache = STFT.load_cache(STFT.cache_dir(cfg, "training"))
    full = [b[0].numpy() for b in train.make_dataset(cache, 5, 1, 100, 2)]
    tail = [b[0].numpy() for b in train.make_dataset(cache, 5, 1, 100, 2, skip_batches=1)]
    assert len(full) == 3 and len(tail) == 2
    assert all(np.array_equal(a, b) for a, b in zip(full[1:], tail))
    other_epoch = [b[0].numpy() for b in train.make_dataset(cache, 5, 2, 100, 2)]
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


def test_run_writes_checkpoints_best_model_tensorboard_and_examples(data_root, tmp_path):
    import model

    cfg = make_cfg(tmp_path, data_root, epochs=2)
    folder = train.train(cfg, "run", progress=False)
    assert folder == Path(cfg["paths"]["checkpoint_dir"]) / "run"
    assert (folder / "config.ini").is_file() and (folder / "checkpoint").is_file()
    assert utils.load_config(folder / "config.ini")["train"]["epochs"] == "2"
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

    # evaluate.py scores best/ and reports the test scores without the validation files too
    import evaluate

    summary = evaluate.evaluate(cfg, folder / "best", tmp_path / "eval", limit=3, workers=1, oracles=False,
                                progress=False)  # fmt: skip
    assert summary["results"]["model"]["si_sdr"]["n"] == 3
    held = summary["excluding_validation_files"]
    assert held["n_excluded"] == 2 and held["n_files"] == 1
    assert held["results"]["model"]["si_sdr"]["n"] == 1

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
    original = train.Trainer.train_step
    calls = {"n": 0}

    def interrupt_after_one(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(train.Trainer, "train_step", interrupt_after_one)
    overrides = ["train.epochs=2"]
    cfg_b2 = utils.load_config(tmp_path / "b" / "config.ini", overrides)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg_b2, "run", resume=True, progress=False)
    monkeypatch.setattr(train.Trainer, "train_step", original)
    train.train(cfg_b2, "run", resume=True, progress=False)

    weights = {}
    for name, cfg_x in (("a", cfg), ("b", cfg_b2)):
        trainer = make_trainer(cfg_x)
        folder = Path(cfg_x["paths"]["checkpoint_dir"]) / "run"
        trainer.checkpoint.restore(
            str(Path(train._tf().train.latest_checkpoint(str(folder))))
        ).expect_partial()
        assert int(trainer.step.numpy()) == 6 and int(trainer.epoch.numpy()) == 2
        weights[name] = trainer.weights()
    for wa, wb in zip(weights["a"], weights["b"]):
        np.testing.assert_allclose(wa, wb, atol=1e-5)
    assert ckpt_a.is_dir() and straight is not None
    # TensorBoard continuity: the resumed runs continue the step count in the same folder
    steps = [s for s, _ in read_events(Path(cfg_b2["paths"]["log_dir"]) / "run" / "train")["batch/loss"]]
    assert sorted(set(steps)) == list(range(1, 7))


def latest_weights(cfg, run: str = "run") -> list[np.ndarray]:
    """Weights of the run's latest checkpoint (after checking it finished both epochs)."""
    trainer = make_trainer(cfg)
    folder = Path(cfg["paths"]["checkpoint_dir"]) / run
    trainer.checkpoint.restore(train._tf().train.latest_checkpoint(str(folder))).expect_partial()
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


def test_ctrl_c_right_after_an_update_resumes_exactly(data_root, tmp_path, monkeypatch, straight_weights):
    """KeyboardInterrupt after the step's update ran but before the loop saw its result: the saved
    checkpoint must count that batch, so --resume does not apply it twice."""
    cfg = make_cfg(tmp_path, data_root, epochs=2, checkpoint_steps=100)
    original, calls = train.Trainer.train_step, {"n": 0}

    def update_then_interrupt(self, batch):
        calls["n"] += 1
        out = original(self, batch)
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as a Ctrl-C landing just after the graph call returns
        return out

    monkeypatch.setattr(train.Trainer, "train_step", update_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg, "run", progress=False)
    monkeypatch.setattr(train.Trainer, "train_step", original)
    train.train(cfg, "run", resume=True, progress=False)
    assert_same_weights(latest_weights(cfg), straight_weights)


def test_crash_without_the_ctrl_c_save_resumes_from_the_last_step_checkpoint(
    data_root, tmp_path, monkeypatch, straight_weights
):
    """kill -9 semantics: a RuntimeError skips the Ctrl-C save; checkpoint_steps=1 left one per step."""
    cfg = make_cfg(tmp_path, data_root, epochs=2, checkpoint_steps=1)
    original, calls = train.Trainer.train_step, {"n": 0}

    def crash_at_step_5(self, batch):  # epoch 2, batch 2, after its update ran (never saved)
        calls["n"] += 1
        out = original(self, batch)
        if calls["n"] == 5:
            raise RuntimeError("killed")
        return out

    monkeypatch.setattr(train.Trainer, "train_step", crash_at_step_5)
    with pytest.raises(RuntimeError, match="killed"):
        train.train(cfg, "run", progress=False)
    folder = Path(cfg["paths"]["checkpoint_dir"]) / "run"
    assert Path(train._tf().train.latest_checkpoint(str(folder))).name == "ckpt-4"
    monkeypatch.setattr(train.Trainer, "train_step", original)
    train.train(cfg, "run", resume=True, progress=False)
    assert_same_weights(latest_weights(cfg), straight_weights)


def fake_run_folder(cfg, run: str = "run") -> Path:
    """A run folder with a (tiny) checkpoint and cfg saved as its config.ini, as train.py leaves it."""
    tf = train._tf()
    folder = Path(cfg["paths"]["checkpoint_dir"]) / run
    folder.mkdir(parents=True)
    tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1)), str(folder), 1).save()
    utils.save_config(cfg, folder / "config.ini")
    return folder


def test_resume_refuses_changed_loss_and_training_settings(data_root, tmp_path):
    cfg = make_cfg(tmp_path, data_root)
    folder = fake_run_folder(cfg)
    saved = (folder / "config.ini").read_bytes()
    refused = ["loss.lam=0.2", "model.lstm_units=16", "train.seed=7", "train.batch_size=3",
               "train.crop_seconds=0.5", "train.learning_rate=1e-4", "train.clip_norm=1",
               "train.validation_files=1"]  # fmt: skip
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
    dirs = train.RunDirs.from_config(cfg, "run")
    assert train.prepare_run(utils.load_config(tmp_path / "config.ini", allowed), dirs, True, False) is True


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
    latest = train._tf().train.latest_checkpoint(str(folder))
    assert latest is not None
    trainer.checkpoint.restore(latest).expect_partial()
    assert int(trainer.step.numpy()) == 2 and int(trainer.optimizer.iterations.numpy()) == 0
    assert all(np.isfinite(w).all() for w in trainer.weights())


def test_validation_counts_a_failed_file_as_very_bad_not_as_missing(data_root, tmp_path):
    cfg = make_cfg(tmp_path, data_root, validation_files=3)
    params = train.TrainParams.from_config(cfg)
    validator = train.Validator(cfg, params, STFT.load_cache(STFT.cache_dir(cfg, "testing")))

    class Silencer:  # a "model" that outputs silence for the first validation file only
        def enhance(self, noisy, clean):
            first = noisy.shape[1] == len(validator.examples[0].noisy_stft)  # the test clips' lengths differ
            S_hat = noisy * (0 if first else 1)
            return S_hat, np.zeros((*noisy.shape, 2), np.float32), np.zeros(len(noisy), np.float32)

    identity = train.summarize_validation(
        [{"si_sdr": ex.noisy_scores["si_sdr"], "loss": 0.1} for ex in validator.examples]
    )
    val, _ = validator.run(Silencer())
    assert val["si_sdr_failed"] == 1 and val["sdr_failed"] == 1 and val["snr_failed"] == 0
    # the silenced file weighs in at FAILED_DB: silencing cannot beat passing the input through
    others = [ex.noisy_scores["si_sdr"] for ex in validator.examples[1:]]
    assert val["si_sdr"] == pytest.approx((train.FAILED_DB + sum(others)) / 3, abs=0.1)
    assert val["si_sdr"] < identity["si_sdr"]
    rows = [{"si_sdr": 10.0, "loss": 1.0}, {"si_sdr": 10.0, "loss": np.nan}, {"si_sdr": np.nan, "loss": 3.0}]
    summary = train.summarize_validation(rows)
    assert summary["si_sdr"] < train.summarize_validation([{"si_sdr": 8.0, "loss": 1.0}] * 3)["si_sdr"]
    assert summary["loss"] == 2.0 and summary["si_sdr_failed"] == 1


# ----------------------------------------------------------------------------- replicas

REPLICA_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import STFT, train, utils
    cfg = utils.load_config(sys.argv[2])
    params = train.TrainParams.from_config(cfg)
    cache = STFT.load_cache(STFT.cache_dir(cfg, "training"))
    batch = train.load_crops(cache, np.arange(4), np.array([0, 5, 0, 9]), train.crop_frames(cfg, params))
    out = {}
    for name in ("default", "mirrored"):
        train._seed_everything(params.seed, deterministic=False)
        strategy = train.make_strategy(name)
        trainer = train.Trainer(cfg, params, strategy)
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
    np.savez(sys.argv[3], **out)
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
        [sys.executable, "-c", REPLICA_SCRIPT, str(ROOT), str(cfg_path), str(out)],
        capture_output=True, text=True, timeout=300,
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
    for split in STFT.SPLITS:
        STFT.build_cache(cfg, split)
    folder = train.train(cfg, "real", progress=False)
    history = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    val = json.loads((folder / "best" / "metrics.json").read_text())["validation"]
    assert val["si_sdr"] - val["si_sdr_noisy"] >= 2.0, history
