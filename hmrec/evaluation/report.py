"""The evaluation's outputs: the metrics document, the metrics table's rows, a text table and the HTML report."""
from __future__ import annotations

import datetime as dt
import html
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from hmrec.evaluation import metrics as M
from hmrec.evaluation.baselines import ALL


def metrics_document(as_of: dt.date, k: int, model_version: str, results: dict,
                     curves: dict[str, np.ndarray] | None = None, validation: dict | None = None) -> dict:
    """The metrics.json document: methods on everyone, then by segment (plus user counts and curves).

    ``results`` is empty when the as-of has no holdout week yet; ``validation``
    (the validation week's figures and the choices made on them) is added when given.
    """
    strip = (lambda m: {key: round(v, 6) for key, v in m.items() if key != "users"})
    doc = {
        "as_of": as_of.isoformat(),
        "k": k,
        "model_version": model_version,
        "methods": {method: strip(m) for method, m in results.get(ALL, {}).items()},
        "segments": {seg: {method: strip(m) for method, m in by.items()} for seg, by in results.items() if seg != ALL},
        "users": {seg: int(next(iter(by.values()))["users"]) for seg, by in results.items()},
        "recall_curve": {method: [round(float(v), 6) for v in c] for method, c in (curves or {}).items()},
    }
    if validation is not None:
        doc["validation"] = validation
    return doc


def metric_rows(as_of: dt.date, model_version: str, results: dict) -> list[tuple]:
    """Rows of ``tables.EVAL_METRICS``: (as_of, model_version, method, segment, metric, value)."""
    return [
        (as_of, model_version, method, seg, metric, float(value))
        for seg, by in results.items()
        for method, values in by.items()
        for metric, value in values.items()
    ]


def format_table(results: dict, k: int) -> str:
    """The metrics as a fixed-width text table, one line per segment and method."""
    names = M.metric_names(k)
    head = f"{'segment':<8} {'method':<19} {'users':>8} " + " ".join(f"{n:>11}" for n in names)
    lines = [head, "-" * len(head)]
    for seg, by in results.items():
        for method, values in by.items():
            lines.append(
                f"{seg:<8} {method:<19} {int(values['users']):>8} " + " ".join(f"{values[n]:>11.5f}" for n in names)
            )
    return "\n".join(lines)


def _validation_html(doc: dict, k: int) -> str:
    """The validation week's section: the choices made on it and the figures behind them."""
    v = doc.get("validation")
    if not v:
        return ""
    names = [f"recall@{k}", f"ndcg@{k}", f"map@{k}"]
    rows = "".join(
        f"<tr><td>{html.escape(m)}</td>" + "".join(f"<td>{vals.get(n, float('nan')):.5f}</td>" for n in names) + "</tr>"
        for m, vals in v.get("methods", {}).items()
    )
    groups = "".join(f"<li>{html.escape(g)} ({info['users']} buyers): {html.escape(info['chosen'])}</li>"
                     for g, info in v.get("groups", {}).items())
    choices = ", ".join(f"{html.escape(key)} = {html.escape(str(val))}" for key, val in v.get("choices", {}).items()
                        if key != "plans")
    return f"""<h2>Validation week</h2>
<p>Choices for this as-of were made on the purchases of the week from {html.escape(v['cutoff'])} (the fit cutoff) to
the as-of, by a model trained before it ({v['users']} buyers). {html.escape(choices)}.
These figures are from the week the choices were made on, so the served model's is optimistic.</p>
<ul>{groups}</ul>
<table><tr><th>method</th>{''.join(f'<th>{html.escape(n)}</th>' for n in names)}</tr>{rows}</table>"""


def _validation_page(doc: dict, k: int) -> str:
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>hmrec evaluation {html.escape(doc['as_of'])}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head>
<body><h1>Evaluation, as of {html.escape(doc['as_of'])}</h1>
<p>Model version {html.escape(str(doc.get('model_version')))}. No holdout week yet: nothing was bought from the
as-of on, so these lists cannot be judged until next week's purchases arrive.</p>
{_validation_html(doc, k)}
</body></html>
"""


def write_report(directory: Path, doc: dict, results: dict, curves: dict[str, np.ndarray], k: int) -> list[Path]:
    """metrics.json, the two PNG plots and report.html in ``directory``; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    path = directory / "metrics.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=False))
    written.append(path)
    if not results:
        path = directory / "report.html"
        path.write_text(_validation_page(doc, k))
        return written + [path]

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for method, curve in curves.items():
        ax.plot(np.arange(1, len(curve) + 1), curve, label=method, marker="." if len(curve) <= 20 else None)
    ax.axvline(k, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_title(f"Recall@K on the holdout week after {doc['as_of']}")
    ax.grid(alpha=0.3)
    ax.legend()
    path = directory / "recall_at_k.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    written.append(path)

    segs = [s for s in results if s != ALL] or [ALL]
    methods = list(results[segs[0]].keys())
    fig = Figure(figsize=(10, 4))
    width = 0.8 / max(len(methods), 1)
    for j, metric in enumerate([f"map@{k}", f"recall@{k}"]):
        ax = fig.add_subplot(1, 2, j + 1)
        for i, method in enumerate(methods):
            vals = [results[s][method][metric] for s in segs]
            ax.bar(np.arange(len(segs)) + i * width, vals, width, label=method)
        ax.set_xticks(np.arange(len(segs)) + width * (len(methods) - 1) / 2)
        ax.set_xticklabels([f"{s}\n({int(results[s][methods[0]]['users'])})" for s in segs])
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    path = directory / "segments.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    written.append(path)

    names = M.metric_names(k)
    rows = "".join(
        "<tr>" + f"<td>{html.escape(seg)}</td><td>{html.escape(method)}</td><td>{int(v['users'])}</td>"
        + "".join(f"<td>{v[n]:.5f}</td>" for n in names) + "</tr>"
        for seg, by in results.items() for method, v in by.items()
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>hmrec evaluation {html.escape(doc['as_of'])}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:nth-child(-n+2){{text-align:left}}</style></head>
<body><h1>Evaluation, as of {html.escape(doc['as_of'])}</h1>
<p>Model version {html.escape(str(doc.get('model_version')))}; K = {k}; customers with a holdout purchase:
{doc['users'].get(ALL, 0)}. Segments by history before the as-of date: cold (none), lapsed, active.
The served model lists stop at K; model_retrieval, when present, is the model's own ranking before the repurchase blend, to K = {max((len(c) for c in curves.values()), default=k)}.</p>
<table><tr><th>segment</th><th>method</th><th>users</th>{''.join(f'<th>{html.escape(n)}</th>' for n in names)}</tr>
{rows}</table>
<h2>Recall@K</h2><img src="recall_at_k.png" alt="Recall@K per method">
<h2>By segment</h2><img src="segments.png" alt="metrics by segment">
{_validation_html(doc, k)}
</body></html>
"""
    path = directory / "report.html"
    path.write_text(page)
    written.append(path)
    return written
