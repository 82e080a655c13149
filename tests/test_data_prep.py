"""data/data_prep.py and its modules (prep_sources, prep_outputs, prep_plan, prep_run): exact mixing,
naming, determinism, resume, refusal and bad-input handling."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import SR, noise_like, speech_like

import mixing
import prep_plan
import prep_run
import prep_sources
import utils
from data import data_prep

SPLITS = {"training": ("clean_train", "noise_train"), "testing": ("clean_test", "noise_test")}


def data_args(corpus: Path, out: Path, **over) -> list[str]:
    """--set overrides pointing data/config.ini at a corpus in the shared layout, with tiny sizes."""
    values = {
        "clean_train_path": corpus / "clean_train",
        "noise_train_path": corpus / "noise_train",
        "clean_test_path": corpus / "clean_test",
        "noise_test_path": corpus / "noise_test",
        "output_path": out,
        "file_length": 1,
        "total_training_files": 6,
        "total_testing_files": 3,
        "workers": 1,
        **over,
    }
    return [arg for k, v in values.items() for arg in ("--set", f"data.{k}={v}")]


def run(argv, capsys=None) -> tuple[int, str, str]:
    code = utils.run_main(data_prep.main, argv)
    if capsys is None:
        return code, "", ""
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_manifest(out: Path, split: str = "training") -> list[dict]:
    with open(out / f"manifest_{split}.csv", newline="") as f:
        return list(csv.DictReader(f))


def snapshot(out: Path) -> dict[str, bytes]:
    """Every output file's bytes (the saved config differs by output_path and workers, so left out)."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "data_prep_config.ini"
    }


def read32(path: Path) -> np.ndarray:
    x, sr = sf.read(path, dtype="float32")
    assert sr == SR
    return x


def check_split(out: Path, split: str, total: int, seconds: float = 1.0) -> list[dict]:
    """The contract on disk: counts, names, manifest agreement, exact sums, exact SNRs, no clipping."""
    rows = read_manifest(out, split)
    assert [int(r["index"]) for r in rows] == list(range(1, total + 1))
    for kind in ("clean", "noise", "noisy"):
        listed = {r[kind] for r in rows}
        folder = {"clean": "CleanSpeech", "noise": "Noise", "noisy": "NoisySpeech"}[kind]
        on_disk = {p.relative_to(out).as_posix() for p in (out / f"{folder}_{split}").iterdir()}
        assert listed == on_disk
    for r in rows:
        n, snr = int(r["index"]), float(r["snr_db"])
        assert r["clean"] == f"CleanSpeech_{split}/clnsp{n}.wav"
        assert r["noise"] == f"Noise_{split}/noisy{n}_SNRdb_{snr:g}.wav"
        assert r["noisy"] == f"NoisySpeech_{split}/noisy{n}_SNRdb_{snr:g}_clnsp{n}.wav"
        clean, noise, noisy = (read32(out / r[k]) for k in ("clean", "noise", "noisy"))
        assert len(clean) == len(noise) == len(noisy) == int(seconds * SR)
        assert np.array_equal(noisy, clean + noise)  # exact, in float32, as read back
        measured = 10 * np.log10(
            np.sum(clean.astype(np.float64) ** 2) / np.sum(noise.astype(np.float64) ** 2)
        )
        assert abs(measured - snr) < 0.01
        assert np.max(np.abs(noisy)) <= mixing.PEAK + 1e-6
        assert 0 < float(r["gain"]) <= 1
    return rows


