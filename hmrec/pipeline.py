"""`hmrec run`: the scheduled refresh, every stage in order for one as-of date.

The stages, for as-of D: features, split and popularity at D; then, when some
setting says ``auto``, the same three at the fit cutoff v = D -
``split.validation_days``, a model of role fit trained at v and validated on
the week [v, D), its index, and the choose stage, which decides the auto
settings on that week (:mod:`hmrec.evaluation.choose`); then the model served
at D and its index; then the two-stage list (:mod:`hmrec.rank`): candidates at
v with the fit model for the validation week's buyers, the ranker trained on
that week, candidates at D with the served model, scored by the ranker as
they are made (none are made when no ranker could be trained: a validation
week without purchases); the gate that judges the
version before anything is published (:mod:`hmrec.governance.gate`); then
scoring (``score.method``: the ranker or the blend), evaluation and the
model card (:mod:`hmrec.governance.card`).

A stage is skipped when it already finished for this as-of on the same bronze
data (the same ingest manifest, :mod:`hmrec.lake.manifest`; for the features,
split and popularity of the fit cutoff, the same catalogues and transactions of
the dates they read, so that after a weekly append those of the previous
refresh's as-of, the new fit cutoff, are still done) and with the same
settings (both recorded in ``tables.STAGE_RUNS``) and
its outputs are still there, unless ``force``. The settings are the config
keys the stage reads (:data:`STAGES`), so a changed setting reruns what it
affects without ``--force``. A crash leaves the finished stages recorded, so
running the same command again resumes at the stage that failed. When a stage
runs again, every stage built on its output (``Stage.after``) runs again too.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from hmrec.config import AUTO, Config
from hmrec.errors import GateFailed, HmrecError
from hmrec.etl import features, ingest, popularity, split
from hmrec.etl.split import fit_cutoff
from hmrec.evaluation import choose, evaluate
from hmrec.governance import card, gate
from hmrec.lake import lease, manifest, storage, tables
from hmrec.model import registry
from hmrec.progress import log, stage
from hmrec.rank import candidates, ranker
from hmrec.serve import index, score
from hmrec.serve.plans import is_auto
from hmrec.train import job as train_job


@dataclass(frozen=True)
class Stage:
    """One stage of the refresh: what it runs, at which cutoff, after what, and which settings shape it."""

    key: str  # its name in this refresh; the stage runs table records ``name`` at its cutoff
    run: Callable[[Config, SparkSession, dt.date, dt.date], object]  # (cfg, spark, cutoff, as_of of the refresh)
    # config sections ("train") or keys ("features.age_buckets") whose values shape the output;
    # keys that only change speed or logging are left out, so changing them reruns nothing
    settings: tuple[str, ...]
    after: tuple[str, ...] = ()  # the stages whose output it reads: when one of them runs, it runs again
    # fit: runs at the refresh's fit cutoff (as_of - split.validation_days), and only when some
    # setting is chosen there (auto)
    at_fit: bool = False
    # fit stages only: the days past its cutoff up to which its output reads the transactions (it reads
    # the catalogues whole). When the bronze data changed since it ran only on later dates (an append,
    # hmrec.lake.manifest.unchanged_before), it is still done. Serve stages run again on any new data:
    # the features stage at the as-of also refreshes the interactions and id maps every later stage reads.
    reach: Callable[[Config], int] | None = None

    def __post_init__(self) -> None:
        if self.reach is not None and not self.at_fit:
            raise ValueError(f"stage {self.key}: only a fit stage has a reach; a serve stage runs again on any new data")

    @property
    def name(self) -> str:
        return self.key.removesuffix("@fit")


FEATURES = ("features.last_n", "features.recent_days", "features.age_buckets")
POPULARITY = ("popularity", "features.age_buckets")
TRAIN = ("train.embedding_dim", "train.id_dim", "train.attr_dim", "train.hidden_dim", "train.epochs",
         "train.max_epochs", "train.batch_size", "train.lr", "train.sparse_lr", "train.weight_decay",
         "train.warmup_steps", "train.temperature", "train.random_negatives", "train.logq_correction",
         "train.num_processes", "train.local_mode", "train.seed", "train.train_days", "train.val_users",
         "train.val_k", "train.max_steps", "train.compute_dtype", "train.warm_start", "train.warm_start_max_age_days",
         "train.warm_epochs", "train.warm_train_days")
INDEX = ("index.kind", "index.hnsw_m", "index.hnsw_ef_search", "index.hnsw_ef_construction", "index.ivf_nlist",
         "index.ivf_nprobe")
CANDIDATES = ("candidates.retrieval_n", "candidates.repurchase_n", "candidates.colour_n", "candidates.popular_n",
              "candidates.trending_n", "candidates.copurchase_n", "candidates.copurchase_days",
              "candidates.history_days", "features.age_buckets")
# Which customers get served candidates: chosen by the rank stage, applied by the candidates stage
# (the fit cutoff's candidates are every validation-week buyer's, whatever they say).
ACTIVE = ("candidates.active_days", "candidates.active_max_loss")
RANK = ("rank.valid_share", "rank.negative_share", "rank.num_leaves", "rank.learning_rate", "rank.max_rounds",
        "rank.early_stopping", "rank.min_child_samples", "rank.seed", "score.k")
LISTS = ("score.method", "score.k", "score.min_history", "score.repurchase", "score.repurchase_slots", "score.repurchase_days",
         "score.repurchase_order", "score.fallback", "score.filter_bought", "index.candidates",
         "features.age_buckets", "evaluate.lapsed_days")
GATE = ("gate", "score.min_history", "evaluate.lapsed_days")
CARD = ("score.k", "split.holdout_days", "train.train_days", "index.kind")


def _features(cfg: Config, spark: SparkSession, cutoff: dt.date, as_of: dt.date) -> object:
    return features.build_features(cfg, spark, as_of=cutoff)


def _split(cfg: Config, spark: SparkSession, cutoff: dt.date, as_of: dt.date) -> object:
    return split.split(cfg, spark, as_of=cutoff)


def _popularity(cfg: Config, spark: SparkSession, cutoff: dt.date, as_of: dt.date) -> object:
    return popularity.popularity(cfg, spark, as_of=cutoff)


def _unranked_version(cfg: Config, as_of: dt.date) -> str | None:
    """The serve model version of ``as_of`` when it has no ranker (the rank stage found no week to train
    one on); None when it has one, or when there is no version."""
    version = registry.latest_version(cfg, as_of, role="serve")
    return version if version is not None and not ranker.has_ranker(cfg, version) else None


def _serve_candidates(cfg: Config, spark: SparkSession, cutoff: dt.date, as_of: dt.date) -> object:
    """The served candidates at the as-of, made only when the rank stage before this one trained a ranker
    to rank them: without one (no purchase in the validation week) scoring serves the blend, which reads
    none, and the evaluation has no two-stage list to judge."""
    version = _unranked_version(cfg, cutoff)
    if version is not None:
        log("candidates", f"model version {version} has no ranker (no week to train one on): no candidates are made "
                          f"at {cutoff}, the blend is served")
        return {"skipped": "no ranker", "model_version": version}
    return candidates.candidates(cfg, spark, as_of=cutoff)


STAGES: tuple[Stage, ...] = (
    Stage("features", _features, FEATURES),
    Stage("split", _split, ("split",), after=("features",)),
    Stage("popularity", _popularity, POPULARITY, after=("features",)),
    # The fit cutoff's own features, split and popularity are the same stages at that cutoff:
    # a backtest's earlier cutoff and this refresh's fit share them.
    # After an append they are still done: a weekly refresh's fit cutoff is the previous refresh's as-of.
    Stage("features@fit", _features, FEATURES, at_fit=True, reach=lambda cfg: 0),
    Stage("split@fit", _split, ("split",), after=("features@fit",), at_fit=True,
          reach=lambda cfg: cfg.split.holdout_days),
    Stage("popularity@fit", _popularity, POPULARITY, after=("features@fit",), at_fit=True, reach=lambda cfg: 0),
    Stage("train-fit", lambda cfg, spark, c, as_of: train_job.train(cfg, spark, as_of=c, role="fit", fitted_for=as_of),
          TRAIN, after=("features@fit", "split@fit", "split"), at_fit=True),
    Stage("index-fit", lambda cfg, spark, c, as_of: index.build_index(cfg, spark, as_of=c, role="fit"), INDEX,
          after=("train-fit",), at_fit=True),
    Stage("choose", lambda cfg, spark, c, as_of: choose.choose(cfg, spark, as_of=c),
          (*LISTS, "train.epochs", "train.max_epochs"), after=("index-fit", "popularity@fit", "split")),
    Stage("train", lambda cfg, spark, c, as_of: train_job.train(cfg, spark, as_of=c), TRAIN,
          after=("features", "split", "choose")),
    Stage("index", lambda cfg, spark, c, as_of: index.build_index(cfg, spark, as_of=c), INDEX, after=("train",)),
    # The two-stage list: candidates at the fit cutoff (the fit model, that week's buyers) train the
    # ranker on the validation week; the served model's candidates at the as-of are what it ranks, and
    # it scores them as they are made.
    Stage("candidates-fit", lambda cfg, spark, c, as_of: candidates.candidates(cfg, spark, as_of=as_of, role="fit"),
          CANDIDATES, after=("index-fit", "popularity@fit", "split"), at_fit=True),
    Stage("rank", lambda cfg, spark, c, as_of: ranker.rank(cfg, spark, as_of=c), (*RANK, *CANDIDATES, *ACTIVE),
          after=("candidates-fit", "train", "choose")),
    Stage("candidates", _serve_candidates, (*CANDIDATES, *ACTIVE, "candidates.serve_features"),
          after=("index", "popularity", "rank")),
    # Judges the serve version before anything is published (hmrec.governance.gate); a failure stops the
    # refresh here, unrecorded, so the next run judges again.
    Stage("gate", lambda cfg, spark, c, as_of: gate.gate(cfg, spark, as_of=c), GATE,
          after=("index", "popularity", "choose", "rank")),
    Stage("score", lambda cfg, spark, c, as_of: score.score(cfg, spark, as_of=c), LISTS,
          after=("index", "popularity", "choose", "candidates", "rank", "gate")),
    Stage("evaluate", lambda cfg, spark, c, as_of: evaluate.evaluate(cfg, spark, as_of=c),
          ("evaluate", "score.min_history", "features.age_buckets"), after=("score", "split", "popularity", "choose", "candidates", "rank")),
    Stage("card", lambda cfg, spark, c, as_of: card.write_card(cfg, spark, as_of=c), CARD,
          after=("evaluate", "score", "gate", "choose")),
)
PIPELINE = [s.key for s in STAGES]


def chooses(cfg: Config) -> bool:
    """Whether any setting is chosen on the validation week, so the fit stages and choose run."""
    return cfg.train.epochs == AUTO or is_auto(cfg)


def ranks(cfg: Config) -> bool:
    """Whether the two-stage stages run: a ranker is trained when it is served or can be (a fit model is made)."""
    return cfg.score.method == "ranker" or chooses(cfg)


def stage_settings(cfg: Config, keys: tuple[str, ...]) -> dict[str, Any]:
    """The values of ``keys`` (sections or section.key) in ``cfg``, as plain JSON-able values."""
    out: dict[str, Any] = {}
    for key in keys:
        section, _, name = key.partition(".")
        value = getattr(cfg, section)
        if name:
            out[key] = getattr(value, name)
        else:
            out.update({f"{section}.{k}": v for k, v in dataclasses.asdict(value).items()})
    return out


def fingerprint(settings: dict[str, Any]) -> str:
    """A short digest of a stage's settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _no_labels(spark: SparkSession, cfg: Config, as_of: dt.date) -> bool:
    """Whether the validation week of the refresh at ``as_of`` has no purchase the ranker could learn from."""
    return candidates.label_sets(spark, cfg, as_of).limit(1).count() == 0


