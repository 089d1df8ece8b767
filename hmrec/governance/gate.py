"""The gate: a refresh's model is served only when it clears it on its validation week.

    hmrec gate --as-of YYYY-MM-DD

A refresh at as-of D registers its serve version with the MLflow alias
``challenger``. Before scoring publishes its lists, this stage judges that
version, from figures that exist before anything is published and never from
the holdout week:

- sanity: its item embeddings are finite (``tables.ITEM_EMBEDDINGS``); the
  share of customers whose whole list is the popularity fallback (no
  features, fewer than ``score.min_history`` purchases, or a history group
  whose plan is popularity) is at most ``gate.max_fallback_share``; its lists
  on the validation week hold at least ``gate.min_coverage`` of the indexed
  catalogue, or at least as much of it as the age segments' popularity lists
  on the same week (on data where this week's best-sellers are the best
  list, the served lists are rightly that narrow). Exactly K distinct articles per customer is checked by scoring
  itself, before its commit (:mod:`hmrec.serve.score`).
- quality: the lift of MAP@K of the refresh's lists over the global
  popularity list on the validation week [D - 7, D), as the choose stage
  measured them (the model fitted at D - 7 with the plans the served model
  uses; the served model trained on that week, so it cannot be judged on it),
  is at least ``gate.min_lift``; and its MAP@K is at least ``(1 - gate.tolerance)``
  times that of the champion's published lists on the same week (the lists it
  served from its as-of, judged on the same buyers), or, when those cannot be
  judged there (a champion of this as-of or later), its lift at least
  ``(1 - gate.tolerance)`` times the champion's recorded validation lift. These figures are optimistic: the
  plans were chosen on the same week. When scoring will serve the ranker's
  lists (``score.method: ranker`` and the ranker at least as good as the
  blend there), the lift judged is the ranker's over popularity on the rank
  stage's held-out buyers of that week, whom the ranker did not train on.

When every setting is pinned the choose stage does not run, so there are no
validation figures: the quality checks are then not judged, and the decision
says so. The decision goes to the version's tags (``gate.*``), to the stage
summary and, when the gate fails, to a :class:`GateFailed` error, which
``hmrec`` turns into exit status :data:`GATE_EXIT`; the lists of the champion
then stay served.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from hmrec.config import Config, GateConfig
from hmrec.errors import GateFailed, HmrecError
from hmrec.lake import storage, tables
from hmrec.lake.choices import read_choices
from hmrec.model import registry
from hmrec.progress import log, stage
from hmrec.serve.index import read_item_embeddings

STAGE = "gate"
GATE_EXIT = GateFailed.exit_status
LIFT_TAG = "gate.validation_lift"  # a judged version's validation lift, which later challengers are held to
DECISION_TAG = "gate.decision"  # passed | failed | promoted by hand
REASON_TAG = "gate.reason"


@dataclass
class Decision:
    """What the gate found for one version."""

    version: str
    as_of: str
    passed: bool
    reasons: list[str]  # why it failed; empty when it passed
    notes: list[str]  # what was not judged, and why
    figures: dict = field(default_factory=dict)  # every figure the checks used
    champion: str | None = None
    champion_lift: float | None = None

    def tags(self) -> dict[str, str]:
        """The ``gate.*`` tags of the version."""
        out = {DECISION_TAG: "passed" if self.passed else "failed",
               REASON_TAG: "; ".join(self.reasons) or "every check passed",
               "gate.champion": self.champion or "none",
               "gate.notes": "; ".join(self.notes) or "-"}
        for key, value in self.figures.items():
            if value is not None:
                out[registry.metric_key(f"gate.{key}")] = f"{value:.6g}" if isinstance(value, float) else str(value)
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def failure(decision: Decision) -> GateFailed:
    """The error a failed gate raises: the version, the reasons, what stays served and how to publish anyway."""
    return GateFailed(
        f"model version {decision.version} (as-of {decision.as_of}) failed the gate: "
        f"{'; '.join(decision.reasons)}; the champion's lists (version {decision.champion or 'none'}) stay "
        f"served. Publish it anyway with `hmrec promote --version {decision.version}`",
        decision,
    )


def lift(model: float | None, baseline: float | None) -> float | None:
    """``model`` over ``baseline``; infinite when only the baseline is 0, None when both are (or one is unknown)."""
    if model is None or baseline is None:
        return None
    if baseline <= 0:
        return math.inf if model > 0 else None
    return model / baseline


def judge(version: str, as_of: dt.date, figures: dict | None, sanity: dict, champion: str | None,
          champion_lift: float | None, gate: GateConfig, k: int, champion_week: dict | None = None) -> Decision:
    """The decision from the validation ``figures`` (the choose stage's, or None) and the ``sanity`` figures.

    ``sanity`` holds ``embeddings_finite`` (bool, or an error text),
    ``fallback_share`` and the customer count ``customers``. ``champion_week``
    (from :func:`champion_on_week`), when given, is the champion's published
    lists judged on the same validation week: the challenger is then held to
    ``(1 - gate.tolerance)`` times that MAP@K instead of the champion's lift
    recorded on its own week (lifts over popularity move from week to week with
    how well popularity does).
    """
    reasons: list[str] = []
    notes: list[str] = []
    methods = (figures or {}).get("methods", {})
    model = methods.get("model", {})
    popular = methods.get("popularity", {})
    metric = f"map@{k}"
    value = lift(model.get(metric), popular.get(metric))
    out = {"validation_users": (figures or {}).get("users"), f"validation_model_{metric}": model.get(metric),
           f"validation_popularity_{metric}": popular.get(metric), "validation_lift": value,
           "validation_coverage": model.get("coverage"), "fallback_share": sanity.get("fallback_share"),
           "customers": sanity.get("customers")}

    if sanity.get("embeddings_finite") is not True:
        reasons.append(f"its item embeddings are not usable ({sanity.get('embeddings_finite')})")
    share = sanity.get("fallback_share")
    if share is not None and share > gate.max_fallback_share:
        reasons.append(f"{share:.1%} of customers have too little history for the model (a popularity list only), more than "
                       f"gate.max_fallback_share {gate.max_fallback_share:.1%}")
    coverage = model.get("coverage")
    segment_coverage = methods.get("popularity_segment", {}).get("coverage")
    if coverage is None:
        notes.append("catalogue coverage not judged (no validation figures)")
    elif coverage < gate.min_coverage and (segment_coverage is None or coverage < segment_coverage - 1e-9):
        reasons.append(f"its validation-week lists hold {coverage:.2%} of the catalogue, less than "
                       f"gate.min_coverage {gate.min_coverage:.2%}"
                       + (f" and less than the age segments' popularity lists ({segment_coverage:.2%})"
                          if segment_coverage is not None else ""))
    elif coverage < gate.min_coverage:
        notes.append(f"its validation-week lists hold {coverage:.2%} of the catalogue, less than gate.min_coverage "
                     f"{gate.min_coverage:.2%}, but as much as the age segments' popularity lists "
                     f"({segment_coverage:.2%}): accepted")

    if not model or not popular:
        why = (figures or {}).get("reason") or "no validation figures (every setting pinned, so choose did not run)"
        notes.append(f"quality not judged: {why}")
    elif value is None:
        notes.append("quality not judged: neither its lists nor popularity hit a purchase of the validation week")
    else:
        if value < gate.min_lift:
            reasons.append(f"validation {metric} {model[metric]:.4f} is {value:.2f}x popularity's "
                           f"{popular[metric]:.4f}, below gate.min_lift {gate.min_lift:g}")
        same = (champion_week or {}).get(metric)
        if same is not None:
            out[f"champion_same_week_{metric}"] = same
            out["champion_same_week_users"] = champion_week.get("users")
            if model[metric] < same * (1 - gate.tolerance):
                reasons.append(f"validation {metric} {model[metric]:.4f} is more than gate.tolerance "
                               f"{gate.tolerance:.0%} below the champion's published lists on the same week "
                               f"(version {champion}, as-of {champion_week.get('as_of')}: {same:.4f})")
        elif champion_lift is None:
            notes.append("no champion lift to compare with" + (f" (version {champion} has none recorded)"
                                                                if champion else " (no champion yet)"))
        elif value < champion_lift * (1 - gate.tolerance):
            reasons.append(f"validation lift {value:.2f}x is more than gate.tolerance {gate.tolerance:.0%} below "
                           f"the champion's (version {champion}: {champion_lift:.2f}x)")
    return Decision(version=str(version), as_of=as_of.isoformat(), passed=not reasons, reasons=reasons, notes=notes,
                    figures=out, champion=champion, champion_lift=champion_lift)


def held_out_buyers(cfg: Config, spark: SparkSession, as_of: dt.date) -> list[int]:
    """The customer_idx of the rank stage's held-out buyers of ``as_of``'s validation week (its hash share)."""
    from hmrec.rank.ranker import held_out

    week = storage.read_as_of(spark, cfg, tables.VALIDATION, as_of).where("customer_idx IS NOT NULL")
    ids = np.array(sorted({int(r[0]) for r in week.select("customer_idx").distinct().collect()}), dtype=np.int64)
    return ids[held_out(ids, cfg.rank.valid_share, cfg.rank.seed)].tolist() if len(ids) else []


def ranker_figures(figures: dict | None, maps: dict[str, float], k: int) -> dict:
    """The validation figures the quality checks judge when the ranker's lists are served: its MAP@K and
    global popularity's on the rank stage's held-out buyers of the validation week (``maps``, from
    :func:`hmrec.rank.ranker.validation_maps`), and the catalogue coverage of the choose stage's lists
    (``figures``; the ranker's own coverage is not measured on that week)."""
    metric = f"map@{k}"
    coverage = ((figures or {}).get("methods", {}).get("model", {})).get("coverage")
    model = {metric: maps["ranker"], **({"coverage": coverage} if coverage is not None else {})}
    methods = {"model": model, "popularity": {metric: maps["popularity"]}}
    segment = ((figures or {}).get("methods", {}).get("popularity_segment", {})).get("coverage")
    if segment is not None:
        methods["popularity_segment"] = {"coverage": segment}
    return {"users": maps.get("users"), "list": "ranker", "methods": methods}


def champion_on_week(spark: SparkSession, cfg: Config, as_of: dt.date, champion: str,
                     customers: list[int] | None = None) -> dict | None:
    """The champion's published lists judged on the validation week of ``as_of``: its MAP@K and Recall@K
    over the week's buyers (only ``customers``' customer_idx when given), or None when the champion's
    lists cannot be judged there (its as-of is not before the week, or its lists are no longer readable).

    The lists are those ``tables.RECOMMENDATIONS`` held for the champion's as-of (time travel), made from
    data before that as-of; a buyer without a list in them counts with an empty list.
    """
    from hmrec.evaluation.metrics import row_metrics
    from hmrec.etl.split import fit_cutoff
    from hmrec.serve.blend import pad_lists

    tag = registry.version_tags(cfg, champion).get(registry.AS_OF_TAG)
    if not tag:
        return None
    champion_as_of = dt.date.fromisoformat(tag)
    if champion_as_of > fit_cutoff(cfg, as_of):  # its lists were made after the week began: not a fair test
        return None
    lists = storage.read_as_of(spark, cfg, tables.RECOMMENDATIONS, champion_as_of)
    if lists.limit(1).count() == 0:
        return None
    week = storage.read_as_of(spark, cfg, tables.VALIDATION, as_of).where(F.col("customer_idx").isNotNull())
    actual = (week.groupBy("customer_id", "customer_idx").agg(F.collect_set("article_id").alias("actual"))
              .toPandas())
    if customers is not None:
        actual = actual[actual["customer_idx"].isin(set(customers))]
    if actual.empty:
        return None
    k = cfg.score.k
    served = (lists.join(spark.createDataFrame(actual[["customer_id"]]), "customer_id")
              .select("customer_id", "rank", "article_id").toPandas().sort_values(["customer_id", "rank"]))
    by_customer = served.groupby("customer_id")["article_id"].apply(list)
    codes: dict[str, int] = {}

    def encode(ids: list[str]) -> list[int]:
        return [codes.setdefault(a, len(codes)) for a in ids]

    predicted = pad_lists([encode(by_customer.get(c, [])[:k]) for c in actual["customer_id"]], width=k)
    truth = pad_lists([encode(list(a)) for a in actual["actual"]])
    m = row_metrics(predicted, truth, k)
    return {f"map@{k}": round(float(m[f"map@{k}"].mean()), 6), f"recall@{k}": round(float(m[f"recall@{k}"].mean()), 6),
            "users": int(len(actual)), "as_of": champion_as_of.isoformat()}


def sanity_figures(cfg: Config, spark: SparkSession, as_of: dt.date, version: str) -> dict:
    """The sanity figures of ``version`` at ``as_of``, from the tables scoring would read (nothing is scored)."""
    try:
        read_item_embeddings(spark, cfg, as_of, version, need_vectors=True)
        finite: bool | str = True
    except HmrecError as exc:
        finite = str(exc)
    # Customers the model cannot personalise: no features, or too few purchases. A group whose recipe
    # is popularity by choice is not counted: that recipe won on the validation week, and on data
    # whose customers seldom repeat their tastes it is the right list for most of them.
    users = storage.read_as_of(spark, cfg, tables.USER_FEATURES, as_of).select("n_purchases").toPandas()
    n_purchases = users["n_purchases"].to_numpy(dtype=np.int64, na_value=0)
    popular = n_purchases < max(cfg.score.min_history, 1)
    customers = storage.read(spark, cfg, tables.CUSTOMERS).select("customer_id").distinct().count()
    without = max(customers - len(users), 0)  # customers without features get the global popular list
    total = max(customers, len(users))
    return {"embeddings_finite": finite, "customers": int(total),
            "fallback_share": round(float(popular.sum() + without) / max(total, 1), 6)}


def gate(cfg: Config, spark: SparkSession, as_of: dt.date, enforce: bool = True) -> dict:
    """Judge the serve version registered for ``as_of``; raise :class:`GateFailed` when it fails and ``enforce``.

    Without ``enforce`` (the backtest, whose every week must be scored) the
    decision is recorded and the stage returns.
    """
    with stage(STAGE) as summary:
        version = registry.latest_version(cfg, as_of, role="serve")
        if version is None:
            raise HmrecError(f"no serve model version registered for as-of {as_of}: run `hmrec train --as-of {as_of}` "
                             f"first")
        champion = registry.alias_version(cfg, registry.CHAMPION)
        summary["version"], summary["champion"] = version, champion or "none"
        if champion == version:
            log(STAGE, f"version {version} is already the champion (its lists are served): nothing to judge")
            summary["decision"] = "already champion"
            return dict(summary, passed=True)
        chosen = read_choices(spark, cfg, as_of)
        figures = chosen["figures"] if chosen is not None else None
        if cfg.score.method == "ranker":
            from hmrec.rank.ranker import served_list

            served, maps = served_list(cfg, version)
            if served == "ranker" and maps is not None and "popularity" in maps:
                figures = ranker_figures(figures, maps, cfg.score.k)
                log(STAGE, f"judging the ranker's lists (the ones scoring serves) on the validation week's "
                           f"{maps.get('users', 0):,} held-out buyers")
        summary["judged_list"] = (figures or {}).get("list", "blend")
        champion_lift = None
        if champion is not None:
            recorded = registry.version_tags(cfg, champion).get(LIFT_TAG)
            champion_lift = float(recorded) if recorded not in (None, "", "None") else None
        champion_week = None
        if champion is not None:
            held = held_out_buyers(cfg, spark, as_of) if (figures or {}).get("list") == "ranker" else None
            champion_week = champion_on_week(spark, cfg, as_of, champion, held)
        decision = judge(version, as_of, figures, sanity_figures(cfg, spark, as_of, version), champion,
                         champion_lift, cfg.gate, cfg.score.k, champion_week)
        registry.set_version_tags(cfg, version, decision.tags())
        summary["decision"] = "passed" if decision.passed else "failed"
        summary.update({k: v for k, v in decision.figures.items() if v is not None})
        for note in decision.notes:
            log(STAGE, note)
        if not decision.passed:
            summary["reason"] = "; ".join(decision.reasons)
            if enforce:
                raise failure(decision)
            log(STAGE, f"version {version} failed the gate ({summary['reason']}); published anyway, as a backtest does")
        else:
            lift = decision.figures.get("validation_lift")
            shown = f"{lift:.2f}x" if isinstance(lift, (int, float)) else str(lift)
            log(STAGE, f"version {version} passed: validation lift {shown}, "
                       f"fallback share {decision.figures['fallback_share']:.1%}")
    return dict(summary, passed=decision.passed, decision=decision.to_dict())