def test_outputs_follow_the_contract(synthetic_corpus, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run(data_args(synthetic_corpus, out), capsys)
    assert code == 0
    levels = np.linspace(-5, 15, 5)
    for split, total in (("training", 6), ("testing", 3)):
        rows = check_split(out, split, total)
        clean_dir, noise_dir = (synthetic_corpus / d for d in SPLITS[split])
        for r in rows:
            assert np.isclose(levels, float(r["snr_db"])).any()
            assert Path(r["clean_source"]).parent == clean_dir
            assert Path(r["noise_source"]).parent == noise_dir
            # provenance: the clean file is the source segment the manifest names, times the gain
            src = read32(Path(r["clean_source"]))
            start = round(float(r["clean_start_s"]) * SR)
            expected = (src[start : start + SR].astype(np.float64) * float(r["gain"])).astype(np.float32)
            assert np.array_equal(read32(out / r["clean"]), expected)
            assert mixing.active_fraction(expected, SR) >= mixing.ACTIVITY_MIN_FRACTION
        assert f"{split}: {total} mixtures ({total} written" in stdout
    assert (out / "data_prep_config.ini").is_file()
    assert utils.load_config(out / "data_prep_config.ini")["data"]["total_training_files"] == "6"
    assert (out / "data_prep_state_training.json").is_file()


def test_output_does_not_depend_on_worker_count(synthetic_corpus, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run(data_args(synthetic_corpus, one, total_training_files=8)) == (0, "", "")
    assert run([*data_args(synthetic_corpus, two, total_training_files=8), "--workers", "2"]) == (0, "", "")
    a, b = snapshot(one), snapshot(two)
    assert len(a) == 3 * (8 + 3) + 4  # wavs, two manifests, two state files
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]


def test_seed_changes_the_draws(synthetic_corpus, tmp_path):
    run(data_args(synthetic_corpus, tmp_path / "a", total_testing_files=0))
    run(data_args(synthetic_corpus, tmp_path / "b", total_testing_files=0, seed=99))
    a, b = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    assert [r["clean_start_s"] for r in a] != [r["clean_start_s"] for r in b]


def test_resume_completes_an_interrupted_run(synthetic_corpus, tmp_path, capsys):
    out = tmp_path / "out"
    args = data_args(synthetic_corpus, out)
    assert run(args, capsys)[0] == 0
    before = snapshot(out)
    rows = read_manifest(out)
    # what an interrupted run leaves: missing files, no manifest, a temp file, a file cut short
    (out / rows[1]["clean"]).unlink()
    (out / rows[3]["noisy"]).unlink()
    (out / rows[4]["noise"]).write_bytes(b"RIFF")
    (out / "manifest_training.csv").unlink()
    leftover = out / "NoisySpeech_training" / ".noisy9_SNRdb_0_clnsp9.wav.1234.tmp"
    leftover.write_bytes(b"half")
    code, stdout, _ = run(args, capsys)
    assert code == 0
    assert "training: 6 mixtures (3 written, 3 already complete)" in stdout
    assert "testing: 3 mixtures (0 written, 3 already complete)" in stdout
    assert not leftover.exists()
    assert snapshot(out) == before


def test_changed_config_is_refused_without_overwrite(synthetic_corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(data_args(synthetic_corpus, out), capsys)[0] == 0
    before = snapshot(out)
    code, _, err = run(data_args(synthetic_corpus, out, seed=7), capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "--overwrite" in err
    assert snapshot(out) == before
    # a new source file changes the plan too
    sf.write(synthetic_corpus / "clean_train" / "extra.wav", speech_like(2.0, 77), SR, subtype="FLOAT")
    assert run(data_args(synthetic_corpus, out), capsys)[0] == 2
    # --overwrite replaces the outputs; fewer mixtures leave no stale files behind
    args = data_args(synthetic_corpus, out, seed=7, total_training_files=4)
    assert run([*args, "--overwrite"], capsys)[0] == 0
    check_split(out, "training", 4)
    assert snapshot(out) != before


def test_bad_sources_are_skipped_and_reported(synthetic_corpus, tmp_path, capsys):
    corpus = synthetic_corpus
    clean = corpus / "clean_train"
    for p in list(clean.iterdir())[1:]:
        p.unlink()  # one good file, so every draw also meets the bad ones
    (clean / "unreadable.wav").write_bytes(b"this is not audio" * 10)
    (clean / "zero_bytes.wav").write_bytes(b"")
    sf.write(clean / "no_samples.wav", np.zeros(0, np.float32), SR, subtype="FLOAT")
    sf.write(clean / "all_zero.wav", np.zeros(2 * SR, np.float32), SR, subtype="FLOAT")
    nan = speech_like(2.0, 5)
    nan[100] = np.nan
    sf.write(clean / "has_nan.wav", nan, SR, subtype="FLOAT")
    sf.write(clean / "too_short.flac", speech_like(0.5, 6), SR)
    inf = noise_like(2.0, 7)
    inf[-1] = np.inf
    sf.write(corpus / "noise_train" / "has_inf.wav", inf, SR, subtype="FLOAT")
    out = tmp_path / "out"
    code, stdout, _ = run(data_args(corpus, out, total_training_files=16), capsys)
    assert code == 0
    rows = check_split(out, "training", 16)
    bad = {
        "unreadable.wav": "unreadable",
        "zero_bytes.wav": "unreadable",
        "no_samples.wav": "empty",
        "all_zero.wav": "silent",
        "has_nan.wav": "NaN",
        "too_short.flac": "too short",
        "has_inf.wav": "NaN or Inf",
    }
    with open(out / "data_prep_skipped_training.csv", newline="") as f:
        listed = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(f)}
    assert listed.keys() == bad.keys()
    for name, reason in bad.items():
        assert reason in listed[name]
        assert name in stdout  # the end-of-run summary names it
    used = {Path(r["clean_source"]).name for r in rows} | {Path(r["noise_source"]).name for r in rows}
    assert not used & bad.keys()


def test_clean_segments_contain_speech(synthetic_corpus, tmp_path):
    """A file that is mostly silence only yields segments from its speech part."""
    clean = synthetic_corpus / "clean_train"
    for p in clean.iterdir():
        p.unlink()
    x = np.zeros(6 * SR, np.float32)
    x[: int(1.2 * SR)] = speech_like(1.2, 8)
    sf.write(clean / "mostly_silent.wav", x, SR, subtype="FLOAT")
    out = tmp_path / "out"
    assert run(data_args(synthetic_corpus, out, total_training_files=8, total_testing_files=0))[0] == 0
    for r in check_split(out, "training", 8):
        assert float(r["clean_start_s"]) < 0.5
        assert mixing.active_fraction(read32(out / r["clean"]), SR) >= mixing.ACTIVITY_MIN_FRACTION


def test_any_rate_and_channel_count(tmp_path):
    corpus = tmp_path / "corpus"
    for split in ("clean_train", "clean_test", "noise_train", "noise_test"):
        (corpus / split).mkdir(parents=True)
    # stereo 44.1 kHz 16-bit clean speech, 8 kHz mono FLAC noise shorter than file_length (looped)
    t = speech_like(3.0, 1, sr=44100)
    stereo = np.stack([t, 0.5 * t], axis=1)
    for split in ("clean_train", "clean_test"):
        sf.write(corpus / split / "stereo.wav", stereo, 44100, subtype="PCM_16")
    for split in ("noise_train", "noise_test"):
        sf.write(corpus / split / "short.flac", noise_like(0.6, 2, sr=8000), 8000)
    out = tmp_path / "out"
    assert run(data_args(corpus, out, total_training_files=3, total_testing_files=1)) == (0, "", "")
    rows = check_split(out, "training", 3)
    noise = read32(out / rows[0]["noise"])
    period = round(0.6 * SR)  # looped noise repeats exactly (one scale for the whole segment)
    assert np.array_equal(noise[:100], noise[period : period + 100])


def test_missing_folder_is_one_line_and_writes_nothing(synthetic_corpus, tmp_path, capsys):
    out = tmp_path / "out"
    args = data_args(synthetic_corpus, out, noise_test_path=tmp_path / "nowhere")
    code, _, err = run(args, capsys)
    assert code == 2
    assert err.strip() == f"error: {tmp_path / 'nowhere'}: folder not found"
    assert not out.exists()


def test_no_usable_clean_audio_is_an_error(synthetic_corpus, tmp_path, capsys):
    for p in (synthetic_corpus / "clean_test").iterdir():
        p.write_bytes(b"garbage")
    out = tmp_path / "out"
    code, _, err = run(data_args(synthetic_corpus, out), capsys)
    assert code == 2
    assert "no usable clean audio" in err and len(err.strip().splitlines()) == 1
    assert "unreadable audio" in err  # says why: the reasons counted, one example named
    assert not out.exists()


def test_every_clean_file_too_short_says_so(synthetic_corpus, tmp_path, capsys):
    for p in (synthetic_corpus / "clean_test").iterdir():
        sf.write(p, np.full(800, 0.1, np.float32), 16000)  # 0.05 s each: shorter than a mixture
    code, _, err = run(data_args(synthetic_corpus, tmp_path / "out"), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no usable clean audio" in err and "too short" in err


def test_mix_is_exact_and_avoids_clipping(rng):
    clean = (0.9 * np.sign(rng.standard_normal(SR))).astype(np.float32)
    noise = rng.standard_normal(SR).astype(np.float32)
    for snr in (-5.0, 0.0, 2.5, 20.0):
        c, n, y, gain = mixing.mix(clean, noise, snr)
        assert c.dtype == n.dtype == y.dtype == np.float32
        assert np.array_equal(y, c + n)
        got = 10 * np.log10(np.sum(c.astype(np.float64) ** 2) / np.sum(n.astype(np.float64) ** 2))
        assert abs(got - snr) < 1e-3
        assert gain < 1 and np.max(np.abs(y)) <= mixing.PEAK + 1e-6
    quiet = mixing.mix(0.01 * clean, noise, 30.0)
    assert quiet[3] == 1.0


def test_activity_check():
    speech = speech_like(1.0, 3)
    assert mixing.active_fraction(speech, SR) >= mixing.ACTIVITY_MIN_FRACTION
    assert mixing.active_fraction(np.zeros(SR, np.float32), SR) == 0.0
    mostly_silent = np.zeros(SR, np.float32)
    mostly_silent[: SR // 5] = speech[: SR // 5]
    assert mixing.active_fraction(mostly_silent, SR) < mixing.ACTIVITY_MIN_FRACTION


def test_long_files_are_read_in_segments(tmp_path):
    """The partial-read path returns exactly what a full decode would."""
    path = tmp_path / "long.flac"
    x = noise_like(3.0, 4)
    sf.write(path, x, SR)
    info = sf.info(str(path))
    src = prep_sources.Source(str(path), info.frames, info.samplerate, info.format)
    reader = prep_sources.SourceReader(SR)
    old = prep_sources.PARTIAL_READ_S
    prep_sources.PARTIAL_READ_S = 1.0
    try:
        assert src.partial(SR)
        seg = reader.segment(src, 2 * SR, SR + 500)  # wraps around the end
    finally:
        prep_sources.PARTIAL_READ_S = old
    full = prep_sources.decode(str(path), SR)
    assert np.array_equal(seg, np.concatenate([full[2 * SR :], full[:500]]))


@pytest.mark.corpus
def test_tiny_real_corpus(tiny_real_corpus, tmp_path):
    out = tmp_path / "out"
    assert run(data_args(tiny_real_corpus, out, total_training_files=4, total_testing_files=2)) == (0, "", "")
    check_split(out, "training", 4)
    check_split(out, "testing", 2)


@pytest.mark.parametrize("bad", ["total_snrlevels=0", "file_length=0", "SNR_lower=abc", "seed=1.5"])
def test_bad_settings_are_one_line(synthetic_corpus, tmp_path, capsys, bad):
    key, value = bad.split("=")
    code, _, err = run(data_args(synthetic_corpus, tmp_path / "out", **{key: value}), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and key in err
    assert not (tmp_path / "out").exists()


def test_one_split_only(synthetic_corpus, tmp_path):
    out = tmp_path / "out"
    assert run([*data_args(synthetic_corpus, out), "--split", "testing"])[0] == 0
    check_split(out, "testing", 3)
    assert not (out / "manifest_training.csv").exists()


# ----------------------------------------------------------------------------- unusable sets, determinism


def write_set(folder: Path, make, count: int = 2, seconds: float = 2.0) -> None:
    """Replaces a corpus folder's files with `count` files of make(n_samples)."""
    for p in folder.iterdir():
        p.unlink()
    for i in range(count):
        sf.write(folder / f"bad_{i}.wav", make(int(seconds * SR)), SR, subtype="FLOAT")


@pytest.mark.parametrize(
    "folder,make,message",
    [
        ("clean_train", lambda n: np.full(n, np.nan, np.float32), "no usable clean audio"),
        ("noise_test", lambda n: np.zeros(n, np.float32), "no usable noise audio"),
        ("noise_train", lambda n: np.full(n, 1e-7, np.float32), "no usable noise audio"),  # finite, too quiet
        ("clean_test", lambda n: np.full(n, 1e-7, np.float32), "no usable clean audio"),
    ],
)
def test_unusable_content_is_one_line_and_writes_nothing(synthetic_corpus, tmp_path, capsys, folder, make,
                                                         message):  # fmt: skip
    """Headers look fine, content does not: refused before any folder or state file is written."""
    write_set(synthetic_corpus / folder, make)
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run(data_args(synthetic_corpus, out), capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err and "bad_0.wav" in err
    assert list(out.iterdir()) == []


def test_unusable_files_before_a_good_one_are_reported(synthetic_corpus, tmp_path, capsys):
    clean = synthetic_corpus / "clean_train"
    sf.write(clean / "aaa_nan.wav", np.full(2 * SR, np.nan, np.float32), SR, subtype="FLOAT")
    out = tmp_path / "out"
    code, stdout, _ = run(data_args(synthetic_corpus, out, total_testing_files=0), capsys)
    assert code == 0
    assert "aaa_nan.wav: contains NaN or Inf" in stdout  # found by the main process, listed at the end
    assert "aaa_nan.wav" not in {Path(r["clean_source"]).name for r in read_manifest(out)}


def test_worker_error_when_every_noise_draw_is_silent(synthetic_corpus, tmp_path):
    """The worker's own check (the main process confirms one file only, so this can still happen)."""
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, np.full(2 * SR, 1e-7, np.float32), SR, subtype="FLOAT")
    plan = make_plan(synthetic_corpus, tmp_path)
    info = sf.info(str(quiet))
    src = prep_sources.Source(str(quiet), info.frames, info.samplerate, info.format)
    mixer = prep_run.Mixer(dataclasses.replace(plan.job, noise=(src,)))
    with pytest.raises(utils.PipelineError, match="no usable noise"):
        mixer.pick_noise(np.random.default_rng(0))


def make_plan(corpus: Path, tmp_path: Path, split: str = "training", **over) -> prep_plan.SplitPlan:
    cfg = utils.load_config(utils.DATA_CONFIG, data_args(corpus, tmp_path / "out", **over)[1::2])
    return prep_plan.plan_split(prep_plan.Settings.from_config(cfg), split)


def test_draws_do_not_depend_on_what_a_process_read_before(synthetic_corpus, tmp_path):
    """A file that fails mid-read (after its start was drawn) uses up the same draws as a file this
    process already knew was bad, so each mixture's picks are the same in every worker."""
    job = make_plan(synthetic_corpus, tmp_path).job
    bad = job.clean[1].path
    knows = prep_run.Mixer(dataclasses.replace(job, bad=((bad, "known bad"),)))
    finds = prep_run.Mixer(job)
    real_read, failed = finds.reader._read, []

    def read(src, start, n):
        if src.path == bad:
            failed.append(start)
            raise utils.AudioError(src.path, "read error")
        return real_read(src, start, n)

    finds.reader._read = read
    for index in range(1, 40):
        picks = []
        for mixer in (knows, finds):
            src, start, _, _ = mixer.pick_clean(mixer.rng(index)[1])
            picks.append((src.path, start))
        assert picks[0] == picks[1], index
    assert len(failed) == 1 and bad in finds.reader.bad  # the failing path really ran


def digest_tree(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_sources_are_not_modified(synthetic_corpus, tmp_path):
    before = digest_tree(synthetic_corpus)
    assert run(data_args(synthetic_corpus, tmp_path / "out"))[0] == 0
    assert digest_tree(synthetic_corpus) == before


def test_split_with_zero_mixtures_does_not_leave_a_stale_manifest(synthetic_corpus, tmp_path, caplog):
    out = tmp_path / "out"
    assert run(data_args(synthetic_corpus, out))[0] == 0
    manifest = out / "manifest_testing.csv"
    assert manifest.is_file()
    assert run(data_args(synthetic_corpus, out, total_testing_files=0))[0] == 0
    assert manifest.is_file() and str(manifest) in caplog.text and "--overwrite" in caplog.text
    assert run([*data_args(synthetic_corpus, out, total_testing_files=0), "--overwrite"])[0] == 0
    assert not manifest.exists() and not (out / "NoisySpeech_testing").exists()
    assert not (out / "data_prep_state_testing.json").exists()
    check_split(out, "training", 6)  # the other split is untouched


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_bytes(synthetic_corpus, tmp_path):
    """SIGKILL (no cleanup at all) part-way through, re-run: byte-identical to an uninterrupted run."""
    script = Path(data_prep.__file__)
    over = {"file_length": 0.05, "total_training_files": 3000, "total_testing_files": 0, "workers": 2}
    clean_out, killed_out = tmp_path / "clean", tmp_path / "killed"
    noisy_dir = killed_out / "NoisySpeech_training"
    # own session: the kill reaches the worker processes too, as a real crash would
    cmd = [sys.executable, str(script), *data_args(synthetic_corpus, killed_out, **over)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if noisy_dir.is_dir() and sum(1 for e in os.scandir(noisy_dir) if e.name.endswith(".wav")) > 20:
                break
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "finished before it could be killed"
    assert not (killed_out / "manifest_training.csv").exists()
    written = sum(1 for p in noisy_dir.glob("*.wav"))
    assert 0 < written < 3000
    assert run(data_args(synthetic_corpus, killed_out, **over))[0] == 0
    assert run(data_args(synthetic_corpus, clean_out, **over))[0] == 0
    assert snapshot(killed_out) == snapshot(clean_out)
