"""The listening page (listening_page.py) written by evaluate.py: links, clips, numbers, picks, browser."""

from __future__ import annotations

import csv
import html
import json
import math
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import SR, make_test_set, write_config

import evaluate
import listening_page
import metrics
import spectral
import utils

SNRS = (-5, -5, -5, 5, 5, 15)  # three files at -5 dB: best, median and worst are three different files
LISTENED = ("noisy", "model", "fake", "clean")


def _half_and_late(x, sr):
    """A fake baseline: the input at half level, 3 ms late (delay not reported)."""
    return np.r_[np.zeros(int(0.003 * sr), np.float32), 0.5 * x], None


@pytest.fixture(scope="module")
def page_run(tmp_path_factory):
    """One tiny evaluation (untrained tiny model, a fake baseline): (results folder, data folder)."""
    import model

    tmp = tmp_path_factory.mktemp("page")
    cfg = utils.load_config(write_config(tmp, {"evaluate": {"metrics": "sdr,si_sdr,snr,stoi"}}))
    data = utils.get_path(cfg, "data_dir")
    make_test_set(data, snrs=SNRS)
    model_dir = tmp / "cp" / "tiny" / "best"
    model.save_trained(model.build_model(cfg), cfg, model_dir)
    out = tmp / "results" / "tiny"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(evaluate.BASELINE_ADAPTERS, "fake", ("numpy", 48000, _half_and_late))
        evaluate.evaluate(cfg, model_dir, out, workers=1, baselines=["fake"], progress=False)
    return out, data


