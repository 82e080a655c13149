"""`make demo` end to end, in a seconds-long --quick variant, in a temporary work folder."""

import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    out = subprocess.run(
        [sys.executable, "demo.py", "--quick", "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "data" / "manifest_training.csv").is_file()
    assert list((tmp_path / "data" / "NoisySpeech_training").glob("*.wav"))
    assert (tmp_path / "Training_STFT" / "meta.json").is_file()
    assert (tmp_path / "cp" / "demo" / "best" / "model.weights.h5").is_file()
    assert list((tmp_path / "logs" / "gradient_tape" / "demo").rglob("events.out.tfevents.*"))
    assert list((tmp_path / "enhanced").glob("*.wav"))
    assert list((tmp_path / "enhanced" / "demo").glob("epoch_*/*.wav"))
    assert (tmp_path / "results" / "demo" / "summary.json").is_file()
    assert "Where to look" in out.stdout
    page = tmp_path / "results" / "demo" / "index.html"
    assert page.is_file() and f"listening page:  {page.as_uri()}" in out.stdout
    assert list((tmp_path / "results" / "demo" / "listen").glob("*_model.wav"))
