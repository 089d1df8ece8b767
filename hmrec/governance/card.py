"""The model card of a registered serve version: ``model_card.md`` and ``model_card.json``.

    hmrec card --as-of YYYY-MM-DD [--model-version V]

Sections after Mitchell et al. (2019) and the Model Card Toolkit: model
details, training data lineage, evaluation, exposure and popularity bias of
the served lists, intended and out-of-scope uses, known limitations, and the
gate's decision. The evaluation gives the validation week (overall and per
history group: cold, lapsed, active; and, when the version's ranker lists are
served, the ranker on the rank stage's held-out buyers of that week) and,
when there is one, the holdout week (overall, per history group, per age band
``age:<lo>-<hi>`` / ``age:unknown`` and per sales channel
``channel:store`` / ``channel:online`` / ``channel:none``), each with its
customer count, bootstrap 95% intervals over customers and the model's lift
over each baseline. Every figure comes from the run: the version's registry
record, meta.json and ranker.json, the Delta tables,
``reports/<as_of>/metrics.json`` and the ``gate.*`` tags; none is typed here.

The two files go to the version's MLflow run (artifact path ``model_card/``),
to ``reports/<as_of>/`` when the version's lists are the ones served for that
as-of, and always to ``reports/<as_of>/v<version>/`` with a copy of that
version's report files, so every refresh's report stays readable after a
later one. ``report.html`` links the card.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

import hmrec
from hmrec.config import Config
from hmrec.errors import HmrecError
from hmrec.etl.segments import HISTORY_GROUPS
from hmrec.etl.split import window
from hmrec.evaluation.evaluate import validation_section
from hmrec.evaluation.report import SEGMENT_KINDS, segment_kind
from hmrec.lake import storage, tables
from hmrec.lake.choices import read_choices
from hmrec.model import registry
from hmrec.progress import log, stage

CARD_MD = "model_card.md"
CARD_JSON = "model_card.json"
ARTIFACT_PATH = "model_card"
REPORT_FILES = ("metrics.json", "report.html", "recall_at_k.png", "segments.png")
LINK_MARKER = "<!-- model card -->"
TOP_SHARE = 0.01  # the most bought articles whose share of the recommended slots is reported

INTENDED_USE = [
    "Personalised product retrieval: a precomputed list of K articles per customer, refreshed weekly, for "
    "recommendation slots on a retailer's site, app or e-mails.",
    "Offline experiments: comparing models, list recipes and settings on past weeks (`hmrec backtest`).",
]
OUT_OF_SCOPE = [
    "Pricing, promotions, credit or any other automated decision about people without further safeguards.",
    "Inferring customers' personal attributes (age, gender, income) from their lists or embeddings.",
    "Real-time reaction to a session: the lists are computed in batch before the as-of date.",
]
LIMITATIONS = [
    "Judged offline only, on purchases after the cutoff: no online test (clicks, conversions) stands behind "
    "these figures.",
    "Embeddings and lists are refreshed weekly; new articles and customers wait for the next refresh.",
    "Weak personalisation for customers without history: they get their age segment's or the global "
    "popularity list.",
    "The validation-week figures are optimistic: the list recipes were chosen on that same week.",
    "Trained on the retailer's own purchases: it repeats their popularity patterns (see exposure).",
]


def gini(exposure: np.ndarray) -> float:
    """Gini coefficient of non-negative counts: 0 when all are equal, (n - 1) / n when one holds everything."""
    x = np.sort(np.asarray(exposure, dtype=np.float64))
    n = len(x)
    if n == 0 or x.sum() <= 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float((2 * (ranks * x).sum()) / (n * x.sum()) - (n + 1) / n)


def exposure(slots: "np.ndarray", catalogue: list[str], bought: dict[str, int], sources: dict[str, int]) -> dict:
    """Exposure figures of served lists: ``slots`` the article_id of every slot, ``bought`` each article's purchases."""
    counts: dict[str, int] = {}
    for article in slots:
        counts[article] = counts.get(article, 0) + 1
    total = max(len(slots), 1)
    top_n = max(1, int(round(TOP_SHARE * len(catalogue))))
    top = set(sorted(bought, key=lambda a: (-bought[a], a))[:top_n])
    per_article = np.array([counts.get(a, 0) for a in catalogue])
    n_sources = max(sum(sources.values()), 1)
    return {
        "slots": int(len(slots)),
        "catalogue": len(catalogue),
        "catalogue_coverage": round(len(counts) / max(len(catalogue), 1), 6),
        "top_articles": top_n,
        "top_articles_slot_share": round(sum(counts.get(a, 0) for a in top) / total, 6),
        "gini": round(gini(per_article), 6),
        "source_share": {s: round(n / n_sources, 6) for s, n in sorted(sources.items())},
    }