def _outputs_exist(spark: SparkSession, cfg: Config, name: str, as_of: dt.date) -> bool:
    """Whether the stage's output for ``as_of`` is still in the lakehouse (by the table catalogue)."""
    role = "fit" if name.endswith("-fit") else "serve"
    if name in ("train", "train-fit"):
        return registry.latest_version(cfg, as_of, role=role) is not None
    # a validation week without purchases gives no fit candidates and no ranker: nothing was to be made
    if name == "rank":
        return ranker.has_ranker(cfg, registry.latest_version(cfg, as_of, role="serve")) or _no_labels(spark, cfg, as_of)
    if name == "candidates-fit":
        return candidates.has_candidates(spark, cfg, as_of, "fit") or _no_labels(
            spark, cfg, as_of + dt.timedelta(days=cfg.split.validation_days))
    if name == "candidates":  # none are made for a version without a ranker (_serve_candidates)
        return candidates.has_candidates(spark, cfg, as_of, "serve") or _unranked_version(cfg, as_of) is not None
    if name in ("index", "index-fit"):
        version = registry.latest_version(cfg, as_of, role=role)
        return version is not None and index.has_index(cfg, version, as_of)
    if name == "evaluate" and not storage.has_as_of(spark, cfg, tables.EVAL_METRICS, as_of):
        # with no holdout week yet and no validation figures (every setting pinned) the report is its only output
        report = Path(cfg.lakehouse) / "reports" / as_of.isoformat() / "metrics.json"
        if not report.exists():
            return False
        doc = json.loads(report.read_text())
        return not doc.get("methods") and not doc.get("validation")
    outputs = [t for t in tables.written_by(name) if t.per_as_of and not t.may_be_empty]
    return all(storage.has_as_of(spark, cfg, t, as_of) for t in outputs)


