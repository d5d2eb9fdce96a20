"""The HTML report: one self-contained file (inline CSS and SVG, no script, no external asset),
so it can be mailed, attached to a ticket or opened offline years later. Tables of every metric,
bars per metric per model, per-item answers to read, and, for a fine-tune, the training and
held-out loss curves from its run log, next to the base it came from."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from cuvee.eval.runner import EvalResult

COLORS = ["#3b6fb6", "#e08a2c", "#4a9a5b", "#b04a6f", "#7a5fb0", "#5a8f9c", "#a08a3c"]
_ANSWER_CHARS = 800
LOWER_IS_BETTER = {"loss"}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.8rem 0}td,th{border:1px solid #ddd;padding:.3rem .6rem;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;
font-variant-numeric:tabular-nums}.best{font-weight:700}.muted{color:#777;font-size:.9em}
code{background:#f4f4f4;padding:0 .2rem}details{margin:.6rem 0}pre{white-space:pre-wrap;
margin:0;font-size:.85em;max-height:16em;overflow:auto}.warn{color:#a33;font-weight:600}
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return escape(str(value))


def _short(sha: str | None) -> str:
    return (sha or "")[:12]


def bar_chart(metrics: list[str], models: list[str], values: dict[str, dict[str, Any]]) -> str:
    """Horizontal bars grouped by metric, one bar per model, each metric on a scale from 0 to
    max(1, its largest value) so rates read as fractions and ratios above 1 still fit."""
    bar_h, gap, label_w, bar_w = 14, 10, 190, 420
    legend_h = 18 * len(models)  # one legend line per model: long endpoint URLs never overlap
    height = legend_h + len(metrics) * (len(models) * bar_h + gap) + gap
    width = label_w + bar_w + 80
    parts = [
        f'<svg role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-size="12">'
    ]
    for i, model in enumerate(models):
        color = COLORS[i % len(COLORS)]
        parts.append(f'<rect x="0" y="{4 + 18 * i}" width="12" height="12" fill="{color}"/>')
        parts.append(f'<text x="16" y="{14 + 18 * i}">{escape(model)}</text>')
    y = legend_h + gap
    for metric in metrics:
        numbers = [values[m].get(metric) for m in models]
        scale = max([1.0] + [v for v in numbers if isinstance(v, int | float)])
        parts.append(f'<text x="0" y="{y + len(models) * bar_h / 2 + 4}">{escape(metric)}</text>')
        for i, value in enumerate(numbers):
            top = y + i * bar_h
            if isinstance(value, int | float):
                length = max(0.0, bar_w * value / scale)
                parts.append(
                    f'<rect x="{label_w}" y="{top + 1}" width="{length:.1f}" '
                    f'height="{bar_h - 2}" fill="{COLORS[i % len(COLORS)]}"/>'
                )
                parts.append(
                    f'<text x="{label_w + length + 4:.1f}" y="{top + bar_h - 3}">{value:.3f}</text>'
                )
            else:
                parts.append(f'<text x="{label_w + 4}" y="{top + bar_h - 3}">n/a</text>')
        y += len(models) * bar_h + gap
    parts.append("</svg>")
    return "".join(parts)


def line_chart(series: dict[str, list[tuple[float, float]]], title: str) -> str:
    """Loss against step, one polyline (with dots) per series, axes labelled at their ends."""
    width, height, left, bottom, top, right = 640, 280, 56, 36, 28, 16
    points = [p for s in series.values() for p in s]
    if not points:
        return ""
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1 = x1 if x1 > x0 else x0 + 1
    pad = (y1 - y0) * 0.05 or 0.5
    y0, y1 = y0 - pad, y1 + pad

    def sx(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * (width - left - right)

    def sy(v: float) -> float:
        return top + (y1 - v) / (y1 - y0) * (height - top - bottom)

    parts = [
        f'<svg role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-size="12">',
        f'<text x="{left}" y="16" font-weight="600">{escape(title)}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" '
        'stroke="#888"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#888"/>',
    ]
    for k in range(5):
        v = y0 + (y1 - y0) * k / 4
        parts.append(f'<text x="4" y="{sy(v) + 4:.1f}">{v:.2f}</text>')
        parts.append(
            f'<line x1="{left}" y1="{sy(v):.1f}" x2="{width - right}" y2="{sy(v):.1f}" '
            'stroke="#eee"/>'
        )
    parts.append(f'<text x="{left}" y="{height - 14}">step {x0:g}</text>')
    parts.append(f'<text x="{width - right - 70}" y="{height - 14}">step {x1:g}</text>')
    for i, (name, pts) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        coords = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in pts)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{coords}"/>')
        parts.extend(
            f'<circle cx="{sx(a):.1f}" cy="{sy(b):.1f}" r="2.5" fill="{color}"/>' for a, b in pts
        )
        lx = width - right - 150
        parts.append(f'<rect x="{lx}" y="{top + i * 16}" width="12" height="3" fill="{color}"/>')
        parts.append(f'<text x="{lx + 16}" y="{top + i * 16 + 5}">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# log.jsonl key -> curve name
LOSS_CURVES = {"loss": "train loss", "eval_loss": "held-out loss"}
# what a preference run (cuvee train --method dpo|kto|orpo) logs beside its loss
PREFERENCE_CURVES = {
    "accuracy": "reward accuracy",
    "eval_accuracy": "held-out reward accuracy",
    "margin": "reward margin",
    "eval_margin": "held-out reward margin",
}


def read_run_log(
    run_dir: str | Path, keys: dict[str, str] = LOSS_CURVES
) -> dict[str, list[tuple[float, float]]]:
    """Curves by step from a run's ``log.jsonl`` (what cuvee.train.tracking writes), the loss
    and held-out loss unless ``keys`` names others; unreadable lines are skipped, a missing log
    gives nothing."""
    path = Path(run_dir) / "log.jsonl"
    curves: dict[str, list[tuple[float, float]]] = {name: [] for name in keys.values()}
    if not path.is_file():
        return {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        step = row.get("step")
        if not isinstance(step, int | float):
            continue
        for key, name in keys.items():
            if isinstance(row.get(key), int | float):
                curves[name].append((step, float(row[key])))
    return {k: v for k, v in curves.items() if v}


def loss_sections(result: EvalResult) -> list[str]:
    models = result.document["models"]
    sections = []
    for label, identity in models.items():
        run_dir = identity.get("run_dir")
        if identity.get("kind") != "fine-tuned" or not run_dir:
            continue
        curves = read_run_log(run_dir)
        parent = identity.get("parent")
        compared = parent in models
        note = (
            f"fine-tuned from <code>{escape(str(parent))}</code>"
            + (", which is in this comparison" if compared else "")
            + f"; run log <code>{escape(str(Path(run_dir) / 'log.jsonl'))}</code>"
        )
        if not curves:
            sections.append(f"<h3>{escape(label)}</h3><p class=muted>{note}: no log found</p>")
            continue
        chart = line_chart(curves, f"{label}: loss by training step")
        preference = read_run_log(run_dir, PREFERENCE_CURVES)
        if preference:
            chart += line_chart(preference, f"{label}: preference metrics by training step")
        sections.append(f"<h3>{escape(label)}</h3><p class=muted>{note}</p>{chart}")
    return sections


def render_html(result: EvalResult) -> str:
    doc = result.document
    models = list(doc["models"])
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<title>cuvee eval report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>cuvee eval report</h1>",
        f"<p class=muted>{escape(', '.join(models))} on {escape(', '.join(doc['suites']))}; "
        f"greedy decoding (temperature 0), seed {doc['settings']['seed']}"
        + (f", first {doc['settings']['limit']} items" if doc["settings"]["limit"] else "")
        + "</p>",
        "<h2>Models</h2><table><tr><th>model</th><th>backend</th><th>sha256</th>"
        "<th>runs</th><th>chat template</th></tr>",
    ]
    for label, ident in doc["models"].items():
        runs = ident.get("file") or ident.get("base_url") or ""
        out.append(
            f"<tr><td>{escape(label)}</td><td>{escape(ident.get('backend', ''))}</td>"
            f"<td><code>{_short(ident.get('sha256'))}</code></td><td>{escape(str(runs))}</td>"
            f"<td>{escape(str(ident.get('template') or 'as the endpoint applies it'))}</td></tr>"
        )
    out.append("</table>")
    for label, info in doc["suites"].items():
        out.append(f"<h2>{escape(label)}</h2>")
        desc = (
            f"version {escape(info['version'])}, sha256 <code>{_short(info['sha256'])}</code>, "
            f"{info['items']} items, max {info['max_tokens']} tokens"
        )
        if info.get("reference"):
            desc += (
                f"; each model judged against <b>{escape(info['reference'])}</b> by "
                f"<code>{escape(str(info['judge'].get('model') or info['judge']))}</code>, "
                "every pair in both orders"
            )
        out.append(f"<p class=muted>{desc}</p>")
        per_model = {m: doc["results"].get(m, {}).get(label, {}) for m in models}
        shown = [m for m in models if per_model[m].get("metrics")]
        metrics = list(dict.fromkeys(k for m in shown for k in per_model[m]["metrics"]))
        if metrics:
            out.append(_metric_table(metrics, shown, per_model))
            values = {m: per_model[m]["metrics"] for m in shown}
            out.append(bar_chart(metrics, shown, values))
        out.append(_counts_table(models, per_model))
        out.append(_answers(result, label, models))
    curves = loss_sections(result)
    if curves:
        out.append("<h2>Training</h2>")
        out.extend(curves)
    out.append("</body></html>")
    return "\n".join(out)


def _metric_table(metrics, models, per_model) -> str:
    rows = ["<table><tr><th>metric</th>" + "".join(f"<th>{escape(m)}</th>" for m in models)]
    rows[0] += "</tr>"
    for metric in metrics:
        values = [per_model[m]["metrics"].get(metric) for m in models]
        numbers = [v for v in values if isinstance(v, int | float)]
        # every metric is higher-is-better but pairwise "loss" (the rate of lost prompts)
        pick = min if metric in LOWER_IS_BETTER else max
        best = pick(numbers) if len(numbers) > 1 else None
        cells = "".join(
            f'<td class="num{" best" if v is not None and v == best else ""}">{_fmt(v)}</td>'
            for v in values
        )
        rows.append(f"<tr><td>{escape(metric)}</td>{cells}</tr>")
    rows.append("</table>")
    return "".join(rows)


def _counts_table(models, per_model) -> str:
    keys = list(dict.fromkeys(k for m in models for k in per_model[m].get("counts", {})))
    if not keys:
        return ""
    rows = ["<table><tr><th>count</th>" + "".join(f"<th>{escape(m)}</th>" for m in models)]
    rows[0] += "</tr>"
    for key in keys:
        cells = []
        for m in models:
            value = per_model[m].get("counts", {}).get(key)
            alarm = key.endswith("errors") and value
            cells.append(f'<td class="num{" warn" if alarm else ""}">{_fmt(value)}</td>')
        rows.append(f"<tr><td>{escape(key)}</td>{''.join(cells)}</tr>")
    rows.append("</table>")
    return "".join(rows)


def _answers(result: EvalResult, label: str, models: list[str]) -> str:
    run = next(r for r in result.suites if r.label == label)
    head = "".join(f"<th>{escape(m)}</th>" for m in models)
    rows = [f"<details><summary>answers, item by item</summary><table><tr><th>item</th>{head}</tr>"]
    for k, item in enumerate(run.items):
        cells = []
        for m in models:
            answers = result.outputs.get(m, {}).get(label)
            text = answers[k][:_ANSWER_CHARS] if answers else ""
            cells.append(f"<td><pre>{escape(text)}</pre></td>")
        prompt = escape(item.prompt[:300])
        rows.append(
            f"<tr><td><b>{escape(item.id)}</b><pre class=muted>{prompt}</pre></td>"
            f"{''.join(cells)}</tr>"
        )
    rows.append("</table></details>")
    return "".join(rows)


def write_report(result: EvalResult, path: Path) -> Path:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(result), encoding="utf-8")
    return path