def lifts(methods: dict, k: int, of: str = "model") -> dict[str, float | None]:
    """MAP@K of method ``of`` over each other method's, where both are known and the other's is above 0."""
    metric = f"map@{k}"
    model = methods.get(of, {}).get(metric)
    return {m: (round(model / v[metric], 4) if model is not None and v.get(metric) else None)
            for m, v in methods.items() if m != of and metric in v}


RANKER_LISTS = ("ranker", "blend", "popularity")  # the lists the rank stage measured on its held-out buyers


def ranker_validation(cfg: Config, version: str, k: int) -> dict | None:
    """The rank stage's figures on the validation week's held-out buyers (``ranker.json``) for the card, and
    whether scoring serves the ranker's lists (``served``); None when the version has no ranker or its
    figures were not measured."""
    from hmrec.rank.ranker import load_ranker, served_list

    which, _ = served_list(cfg, version)
    if which == "no ranker":
        return None
    served = cfg.score.method == "ranker" and which == "ranker"
    of = "ranker" if served else "blend"
    try:
        meta = load_ranker(cfg, version)[1]
        figures = meta.get("validation", {})
    except HmrecError as exc:  # a damaged or outdated ranker: the card says so instead of failing
        log("card", f"no ranker figures in the card: {exc}")
        return {"served": served, "customers": None, "groups": {}, "methods": {}, "lift_of": of,
                "lift_over": {}, "intervals": {}, "note": str(exc)}
    methods = {m: {key: v for key, v in figures[m].items() if key != "users"} for m in RANKER_LISTS if m in figures}
    if not methods:
        return None
    # ranker.json keeps its keys sorted: back to the history groups' and the lists' order
    order = ["all", *HISTORY_GROUPS]
    by_group = (lambda d: {g: d[g] for g in order if g in d})
    groups = {g: {"users": v.get("users"), **{m: v[m] for m in RANKER_LISTS if m in v}}
              for g, v in by_group(figures.get("groups", {})).items()}
    intervals = {g: {m: v[m] for m in RANKER_LISTS if m in v} for g, v in by_group(figures.get("intervals", {})).items()}
    return {"served": served, "customers": figures.get("users"), "groups": groups,
            "methods": methods, "lift_of": of, "lift_over": lifts(methods, k, of), "intervals": intervals,
            "active_days": meta.get("active_days")}