def _last_run(spark: SparkSession, cfg: Config, name: str, as_of: dt.date) -> dict | None:
    """The latest recorded run of stage ``name`` for ``as_of``, as a dict, or None."""
    if not storage.exists(spark, cfg, tables.STAGE_RUNS):
        return None
    runs = storage.read(spark, cfg, tables.STAGE_RUNS)
    rows = (
        runs.where((F.col("as_of") == F.lit(as_of)) & (F.col("stage") == name))
        .orderBy(F.col("finished_at").desc())
        .limit(1)
        .collect()
    )
    if not rows:
        return None
    row = rows[0].asDict()
    row.setdefault("fingerprint", None)  # rows of a lakehouse written before settings were recorded
    row.setdefault("settings", None)
    row.setdefault("manifest_id", None)  # rows written before ingest manifests existed
    return row


def _changed(old: str | None, new: dict[str, Any]) -> str:
    """The settings that differ, as 'key old -> new' (at most three)."""
    before = json.loads(old) if old else {}
    diffs = [f"{k} {before.get(k)!r} -> {v!r}" for k, v in sorted(new.items()) if before.get(k) != v]
    return ", ".join(diffs[:3]) + (" ..." if len(diffs) > 3 else "")


def _unread_change(cfg: Config, history: Callable[[], list[manifest.Manifest]], st: Stage, cutoff: dt.date,
                   last: dict, manifest_id: str | None) -> str | None:
    """Why the bronze data changed since ``st`` last ran at ``cutoff`` only where it does not read (its reach),
    or None when it must run again. ``history`` gives the ingest manifests (read once per refresh)."""
    if st.reach is None:
        return None
    before = cutoff + dt.timedelta(days=st.reach(cfg))
    return manifest.unchanged_before(history(), last["manifest_id"], manifest_id, before)


