"""Results of a benchmark run: ``results.json``, a self-contained HTML page, PNG charts; and run comparison.

The page (``report.html`` in the run folder) has the scores table (overall, per category, metrics; think and
no-think side by side with the difference) and, per category, the prompts with each mode's images,
reasoning and instruction, failures first. Thumbnails are embedded (base64 PNG) and link to the full
images by relative path, so the page opens anywhere and still reaches the originals beside it. Charts need
matplotlib (``thinkgen[eval]``); without it they are skipped with a log line.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image

from ..imageio import atomic_write_bytes, load_image
from .runner import MODES, SCORES, STANDARD_ERROR, load_manifest, read_jsonl_records, standard_error

logger = logging.getLogger(__name__)

RESULTS = "results.json"
REPORT = "report.html"
CHART = "scores.png"
COMPARE_JSON = "compare.json"
COMPARE_HTML = "compare.html"
THUMBNAIL_PX = 160  # thumbnails are embedded; this keeps a page of a few hundred of them a few MB
MAX_SHOWN_PER_CATEGORY = 24  # prompts shown per category (failures first); the rest are in results files
MAX_TEXT_CHARS = 2000  # reasoning longer than this is cut in the page (the manifest has all of it)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}.pos{color:#070}.neg{color:#b00}
.meta{color:#555;font-size:13px}.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ccc;border-radius:6px;padding:8px;width:420px;font-size:13px}
.card.fail{border-color:#d55;background:#fff6f6}.modes{display:flex;gap:8px}
.mode{flex:1;min-width:0}.mode img{width:100%;max-width:200px;image-rendering:pixelated;border:1px solid #eee}
.prompt{font-weight:600;margin-bottom:4px}.label{color:#777}.bad{color:#b00}
details{margin-top:2px}pre{white-space:pre-wrap;word-break:break-word;margin:2px 0;font-size:12px}
"""


# ----------------------------------------------------------------------------- results


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def paired_differences(
    scores_a: dict[str, dict[str, Any]], scores_b: dict[str, dict[str, Any]], keys: Sequence[str]
) -> dict[str, dict[str, float | int]]:
    """B − A per category over the prompts both runs scored, with the standard error of that mean difference.

    Each prompt gives one difference of its per-prompt value (``accuracy`` where both records have it, as the
    nano judge's; else ``score``). Prompts draw their own seeds, so the standard error is that of the mean
    over prompts and seeds: a difference within two of them may well change sign at other seeds, and is not
    evidence that B is better or worse.

    Returns:
        Per category (first-seen order): ``prompts``, ``b_minus_a`` (mean difference) and ``standard_error``
        (sample standard deviation of the differences over √prompts; 0 for a single prompt).
    """
    groups: dict[str, list[float]] = {}
    for key in keys:
        a, b = scores_a.get(key), scores_b.get(key)
        if not a or not b or a.get("error") is not None or b.get("error") is not None:
            continue
        field = "accuracy" if a.get("accuracy") is not None and b.get("accuracy") is not None else "score"
        if a.get(field) is None or b.get(field) is None:
            continue
        groups.setdefault(b.get("category") or a.get("category") or "all", []).append(
            float(b[field]) - float(a[field]))
    return {category: {"prompts": len(diffs), "b_minus_a": sum(diffs) / len(diffs),
                       "standard_error": standard_error(diffs) or 0.0}
            for category, diffs in groups.items()}