def _git_commit() -> str | None:
    """The commit of the checkout hmrec runs from, or None (an installed wheel, no git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(hmrec.__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def _iso_ms(ms: int | None) -> str | None:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="seconds") if ms else None


def build_card(cfg: Config, spark: SparkSession, as_of: dt.date, version: str) -> dict:
    """The card of serve version ``version`` at ``as_of``, as a JSON-able dict."""
    mv = registry.model_version(cfg, version)
    tags = dict(mv.tags or {})
    meta = registry.load_model(cfg, version).meta
    run = registry.client(cfg).get_run(mv.run_id)
    k = cfg.score.k
    history = meta.get("history", [])
    details = {
        "name": cfg.paths.registered_model, "version": str(version), "as_of": as_of.isoformat(),
        "role": tags.get(registry.ROLE_TAG, "serve"), "aliases": sorted(mv.aliases or []),
        "architecture": "two-tower retrieval model (PyTorch): user and item towers over ids and features, "
                        "in-batch and random negatives with a sampled softmax; exact or approximate "
                        f"inner-product search with FAISS ({cfg.index.kind} index)",
        "model_args": meta.get("model_args"), "epochs": len(history), "best_epoch": meta.get("best_epoch"),
        "training_started": _iso_ms(run.info.start_time), "training_ended": _iso_ms(run.info.end_time),
        "training_seconds": round((run.info.end_time - run.info.start_time) / 1000, 1)
        if run.info.end_time and run.info.start_time else None,
        "train_rows": meta.get("train_rows"), "hmrec_version": hmrec.__version__, "git_commit": _git_commit(),
        "mlflow_run_id": mv.run_id,
    }
    # the rows the model learnt from: its own train.train_days window of tables.TRAIN
    days = int(meta.get("config", {}).get("train", {}).get("train_days", cfg.train.train_days))
    train = window(storage.read_as_of(spark, cfg, tables.TRAIN, as_of), as_of, days)
    row = train.agg(F.min("t_dat").alias("first"), F.max("t_dat").alias("last"), F.count(F.lit(1)).alias("rows"),
                    F.countDistinct("customer_id").alias("customers"),
                    F.countDistinct("article_id").alias("articles")).first()
    lineage = {
        "table_versions": meta.get("table_versions", {}),
        "training_rows": {"first_day": row["first"].isoformat() if row["first"] else None,
                          "last_day": row["last"].isoformat() if row["last"] else None,
                          "rows": int(row["rows"]), "customers": int(row["customers"]),
                          "articles": int(row["articles"])},
        "training_window_days": days or None,
        "catalogue_articles": storage.read(spark, cfg, tables.ARTICLES).select("article_id").distinct().count(),
        "customers": storage.read(spark, cfg, tables.CUSTOMERS).select("customer_id").distinct().count(),
    }

    doc_path = Path(cfg.lakehouse) / "reports" / as_of.isoformat() / "metrics.json"
    doc = json.loads(doc_path.read_text()) if doc_path.exists() else {}
    if doc.get("model_version") != str(version):
        doc = {}  # the holdout figures there are another version's
    validation = validation_section(read_choices(spark, cfg, as_of), k) or {}
    ranked = ranker_validation(cfg, str(version), k)
    evaluation = {
        "k": k,
        "validation": {
            "week": f"{validation.get('cutoff')} .. {(as_of - dt.timedelta(days=1)).isoformat()}"
            if validation else None,
            "fit_model_version": validation.get("fit_model_version"),
            "served_list": "ranker" if ranked and ranked["served"] else "blend",
            "customers": validation.get("users"), "methods": validation.get("methods", {}),
            "lift_over": lifts(validation.get("methods", {}), k),
            "intervals": validation.get("intervals", {}),
            "groups": {g: {**v, "lift_over": lifts(v.get("methods", {}), k)}
                       for g, v in validation.get("groups", {}).items()},
            "ranker": ranked,
        },
        "holdout": None,
    }
    if doc.get("methods"):
        evaluation["holdout"] = {
            "week": f"{as_of.isoformat()} .. {(as_of + dt.timedelta(days=cfg.split.holdout_days - 1)).isoformat()}",
            "customers": doc.get("users", {}), "methods": doc["methods"], "lift_over": lifts(doc["methods"], k),
            "segments": doc.get("segments", {}), "intervals": doc.get("intervals", {}),
            "segment_lift_over": {s: lifts(m, k) for s, m in doc.get("segments", {}).items()},
        }

    bias = None
    # a first refresh whose version failed the gate has no served table yet: the card still records why
    if storage.exists(spark, cfg, tables.RECOMMENDATIONS):
        served = storage.read_as_of(spark, cfg, tables.RECOMMENDATIONS, as_of).where(F.col("model_version") == str(version))
        slots = served.select("article_id").toPandas()["article_id"].to_numpy(dtype=object)
    else:
        slots = np.array([], dtype=object)
    if len(slots):
        catalogue = [r[0] for r in storage.read(spark, cfg, tables.ARTICLES).select("article_id").distinct().collect()]
        bought = {r[0]: int(r[1]) for r in train.groupBy("article_id").count().collect()}
        sources = {r[0]: int(r[1]) for r in served.groupBy("source").count().collect()}
        bias = exposure(slots, catalogue, bought, sources)
    gate = {key.removeprefix("gate."): value for key, value in sorted(tags.items()) if key.startswith("gate.")}
    return {"model_details": details, "training_data": lineage, "evaluation": evaluation, "exposure": bias,
            "intended_use": INTENDED_USE, "out_of_scope": OUT_OF_SCOPE, "limitations": LIMITATIONS, "gate": gate}


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _methods_table(methods: dict, lift_over: dict, k: int, intervals: dict | None = None,
                   of: str = "model") -> list[str]:
    metrics = [f"recall@{k}", f"ndcg@{k}", f"map@{k}", "coverage"]
    ci = [f"recall@{k}", f"map@{k}"] if intervals else []
    out = ["| method | " + " | ".join(metrics) + "".join(f" | {m} 95% interval" for m in ci)
           + f" | {of}'s map@{k} lift over it |", "|---" * (len(metrics) + len(ci) + 2) + "|"]
    for method, values in methods.items():
        bounds = (intervals or {}).get(method, {})
        cells = [f"{bounds[m][0]:.4f} .. {bounds[m][1]:.4f}" if m in bounds else "-" for m in ci]
        out.append(f"| {method} | " + " | ".join(_fmt(values.get(m)) for m in metrics)
                   + "".join(f" | {c}" for c in cells)
                   + f" | {_fmt(lift_over.get(method)) if method != of else ''} |")
    return out


def render_md(card: dict) -> str:
    """``model_card.md`` of a card."""
    d, data, ev, bias = card["model_details"], card["training_data"], card["evaluation"], card["exposure"]
    k = ev["k"]
    lines = [f"# Model card: {d['name']} version {d['version']} (as-of {d['as_of']})", "",
             "Every figure below was computed by the run that registered this version (model_card.json holds "
             "the same figures).", "", "## Model details", ""]
    lines += [f"- {key.replace('_', ' ')}: {_fmt(value) if not isinstance(value, (dict, list)) else json.dumps(value)}"
              for key, value in d.items()]
    rows = data["training_rows"]
    lines += ["", "## Training data", "",
              f"- training rows: {rows['rows']:,} purchases from {rows['first_day']} to {rows['last_day']}, "
              f"{rows['customers']:,} customers, {rows['articles']:,} articles",
              f"- training window: {data['training_window_days'] or 'all'} days before the as-of",
              f"- catalogue: {data['catalogue_articles']:,} articles; customers: {data['customers']:,}",
              "- Delta versions of the input tables: "
              + ", ".join(f"{t} v{v}" for t, v in sorted(data["table_versions"].items()))]
    val = ev["validation"]
    lines += ["", "## Evaluation", "", f"### Validation week ({val['week'] or 'none'})", ""]
    if val["methods"]:
        lines += [f"{val['customers']:,} buyers; lists made by the model fitted before the week (version "
                  f"{val['fit_model_version']}) with the recipes served. Optimistic: the recipes were chosen on it. "
                  "Intervals: bootstrap over the buyers.", ""]
        lines += _methods_table(val["methods"], val["lift_over"], k, val.get("intervals", {}).get("all"))
        lines += ["", "| customer group | buyers | recipe |", "|---|---|---|"]
        lines += [f"| {g} | {v.get('users')} | {v.get('chosen')} |" for g, v in val["groups"].items()]
        for g, v in val["groups"].items():
            if v.get("methods"):
                lines += ["", f"Group {g} ({v.get('users', 0):,} buyers, recipe {v.get('chosen')}):", ""]
                lines += _methods_table(v["methods"], v.get("lift_over", {}), k, val.get("intervals", {}).get(g))
    else:
        lines.append("No validation figures (every setting was pinned, or the week had no purchase).")
    ranked = val.get("ranker")
    if ranked and ranked.get("note"):
        lines += ["", f"The version's ranker could not be read: {ranked['note']}"]
    elif ranked:
        served = ("These are the served lists' validation figures: scoring serves the ranker's lists."
                  if ranked["served"] else "Scoring serves the blend's lists (the figures above); the ranker's are "
                                            "shown for comparison.")
        lines += ["", f"#### The ranker on the rank stage's held-out buyers ({ranked['customers'] or 0:,} buyers of the "
                      "week it did not train on)", "", served + f" Lift: the {ranked['lift_of']}'s MAP@{k} over each "
                      "other list's.", ""]
        lines += _methods_table(ranked["methods"], ranked["lift_over"], k, ranked["intervals"].get("all"),
                                of=ranked["lift_of"])
        active = ranked.get("active_days") or {}
        if active.get(f"map@{k}"):
            maps = active[f"map@{k}"]
            who = (f"the customers who bought within {active['chosen']} days before the as-of"
                   if active["chosen"] else "every customer with a purchase")
            lines += ["", f"Served candidates: {who} ({active.get('why')}; the others get the popularity list). "
                          f"Held-out MAP@{k} by window: " + ", ".join(
                              f"{w} days {m:.4f}" if w != "0" else f"every buyer {m:.4f}" for w, m in maps.items()) + "."]
        for g, v in ranked.get("groups", {}).items():
            methods = {m: f for m, f in v.items() if m != "users"}
            lines += ["", f"Group {g} ({v.get('users', 0):,} held-out buyers):", ""]
            lines += _methods_table(methods, lifts(methods, k, ranked["lift_of"]), k, ranked["intervals"].get(g),
                                    of=ranked["lift_of"])
    hold = ev["holdout"]
    lines += ["", "### Holdout week" + (f" ({hold['week']})" if hold else ""), ""]
    if hold:
        lines += [f"{hold['customers'].get('all', 0):,} customers with a purchase in the week; intervals: "
                  f"bootstrap over customers. Segments: by purchase history (cold, lapsed, active), by age band "
                  f"(age:<lo>-<hi>, age:unknown) and by sales channel (channel:store, channel:online, channel:none); "
                  f"each customer is in one segment of each.", ""]
        lines += _methods_table(hold["methods"], hold["lift_over"], k, hold["intervals"].get("all"))
        for kind, title in SEGMENT_KINDS:
            shown = [seg for seg in hold["segments"] if segment_kind(seg) == kind]
            if shown:
                lines += ["", f"#### {title}"]
            for seg in shown:
                lines += ["", f"Segment {seg} ({hold['customers'].get(seg, 0):,} customers):", ""]
                lines += _methods_table(hold["segments"][seg], hold["segment_lift_over"].get(seg, {}), k,
                                        hold["intervals"].get(seg))
    else:
        lines.append("No holdout figures for this version (no week after the as-of yet, or not evaluated).")
    lines += ["", "## Exposure and popularity bias", ""]
    if bias:
        lines += [f"- recommended slots: {bias['slots']:,}",
                  f"- catalogue coverage: {bias['catalogue_coverage']:.2%} of {bias['catalogue']:,} articles",
                  f"- slots holding the top {TOP_SHARE:.0%} most bought articles ({bias['top_articles']}): "
                  f"{bias['top_articles_slot_share']:.2%}",
                  f"- Gini of article exposure: {bias['gini']:.3f}",
                  "- share of slots by source: " + ", ".join(f"{s} {v:.1%}" for s, v in bias["source_share"].items())]
    else:
        lines.append("This version's lists are not served for this as-of: no exposure figures.")
    lines += ["", "## Intended use", "", *[f"- {u}" for u in card["intended_use"]],
              "", "## Out-of-scope uses", "", *[f"- {u}" for u in card["out_of_scope"]],
              "", "## Known limitations", "", *[f"- {u}" for u in card["limitations"]],
              "", "## The gate's decision", ""]
    lines += [f"- {key}: {value}" for key, value in card["gate"].items()] if card["gate"] else ["- not judged"]
    return "\n".join(lines) + "\n"


def link_report(report: Path) -> None:
    """Add a link to the card files to ``report`` (report.html), once."""
    if not report.exists():
        return
    html = report.read_text()
    if LINK_MARKER in html:
        return
    link = (f"{LINK_MARKER}<h2>Model card</h2><p>What the model is, what it was trained on, how good it is and for "
            f"whom, what it is for: <a href=\"{CARD_MD}\">{CARD_MD}</a> (figures: <a href=\"{CARD_JSON}\">"
            f"{CARD_JSON}</a>).</p>\n")
    report.write_text(html.replace("</body></html>", link + "</body></html>"))


def write_card(cfg: Config, spark: SparkSession, as_of: dt.date, model_version: str | None = None) -> dict:
    """The card stage: build the card of the serve version of ``as_of`` and write it everywhere it goes."""
    with stage("card") as summary:
        version = model_version or registry.latest_version(cfg, as_of, role="serve")
        if version is None:
            raise HmrecError(f"no serve model version registered for as-of {as_of}: run `hmrec train --as-of {as_of}`")
        card = build_card(cfg, spark, as_of, str(version))
        text = render_md(card)
        reports = Path(cfg.lakehouse) / "reports" / as_of.isoformat()
        own = reports / f"v{version}"
        own.mkdir(parents=True, exist_ok=True)
        served = card["exposure"] is not None
        if served:
            # this version's report files, kept under it: a later refresh of the as-of replaces the top ones
            for name in REPORT_FILES:
                if (reports / name).exists():
                    shutil.copy2(reports / name, own / name)
        for directory in (own, reports) if served else (own,):
            (directory / CARD_JSON).write_text(json.dumps(card, indent=1, default=str))
            (directory / CARD_MD).write_text(text)
            link_report(directory / "report.html")
        with tempfile.TemporaryDirectory(prefix="hmrec-card-") as tmp:
            (Path(tmp) / CARD_JSON).write_text(json.dumps(card, indent=1, default=str))
            (Path(tmp) / CARD_MD).write_text(text)
            registry.log_artifacts(cfg, str(version), tmp, ARTIFACT_PATH)
        summary.update(version=str(version), card=str(own / CARD_MD), served=served)
        log("card", f"model card of version {version}: {own / CARD_MD}")
    return dict(summary)