def _record(spark: SparkSession, cfg: Config, name: str, as_of: dt.date, bronze_version: int | None,
            summary: object, settings: dict[str, Any], manifest_id: str | None) -> None:
    row = (as_of, name, bronze_version, dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
           json.dumps(summary, default=str, sort_keys=True), json.dumps(settings, default=str, sort_keys=True),
           fingerprint(settings), manifest_id)
    storage.write(spark.createDataFrame([row], tables.STAGE_RUNS.schema), cfg, tables.STAGE_RUNS, mode="append",
                  merge_schema=True)


@lease.holding("run")
def run(cfg: Config, spark: SparkSession, data_dir: str, as_of: dt.date, force: bool = False,
        enforce_gate: bool = True, append: bool = False, until: str | None = None) -> dict:
    """Ingest ``data_dir`` and run every later stage for ``as_of``; returns per-stage results.

    ``append``: ``data_dir`` holds a new batch of transactions (``hmrec ingest --append``).

    ``until`` (``ingest`` or a key of :data:`PIPELINE`) stops the run after that stage, so a
    scheduler can run the refresh as one task per stage: each run does the stages not yet done
    up to its own, the fit stages before ``choose`` included. A serve version that fails the gate raises :class:`hmrec.errors.GateFailed` before
    scoring, and the served lists stay as they were; ``enforce_gate=False`` (the backtest) records
    the decision and publishes anyway.
    """
    if until is not None and until != "ingest" and until not in PIPELINE:
        raise HmrecError(f"--until {until!r} is not a stage of the refresh; use one of: ingest, {', '.join(PIPELINE)}")
    results: dict[str, object] = {}
    with stage("run") as summary:
        try:
            _stages(cfg, spark, data_dir, as_of, force, enforce_gate, results, summary, append, until)
        except GateFailed as exc:
            summary["gate"] = "failed: " + "; ".join(exc.decision.reasons)
            # the failed version's card records why, under reports/<as_of>/v<version>/
            summary["card"] = card.write_card(cfg, spark, as_of, model_version=exc.decision.version)["card"]
            raise
    return results


