"""The listening page: a static index.html in each results folder to hear and see what every system did.

evaluate.py calls write_page() once scoring is done. The page needs no server, no network and no
JavaScript framework (one short inline script sorts the tables), and links only files beside it,
so the results folder can be zipped and opened anywhere:
  index.html               the summary tables (summary.json's numbers with their 95% CIs), the
                           per-SNR plots, and a table of examples: per file its input SNR and
                           metrics, <audio> players and spectrograms of noisy / model / clean /
                           each scored baseline
  listen/NNNNN_SYSTEM.wav  the clips, 16-bit PCM at the evaluation's rate (one gain per example so
                           the loudest clip fits without clipping; levels between systems kept)
  listen/NNNNN_SYSTEM.png  log-magnitude spectrograms, one colour scale per example

Examples: per input SNR, N files spread over the ranking of the model's per-file improvement over
the noisy input (N=3: best, median, worst), or every file.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

import spectral
import utils

PAGE = "index.html"
ASSET_DIR = "listen"
DEFAULT_EXAMPLES = 3
RANK_METRICS = ("si_sdr", "sdr", "pesq", "stoi", "snr")  # first one scored ranks the examples
DYNAMIC_RANGE_DB = 80.0
MAX_IMAGE_COLUMNS = 240  # spectrogram images are pooled down to at most this many frames
IMAGE_ROWS = 128
LABELS = {
    "sdr": "SDR",
    "si_sdr": "SI-SDR",
    "snr": "SNR",
    "snri": "SNRi",
    "pesq": "PESQ",
    "stoi": "STOI",
}
UNITS = {"sdr": "dB", "si_sdr": "dB", "snr": "dB", "snri": "dB", "pesq": "MOS-LQO", "stoi": ""}
LINKS = (
    ("results.csv", "per-file metrics"),
    ("summary.json", "summary"),
    ("snr_table.md", "means per input SNR"),
    ("config.ini", "config used"),
    ("model_config.ini", "model's training config"),
)


def parse_examples(value: str | int | None) -> int | None:
    """'all' -> None (every file); otherwise a count >= 0 of examples per input SNR."""
    if value is None or str(value).strip().lower() == "all":
        return None
    try:
        n = int(str(value).strip())
    except ValueError:
        n = -1
    if n < 0:
        raise utils.PipelineError(f"page examples {value!r}: expected a number >= 0 or 'all'")
    return n


def rank_metric(metric_names: list[str]) -> str | None:
    return next((m for m in RANK_METRICS if m in metric_names), None)


def ranked_system(systems: list[str]) -> str:
    """The system whose examples the page picks: the model, else a baseline, else the first one."""
    if "model" in systems:
        return "model"
    others = [s for s in systems if s != "noisy" and not s.startswith("oracle_")]
    return (others or systems)[0]


def choose_examples(rows: list[dict], systems: list[str], metric_names: list[str], per_snr: int | None):
    """[(index, snr_db, pick label)] by input SNR, best first; the key is the ranked system's rank
    metric minus the noisy input's (its value alone when the ranked system is the input)."""
    metric, ranked = rank_metric(metric_names), ranked_system(systems)
    value = {(r["index"], r["system"]): r.get(metric, math.nan) if metric else math.nan for r in rows}
    chosen = []
    for snr in sorted({r["snr_db"] for r in rows}):
        indices = list(dict.fromkeys(r["index"] for r in rows if r["snr_db"] == snr))

        def key(i):
            v = value.get((i, ranked), math.nan) - (
                value.get((i, "noisy"), 0.0) if ranked != "noisy" else 0.0
            )
            return -math.inf if math.isnan(v) else v  # a failed file ranks last: worth hearing too

        order = sorted(indices, key=lambda i: (-key(i), i))
        k = len(order)
        if per_snr is None or per_snr >= k:
            positions = list(range(k))
        elif per_snr == 1:
            positions = [(k - 1) // 2]
        else:
            positions = sorted({int(j * (k - 1) / (per_snr - 1) + 0.5) for j in range(per_snr)})
        for pos in positions:
            chosen.append((order[pos], snr, _pick_label(pos, k)))
    return chosen


def _pick_label(pos: int, k: int) -> str:
    if pos == 0:
        return "best" if k > 1 else "only"
    if pos == k - 1:
        return "worst"
    if pos in ((k - 1) // 2, k // 2):  # an even count has two middle files
        return "median"
    return f"{pos + 1} of {k}"


# ----------------------------------------------------------------------------- assets


def write_clip(path: Path, x: np.ndarray, sample_rate: int) -> None:
    utils.write_audio(path, np.asarray(x, np.float32), sample_rate, subtype="PCM_16")


def spectrogram_db(x: np.ndarray, p: spectral.StftParams) -> np.ndarray:
    """(rows, columns) power in dB, low frequencies at the bottom, pooled to a small image."""
    power = np.abs(spectral.stft(x, p)) ** 2  # (T, F)
    t, f = power.shape
    step = max(1, -(-t // MAX_IMAGE_COLUMNS))
    power = np.pad(power, ((0, -t % step), (0, 0))).reshape(-1, step, f).mean(axis=1)
    edges = np.linspace(0, f, IMAGE_ROWS + 1).astype(int)  # mean power per band: pooling keeps energy
    power = np.stack([power[:, a:b].mean(axis=1) for a, b in zip(edges[:-1], edges[1:]) if b > a], axis=1)
    return 10 * np.log10(power.T[::-1] + 1e-12)


def write_spectrogram(path: Path, db: np.ndarray, top_db: float) -> None:
    """A palette PNG (one byte a pixel: about a third of matplotlib's RGBA) on [top_db - range, top_db]."""
    import matplotlib
    from PIL import Image

    level = np.clip((db - top_db) / DYNAMIC_RANGE_DB + 1.0, 0.0, 1.0)
    image = Image.fromarray(np.round(level * 255).astype(np.uint8), mode="P")
    palette = np.round(matplotlib.colormaps["magma"](np.arange(256))[:, :3] * 255).astype(np.uint8)
    image.putpalette(palette.tobytes())
    with utils.atomic_write(path, "wb") as f:
        image.save(f, format="PNG", optimize=True)


# ----------------------------------------------------------------------------- html


def _finite(x) -> bool:
    return x is not None and isinstance(x, int | float) and math.isfinite(x)


def _digits(metric: str) -> int:
    return 3 if metric == "stoi" else 2


def fmt(x, metric: str) -> str:
    """How the page shows a number (the tests parse it back)."""
    return f"{x:.{_digits(metric)}f}" if _finite(x) else "-"


def _attr(x) -> str:
    """Exact value for data-v attributes (sorting, tests): repr of the float, 'nan' when missing."""
    return repr(float(x)) if _finite(x) else "nan"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _metric_header(m: str) -> str:
    unit = f" ({UNITS.get(m, '')})" if UNITS.get(m) else ""
    return f"{LABELS.get(m, m)}{unit}"


def summary_table(results: dict, metric_names: list[str], caption: str, table_id: str) -> str:
    """One row per system: mean and [95% CI] of each metric, as in summary.json."""
    metrics = [m for m in metric_names if any(m in r for r in results.values())]
    head = '<th data-col="0">system</th>' + "".join(
        f'<th data-col="{j + 1}">{_e(_metric_header(m))}</th>' for j, m in enumerate(metrics)
    )
    head += f'<th data-col="{len(metrics) + 1}">n</th>'
    body = []
    for system, r in results.items():
        cells = [f'<td data-v="{_e(system)}">{_e(system)}</td>']
        for m in metrics:
            st = r.get(m) or {}
            lo, hi = (st.get("ci95") or [None, None])[:2]
            mean = st.get("mean")
            cells.append(
                f'<td class="num" data-system="{_e(system)}" data-metric="{m}" data-v="{_attr(mean)}"'
                f' data-lo="{_attr(lo)}" data-hi="{_attr(hi)}" data-n="{st.get("n", 0)}">'
                f'<span class="mean">{fmt(mean, m)}</span> '
                f'<span class="ci">[{fmt(lo, m)}, {fmt(hi, m)}]</span></td>'
            )
        n = max((r[m].get("n", 0) for m in metrics if m in r), default=0)
        cells.append(f'<td class="num" data-v="{n}">{n}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table class="sortable" id="{table_id}"><caption>{_e(caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _figure(label: str, stem: str | None, reason: str = "") -> str:
    if stem is None:
        caption = f"<figcaption>{_e(label)}</figcaption>"
        return f'<figure class="missing">{caption}<p>no audio{_e(reason)}</p></figure>'
    return (
        f"<figure><figcaption>{_e(label)}</figcaption>"
        f'<img src="{ASSET_DIR}/{stem}.png" alt="spectrogram: {_e(label)}" loading="lazy">'
        f'<audio controls preload="metadata" src="{ASSET_DIR}/{stem}.wav"></audio></figure>'
    )


def _detail_table(by: dict, index, systems: list[str], metric_names: list[str]) -> str:
    head = "<th>system</th>" + "".join(f"<th>{_e(LABELS.get(m, m))}</th>" for m in metric_names)
    body = []
    for s in systems:
        r = by.get((index, s), {})
        cells = "".join(
            f'<td class="num" data-system="{_e(s)}" data-metric="{m}" data-v="{_attr(r.get(m))}">'
            f"{fmt(r.get(m), m)}</td>"
            for m in metric_names
        )
        failures = f'<td class="fail">{_e(r["failures"])}</td>' if r.get("failures") else ""
        body.append(f"<tr><td>{_e(s)}</td>{cells}{failures}</tr>")
    return f'<table class="detail"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def examples_table(examples, rows, systems, metric_names, media: dict) -> str:
    """One <tbody> per file (a sortable row of numbers, then its players and spectrograms)."""
    metric, ranked = rank_metric(metric_names), ranked_system(systems)
    by = {(r["index"], r["system"]): r for r in rows}
    show_delta = metric is not None and ranked != "noisy"
    cols = ["#", "input SNR (dB)", "pick"]
    if metric:
        cols += [f"{s} {LABELS.get(metric, metric)}" for s in systems]
    if show_delta:
        cols.append(f"{ranked} − noisy")
    head = "".join(f'<th data-col="{j}">{_e(c)}</th>' for j, c in enumerate(cols))
    bodies = []
    for index, snr, pick in examples:
        name = by.get((index, "noisy"), {}).get("noisy_file", "")
        cells = [
            f'<td class="num" data-v="{index}" title="{_e(name)}">{index}</td>',
            f'<td class="num" data-v="{_attr(snr)}">{snr:g}</td>',
            f'<td data-v="{_e(pick)}">{_e(pick)}</td>',
        ]
        for s in systems if metric else []:
            v = by.get((index, s), {}).get(metric)
            cells.append(
                f'<td class="num" data-system="{_e(s)}" data-metric="{metric}" data-v="{_attr(v)}">'
                f"{fmt(v, metric)}</td>"
            )
        if show_delta:
            v = by.get((index, ranked), {}).get(metric, math.nan) - by.get((index, "noisy"), {}).get(
                metric, math.nan
            )
            cells.append(f'<td class="num" data-v="{_attr(v)}">{fmt(v, metric)}</td>')
        figures = "".join(_figure(label, stem, reason) for label, stem, reason in media.get(index, []))
        bodies.append(
            f'<tbody id="file-{index}"><tr>{"".join(cells)}</tr>'
            f'<tr class="media"><td colspan="{len(cols)}"><div class="name">{_e(name)}</div>'
            f'<div class="figs">{figures}{_detail_table(by, index, systems, metric_names)}</div></td></tr>'
            "</tbody>"
        )
    return f'<table class="sortable" id="examples"><thead><tr>{head}</tr></thead>{"".join(bodies)}</table>'


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}caption{text-align:left;font-weight:600;padding:.3em 0}
th,td{border:1px solid #ccc;padding:.2em .5em;vertical-align:top}
th{background:#f2f2f2;cursor:pointer;user-select:none}th.asc:after{content:" ▲"}th.desc:after{content:" ▼"}
td.num{text-align:right;font-variant-numeric:tabular-nums}.ci{color:#777;font-size:.85em}
tr.media>td{background:#fafafa}.figs{display:flex;flex-wrap:wrap;gap:.8em}
figure{margin:.3em 0}figcaption{font-weight:600}figure img{display:block;width:200px;height:110px}
figure audio{width:200px}figure.missing p{width:200px;color:#a00}
table.detail{font-size:.85em}table.detail th{cursor:default}td.fail{color:#a00;max-width:30em}
.plots img{width:330px;margin:.3em}.name{color:#555;font-size:.85em}.note{color:#555;font-size:.9em}
"""

# Sorts by the clicked column's data-v (numbers when both parse, else text); each <tbody> of the
# examples table is one file and moves as a whole.
SCRIPT = """
document.querySelectorAll('table.sortable th[data-col]').forEach(function (th) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), col = +th.dataset.col;
    var asc = !th.classList.contains('asc');
    table.querySelectorAll('th').forEach(function (h) { h.classList.remove('asc', 'desc'); });
    th.classList.add(asc ? 'asc' : 'desc');
    var many = table.tBodies.length > 1;
    var items = many ? Array.from(table.tBodies) : Array.from(table.tBodies[0].rows);
    function key(item) {
      var row = many ? item.rows[0] : item, cell = row.cells[col];
      return cell ? (cell.dataset.v !== undefined ? cell.dataset.v : cell.textContent) : '';
    }
    items.sort(function (a, b) {
      var x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y), d;
      if (!isNaN(nx) || !isNaN(ny) || x === 'nan' || y === 'nan') {
        nx = isNaN(nx) ? -Infinity : nx; ny = isNaN(ny) ? -Infinity : ny;
        d = nx === ny ? 0 : (nx < ny ? -1 : 1);
      } else { d = x.localeCompare(y); }
      return asc ? d : -d;
    });
    var parent = many ? table : table.tBodies[0];
    items.forEach(function (item) { parent.appendChild(item); });
  });
});
"""


def render(summary: dict, rows, examples, media: dict, plots: Iterable[str], links, title: str) -> str:
    systems, metric_names = summary["systems"], summary["metrics"]
    sections = [f"<h1>{_e(title)}</h1>"]
    facts = [f"{summary.get('n_files', 0)} test files", f"systems: {', '.join(systems)}"]
    if summary.get("model_dir"):
        facts.append(f"model: {summary['model_dir']}")
    sections.append(f'<p class="note">{_e("; ".join(facts))}</p>')
    sections.append(
        "<p>"
        + " · ".join(f'<a href="{_e(href)}">{_e(href)}</a> ({_e(what)})' for href, what in links)
        + "</p>"
    )
    sections.append("<h2>Summary</h2>")
    sections.append(summary_table(summary["results"], metric_names, "Mean [95% CI] per system", "summary"))
    if summary.get("improvement_over_noisy"):
        sections.append(
            summary_table(
                summary["improvement_over_noisy"], metric_names,
                "Paired improvement over the noisy input: mean [95% CI]", "improvement",
            )
        )  # fmt: skip
    held = summary.get("excluding_validation_files")
    if held and held.get("n_files"):
        sections.append(
            summary_table(
                held["results"], metric_names,
                f"Without the {held['n_excluded']} files train.py validated on: mean [95% CI]", "held_out",
            )
        )  # fmt: skip
    sections.append(f'<p class="note">CI: {_e(summary.get("ci_method", ""))}. Click a column to sort.</p>')
    for name, reason in (summary.get("baselines_skipped") or {}).items():
        sections.append(f'<p class="note">baseline {_e(name)} not scored: {_e(reason)}</p>')
    plots = list(plots)
    if plots:
        sections.append('<h2>Against input SNR</h2><div class="plots">')
        sections += [f'<a href="{_e(p)}"><img src="{_e(p)}" alt="{_e(p)}"></a>' for p in plots]
        sections.append("</div>")
    metric = rank_metric(metric_names)
    sections.append("<h2>Examples</h2>")
    if metric:
        sections.append(
            '<p class="note">Per input SNR, files picked along the ranking of '
            f"{_e(ranked_system(systems))}'s "
            f"{_e(LABELS.get(metric, metric))} improvement over the noisy input. Spectrograms: power in dB, "
            f"{DYNAMIC_RANGE_DB:g} dB below the noisy input's peak to it, one scale per file. Clips: 16-bit "
            "WAV, one gain per file (levels between systems kept).</p>"
        )
    sections.append(examples_table(examples, rows, systems, metric_names, media))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(sections)
        + f"\n<script>{SCRIPT}</script>\n</body></html>\n"
    )


def write_page(
    out_dir: Path | str,
    summary: dict,
    rows: list[dict],
    audio_for: Callable[[list[int]], Iterable[tuple[int, dict]]],
    stft_params: spectral.StftParams,
    examples: int | str | None = DEFAULT_EXAMPLES,
    plots: Iterable[str] = (),
    title: str | None = None,
) -> Path:
    """Writes index.html and its clips and images into out_dir; returns the page's path.

    audio_for(indices) yields (index, {system: waveform}) for the chosen files: "noisy", "clean",
    and "model" / each baseline when it produced audio. Old clips of an earlier run are removed.
    """
    out_dir = Path(out_dir)
    per_snr = parse_examples(examples)
    systems = summary["systems"]
    chosen = choose_examples(rows, systems, summary["metrics"], per_snr)
    failures = {(r["index"], r["system"]): r.get("failures", "") for r in rows}
    # Players: input, model, reference, then each baseline (the oracles get numbers only).
    baselines = [s for s in systems if s not in ("noisy", "model") and not s.startswith("oracle_")]
    listened = ["noisy", *(["model"] if "model" in systems else []), "clean", *baselines]
    assets, media = out_dir / ASSET_DIR, {}
    written = set()
    for index, audio in audio_for([i for i, _, _ in chosen]):
        peak = max((float(np.max(np.abs(x))) for x in audio.values() if len(x)), default=0.0)
        gain = min(1.0, 0.99 / peak) if peak > 0 else 1.0  # one gain per file: levels compare
        top_db = float(spectrogram_db(audio["noisy"] * gain, stft_params).max()) if "noisy" in audio else 0.0
        figures = []
        for system in listened:
            label = "clean (reference)" if system == "clean" else system
            if system not in audio:
                reason = failures.get((index, system), "")
                figures.append((label, None, f": {reason}" if reason else ""))
                continue
            stem = f"{index:05d}_{system}"
            x = np.asarray(audio[system], np.float32) * gain
            write_clip(assets / f"{stem}.wav", x, stft_params.sample_rate)
            write_spectrogram(assets / f"{stem}.png", spectrogram_db(x, stft_params), top_db)
            written |= {f"{stem}.wav", f"{stem}.png"}
            figures.append((label, stem, ""))
        media[index] = figures
    # summary.json is evaluate.py's last write (it marks a complete run), so it comes after the page.
    links = [(name, what) for name, what in LINKS if name == "summary.json" or (out_dir / name).is_file()]
    page = out_dir / PAGE
    with utils.atomic_write(page, "w") as f:
        f.write(
            render(summary, rows, chosen, media, plots, links, title or f"Listening page: {out_dir.name}")
        )
    if assets.is_dir():  # clips of an earlier run's picks: no longer linked
        for old in assets.iterdir():
            if old.suffix in (".wav", ".png") and old.name not in written and old.is_file():
                os.unlink(old)
    return page
