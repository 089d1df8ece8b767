"""The evaluation's outputs: the metrics document, the metrics table's rows, a text table and the HTML report."""
from __future__ import annotations

import datetime as dt
import html
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from hmrec.etl.segments import AGE_BAND, CHANNEL
from hmrec.evaluation import metrics as M
from hmrec.evaluation.baselines import ALL, SEGMENTS


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


METHOD_NAMES = {
    "model": "served lists (score.method: the blend or the ranker)",
    "two_stage": "ranker over the candidates of six sources (score.method: ranker)",
    "model_retrieval": "two-tower model alone (before the blend)",
    "popularity": "popularity (the same list for everyone)",
    "popularity_segment": "popularity by age segment",
    "repurchase": "recent purchases, then popularity",
}
BASELINE_ORDER = ["model", "two_stage", "model_retrieval", "repurchase", "popularity_segment", "popularity"]
NOISY_BELOW = 100  # customers: a segment this small gives figures that move a lot from week to week

GLOSSARY = [
    ("Recall@K", "the share of a customer's purchases in the judged week that are in their list of K, averaged over customers"),
    ("NDCG@K", "like recall, but a purchase found near the top of the list counts more than one near the bottom (1 = every purchase at the top)"),
    ("MAP@K", "mean average precision: the precision at the rank of each purchase found, averaged (the H&M Kaggle competition's metric)"),
    ("HitRate@K", "the share of customers with at least one purchase in their list"),
    ("coverage", "the share of the catalogue that appears in at least one customer's list"),
    ("lift", "a method's Recall@K divided by the popularity baseline's"),
    ("holdout week", "the days from the as-of date on: no stage but the evaluation reads them, so they judge the lists honestly"),
    ("validation week", "the last days before the as-of date: choices (such as settings) are made on them, never on the holdout"),
    ("segments", "cold: no purchase before the as-of; lapsed: last purchase more than evaluate.lapsed_days before it; active: the rest"),
    ("age bands", "age:<lo>-<hi>: the customer's age in customers.csv, in the bands of features.age_buckets; age:unknown: no age, or outside them"),
    ("sales channels", "channel:store / channel:online: where most of the customer's purchases before the as-of were made (sales_channel_id 1 / 2); channel:none: as many of each, or no purchase"),
]

SEGMENT_KINDS = [("history", "By purchase history"), ("age", "By age band"), ("channel", "By sales channel")]


def segment_kind(name: str) -> str:
    """Which split a segment name belongs to: 'history' (cold, lapsed, active), 'age' or 'channel'."""
    if name.startswith(AGE_BAND):
        return "age"
    if name.startswith(CHANNEL):
        return "channel"
    return "history"


def format_table(results: dict, k: int) -> str:
    """The metrics of everyone as a fixed-width text table (one line per method), and the segment sizes."""
    names = M.metric_names(k)
    head = f"{'segment':<8} {'method':<19} {'users':>8} " + " ".join(f"{n:>11}" for n in names)
    lines = [head, "-" * len(head)]
    for method, values in results.get(ALL, {}).items():
        lines.append(
            f"{ALL:<8} {method:<19} {int(values['users']):>8} " + " ".join(f"{values[n]:>11.3f}" for n in names)
        )
    for kind, _ in SEGMENT_KINDS:
        sizes = [f"{seg} {int(next(iter(by.values()))['users']):,}" for seg, by in results.items()
                 if seg != ALL and segment_kind(seg) == kind]
        if sizes:
            lines.append(f"customers by {'segment' if kind == 'history' else kind}: {', '.join(sizes)}"
                         + (" (each segment's figures: report.html)" if kind == "history" else ""))
    return "\n".join(lines)


# ---- the HTML report --------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


class Markup(str):
    """Text already escaped for HTML."""


