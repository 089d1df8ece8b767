"""The registered model served through MLflow: a ``pyfunc`` flavour added to every scored version.

    import mlflow
    model = mlflow.pyfunc.load_model("models:/hmrec-two-tower@champion")
    model.predict(pd.DataFrame({"customer_id": [cid]}))          # a known or unknown customer
    model.predict(pd.DataFrame({"basket": [["0706016001", ...]]}))  # a new customer's recent articles

When ``hmrec score`` (or ``hmrec promote``) publishes a version's lists, it
writes the files of an MLflow model into that version's ``model/`` artifact
directory, next to ``model.pt`` and ``meta.json``: ``MLmodel`` (flavour,
signature, input example), the :class:`Recommender` class and, under
``artifacts/``, everything predicting needs, so that it runs without the
lakehouse, Spark or a JVM:

* ``model.pt`` and ``meta.json``: the checkpoint and its arguments;
* ``items.faiss``: the version's FAISS index (ids are ``article_idx``);
* ``lookups.npz``: the id maps (article_idx to article_id, index row), the
  item vectors (for scoring recent purchases), each article's
  product_group_name code and the popularity lists by age segment;
* ``users.parquet``: the ``tables.USER_FEATURES`` rows of the as-of, which
  the user tower reads for a known customer;
* ``context.json``: k, the list plans, the candidate count and the rest of
  the scoring settings.

Each input row is answered with ``score.k`` article ids (``article_ids``),
the source of each (``sources``: model, repurchase, popular) and its score
(``scores``, comparable only within one source, as in ``hmrec recommend``):

* a row with a non-empty ``basket`` (article ids, latest first) is a new
  customer whose purchases are that basket, bought on the as-of: the user
  tower embeds it (unseen customer id, the basket as the history bag and the
  category shares, profile unknown), FAISS answers, the basket's articles are
  kept as the active customers' plan keeps recent purchases (its slots and
  order: with ``recency`` they lead the list), and the global popular list
  fills what is left. Articles unknown to the version are
  left out; a basket of only unknown articles gets the global popular list;
* otherwise ``customer_id``: a customer of ``tables.USER_FEATURES`` gets
  exactly the blend ``hmrec score`` makes for them (same code, same
  settings, same plans), and any other id the global popular list, as the
  weekly table gives customers without features.

With ``score.method: ranker`` the weekly table holds the ranker's lists, whose
features come from Spark-built candidates at the as-of; the pyfunc serves the
retrieval (the blend above) instead, and ``context.json`` records the
method of the weekly table (``served``).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import shutil
import tempfile
from typing import Any

import faiss
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, DataType, Schema
from pyspark.sql import SparkSession

from hmrec import artifacts
from hmrec.config import Config
from hmrec.errors import HmrecError
from hmrec.etl import segments
from hmrec.etl.popularity import GLOBAL
from hmrec.lake import schemas, storage, tables
from hmrec.model import registry
from hmrec.serve.embedders import ModelEmbedder, worker_cached
from hmrec.serve.index import ShippedIndex, index_dim
from hmrec.serve.plans import ListPlan, Plans
from hmrec.serve.score import (RECENT_COLUMN, SOURCES, ScoringContext, assemble, batch_inputs, build_context,
                               score_frame, scoring_users)

CONTEXT_FORMAT = 1
FILES = {"checkpoint": registry.WEIGHTS_FILE, "meta": registry.META_FILE, "index": "items.faiss",
         "lookups": "lookups.npz", "users": "users.parquet", "context": "context.json"}
# What predict reads from tables.USER_FEATURES (plus segment and, when dated, recent_articles).
USER_COLUMNS = ["customer_id", "customer_idx", "n_purchases", *schemas.USER_CATEGORICALS, *schemas.USER_NUMERICS,
                "category_shares", "last_articles"]
INPUT_SCHEMA = Schema([ColSpec(DataType.string, "customer_id", required=False),
                       ColSpec(Array(DataType.string), "basket", required=False)])
OUTPUT_SCHEMA = Schema([ColSpec(DataType.string, "customer_id"), ColSpec(Array(DataType.string), "article_ids"),
                        ColSpec(Array(DataType.string), "sources"), ColSpec(Array(DataType.double), "scores")])
# The environment `mlflow models serve --env-manager local` runs in is hmrec's own; these are recorded for
# the other env managers, and so MLflow does not start a process to infer them.
PIP_REQUIREMENTS = ["hmrec", "mlflow", "torch", "faiss-cpu", "numpy", "pandas", "pyarrow"]


def model_uri(cfg: Config, alias_or_version: str = registry.CHAMPION) -> str:
    """``models:/<paths.registered_model>@champion`` (an alias) or ``models:/<name>/<version>``."""
    name = cfg.paths.registered_model
    return f"models:/{name}/{alias_or_version}" if alias_or_version.isdigit() else f"models:/{name}@{alias_or_version}"


def basket_plan(plans: tuple[ListPlan, ...]) -> ListPlan:
    """What a basket's list follows: the model with the active customers' recent-purchase slots and order,
    filled from the global popular list (a new customer's age is not known)."""
    active = plans[segments.HISTORY_GROUPS.index("active")]
    return ListPlan(source="model", slots=active.slots if active.source != "popular" else 0, order=active.order,
                    fallback="global")


def _article_groups(spark: SparkSession, cfg: Config, as_of: dt.date, size: int) -> np.ndarray:
    """(size,) product_group_name code of each article_idx (0 = unknown), from ``tables.ITEM_FEATURES``."""
    items = (storage.read_as_of(spark, cfg, tables.ITEM_FEATURES, as_of)
             .select("article_idx", "product_group_name_code").toPandas())
    groups = np.zeros(size, dtype=np.int64)
    idx = items["article_idx"].to_numpy(np.int64)
    inside = idx < size
    groups[idx[inside]] = items["product_group_name_code"].to_numpy(np.int64, na_value=0)[inside]
    return groups


def write_artifacts(ctx: ScoringContext, index: faiss.Index, users: pd.DataFrame, article_group: np.ndarray,
                    loaded: Any, cfg: Config, served: str, out: str) -> dict[str, str]:
    """Write the files of :data:`FILES` for ``ctx`` into ``out``; returns {artifact name: path}."""
    paths = {name: os.path.join(out, file) for name, file in FILES.items()}
    for name in ("checkpoint", "meta"):
        shutil.copyfile(os.path.join(loaded.artifact_dir, FILES[name]), paths[name])
    faiss.write_index(index, paths["index"])
    ids = np.where(pd.isna(ctx.article_ids), "", ctx.article_ids).astype(str)
    vectors = ctx.item_vectors if ctx.item_vectors is not None else np.zeros((0, ctx.dim), np.float32)
    np.savez(paths["lookups"], item_pos=ctx.item_pos, article_ids=ids, item_vectors=vectors,
             fill_idx=ctx.fill_idx, fill_score=ctx.fill_score, article_group=article_group)
    users.to_parquet(paths["users"], index=False)
    context = {
        "format": CONTEXT_FORMAT, "version": ctx.model_version, "as_of": ctx.as_of.isoformat(),
        "registered_model": cfg.paths.registered_model, "served": served, "k": ctx.k,
        "n_candidates": ctx.n_candidates, "min_history": ctx.min_history, "repurchase_slots": ctx.repurchase_slots,
        "repurchase_column": ctx.repurchase_column, "filter_bought": ctx.filter_bought,
        "batch_size": ctx.batch_size, "segment_names": ctx.segment_names, "lapsed_days": ctx.lapsed_days,
        "plans": [p.to_dict() for p in ctx.plans], "last_n": cfg.features.last_n,
        "has_vectors": ctx.item_vectors is not None,
        "sha256": {name: artifacts.sha256_file(paths[name]) for name in ("checkpoint", "index", "lookups", "users")},
    }
    with open(paths["context"], "w") as f:
        json.dump(context, f, indent=1, sort_keys=True)
    return paths


def input_example(users: pd.DataFrame, ctx: ScoringContext) -> pd.DataFrame:
    """Two rows: a known customer with purchases, and a basket of that customer's last articles."""
    bought = users[users["n_purchases"] > 0]
    row = bought.iloc[0] if len(bought) else users.iloc[0]
    last = [int(i) for i in (row["last_articles"] if row["last_articles"] is not None else [])][:3]
    basket = [str(ctx.article_ids[i]) for i in last if 0 <= i < len(ctx.item_pos) and ctx.item_pos[i] >= 0]
    if not basket:
        basket = [str(ctx.article_ids[ctx.fill_idx[0, 0]])]
    return pd.DataFrame({"customer_id": [str(row["customer_id"]), ""], "basket": [[], basket]})


def log_pyfunc(cfg: Config, spark: SparkSession, as_of: dt.date, loaded: Any, index: faiss.Index, plans: Plans,
               served: str) -> str:
    """Write the pyfunc flavour of ``loaded`` (its lists scored at ``as_of`` with ``plans``) into the
    version's ``model/`` artifacts; ``served`` is the method of the weekly table. Returns the model URI."""
    version = str(loaded.version)
    embedder = ModelEmbedder.from_loaded(loaded)
    _, users_df, rep_col = scoring_users(cfg, spark, as_of, plans)
    ctx = build_context(cfg, spark, as_of, embedder, index, rep_col, plans)
    columns = USER_COLUMNS + ["segment"] + ([RECENT_COLUMN] if rep_col == RECENT_COLUMN else [])
    users = users_df.select(*columns).toPandas()
    article_group = _article_groups(spark, cfg, as_of, len(ctx.item_pos))
    with tempfile.TemporaryDirectory(prefix="hmrec-pyfunc-") as tmp:
        files = os.path.join(tmp, "files")
        os.makedirs(files)
        paths = write_artifacts(ctx, index, users, article_group, loaded, cfg, served, files)
        out = os.path.join(tmp, "model")
        mlflow.pyfunc.save_model(
            path=out, python_model=Recommender(), artifacts=paths,
            signature=ModelSignature(inputs=INPUT_SCHEMA, outputs=OUTPUT_SCHEMA),
            input_example=input_example(users, ctx), pip_requirements=PIP_REQUIREMENTS,
        )
        registry.log_artifacts(cfg, version, out, registry.MODEL_DIR)
    return model_uri(cfg, version)


class Recommender(mlflow.pyfunc.PythonModel):
    """The pyfunc of a registered version: top-K article ids for customer ids or baskets (module notes)."""

    def load_context(self, context: Any) -> None:
        """Read every artifact once: the model, the index, the lookup arrays and the customers' features."""
        paths = context.artifacts
        with open(paths["context"]) as f:
            c = json.load(f)
        if c.get("format") != CONTEXT_FORMAT:
            raise HmrecError(f"{paths['context']}: pyfunc context format {c.get('format')!r} is not "
                             f"{CONTEXT_FORMAT}; score the version again with `hmrec score` to rewrite it")
        fix = f"score the version again with `hmrec score --as-of {c['as_of']} --model-version {c['version']}`"
        for name, digest in c["sha256"].items():
            artifacts.verify(paths[name], digest, f"the pyfunc {name} of model version {c['version']}", fix)
        with open(paths["meta"]) as f:
            meta = json.load(f)
        with open(paths["checkpoint"], "rb") as f:
            state = f.read()
        faiss.omp_set_num_threads(1)  # one request at a time: threads only add latency at these sizes
        index = faiss.read_index(paths["index"])
        shipped = ShippedIndex.of(index, f"pyfunc:{c['version']}")
        worker_cached(shipped.key, lambda: index)
        lookups = np.load(paths["lookups"])
        article_ids = lookups["article_ids"].astype(object)
        item_pos = lookups["item_pos"]
        self.ctx = ScoringContext(
            embedder=ModelEmbedder(c["version"], meta["model_args"], state, threads=1),
            index=shipped, dim=index_dim(index), k=c["k"], n_candidates=c["n_candidates"],
            min_history=c["min_history"], repurchase_slots=c["repurchase_slots"],
            repurchase_column=c["repurchase_column"], filter_bought=c["filter_bought"], batch_size=c["batch_size"],
            item_pos=item_pos, item_vectors=lookups["item_vectors"] if c["has_vectors"] else None,
            article_ids=article_ids, segment_names=c["segment_names"], fill_idx=lookups["fill_idx"],
            fill_score=lookups["fill_score"], model_version=c["version"], as_of=dt.date.fromisoformat(c["as_of"]),
            plans=tuple(ListPlan.from_dict(p) for p in c["plans"]), lapsed_days=c["lapsed_days"], threads=1,
            verify=False,
        )
        plan = basket_plan(self.ctx.plans)
        # a basket of one or two articles is enough for the model
        self.basket_ctx = dataclasses.replace(self.ctx, min_history=1, plans=(plan,) * len(self.ctx.plans))
        self.article_group = lookups["article_group"]
        self.n_shares = int(meta["model_args"]["n_shares"])
        self.last_n = int(c["last_n"])
        self.served = c["served"]
        self.version = c["version"]
        self.users = pd.read_parquet(paths["users"])
        self.user_row = {cid: i for i, cid in enumerate(self.users["customer_id"].tolist())}
        indexed = np.flatnonzero(item_pos >= 0)
        self.article_idx = {article_ids[i]: int(i) for i in indexed}
        self.popular = (article_ids[self.ctx.fill_idx[0, : self.ctx.k]],
                        self.ctx.fill_score[0, : self.ctx.k].astype(np.float64))
        self.ctx.embedder.embed_users(self.users.iloc[:1])  # builds the towers now, not on the first request

    def basket_features(self, baskets: list[list[str]], customer_ids: list[str]) -> pd.DataFrame:
        """``tables.USER_FEATURES``-shaped rows of new customers whose purchases are ``baskets`` (latest first)."""
        rows = []
        for cid, basket in zip(customer_ids, baskets):
            idx = [self.article_idx[a] for a in basket if a in self.article_idx][: self.last_n]
            n, distinct = len(idx), len(set(idx))
            shares = np.bincount(np.clip(self.article_group[idx], 0, self.n_shares - 1),
                                 minlength=self.n_shares).astype(np.float32) / max(n, 1)
            row = {c: 0 for c in schemas.USER_CATEGORICALS}
            row.update({c: math.nan for c in schemas.USER_NUMERICS})
            row.update(customer_id=cid, customer_idx=-1, n_purchases=n, n_purchases_log=math.log1p(n),
                       days_since_last_log=0.0, n_distinct_articles_log=math.log1p(distinct),
                       repeat_share=1.0 - distinct / n if n else 0.0, category_shares=shares,
                       last_articles=np.asarray(idx, dtype=np.int64), segment=GLOBAL)
            row[RECENT_COLUMN] = row["last_articles"]
            rows.append({k: v for k, v in row.items() if k in USER_COLUMNS or k in ("segment", RECENT_COLUMN)})
        return pd.DataFrame(rows)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One row per input row: customer_id, article_ids (K), sources (K), scores (K)."""
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "customer_id" not in frame.columns and "basket" not in frame.columns:
            raise HmrecError(f"the input has columns {list(frame.columns)}; give customer_id (64 hex characters) "
                             f"and/or basket (a list of article ids, latest first)")
        n, k = len(frame), self.ctx.k
        cids = ["" if not isinstance(v, str) else v.strip().lower()
                for v in (frame["customer_id"] if "customer_id" in frame.columns else [None] * n)]
        baskets = [[str(a) for a in b] if b is not None and not (isinstance(b, float) and math.isnan(b)) else []
                   for b in (frame["basket"] if "basket" in frame.columns else [None] * n)]
        out_ids = np.empty((n, k), dtype=object)
        out_src = np.empty((n, k), dtype=object)
        out_ids[:], out_src[:] = self.popular[0], "popular"
        out_score = np.tile(self.popular[1], (n, 1))

        asked = np.asarray([len(b) == 0 for b in baskets], dtype=bool)  # answered by customer_id
        by_basket = np.zeros(0, dtype=np.int64)
        if not asked.all():
            features = self.basket_features(baskets, cids)
            by_basket = np.flatnonzero(features["n_purchases"].to_numpy() > 0)
        if len(by_basket):
            sub = features.iloc[by_basket].reset_index(drop=True)
            inp = batch_inputs(sub, self.basket_ctx)
            idx, score, src = assemble(inp, self.basket_ctx, self.basket_ctx.plans)
            if (idx < 0).any():
                raise HmrecError(f"could not fill {k} distinct articles for the basket "
                                 f"{baskets[by_basket[np.flatnonzero((idx < 0).any(axis=1))[0]]]}: the popularity "
                                 f"lists of model version {self.version} are too short; score it again with "
                                 f"`hmrec score` after `hmrec popularity`")
            out_ids[by_basket], out_score[by_basket], out_src[by_basket] = (
                self.ctx.article_ids[idx], score, SOURCES[src])
        rows = [(i, self.user_row[c]) for i, c in enumerate(cids) if asked[i] and c in self.user_row]
        if rows:
            at = np.array([i for i, _ in rows])
            scored = score_frame(self.users.iloc[[r for _, r in rows]], self.ctx)
            out_ids[at] = scored["article_id"].to_numpy(dtype=object).reshape(-1, k)
            out_src[at] = scored["source"].to_numpy(dtype=object).reshape(-1, k)
            out_score[at] = scored["score"].to_numpy(dtype=np.float64).reshape(-1, k)
        return pd.DataFrame({"customer_id": cids, "article_ids": [r.tolist() for r in out_ids],
                             "sources": [r.tolist() for r in out_src], "scores": [r.tolist() for r in out_score]})
