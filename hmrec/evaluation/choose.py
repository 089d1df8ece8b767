"""The choose stage: every setting that says ``auto``, decided on the validation week.

    hmrec choose --as-of YYYY-MM-DD

For a refresh at as-of D, the fit cutoff is v = D - ``split.validation_days``.
The pipeline has already built, at v and from data before v only, the
features, the popularity lists and a two-tower model of role ``fit`` (trained
up to ``train.max_epochs``, each epoch validated on the week [v, D), the best
kept) with its index. This stage then decides, on the purchases of that week
(``tables.VALIDATION`` at D):

- ``train.epochs``: the fitted model's best epoch, which the model served at
  D trains to (on the same learning-rate horizon);
- each history group's list plan (:mod:`hmrec.serve.plans`): every candidate
  plan's lists are made for the validation week's buyers exactly as scoring
  would make them at v, and the plan with the highest MAP@K wins (ties: the
  simplest, which comes first). Popularity and repurchase lists are among the
  candidates, so on the week it is chosen on the served plan is never worse
  than them.

The choices and every figure behind them go to ``tables.CHOICES`` (read by
train, score and evaluate at D) and to the fitted model's MLflow run. The
figures include bootstrap 95% intervals over the week's buyers
(``intervals``): of the served plans' and the baselines' MAP@K and Recall@K,
overall and per history group. Nothing here reads the holdout week.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from hmrec.config import AUTO, Config
from hmrec.errors import HmrecError
from hmrec.etl import segments
from hmrec.etl.split import fit_cutoff
from hmrec.evaluation.metrics import group_intervals, row_metrics
from hmrec.lake import storage, tables
from hmrec.lake.choices import write_choices
from hmrec.model import registry
from hmrec.progress import log, stage
from hmrec.serve.blend import pad_lists
from hmrec.serve.embedders import ModelEmbedder
from hmrec.serve.index import load_index
from hmrec.serve.plans import ListPlan, is_auto, options, plans_to_json, unchosen
from hmrec.serve.score import assemble, batch_inputs, build_context

STAGE = "choose"
# Validation buyers scored at once: (batch, candidates x slots) comparisons per plan.
BATCH = 8192


def validation_labels(spark: SparkSession, cfg: Config, as_of: dt.date) -> pd.DataFrame:
    """(customer_idx, actual): the distinct articles each customer bought in the validation week of ``as_of``."""
    rows = storage.read_as_of(spark, cfg, tables.VALIDATION, as_of)
    return (
        rows.where(F.col("customer_idx").isNotNull() & F.col("article_idx").isNotNull())
        .groupBy("customer_idx").agg(F.collect_set("article_idx").alias("actual")).toPandas()
    )


@dataclass
class PerCustomer:
    """What :func:`score_options` measured for each validation buyer, in the order of its ``users``: the
    history group code and, per plan label, the (B, 2) MAP@K and Recall@K of that plan's list."""
    group: list[np.ndarray] = field(default_factory=list)
    values: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def groups(self) -> np.ndarray:
        """(B,) history group codes."""
        return np.concatenate(self.group) if self.group else np.zeros(0, dtype=np.int64)

    def of(self, label: str) -> np.ndarray:
        """(B, 2) MAP@K and Recall@K of plan ``label``'s lists."""
        return np.concatenate(self.values[label]) if self.values.get(label) else np.zeros((0, 2))