def _table(head: list[str], rows: list[list[object]], left: int = 1) -> str:
    """An HTML table; the first ``left`` columns are left-aligned text."""
    cells = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=l' if i < left else ''}>{c if isinstance(c, Markup) else _e(c)}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{cells}</tr>{body}</table>"


def _f(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "—"


def _week(span: dict | None) -> str:
    if not span or not span.get("first"):
        return "no rows"
    return f"{span['first']} … {span['last']}"


def _lift(ratio: float) -> str:
    """A ratio of two figures: ``3.1x``, or two decimals near 1 (``0.99x``)."""
    return f"{ratio:.1f}x" if ratio >= 2 else f"{ratio:.2f}x"


def _ordered(methods: dict) -> list[str]:
    return [m for m in BASELINE_ORDER if m in methods] + [m for m in methods if m not in BASELINE_ORDER]


def figures_source(doc: dict) -> tuple[str, dict, int | None, str] | None:
    """(which week, {method: metrics}, customers, its dates) the report leads with: the holdout week
    when it has figures, else the validation week; None when neither has any."""
    data = doc.get("data", {})
    if doc.get("methods"):
        return "holdout week", doc["methods"], doc.get("users", {}).get(ALL), _week(data.get("holdout"))
    validation = doc.get("validation") or {}
    if validation.get("methods"):
        dates = _week(data.get("validation")) if data.get("validation") else f"the week before {validation.get('cutoff')}"
        return "validation week", validation["methods"], validation.get("users"), dates
    return None


def headline(doc: dict, k: int) -> str:
    """The report's first sentence: the served lists against the baselines, with their lift."""
    source = figures_source(doc)
    if source is None:
        return (f"No purchases after the as-of date {doc['as_of']} yet, and no validation figures: "
                "there is nothing to judge the lists on. Run an as-of at least a week before the last purchase.")
    week, methods, users, dates = source
    recall = f"recall@{k}"
    model = methods.get("model", {}).get(recall)
    if model is None:
        return f"The {week} ({dates}) has figures for {', '.join(methods)} but none for the served lists."
    parts = []
    for base, label in (("popularity", "the popularity baseline"), ("repurchase", "re-offering recent purchases")):
        b = methods.get(base, {}).get(recall)
        if b:
            parts.append(f"{_lift(model / b)} {label} ({b:.3f})")
    who = f"{users:,} customers who bought in the {week}" if users else f"the customers of the {week}"
    return (f"The served lists found {model:.1%} of what {who} ({dates}) bought: Recall@{k} {model:.3f}"
            + (", " + " and ".join(parts) if parts else "") + ".")


def _with_interval(value: object, interval: object) -> object:
    """A figure, with its bootstrap 95% interval below it when there is one."""
    if not (isinstance(interval, (list, tuple)) and len(interval) == 2 and all(isinstance(b, (int, float)) for b in interval)):
        return _f(value)
    return Markup(f"{_f(value)}<br><small>{_f(interval[0])}–{_f(interval[1])}</small>")


def _metrics_rows(methods: dict, k: int, intervals: dict | None = None) -> list[list[object]]:
    pop = methods.get("popularity", {}).get(f"recall@{k}")
    rows = []
    for m in _ordered(methods):
        v, ci = methods[m], (intervals or {}).get(m, {})
        lift = _lift(v[f"recall@{k}"] / pop) if pop and f"recall@{k}" in v else "—"
        rows.append([Markup(f"<b>{_e(m)}</b><br><small>{_e(METHOD_NAMES.get(m, ''))}</small>"),
                     _with_interval(v.get(f"recall@{k}"), ci.get(f"recall@{k}")), _f(v.get(f"ndcg@{k}")),
                     _with_interval(v.get(f"map@{k}"), ci.get(f"map@{k}")), lift])
    return rows


def _metrics_table(methods: dict, k: int, intervals: dict | None = None) -> str:
    """The methods' figures; with ``intervals`` ({method: {metric: [low, high]}}) Recall and MAP show their
    bootstrap 95% interval below them."""
    table = _table(["method", f"Recall@{k}", f"NDCG@{k}", f"MAP@{k}", "lift (recall)"], _metrics_rows(methods, k, intervals))
    if intervals:
        table += "<p><small>Below Recall and MAP: the bootstrap 95% interval over the week's buyers.</small></p>"
    return table


def _validation_section(doc: dict, k: int) -> str:
    validation = doc.get("validation")
    if not validation:
        return ""
    cutoff = validation.get("cutoff", doc["as_of"])
    out = [f"<h2>Validation week (from {_e(cutoff)} to the day before {_e(doc['as_of'])})</h2>",
           f"<p>A model of role fit, trained on purchases before {_e(cutoff)} (fit model version "
           f"{_e(validation.get('fit_model_version'))}), made every list plan's lists for the "
           f"{validation.get('users', 0):,} customers who bought in this week; the settings below were chosen on "
           "it. The served model's figure here is that of the plans chosen on this very week, so it is "
           "optimistic" + ("; the holdout figures above are the honest test of the choices.</p>"
                           if doc.get("methods") else ".</p>")]
    if validation.get("methods"):
        out.append(_metrics_table(validation["methods"], k, (validation.get("intervals") or {}).get("all")))
    else:
        out.append(f"<p>No figures on the validation week{': ' + _e(validation['note']) if validation.get('note') else ''}.</p>")
    groups = validation.get("groups") or {}
    if groups:
        out.append("<h3>Each customer group's lists</h3>")
        out.append(_table(["group (history before the cutoff)", "buyers", "plan chosen"],
                          [[g, f"{v['users']:,}", v["chosen"]] for g, v in groups.items()]))
    choices = {key: v for key, v in (validation.get("choices") or {}).items() if key != "plans"}
    if choices:
        out.append("<h3>Choices made on it</h3>")
        out.append(_table(["setting", "value"], [[key, value] for key, value in choices.items()]))
    return "\n".join(out)


def _data_section(doc: dict) -> str:
    data = doc.get("data")
    if not data:
        return ""
    rows = [[name, f"{data[key]['rows']:,}", _week(data[key])]
            for key, name in (("train", "training rows (before the as-of: what the model saw)"),
                              ("validation", "validation week (the last week of those)"),
                              ("holdout", "holdout week (from the as-of: what the lists are judged on)"))
            if key in data]
    counts = [f"{data[key]:,} {key}" for key in ("customers", "articles", "transactions") if data.get(key) is not None]
    return ("<h2>Data</h2>" + (f"<p>{', '.join(counts)}.</p>" if counts else "")
            + _table(["rows", "count", "dates"], rows))


def _training_section(doc: dict) -> str:
    t = doc.get("training")
    if not t:
        return ""
    val = ", ".join(f"{_e(name)} {v:.3f}" for name, v in t.get("validation", {}).items()) or "none"
    losses = " → ".join(f"{v:.3f}" for v in t.get("train_loss", []))
    rows = [["model version", t["model_version"]], ["training rows", f"{t.get('rows', 0):,}"],
            ["epochs", t["epochs"]], ["training loss by epoch", losses or "—"],
            ["per-epoch validation (fit models only: the week after their cutoff)", Markup(val)],
            ["run time", f"{t['seconds']:.0f} s ({t.get('samples_per_s', 0):,} samples/s in the training loop)"],
            ["MLflow run", t["run_id"]]]
    out = ["<h2>Model and training</h2>", _table(["", ""], rows)]
    if t.get("settings"):
        out.append("<p>Settings of this training that differ from the defaults: set in the config, or changed "
                   "by the train job (it lowers train.batch_size so that an epoch of a small data set has at "
                   "least 50 steps).</p>")
        out.append(_table(["setting", "default", "used"], [[s["key"], s["default"], s["used"]] for s in t["settings"]]))
    return "\n".join(out)


def _segments_section(doc: dict, k: int) -> str:
    segs = doc.get("segments") or {}
    if not segs:
        return ""
    users = doc.get("users", {})
    methods = _ordered(next(iter(segs.values())))
    out = [f"<h2>By customer segment</h2><p>Recall@{k} / MAP@{k} of each method, by purchase history, by age "
           f"band and by sales channel (each customer is in one segment of each). A segment of fewer than "
           f"{NOISY_BELOW} customers is marked noisy: a few customers move its figures a lot; metrics.json gives "
           f"each figure's bootstrap 95% interval.</p>"]
    for kind, title in SEGMENT_KINDS:
        rows = []
        for seg, by in segs.items():
            if segment_kind(seg) != kind:
                continue
            n = users.get(seg, 0)
            label = Markup(f"{_e(seg)}<br><small>{n:,} customers{' — noisy (fewer than ' + str(NOISY_BELOW) + ')' if n < NOISY_BELOW else ''}</small>")
            rows.append([label] + [f"{_f(by[m].get(f'recall@{k}'))} / {_f(by[m].get(f'map@{k}'))}" if m in by else "—"
                                   for m in methods])
        if rows:
            out.append(f"<h3>{title}</h3>" + _table(["segment"] + methods, rows))
            if kind == "history":
                out.append('<p><img src="segments.png" alt="metrics by segment"></p>')
    return "\n".join(out)


def _article(a: dict) -> str:
    names = " · ".join(_e(a.get(c)) for c in ("prod_name", "product_type_name", "colour_group_name") if a.get(c))
    return f"{names or _e(a['article_id'])} <small>({_e(a['article_id'])})</small>"


def _bought(a: dict) -> str:
    """One holdout purchase; in bold with its rank when the list held it."""
    if a.get("rank"):
        return f"<li><b>{_article(a)} — rank {a['rank']}</b></li>"
    return f"<li>{_article(a)}</li>"


def _examples_section(doc: dict) -> str:
    examples = doc.get("examples") or []
    if not examples:
        return ""
    out = ["<h2>A few customers</h2><p>What the model saw (purchases before the as-of date, latest first), "
           "the list it was given, and what the customer then bought in the holdout week "
           "(<b>bold</b>: in the list).</p>"]
    for ex in examples:
        seen = "".join(f"<li>{_article(a)}</li>" for a in ex["history"]) or "<li>no purchase: the list is popular articles</li>"
        listed = "".join(
            f"<li>{'<b>' if a['bought'] else ''}{a['rank']}. {_article(a)} <small>[{_e(a['source'])}]</small>"
            f"{'</b>' if a['bought'] else ''}</li>" for a in ex["list"])
        bought = "".join(_bought(a) for a in ex["bought"])
        out.append(f"<h3>{_e(ex['customer_id'][:16])}… <small>({_e(ex['segment'])})</small></h3>"
                   f"<div class=cols><div><h4>saw</h4><ul>{seen}</ul></div><div><h4>list</h4><ol class=plain>{listed}</ol></div>"
                   f"<div><h4>bought in the holdout week</h4><ul>{bought}</ul></div></div>")
    return "\n".join(out)


def render_html(doc: dict, k: int, curve_max: int) -> str:
    """report.html of a metrics document; every key but as_of and k is optional."""
    source = figures_source(doc)
    lead = [f"<p class=lead>{_e(headline(doc, k))}</p>"]
    if source is not None:
        week, methods, users, dates = source
        lead.append(f"<p>Figures from the {week} ({_e(dates)}){f', {users:,} customers' if users else ''}; "
                    f"K = {k}, model version {_e(doc.get('model_version'))}.</p>")
        if week == "validation week":
            lead.append("<p>There is no holdout week yet (the as-of date is after the last purchase), so these "
                        "figures come from the validation week, the last week before the as-of.</p>")
        shown = doc.get("intervals") if week == "holdout week" else (doc.get("validation") or {}).get("intervals")
        lead.append(_metrics_table(methods, k, (shown or {}).get("all")))
    curve = ""
    if doc.get("recall_curve"):
        curve = (f"<h2>Recall@K</h2><p>The served lists hold K = {k} articles, so the served model's curve stops at "
                 f"{k}; model_retrieval is the model's own ranking, shown to K = {curve_max} to say how much a longer "
                 "list would find.</p><p><img src=\"recall_at_k.png\" alt=\"Recall@K per method\"></p>")
    sections = [*lead, _validation_section(doc, k), _data_section(doc), _training_section(doc),
                _segments_section(doc, k), curve, _examples_section(doc),
                "<h2>Glossary</h2>" + _table(["term", "meaning"], [list(g) for g in GLOSSARY])]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>hmrec evaluation {_e(doc['as_of'])}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;line-height:1.4}}
