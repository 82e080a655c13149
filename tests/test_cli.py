"""Every script answers --help, and a bad config is one clear line with exit status 2."""

import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow  # every test starts a script in a new interpreter

SCRIPTS = [
    "data/data_prep.py",
    "data/demo_corpus.py",
    "data/download.py",
    "STFT.py",
    "model.py",
    "train.py",
    "evaluate.py",
    "compare.py",
    "enhance.py",
    "export.py",
    "demo.py",
    "study_lookahead.py",
    "study_recipe.py",
    "figures.py",
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    out = subprocess.run(
        [sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


@pytest.mark.parametrize("script", ["STFT.py", "train.py"])
def test_missing_config_is_one_line(script, tmp_path):
    missing = tmp_path / "nope.ini"
    out = subprocess.run(
        [sys.executable, script, "--config", str(missing)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines[-1] == f"error: {missing}: config file not found"