class Page(HTMLParser):
    """Every href/src, the <audio> sources, and each <td> with its attributes, table and text."""

    def __init__(self, text: str):
        super().__init__()
        self.links, self.audio, self.images, self.cells = [], [], [], []
        self._tables, self._cell = [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._tables.append(a.get("id") or a.get("class"))
        self.links += [a[k] for k in ("href", "src") if k in a]
        if tag == "audio":
            self.audio.append(a["src"])
        if tag == "img":
            self.images.append(a["src"])
        if tag == "td":
            self._cell = {**a, "table": self._tables[-1], "text": ""}

    def handle_endtag(self, tag):
        if tag == "table":
            self._tables.pop()
        if tag == "td" and self._cell is not None:
            self.cells.append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data


def _page(out: Path) -> Page:
    return Page((out / "index.html").read_text(encoding="utf-8"))


def _csv_rows(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _same(a, b) -> bool:
    a = math.nan if a is None else float(a)
    b = math.nan if b is None else float(b)
    return (math.isnan(a) and math.isnan(b)) or a == b


def _stem_index(src: str) -> int:
    return int(Path(src).stem.split("_")[0])


# ----------------------------------------------------------------------------- the page of an evaluation


def test_every_link_resolves_to_a_file_beside_the_page(page_run):
    out, _ = page_run
    page = _page(out)
    assert page.links
    for link in page.links:
        assert "://" not in link and not link.startswith("/"), f"{link}: not a relative link"
        assert (out / link).is_file(), f"{link}: no such file beside the page"
    for name in ("results.csv", "summary.json", "config.ini", "model_config.ini", "si_sdr_vs_input_snr.png"):
        assert name in page.links
    listen = out / listening_page.ASSET_DIR
    assert {p.name for p in listen.iterdir()} == {Path(s).name for s in page.links if s.startswith("listen/")}


def test_the_title_names_the_results_folder(page_run):
    out, _ = page_run
    text = (out / "index.html").read_text(encoding="utf-8")
    assert f"<title>Listening page: {out.name}</title>" in text  # not the hidden staging folder


def test_each_player_is_a_16_bit_wav_of_the_input_length(page_run):
    out, data = page_run
    page = _page(out)
    noisy_len = {int(r["index"]): len(sf.read(data / r["noisy_file"])[0]) for r in _csv_rows(out)}
    chosen = sorted({_stem_index(s) for s in page.audio})
    assert len(page.audio) == len(LISTENED) * len(chosen)
    for src in page.audio:
        info = sf.info(out / src)
        assert (info.format, info.subtype, info.samplerate) == ("WAV", "PCM_16", SR), src
        assert info.frames == noisy_len[_stem_index(src)], src
    assert len(page.images) - 5 == len(page.audio)  # one spectrogram per player, besides the 5 plots


def test_the_clips_are_what_was_scored(page_run):
    """The model clip scores what results.csv says (one gain per file leaves SI-SDR as it was)."""
    out, data = page_run
    rows = {(r["index"], r["system"]): r for r in _csv_rows(out)}
    for src in _page(out).audio:
        index, system = Path(src).stem.split("_", 1)
        if system in ("model", "fake"):
            clean, _ = utils.read_audio(data / f"CleanSpeech_testing/clnsp{int(index)}.wav")
            clip, _ = sf.read(out / src, dtype="float32")
            scored = float(rows[(str(int(index)), system)]["si_sdr"])
            assert metrics.si_sdr(clean, clip) == pytest.approx(scored, abs=0.05), src


def test_numbers_on_the_page_equal_summary_json(page_run):
    out, _ = page_run
    summary = json.loads((out / "summary.json").read_text())
    cells = [c for c in _page(out).cells if "data-metric" in c]
    for table, results in (
        ("summary", summary["results"]),
        ("improvement", summary["improvement_over_noisy"]),
    ):
        shown = {(c["data-system"], c["data-metric"]): c for c in cells if c["table"] == table}
        expected = {(s, m) for s, r in results.items() for m in r}
        assert set(shown) == expected, table
        for (system, m), cell in shown.items():
            st = results[system][m]
            lo, hi = st["ci95"]
            assert (
                _same(cell["data-v"], st["mean"])
                and _same(cell["data-lo"], lo)
                and _same(cell["data-hi"], hi)
            )
            assert int(cell["data-n"]) == st["n"]
            f = listening_page.fmt
            text = f"{f(st['mean'], m)} [{f(lo, m)}, {f(hi, m)}]"
            assert cell["text"].strip() == text, (table, system, m)
    # the per-file numbers are results.csv's
    rows = {(r["index"], r["system"]): r for r in _csv_rows(out)}
    per_file = [c for c in _page(out).cells if c["table"] in ("examples", "detail") and "data-metric" in c]
    assert per_file
    index = None
    for cell in _page(out).cells:  # each detail table follows its file's row; its first cell is "#"
        if cell["table"] == "examples" and "title" in cell:
            index = cell["data-v"]
        if "data-metric" in cell and cell["table"] in ("examples", "detail"):
            value = rows[(index, cell["data-system"])][cell["data-metric"]]
            assert _same(cell["data-v"], value)
            assert cell["text"].strip() == listening_page.fmt(float(value), cell["data-metric"])


def test_best_median_and_worst_per_input_snr(page_run):
    out, _ = page_run
    rows = _csv_rows(out)
    gain = {}
    for r in rows:
        if r["system"] in ("model", "noisy"):
            sign = 1 if r["system"] == "model" else -1
            gain[int(r["index"])] = gain.get(int(r["index"]), 0.0) + sign * float(r["si_sdr"])
    picks = [(int(c["data-v"]), c) for c in _page(out).cells if c["table"] == "examples" and "title" in c]
    labels = [c["data-v"] for c in _page(out).cells if c["table"] == "examples" and c["data-v"] in (
        "best", "median", "worst", "only")]  # fmt: skip
    at_minus5 = sorted((i for i, s in enumerate(SNRS) if s == -5), key=lambda i: -gain[i])
    assert [i for i, _ in picks][:3] == at_minus5  # best first
    assert labels == ["best", "median", "worst", "best", "worst", "only"]


# ----------------------------------------------------------------------------- the builder alone


def _rows(keys: dict[int, float], snr=0.0, system="model") -> list[dict]:
    rows = []
    for i, v in keys.items():
        rows.append({"index": i, "snr_db": snr, "system": "noisy", "si_sdr": 0.0, "noisy_file": f"n{i}.wav"})
        rows.append({"index": i, "snr_db": snr, "system": system, "si_sdr": v, "noisy_file": f"n{i}.wav"})
    return rows


def test_choose_examples_spreads_over_the_ranking():
    rows = _rows({i: float(i) for i in range(7)} | {7: math.nan})
    pick = listening_page.choose_examples
    three = pick(rows, ["noisy", "model"], ["si_sdr"], 3)
    assert [(i, label) for i, _, label in three] == [(6, "best"), (2, "median"), (7, "worst")]  # NaN: last
    assert [i for i, _, _ in pick(rows, ["noisy", "model"], ["si_sdr"], None)] == [6, 5, 4, 3, 2, 1, 0, 7]
    assert pick(rows, ["noisy", "model"], ["si_sdr"], 0) == []
    assert [label for *_, label in pick(rows, ["noisy", "model"], ["si_sdr"], 1)] == ["median"]
    # without a model, the scored baseline is ranked, not an oracle
    base = _rows({0: 1.0, 1: 5.0}, system="fake") + _rows({0: 9.0, 1: 0.0}, system="oracle_irm")[1::2]
    assert pick(base, ["noisy", "oracle_irm", "fake"], ["si_sdr"], 1)[0][0] == 1


def test_parse_examples():
    assert listening_page.parse_examples("all") is None and listening_page.parse_examples(None) is None
    assert listening_page.parse_examples("0") == 0 and listening_page.parse_examples(5) == 5
    for bad in ("-1", "many", "2.5"):
        with pytest.raises(utils.PipelineError, match="page examples"):
            listening_page.parse_examples(bad)


def test_bad_page_examples_fails_before_scoring(tmp_path):
    cfg = write_config(tmp_path)
    with pytest.raises(utils.PipelineError, match="page examples 'many'"):
        evaluate.main(["--config", str(cfg), "--model", str(tmp_path / "m"), "--page-examples", "many"])
    assert not (tmp_path / "results").exists()


def test_rewriting_the_page_removes_clips_it_no_longer_links(tmp_path):
    rows = _rows({0: 1.0, 1: 2.0, 2: 3.0})
    summary = {"systems": ["noisy", "model"], "metrics": ["si_sdr"], "n_files": 3, "results": {},
               "improvement_over_noisy": {}}  # fmt: skip
    tone = np.sin(2 * np.pi * 440 * np.arange(SR) / SR).astype(np.float32)

    def audio_for(indices):
        return ((i, {"noisy": tone, "clean": tone, "model": 2 * tone}) for i in indices)

    p = spectral.StftParams()
    listening_page.write_page(tmp_path, summary, rows, audio_for, p, examples="all")
    assert len(list((tmp_path / "listen").glob("*.wav"))) == 9
    listening_page.write_page(tmp_path, summary, rows, audio_for, p, examples=1)
    page = _page(tmp_path)
    assert sorted(p.name for p in (tmp_path / "listen").iterdir()) == sorted(
        Path(s).name for s in page.links if s.startswith("listen/")
    )
    assert len(page.audio) == 3 and not list(tmp_path.rglob("*.tmp"))
    loud, _ = sf.read(tmp_path / page.audio[1])  # the model clip: 2x the tone, scaled to fit 16 bits
    quiet, _ = sf.read(tmp_path / page.audio[0])
    assert np.max(np.abs(loud)) <= 0.99 + 1e-4 and np.max(np.abs(loud)) == pytest.approx(
        2 * np.max(np.abs(quiet)), abs=1e-4
    )


# ----------------------------------------------------------------------------- in a browser


def find_browser() -> str | None:
    names = (os.environ.get("CHROME", ""), "chromium", "chromium-browser", "google-chrome", "chrome")
    return next((shutil.which(n) for n in names if n and shutil.which(n)), None)


# Runs in the page once it loaded: waits until every player has its metadata (or an error) and
# every image is decoded, sorts the examples by "#" twice, and writes what it saw into <pre id=probe>.
PROBE = """<script>
(function () {
  var audios = Array.from(document.querySelectorAll('audio')), imgs = Array.from(document.images);
  imgs.forEach(function (i) { i.loading = 'eager'; });
  function order() { return Array.from(document.getElementById('examples').tBodies).map(function (b) {
    return b.id; }); }
  function report() {
    var th = document.querySelector('#examples th[data-col="0"]'), sorted = [];
    th.click(); sorted.push(order()); th.click(); sorted.push(order());
    var pre = document.createElement('pre');
    pre.id = 'probe';
    pre.textContent = JSON.stringify({
      audio: audios.map(function (a) { return {src: a.getAttribute('src'), ready: a.readyState,
        duration: a.duration, error: a.error ? a.error.code : null}; }),
      img: imgs.map(function (i) { return {src: i.getAttribute('src'), complete: i.complete,
        width: i.naturalWidth}; }),
      sorted: sorted});
    document.body.appendChild(pre);
  }
  function settled() { return audios.every(function (a) { return a.readyState >= 1 || a.error; })
    && imgs.every(function (i) { return i.complete; }); }
  (function poll(n) {
    if (settled() || n > 300) report(); else setTimeout(function () { poll(n + 1); }, 50);
  })(0);
})();
</script>"""


@pytest.mark.skipif(
    find_browser() is None,
    reason="no Chromium or Chrome on PATH (apt-get install chromium, or set CHROME=/path/to/browser): "
    "the page's players and images were not checked in a browser",
)
def test_page_plays_and_renders_in_headless_chromium(page_run, tmp_path):
    browser = find_browser()
    out, _ = page_run
    # zipped and unpacked elsewhere, as a user would carry it to another machine
    archive = shutil.make_archive(str(tmp_path / "page"), "zip", out)
    moved = tmp_path / "elsewhere"
    shutil.unpack_archive(archive, moved)
    page = (moved / "index.html").read_text(encoding="utf-8")
    (moved / "probe.html").write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--mute-audio",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000", "--dump-dom",
         (moved / "probe.html").as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    dom, tag = result.stdout, '<pre id="probe">'
    assert tag in dom, "the probe did not report: " + result.stderr[-2000:]
    seen = json.loads(html.unescape(dom[dom.index(tag) + len(tag) : dom.index("</pre>", dom.index(tag))]))
    assert seen["audio"] and len(seen["audio"]) == len(Page(page).audio)
    for a in seen["audio"]:
        assert a["error"] is None and a["ready"] >= 1, a
        frames = sf.info(out / a["src"]).frames
        assert a["duration"] == pytest.approx(frames / SR, abs=0.01), a
    assert seen["img"] and all(i["complete"] and i["width"] > 0 for i in seen["img"]), seen["img"]
    ascending, descending = seen["sorted"]
    assert (
        ascending == sorted(ascending, key=lambda b: int(b.split("-")[1])) and descending == ascending[::-1]
    )