table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right;vertical-align:top}}
td.l{{text-align:left}}.lead{{font-size:1.25em}}.cols{{display:flex;gap:1.5em}}.cols>div{{flex:1}}
ol.plain{{list-style:none;padding-left:0}}small{{color:#666}}img{{max-width:100%}}</style></head>
<body><h1>Evaluation as of {_e(doc['as_of'])}</h1>
{chr(10).join(s for s in sections if s)}
</body></html>
"""


def write_report(directory: Path, doc: dict, results: dict, curves: dict[str, np.ndarray], k: int,
                 context: dict | None = None) -> list[Path]:
    """metrics.json, the two PNG plots and report.html in ``directory``; returns the paths written.

    ``context`` (see :mod:`hmrec.evaluation.context`) is added to the document first.
    """
    directory.mkdir(parents=True, exist_ok=True)
    doc = {**doc, **(context or {})}
    written = []
    path = directory / "metrics.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=False))
    written.append(path)
    if results:
        written += _plots(directory, doc, results, curves, k)
    path = directory / "report.html"
    path.write_text(render_html(doc, k, max((len(c) for c in curves.values()), default=k)))
    return written + [path]


def _plots(directory: Path, doc: dict, results: dict, curves: dict[str, np.ndarray], k: int) -> list[Path]:
    """recall_at_k.png and segments.png of a holdout evaluation."""
    written = []
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for method, curve in curves.items():
        ax.plot(np.arange(1, len(curve) + 1), curve, label=method, marker="." if len(curve) <= 20 else None)
    ax.axvline(k, color="grey", linestyle=":", linewidth=1)
    ax.annotate(f"K = {k}: the served lists end here", (k, ax.get_ylim()[1]), xytext=(4, -12),
                textcoords="offset points", fontsize=8, color="grey")
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_title(f"Recall@K on the holdout week from {doc['as_of']}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    path = directory / "recall_at_k.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    written.append(path)

    segs = [s for s in results if s in SEGMENTS] or [ALL]  # the history segments (the table has the others)
    methods = list(results[segs[0]].keys())
    fig = Figure(figsize=(10, 4.6))
    width = 0.8 / max(len(methods), 1)
    for j, metric in enumerate([f"map@{k}", f"recall@{k}"]):
        ax = fig.add_subplot(1, 2, j + 1)
        for i, method in enumerate(methods):
            vals = [results[s][method][metric] for s in segs]
            ax.bar(np.arange(len(segs)) + i * width, vals, width, label=method)
        ax.set_xticks(np.arange(len(segs)) + width * (len(methods) - 1) / 2)
        ax.set_xticklabels([f"{s}\n({int(results[s][methods[0]]['users'])} customers)" for s in segs])
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
    # One legend for both panels, under them, where it covers no bar.
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(methods), fontsize=8, frameon=False)
    fig.subplots_adjust(bottom=0.22)
    path = directory / "segments.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    written.append(path)
    return written