def _stages(cfg: Config, spark: SparkSession, data_dir: str, as_of: dt.date, force: bool, enforce_gate: bool,
            results: dict[str, object], summary: dict, append: bool = False, until: str | None = None) -> None:
    """The body of :func:`run`: ingest, then each stage that is not done yet (up to ``until``), filling
    ``results`` and ``summary``."""
    results["ingest"] = ingest.ingest(cfg, spark, data_dir=data_dir, append=append)
    ran = [] if results["ingest"].get("skipped") else ["ingest"]
    summary["as_of"] = as_of.isoformat()
    if until == "ingest":
        summary["ran"], summary["skipped"] = "+".join(ran) or "-", "-"
        return
    bronze_version = storage.version(spark, cfg, tables.TRANSACTIONS)
    manifest_id = results["ingest"].get("manifest_id")
    skipped: list[str] = []
    summary["as_of"] = as_of.isoformat()
    fit_at = fit_cutoff(cfg, as_of)
    history = functools.cache(lambda: manifest.history(cfg, spark))  # the manifests, read when first needed
    for st in STAGES[: PIPELINE.index(until) + 1] if until else STAGES:
        if st.key in ("candidates-fit", "candidates", "rank"):
            if not ranks(cfg):
                continue
        elif (st.at_fit or st.key == "choose") and not (chooses(cfg) or ranks(cfg)):
            continue
        if st.key == "choose" and not chooses(cfg):
            continue
        cutoff = fit_at if st.at_fit else as_of
        settings = stage_settings(cfg, st.settings)
        why = "--force" if force else None
        upstream = [k for k in st.after if k in ran]
        if why is None and upstream:
            why = f"{', '.join(upstream)} ran"
        last = None if why else _last_run(spark, cfg, st.name, cutoff)
        # bronze data changed since the stage ran, but only where it does not read: why it is still done
        kept = None if last is None or last["manifest_id"] == manifest_id else _unread_change(
            cfg, history, st, cutoff, last, manifest_id)
        if why is None:
            if last is None:
                why = "not run yet"
            elif last["manifest_id"] != manifest_id and kept is None:
                why = f"bronze data changed (ingest manifest {last['manifest_id']} -> {manifest_id})"
            elif last["fingerprint"] != fingerprint(settings):
                why = f"settings changed ({_changed(last['settings'], settings)})"
            elif not _outputs_exist(spark, cfg, st.name, cutoff):
                why = "its output is missing"
        if why is None:
            since = f"; {kept}" if kept else ""
            log("run", f"{st.key}: already done for {cutoff} with these settings{since}, skipped (--force reruns it)")
            skipped.append(st.key)
            continue
        if last is not None or upstream:
            log("run", f"{st.key} at {cutoff}: runs again, {why}")
        summary["ran"], summary["skipped"] = "+".join(ran) or "-", "+".join(skipped) or "-"
        if st.key == "gate":
            results[st.key] = gate.gate(cfg, spark, as_of=cutoff, enforce=enforce_gate)
            summary["gate"] = "passed" if results[st.key]["passed"] else "failed, published anyway"
        else:
            results[st.key] = st.run(cfg, spark, cutoff, as_of)
        _record(spark, cfg, st.name, cutoff, bronze_version, results[st.key], settings, manifest_id)
        ran.append(st.key)
    summary["ran"], summary["skipped"] = "+".join(ran) or "-", "+".join(skipped) or "-"
