"""The shipped model (pretrained/): loadable by default, small, and reproducing its recorded scores."""

import json

import numpy as np
import pytest
from conftest import CORPUS

import utils

pytestmark = pytest.mark.skipif(
    not (utils.PRETRAINED_DIR / "model.weights.h5").is_file(), reason="no shipped pretrained/ model"
)


@pytest.fixture(scope="module")
def golden():
    import golden as g

    return g, json.loads(g.GOLDEN.read_text())


@pytest.fixture(scope="module")
def enhancer():
    import enhance

    return enhance.Enhancer.from_pretrained(utils.PRETRAINED_DIR)


def test_shipped_model_is_small_causal_and_documented():
    import tflite_step

    # what is shipped, not the TFLite step that enhance.py caches beside the weights on first use
    # (git-ignored; an earlier test of the session may have written it)
    shipped = [p for p in utils.PRETRAINED_DIR.rglob("*")
               if p.is_file() and not p.name.startswith(tflite_step.CACHE_PREFIX)]  # fmt: skip
    size = sum(p.stat().st_size for p in shipped)
    assert size < 10e6
    cfg = utils.load_config(utils.PRETRAINED_DIR / "config.ini")
    assert cfg["model"]["architecture"] == "causal"
    assert (utils.PRETRAINED_DIR / "README.md").is_file()


def test_scripts_default_to_the_shipped_model_until_a_run_is_trained(tmp_path):
    from conftest import write_config

    import evaluate

    cfg = utils.load_config(write_config(tmp_path))
    assert utils.default_model_dir(cfg) == utils.PRETRAINED_DIR
    assert evaluate.resolve_model_dir(cfg, None, None) == (utils.PRETRAINED_DIR, "pretrained")


def test_golden_records_this_model(golden):
    g, recorded = golden
    assert recorded["model_sha256"] == g.model_sha256(), (
        "pretrained/model.weights.h5 changed: re-record with `python tests/golden.py --record`"
    )


def _check(g, recorded, got):
    for name, result in got.items():
        want = recorded["cases"][name]
        for kind in ("noisy", "enhanced"):
            for m in g.METRICS:
                assert result[kind][m] == pytest.approx(want[kind][m], abs=g.TOLERANCE[m]), (name, kind, m)


def test_golden_synthetic_mixtures(golden, enhancer):
    g, recorded = golden
    _check(g, recorded, g.run(g.synthetic_cases(), enhancer))


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"{CORPUS}: shared corpus not present")
def test_golden_real_mixtures(golden, enhancer):
    g, recorded = golden
    got = g.run(g.real_cases(CORPUS), enhancer)
    _check(g, recorded, got)
    for name, result in got.items():  # the shipped model helps on real speech in real noise
        assert result["enhanced"]["si_sdr"] > result["noisy"]["si_sdr"] + 2.0, name


def test_streaming_matches_offline_on_a_golden_mixture(golden, enhancer):
    g, _ = golden
    _, noisy = g.synthetic_cases()["synthetic_pink_5dB"]
    stream = enhancer.stream(aligned=True)  # 10-ms chunks, outputs aligned with the input
    parts = [stream.process(noisy[i : i + 160]) for i in range(0, len(noisy), 160)]
    y = np.concatenate(parts + [stream.flush()]).reshape(-1)  # (N, 1) from a mono stream
    np.testing.assert_allclose(y, enhancer(noisy, g.SR), atol=1e-4)