def score_options(
    users: pd.DataFrame, actual: np.ndarray, ctx, plans: list[ListPlan], k: int,
    seen: dict[str, np.ndarray] | None = None, per_customer: PerCustomer | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every plan's summed metrics per history group, and the customers per group.

    ``users`` are ``tables.USER_FEATURES`` rows at the fit cutoff (with a
    ``segment`` column), ``actual`` their (B, A) validation purchases padded
    with -1. Returns ({plan label: (groups, metrics) sums}, (groups,) counts)
    with metrics in the order recall, ndcg, map. ``seen``, when given, is
    filled with {plan label: (groups, articles) bool}: which article_idx each
    plan's lists hold in each group (for catalogue coverage); ``per_customer``
    with every buyer's group and figures (for the intervals).
    """
    n_groups = len(segments.HISTORY_GROUPS)
    sums = {p.label(): np.zeros((n_groups, 3)) for p in plans}
    counts = np.zeros(n_groups)
    if seen is not None:
        seen.update({p.label(): np.zeros((n_groups, len(ctx.item_pos)), dtype=bool) for p in plans})
    for start in range(0, len(users), BATCH):
        batch = users.iloc[start : start + BATCH]
        truth = actual[start : start + BATCH]
        inp = batch_inputs(batch, ctx)
        counts += np.bincount(inp.group, minlength=n_groups)
        if per_customer is not None:
            per_customer.group.append(np.asarray(inp.group, dtype=np.int64))
        for plan in plans:
            idx, _, _ = assemble(inp, ctx, (plan,) * n_groups)
            m = row_metrics(idx, truth, k)
            values = np.stack([m[f"recall@{k}"], m[f"ndcg@{k}"], m[f"map@{k}"]], axis=1)  # (B, 3)
            if per_customer is not None:
                per_customer.values.setdefault(plan.label(), []).append(values[:, [2, 0]])  # map, recall
            for g in range(n_groups):
                sums[plan.label()][g] += values[inp.group == g].sum(axis=0)
                if seen is not None:
                    listed = idx[inp.group == g].ravel()
                    seen[plan.label()][g, listed[(listed >= 0) & (listed < len(ctx.item_pos))]] = True
    return sums, counts


def pick(sums: dict[str, np.ndarray], counts: np.ndarray, candidates: dict[str, list[ListPlan]]) -> dict[str, ListPlan]:
    """Each group's plan of highest mean MAP among its candidates; ties go to the earlier (simpler) plan."""
    out = {}
    for g, group in enumerate(segments.HISTORY_GROUPS):
        best, best_map = candidates[group][0], -1.0
        for plan in candidates[group]:
            value = sums[plan.label()][g, 2] / max(counts[g], 1)
            if value > best_map + 1e-12:
                best, best_map = plan, value
        out[group] = best
    return out


def _means(total: np.ndarray, n: float, k: int) -> dict[str, float]:
    return {f"recall@{k}": round(float(total[0] / max(n, 1)), 6), f"ndcg@{k}": round(float(total[1] / max(n, 1)), 6),
            f"map@{k}": round(float(total[2] / max(n, 1)), 6)}


def baseline_plans(k: int) -> list[tuple[str, str]]:
    """(method, plan label) of the baselines: the same recipe for every group."""
    return [("popularity", "popular global"), ("popularity_segment", "popular segment"),
            ("repurchase", f"repurchase+{k} then popular global")]


def figures_of(sums: dict[str, np.ndarray], counts: np.ndarray, chosen: dict[str, ListPlan],
               candidates: dict[str, list[ListPlan]], k: int, seen: dict[str, np.ndarray] | None = None,
               catalogue: int = 0) -> dict:
    """The validation figures: per group every candidate's means, and the served plans against fixed recipes.

    With ``seen`` (from :func:`score_options`) and the ``catalogue`` size, each
    method also has its ``coverage``: the share of the catalogue its lists hold.
    """
    groups = segments.HISTORY_GROUPS
    baselines = [(m, label) for m, label in baseline_plans(k) if label in sums]
    per_group = {
        group: {"users": int(counts[g]), "chosen": chosen[group].label(),
                "plans": {p.label(): _means(sums[p.label()][g], counts[g], k) for p in candidates[group]},
                "methods": {"model": _means(sums[chosen[group].label()][g], counts[g], k),
                            **{m: _means(sums[label][g], counts[g], k) for m, label in baselines}}}
        for g, group in enumerate(groups)
    }
    served = sum(sums[chosen[group].label()][g] for g, group in enumerate(groups))
    methods = {"model": _means(served, counts.sum(), k)}
    # the same recipe for every group, as the baselines are: popularity, segment popularity, repurchase
    for method, label in baselines:
        methods[method] = _means(sums[label].sum(axis=0), counts.sum(), k)
    if seen is not None and catalogue > 0:
        held = {"model": np.logical_or.reduce([seen[chosen[group].label()][g] for g, group in enumerate(groups)])}
        held.update({m: seen[label].any(axis=0) for m, label in baselines})
        for method, mask in held.items():
            methods[method]["coverage"] = round(float(mask.sum()) / catalogue, 6)
    return {"users": int(counts.sum()), "groups": per_group, "methods": methods}


def validation_intervals(per_customer: PerCustomer, chosen: dict[str, ListPlan], k: int) -> dict:
    """{"all" and each history group: {method: {"map@k": [low, high], "recall@k": [low, high]}}}: bootstrap
    95% intervals over the validation week's buyers of the served lists (``model``: each group's chosen
    plan) and of the baselines' (as :func:`figures_of` names them), from :func:`score_options`' figures."""
    group = per_customer.groups()
    served = np.zeros((len(group), 2))
    for g, name in enumerate(segments.HISTORY_GROUPS):
        served[group == g] = per_customer.of(chosen[name].label())[group == g]
    table = {"model": served, **{m: per_customer.of(label) for m, label in baseline_plans(k)
                                 if label in per_customer.values}}
    values = {m: {f"map@{k}": v[:, 0], f"recall@{k}": v[:, 1]} for m, v in table.items()}
    return group_intervals(values, segments.history_masks(group), [f"map@{k}", f"recall@{k}"])


def choose(cfg: Config, spark: SparkSession, as_of: dt.date) -> dict:
    """Decide the ``auto`` settings of ``as_of`` on its validation week and record them in ``tables.CHOICES``."""
    k = cfg.score.k
    cutoff = fit_cutoff(cfg, as_of)
    with stage(STAGE) as summary:
        summary["as_of"], summary["fit_cutoff"] = as_of.isoformat(), cutoff.isoformat()
        version = registry.latest_version(cfg, cutoff, role="fit")
        if version is None:
            raise HmrecError(
                f"no fitted model at {cutoff}, the validation cutoff of {as_of}: `hmrec run --as-of {as_of}` "
                f"fits one before it chooses"
            )
        summary["fit_model_version"] = version
        choices: dict = {}
        figures: dict = {}
        loaded = registry.load_model(cfg, version)
        if cfg.train.epochs == AUTO:
            history = loaded.meta.get("history", [])
            choices["train.epochs"] = int(loaded.meta.get("best_epoch") or len(history) or cfg.train.max_epochs)
            figures["epochs"] = [{key: r[key] for key in r if key == "epoch" or key.startswith("val_")} for r in history]
        labels = validation_labels(spark, cfg, as_of)
        if labels.empty:
            log(STAGE, f"no purchase in the validation week of {as_of}: nothing to choose on, defaults apply")
            figures["reason"] = "no purchase in the validation week"
        elif is_auto(cfg):
            candidates = options(cfg)
            every = list({p.label(): p for group in candidates.values() for p in group}.values())
            ids = F.broadcast(spark.createDataFrame(labels[["customer_idx"]]))
            users = (
                storage.read_as_of(spark, cfg, tables.USER_FEATURES, cutoff).join(ids, "customer_idx")
                .withColumn("segment", segments.age_segment(F.col("age_bucket"), cfg.features.age_buckets))
                .toPandas().merge(labels, on="customer_idx").sort_values("customer_idx").reset_index(drop=True)
            )
            embedder = ModelEmbedder.from_loaded(loaded)
            index, _ = load_index(cfg, version, cutoff)
            widest = {g: ListPlan("model", slots=max(p.slots for p in every)) for g in segments.HISTORY_GROUPS}
            ctx = build_context(cfg, spark, cutoff, embedder, index, "last_articles", widest)
            log(STAGE, f"{len(users):,} buyers of the validation week {cutoff} .. {as_of - dt.timedelta(days=1)}, "
                       f"{len(every)} list plans")
            seen: dict[str, np.ndarray] = {}
            per = PerCustomer()
            sums, counts = score_options(users, pad_lists(users["actual"].tolist()), ctx, every, k, seen, per)
            chosen = pick(sums, counts, candidates)
            choices["plans"] = plans_to_json(chosen)
            figures.update(figures_of(sums, counts, chosen, candidates, k, seen, int((ctx.item_pos >= 0).sum())))
            figures["intervals"] = validation_intervals(per, chosen, k)
            for group in segments.HISTORY_GROUPS:
                g = figures["groups"][group]
                log(STAGE, f"{group} ({g['users']:,} buyers): {g['chosen']}, "
                           f"map@{k} {g['plans'][g['chosen']][f'map@{k}']:.4f}")
        else:
            choices["plans"] = plans_to_json(unchosen(cfg))
        write_choices(spark, cfg, as_of, cutoff, version, choices, figures)
        _log_to_registry(cfg, version, choices, figures, k)
        summary["choices"] = {key: v for key, v in choices.items() if key != "plans"}
        if "plans" in choices:
            summary["plans"] = ", ".join(f"{g}: {ListPlan.from_dict(p).label()}" for g, p in choices["plans"].items())
    return dict(summary, choices=choices, figures=figures)


def _log_to_registry(cfg: Config, version: str, choices: dict, figures: dict, k: int) -> None:
    """The choices as tags and the validation figures as metrics on the fitted model's run."""
    c = registry.client(cfg)
    mv = c.get_model_version(cfg.paths.registered_model, version)
    for key, value in choices.items():
        if key == "plans":
            for group, plan in value.items():
                c.set_tag(mv.run_id, f"chosen.plan.{group}", ListPlan.from_dict(plan).label())
        else:
            c.set_tag(mv.run_id, f"chosen.{key}", str(value))
    metrics = {f"validation.{method}.{name}": v for method, values in figures.get("methods", {}).items()
               for name, v in values.items()}
    if metrics:
        registry.log_run_metrics(cfg, mv.run_id, metrics)