def build_results(
    benchmark: str,
    settings: dict[str, Any],
    modes: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The ``results.json`` record of a run.

    Args:
        benchmark: its name.
        settings: model, data files, generation settings, scorer.
        modes: per mode folder name: ``summary`` (a scorer's aggregate, or ``None`` when not scored),
            ``generation`` (stats), ``errors`` (per-prompt scoring errors).
    """
    results: dict[str, Any] = {
        "benchmark": benchmark,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        "modes": modes,
    }
    think = (modes.get("think") or {}).get("summary")
    plain = (modes.get("no_think") or {}).get("summary")
    if think and plain:
        results["delta_think_minus_no_think"] = {
            "overall": _delta(think["overall"], plain["overall"]),
            "categories": {c: _delta(think["categories"].get(c), plain["categories"].get(c))
                           for c in dict.fromkeys([*plain["categories"], *think["categories"]])},
        }
    return results


def write_results(run_dir: Path, results: dict[str, Any]) -> Path:
    path = run_dir / RESULTS
    atomic_write_bytes(path, (json.dumps(results, indent=2, default=str) + "\n").encode())
    return path


def load_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]:
    """A run's results, manifest records per mode (by key) and scores per mode (by key)."""
    path = run_dir / RESULTS
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not an eval run folder (no {RESULTS})")
    results = json.loads(path.read_text())
    scorer_id = results.get("settings", {}).get("scorer_id")
    records, scores = {}, {}
    for mode in results["modes"]:
        records[mode] = load_manifest(run_dir / mode)
        scores[mode] = {r["key"]: r for r in read_jsonl_records(run_dir / mode / SCORES)
                        if r.get("scorer_id") == scorer_id}
    return results, records, scores


# ----------------------------------------------------------------------------- charts


def write_chart(path: Path, title: str, series: dict[str, dict[str, float | None]]) -> Path | None:
    """A grouped bar chart: one group per row label, one bar per series. ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: render to a file
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed (pip install 'thinkgen[eval]'): no charts")
        return None
    labels = list(dict.fromkeys(label for values in series.values() for label in values))
    if not labels:
        return None
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(labels) * max(1, len(series)) + 1.5), 3.6))
    width = 0.8 / max(1, len(series))
    for s, (name, values) in enumerate(series.items()):
        xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, [values.get(label) or 0.0 for label in labels], width, label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _score_rows(summary: dict[str, Any] | None) -> dict[str, float | None]:
    if not summary:
        return {}
    rows = {"overall": summary["overall"], **summary["categories"]}
    rows.update({k: v for k, v in summary.get("metrics", {}).items() if isinstance(v, (int, float))
                 and not isinstance(v, bool) and not k.startswith(("num_", STANDARD_ERROR))})
    return rows


def summary_standard_errors(summary: dict[str, Any] | None) -> dict[str, float]:
    """The standard errors a scorer reports (metrics ``standard_error/<row>``), by row label."""
    metrics = (summary or {}).get("metrics", {})
    return {k.removeprefix(STANDARD_ERROR): v for k, v in metrics.items()
            if k.startswith(STANDARD_ERROR) and isinstance(v, (int, float))}


# ----------------------------------------------------------------------------- HTML


def _clean(text: Any, limit: int = MAX_TEXT_CHARS) -> str:
    """Escaped text without control characters (a model's raw tokens can hold any)."""
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "\ufffd", str(text))
    if len(text) > limit:
        text = text[:limit] + f" … ({len(text) - limit} more characters)"
    return html.escape(text)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return _clean(value)


def _delta_cell(value: float | None) -> str:
    if value is None:
        return "<td>–</td>"
    cls = "pos" if value > 0 else "neg" if value < 0 else ""
    return f'<td class="{cls}">{value:+.4f}</td>'


def _table(columns: dict[str, dict[str, float | None]], delta_of: tuple[str, str] | None,
           errors: dict[str, dict[str, float]] | None = None) -> str:
    """Rows = union of labels; one column per series (a value ``± its standard error`` where ``errors`` of
    that series has one), plus ``a − b`` when ``delta_of = (a, b)``."""
    labels = list(dict.fromkeys(label for values in columns.values() for label in values))
    head = "".join(f"<th>{_clean(name)}</th>" for name in columns)
    if delta_of:
        head += f"<th>Δ {_clean(delta_of[0])} − {_clean(delta_of[1])}</th>"
    errors = errors or {}

    def cell(name: str, label: str) -> str:
        error = errors.get(name, {}).get(label)
        return _fmt(columns[name].get(label)) + ("" if error is None else f" ± {error:.4f}")

    rows = []
    for label in labels:
        cells = "".join(f"<td>{cell(name, label)}</td>" for name in columns)
        if delta_of:
            cells += _delta_cell(_delta(columns[delta_of[0]].get(label), columns[delta_of[1]].get(label)))
        rows.append(f"<tr><td>{_clean(label)}</td>{cells}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _paired_table(paired: dict[str, dict[str, float | int]]) -> str:
    """Per category: prompts both runs scored, B − A over them, its standard error, and whether it is beyond
    two standard errors."""
    rows = []
    for category, p in paired.items():
        beyond = abs(p["b_minus_a"]) > 2 * p["standard_error"] and p["prompts"] > 1
        rows.append(f"<tr><td>{_clean(category)}</td><td>{p['prompts']}</td>{_delta_cell(p['b_minus_a'])}"
                    f"<td>{p['standard_error']:.4f}</td><td>{'yes' if beyond else 'no'}</td></tr>")
    head = "<tr><th>paired, per prompt</th><th>prompts</th><th>B − A</th><th>± s.e.</th><th>beyond 2 s.e.</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _thumbnail(path: Path) -> str:
    """A base64 PNG data URL of a small copy of the image ('' if it cannot be read)."""
    try:
        image = load_image(path)
    except (OSError, ValueError) as err:
        logger.warning("cannot read %s for the report: %s", path, err)
        return ""
    scale = THUMBNAIL_PX / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _mode_block(title: str, record: dict[str, Any] | None, score: dict[str, Any] | None, root: Path,
                page_dir: Path) -> str:
    if record is None:
        return f'<div class="mode"><div class="label">{_clean(title)}: not generated</div></div>'
    first = root / record["images"][0]
    link = os.path.relpath(first, page_dir)
    parts = [f'<div class="mode"><div class="label">{_clean(title)}</div>',
             f'<a href="{html.escape(link)}"><img src="{_thumbnail(first)}" alt="{_clean(record["key"])}"></a>']
    if score is not None:
        verdict = "error" if score.get("error") else ("pass" if score.get("passed") else
                                                       "fail" if score.get("passed") is False else "")
        parts.append(f'<div>score <b>{_fmt(score.get("score"))}</b> {verdict}'
                     f' · seeds {_clean(record["seeds"][0])}…</div>')
        if score.get("error"):
            parts.append(f'<div class="bad">{_clean(score["error"], 300)}</div>')
        reasons = [r for p in score.get("per_image", []) for r in p.get("reasons", [])]
        if reasons:
            parts.append(f'<div class="bad">{_clean("; ".join(dict.fromkeys(reasons)), 400)}</div>')
    if record.get("thought"):
        parts.append(f'<details><summary>reasoning</summary><pre>{_clean(record["reasoning"])}</pre></details>')
    parts.append(f'<div><span class="label">instruction:</span> {_clean(record["instruction"], 400)}</div></div>')
    return "".join(parts)


def _failure_rank(scores: Sequence[dict[str, Any] | None]) -> tuple[int, float]:
    """Sort key: prompts failing (or erring) in any mode first, then by their lowest score."""
    failing = any(s is not None and (s.get("error") or s.get("passed") is False) for s in scores)
    values = [s["score"] for s in scores if s is not None and s.get("score") is not None]
    return (0 if failing else 1, min(values) if values else float("inf"))


def _cards(
    columns: dict[str, tuple[Path, dict[str, dict[str, Any]], dict[str, dict[str, Any]]]],
    page_dir: Path,
) -> str:
    """Per category, one card per prompt with every column's image side by side, failures first.

    Args:
        columns: title → (mode folder, manifest records by key, scores by key).
    """
    keys: dict[str, dict[str, Any]] = {}
    for _, records, _ in columns.values():
        for key, record in records.items():
            keys.setdefault(key, record)
    by_category: dict[str, list[str]] = {}
    for key, record in keys.items():
        by_category.setdefault(record["category"], []).append(key)
    sections = []
    for category, cat_keys in by_category.items():
        ranked = sorted(cat_keys, key=lambda k: _failure_rank([s.get(k) for _, _, s in columns.values()]))
        cards = []
        for key in ranked[:MAX_SHOWN_PER_CATEGORY]:
            scores = [s.get(key) for _, _, s in columns.values()]
            failing = _failure_rank(scores)[0] == 0
            blocks = "".join(_mode_block(title, records.get(key), scores_.get(key), root, page_dir)
                             for title, (root, records, scores_) in columns.items())
            cards.append(f'<div class="card{" fail" if failing else ""}"><div class="meta">{_clean(key)}</div>'
                         f'<div class="prompt">{_clean(keys[key]["prompt"], 600)}</div>'
                         f'<div class="modes">{blocks}</div></div>')
        more = len(ranked) - MAX_SHOWN_PER_CATEGORY
        note = f'<p class="meta">{more} more prompts not shown (see results files).</p>' if more > 0 else ""
        sections.append(f"<h2>{_clean(category)} ({len(cat_keys)} prompts)</h2><div class='grid'>{''.join(cards)}"
                        f"</div>{note}")
    return "".join(sections)


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_clean(title)}</title>"
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")


def _chart_tag(path: Path | None) -> str:
    if path is None:
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img src="data:image/png;base64,{data}" alt="scores chart"></p>'


def write_report(run_dir: Path) -> Path:
    """Write ``report.html`` and ``scores.png`` of a run folder from its results and mode folders."""
    results, records, scores = load_run(run_dir)
    modes = results["modes"]
    score_columns = {mode: _score_rows(info.get("summary")) for mode, info in modes.items()}
    delta = ("think", "no_think") if "think" in modes and "no_think" in modes else None
    chart = write_chart(run_dir / CHART, f"{results['benchmark']}",
                        {m: {k: v for k, v in rows.items() if k == "overall" or k in
                             (modes[m].get("summary") or {}).get("categories", {})}
                         for m, rows in score_columns.items()})
    settings = results["settings"]
    lines = [f"<h1>{_clean(results['benchmark'])}: {_clean(settings.get('model'))}</h1>",
             f"<p class='meta'>{_clean(results['created'])} · data {_clean(settings.get('data'))} · "
             f"scorer {_clean(settings.get('scorer_id') or 'none')}</p>"]
    for mode, info in modes.items():
        summary = info.get("summary")
        gen = info.get("generation", {})
        lines.append(f"<p class='meta'><b>{_clean(mode)}</b>: {_clean(summary['scale']) if summary else 'not scored'}"
                     f" · {info.get('num_prompts', 0)} prompts · {gen.get('num_images', 0)} images "
                     f"({_fmt(gen.get('seconds_per_image'))} s/image) · "
                     f"{len(info.get('errors', []))} scoring errors</p>")
    errors = {mode: summary_standard_errors(info.get("summary")) for mode, info in modes.items()}
    lines.append(_table(score_columns, delta, errors) if any(score_columns.values()) else "<p>No scores.</p>")
    lines.append(_chart_tag(chart))
    columns = {mode: (run_dir / mode, records[mode], scores[mode]) for mode in modes}
    lines.append(_cards(columns, run_dir))
    path = run_dir / REPORT
    atomic_write_bytes(path, _page(f"{results['benchmark']} report", "".join(lines)).encode())
    return path


# ----------------------------------------------------------------------------- compare


def compare_runs(run_a: Path, run_b: Path, out: Path) -> tuple[Path, Path]:
    """Side-by-side page and JSON of two runs of one benchmark: scores of B minus A per mode, and the
    prompts both have, those whose verdicts differ first.

    Raises:
        ValueError: the runs are of different benchmarks or share no mode.
    """
    res_a, rec_a, sc_a = load_run(run_a)
    res_b, rec_b, sc_b = load_run(run_b)
    if res_a["benchmark"] != res_b["benchmark"]:
        raise ValueError(f"cannot compare a {res_a['benchmark']} run with a {res_b['benchmark']} run")
    modes = [m for m in MODES if m in res_a["modes"] and m in res_b["modes"]]
    if not modes:
        raise ValueError(f"{run_a} and {run_b} share no thinking mode")
    out.mkdir(parents=True, exist_ok=True)
    comparison: dict[str, Any] = {"benchmark": res_a["benchmark"], "run_a": str(run_a), "run_b": str(run_b),
                                  "modes": {}}
    body = [f"<h1>{_clean(res_a['benchmark'])}: A = {_clean(run_a)} vs B = {_clean(run_b)}</h1>",
            f"<p class='meta'>A: {_clean(res_a['settings'].get('model'))} · B: "
            f"{_clean(res_b['settings'].get('model'))}</p>"]
    for mode in modes:
        rows_a = _score_rows(res_a["modes"][mode].get("summary"))
        rows_b = _score_rows(res_b["modes"][mode].get("summary"))
        comparison["modes"][mode] = {
            label: {"a": rows_a.get(label), "b": rows_b.get(label),
                    "b_minus_a": _delta(rows_b.get(label), rows_a.get(label))}
            for label in dict.fromkeys([*rows_a, *rows_b])
        }
        body.append(f"<h2>{_clean(mode)}</h2>" + _table({"A": rows_a, "B": rows_b}, ("B", "A")))
        chart = write_chart(out / f"compare_{mode}.png", f"{res_a['benchmark']} ({mode})", {"A": rows_a, "B": rows_b})
        body.append(_chart_tag(chart))
        common = {k: rec_a[mode][k] for k in rec_a[mode] if k in rec_b[mode]}
        changed = [k for k in common
                   if (sc_a[mode].get(k) or {}).get("passed") != (sc_b[mode].get(k) or {}).get("passed")]
        comparison["modes"][mode]["_prompts"] = {"common": len(common), "verdict_changed": changed}
        paired = paired_differences(sc_a[mode], sc_b[mode], list(common))
        comparison["modes"][mode]["_paired"] = paired
        body.append(_paired_table(paired))
        columns = {f"A {mode}": (run_a / mode, common, sc_a[mode]),
                   f"B {mode}": (run_b / mode, {k: rec_b[mode][k] for k in common}, sc_b[mode])}
        body.append(_cards(columns, out))
    json_path = out / COMPARE_JSON
    atomic_write_bytes(json_path, (json.dumps(comparison, indent=2, default=str) + "\n").encode())
    html_path = out / COMPARE_HTML
    atomic_write_bytes(html_path, _page(f"compare {res_a['benchmark']}", "".join(body)).encode())
    return html_path, json_path
