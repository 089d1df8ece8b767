"""The train job: the two-tower model trained on (customer, article) purchase pairs.

On the Spark driver, :func:`train` reads the as-of partition of
``tables.TRAIN`` and the two feature tables, turns the feature tables into
lookup tensors indexed by customer_idx / article_idx, and materialises only
the (customer_idx, article_idx) pairs as Parquet for Petastorm
(:mod:`hmrec.train.pairs`). Each training process (one in-process, or several
started by TorchDistributor with gloo on the CPU, :mod:`hmrec.train.distributed`)
streams its shard of pairs through Petastorm's BatchedDataLoader, looks the
features up in memory, and trains with in-batch plus shared random negatives
(:mod:`hmrec.train.step`). Rank 0 validates (:mod:`hmrec.train.validation`),
logs to MLflow and writes an atomic checkpoint (:mod:`hmrec.train.checkpoint`)
after every epoch; the driver registers the final weights in MLflow.
"""
from __future__ import annotations

import ctypes
import datetime as dt
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pyspark.sql import functions as F
from torch import Tensor

from hmrec.config import AUTO, Config, TrainConfig
from hmrec.errors import HmrecError
from hmrec.etl.split import training_window
from hmrec.lake import schemas, storage, tables
from hmrec.lake.choices import read_choices
from hmrec.model.two_tower import ITEM_ID, USER_ID, TwoTower, build_model, item_inputs, model_args_from_features, user_inputs
from hmrec.progress import log, stage
from hmrec.train import STAGE
from hmrec.train.checkpoint import (
    CHECKPOINT_FORMAT,
    checkpoint_path,
    load_checkpoint,
    resume_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from hmrec.train.distributed import all_have, init_distributed, run_distributed, sum_over_ranks
from hmrec.train.pairs import materialise_pairs, open_loader, read_ahead
from hmrec.train.step import compute_dtype_name, derived_seed, lr_factor, make_optimizers, train_step
from hmrec.train.validation import ValSet, recall_at_k, validation_set
from hmrec.train.warm import WarmDecision, champion_of, decide, extend_state, warm_model_args

# Tables whose Delta version is recorded with every trained model.
LINEAGE_TABLES = [
    tables.TRAIN,
    tables.VALIDATION,
    tables.USER_FEATURES,
    tables.ITEM_FEATURES,
    tables.CUSTOMER_INDEX,
    tables.ARTICLE_INDEX,
]


# ---- the training processes ------------------------------------------------------------


@dataclass
class TrainJob:
    """Everything a training process needs; pickled once per process by TorchDistributor."""

    cfg: Config
    as_of: str
    model_args: dict
    users: dict[str, Tensor]  # feature rows indexed by customer_idx
    items: dict[str, Tensor]  # feature rows indexed by article_idx
    item_prob: Tensor  # (num_items,) share of training rows per article
    converter: Any  # petastorm SparkDatasetConverter of (customer_idx, article_idx)
    world_size: int
    steps_per_epoch: int
    checkpoint_path: str
    run_id: str
    start: dict | None  # checkpoint to continue from
    val: ValSet | None
    # the learning rate decays over this many epochs, whatever the epochs trained: a run
    # that stops at the epoch count chosen on its fitted twin follows the twin's schedule
    horizon_epochs: int = 0
    keep_best: bool = False  # keep the weights of the epoch that validated best
    init: dict | None = None  # initial weights of a warm start (hmrec.train.warm); a checkpoint wins over them


def _log_to_run(job: TrainJob, metrics: dict[str, float], step: int) -> None:
    """Metrics onto the job's MLflow run (rank 0 only)."""
    # imported here, not at the top: the other ranks never pay for importing mlflow
    from hmrec.model import registry

    registry.log_run_metrics(job.cfg, job.run_id, metrics, step=step)


# glibc keeps the freed buffers of each step's differently sized sparse
# gradients and row-group batches in its heap instead of returning them: the
# process grew by ~8 MB a step (20 GB within one 3M-row epoch) although
# nothing stays referenced. Trimming now and then keeps it flat at no
# measurable cost; the environment setting that does the same
# (MALLOC_MMAP_THRESHOLD_) cost 40% of the throughput.
TRIM_EVERY = 50


def _release_free_memory() -> None:
    """Hand the C heap's free memory back to the system (glibc only; elsewhere a no-op)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _run_epoch(
    job: TrainJob,
    model: TwoTower,
    sparse_opt: torch.optim.Optimizer,
    dense_opt: torch.optim.Optimizer,
    epoch: int,
    step: int,
    rank: int,
) -> tuple[list[Tensor], int, int]:
    """One pass over this rank's shard; returns (losses, samples on this rank, global step after it)."""
    tc = job.cfg.train
    world = job.world_size
    total_steps = max(job.horizon_epochs, tc.epochs) * job.steps_per_epoch
    num_items = job.model_args["num_items"]
    negatives_gen = torch.Generator().manual_seed(derived_seed(tc.seed, "negatives", epoch, rank))
    losses: list[Tensor] = []
    samples = samples_logged = 0
    t_logged = time.perf_counter()
    with open_loader(job.converter, tc, rank, world, derived_seed(tc.seed, "reader", epoch)) as loader:
        batches = read_ahead(loader, tc.loader_workers)
        try:
            while tc.max_steps <= 0 or len(losses) < tc.max_steps:
                batch = next(batches, None)
                if world > 1 and not all_have(batch is not None):
                    break
                if batch is None:
                    break
                customer_idx = batch[USER_ID].long()  # (B,)
                article_idx = batch[ITEM_ID].long()  # (B,)
                negatives = torch.randint(num_items, (tc.random_negatives,), generator=negatives_gen)  # (R,)
                for group in dense_opt.param_groups:
                    group["lr"] = tc.lr * lr_factor(step, total_steps, tc.warmup_steps)
                loss = train_step(
                    model, sparse_opt, dense_opt, job.users, job.items, customer_idx, article_idx,
                    negatives, job.item_prob, tc, world,
                )
                losses.append(loss)
                samples += len(article_idx)
                step += 1
                if step % TRIM_EVERY == 0:
                    _release_free_memory()
                if rank == 0 and tc.log_every > 0 and step % tc.log_every == 0:
                    now = time.perf_counter()
                    rate = (samples - samples_logged) * world / max(now - t_logged, 1e-9)
                    log(STAGE, f"epoch {epoch + 1}/{tc.epochs} step {step} loss {float(loss):.4f} {rate:,.0f} samples/s")
                    _log_to_run(job, {"train_loss_step": float(loss)}, step)
                    t_logged, samples_logged = now, samples
        finally:
            batches.close()
    if not losses:
        raise HmrecError(
            f"epoch {epoch + 1} read no training batch on rank {rank} of {world}: a shard of the "
            f"{tables.TRAIN} pairs is empty; lower train.num_processes"
        )
    return losses, samples, step


def train_worker(job: TrainJob) -> None:
    """The body of every training process: epochs from the checkpoint (if any) to train.epochs.

    Every rank holds the same model (same seed, averaged gradients); rank 0
    validates, logs and writes the checkpoint after each epoch.
    """
    tc = job.cfg.train
    world = job.world_size
    rank = init_distributed(world, tc.dist_timeout_s)
    try:
        model = build_model(job.model_args, seed=tc.seed)
        sparse_opt, dense_opt = make_optimizers(model, tc)
        epoch, step, history = 0, 0, []
        best: dict | None = None  # {"epoch", "metric", "model"} of the best validated epoch so far
        if job.start is not None:
            model.load_state_dict(job.start["model"])
            sparse_opt.load_state_dict(job.start["sparse_opt"])
            dense_opt.load_state_dict(job.start["dense_opt"])
            epoch, step, history = job.start["epoch"], job.start["step"], list(job.start["history"])
            set_rng_state(job.start["rng"])
            best = job.start.get("best")
        elif job.init is not None:
            model.load_state_dict(job.init)
        model.train()
        while epoch < tc.epochs:
            started = time.perf_counter()
            losses, samples, step = _run_epoch(job, model, sparse_opt, dense_opt, epoch, step, rank)
            seconds = time.perf_counter() - started
            samples = sum_over_ranks(samples, world)
            epoch += 1
            if rank != 0:
                continue
            record = {
                "epoch": epoch,
                "steps": len(losses),
                "samples": samples,
                "seconds": round(seconds, 3),
                "samples_per_s": round(samples / max(seconds, 1e-9)),
                "train_loss": float(torch.stack(losses).mean()),
            }
            if job.val is not None:
                metric = recall_at_k(model, job.users, job.items, job.val, tc.val_k)
                record[f"val_recall@{tc.val_k}"] = metric
                # the earliest of equally good epochs: fewer epochs cost less
                if job.keep_best and (best is None or metric > best["metric"]):
                    best = {"epoch": epoch, "metric": metric,
                            "model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            history.append(record)
            figures = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
            log(STAGE, f"epoch done: {figures}")
            _log_to_run(job, {k: v for k, v in record.items() if k != "epoch"}, epoch)
            save_checkpoint(
                job.checkpoint_path,
                {
                    "format": CHECKPOINT_FORMAT,
                    "epoch": epoch,
                    "step": step,
                    "model": model.state_dict(),
                    "sparse_opt": sparse_opt.state_dict(),
                    "dense_opt": dense_opt.state_dict(),
                    "rng": rng_state(),
                    "model_args": job.model_args,
                    "config": job.cfg.to_dict(),
                    "as_of": job.as_of,
                    "run_id": job.run_id,
                    "history": history,
                    "best": best,
                },
            )
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def run_processes(job: TrainJob) -> None:
    """Run :func:`train_worker` in this process (one local process) or through TorchDistributor."""
    tc = job.cfg.train
    if tc.num_processes == 1 and tc.local_mode:
        # TorchDistributor would start torchrun and re-import torch for one process: seconds for nothing.
        train_worker(job)
        return
    run_distributed(train_worker, job, num_processes=tc.num_processes, local_mode=tc.local_mode)


# ---- driver side: inputs ---------------------------------------------------------------


def _read_as_of(spark: Any, cfg: Config, table: tables.Table, as_of: dt.date) -> Any:
    """The as-of partition of ``table``; a missing table is an error naming the stage that writes it."""
    if not storage.exists(spark, cfg, table):
        raise HmrecError(
            f"table {table} does not exist at {storage.path(cfg, table)}; "
            f"run `hmrec {table.writer} --as-of {as_of.isoformat()}` first"
        )
    return storage.read_as_of(spark, cfg, table, as_of)


def _no_rows(table: tables.Table, as_of: dt.date, detail: str = "") -> HmrecError:
    return HmrecError(
        f"table {table} has no rows for as_of {as_of.isoformat()}{detail}; "
        f"run `hmrec {table.writer} --as-of {as_of.isoformat()}` first"
    )


def _feature_frame(spark: Any, cfg: Config, table: tables.Table, as_of: dt.date, columns: list[str]) -> Any:
    pdf = _read_as_of(spark, cfg, table, as_of).select(*columns).toPandas()
    if pdf.empty:
        raise _no_rows(table, as_of)
    id_col = columns[0]
    bad = pdf[pdf[id_col].isna() | (pdf[id_col] < 0)]
    if len(bad):
        raise HmrecError(
            f"table {table}, column {id_col}: invalid value {bad[id_col].iloc[0]!r} for as_of {as_of.isoformat()}; "
            f"rebuild it with `hmrec {table.writer} --as-of {as_of.isoformat()}`"
        )
    return pdf


def feature_tensors(spark: Any, cfg: Config, as_of: dt.date) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(user_inputs, item_inputs) of the as-of's feature rows, collected to the driver through Arrow."""
    user_cols = [USER_ID, *schemas.USER_CATEGORICALS, *schemas.USER_NUMERICS, "category_shares", "last_articles"]
    item_cols = [ITEM_ID, *[f"{c}_code" for c in schemas.ITEM_CATEGORICALS], *schemas.ITEM_NUMERICS]
    users = user_inputs(_feature_frame(spark, cfg, tables.USER_FEATURES, as_of, user_cols))
    items = item_inputs(_feature_frame(spark, cfg, tables.ITEM_FEATURES, as_of, item_cols))
    return users, items


def lookup_table(inputs: dict[str, Tensor], id_key: str, n: int) -> dict[str, Tensor]:
    """Feature tensors re-indexed so that row i belongs to id i (0 <= i < n).

    Ids without a feature row keep their own id and get unknown codes, an
    empty history, zero shares and NaN numerics (which the towers read as the
    training mean).
    """
    ids = inputs[id_key]
    out = {}
    for key, value in inputs.items():
        if key == id_key:
            out[key] = torch.arange(n, dtype=torch.int64)
            continue
        missing = float("nan") if key.endswith("_num") else 0
        full = torch.full((n, *value.shape[1:]), missing, dtype=value.dtype)
        full[ids] = value
        out[key] = full
    return out


@dataclass
class TrainingData:
    """What the driver prepares for the training processes."""

    rows: Any  # Spark DataFrame of the as-of's training rows (tables.TRAIN)
    n_rows: int
    users: dict[str, Tensor]  # lookup table by customer_idx
    items: dict[str, Tensor]  # lookup table by article_idx
    item_prob: Tensor  # (num_items,)
    model_args: dict


def prepare_data(spark: Any, cfg: Config, as_of: dt.date) -> TrainingData:
    """Read ``tables.TRAIN`` and the feature tables for ``as_of`` and size the model from them."""
    tc = cfg.train
    rows = training_window(spark, cfg, as_of)
    agg = rows.agg(
        F.count(F.lit(1)).alias("n"),
        F.min(USER_ID).alias("min_u"),
        F.max(USER_ID).alias("max_u"),
        F.min(ITEM_ID).alias("min_i"),
        F.max(ITEM_ID).alias("max_i"),
    ).first()
    n_rows = int(agg["n"])
    if n_rows == 0:
        window = f" in the last {tc.train_days} days (train.train_days)" if tc.train_days > 0 else ""
        raise _no_rows(tables.TRAIN, as_of, f" with both indices{window}")
    for col, value in ((USER_ID, agg["min_u"]), (ITEM_ID, agg["min_i"])):
        if value < 0:
            raise HmrecError(
                f"table {tables.TRAIN}, column {col}: negative index {value}; "
                f"rebuild it with `hmrec {tables.TRAIN.writer} --as-of {as_of.isoformat()}`"
            )
    users_in, items_in = feature_tensors(spark, cfg, as_of)
    # a customer or article may be in the purchases but not (yet) in a feature table
    num_users = max(int(agg["max_u"]), int(users_in[USER_ID].max())) + 1
    num_items = max(int(agg["max_i"]), int(items_in[ITEM_ID].max())) + 1
    counts = rows.groupBy(ITEM_ID).count().toPandas()
    item_prob = torch.zeros(num_items, dtype=torch.float64)
    item_prob[torch.from_numpy(counts[ITEM_ID].to_numpy().astype(np.int64))] = torch.from_numpy(
        counts["count"].to_numpy().astype(np.float64)
    )
    return TrainingData(
        rows=rows,
        n_rows=n_rows,
        users=lookup_table(users_in, USER_ID, num_users),
        items=lookup_table(items_in, ITEM_ID, num_items),
        item_prob=(item_prob / n_rows).float(),
        model_args=model_args_from_features(
            users_in, items_in, num_users, num_items, tc.embedding_dim, tc.id_dim, tc.attr_dim, tc.hidden_dim
        ),
    )


# ---- config checks ---------------------------------------------------------------------


# A batch is made smaller when an epoch would otherwise have fewer steps than
# this (small data sets: the demo's 25k rows would be 13 steps of 2048), but
# never below FITTED_BATCH_FLOOR rows.
MIN_STEPS_PER_EPOCH = 50
FITTED_BATCH_FLOOR = 256


def fit_batch_size(cfg: Config, n_rows: int) -> Config:
    """``cfg`` with train.batch_size lowered (to a multiple of 64) so an epoch has MIN_STEPS_PER_EPOCH steps."""
    tc = cfg.train
    most = n_rows // (MIN_STEPS_PER_EPOCH * tc.num_processes) // 64 * 64
    batch = min(tc.batch_size, max(most, FITTED_BATCH_FLOOR))
    if batch == tc.batch_size:
        return cfg
    log(
        STAGE,
        f"train.batch_size {tc.batch_size} would make an epoch of {n_rows:,} rows fewer than "
        f"{MIN_STEPS_PER_EPOCH} steps; training with batches of {batch}",
    )
    return replace(cfg, train=replace(tc, batch_size=batch))


# ---- the job ---------------------------------------------------------------------------


def _train_epochs(
    spark: Any, cfg: Config, data: TrainingData, as_of: dt.date, ckpt: str, run_id: str, start: dict | None,
    plan: "EpochPlan", init: dict | None = None,
) -> None:
    """Materialise the pairs, run the training processes, and always delete the pairs again."""
    tc = cfg.train
    val = None
    if plan.labels_as_of is not None:
        val = validation_set(spark, cfg, plan.labels_as_of, data.model_args["num_users"], data.model_args["num_items"])
        if val is None:
            log(STAGE, f"no purchase in the validation week of {plan.labels_as_of}: every epoch is kept to the last")
    steps = max(1, data.n_rows // (tc.batch_size * tc.num_processes))
    if tc.max_steps > 0:
        steps = min(steps, tc.max_steps)
    converter = materialise_pairs(spark, cfg, data.rows, data.n_rows, tc.num_processes)
    try:
        run_processes(
            TrainJob(
                cfg=cfg, as_of=as_of.isoformat(), model_args=data.model_args, users=data.users, items=data.items,
                item_prob=data.item_prob, converter=converter, world_size=tc.num_processes, steps_per_epoch=steps,
                checkpoint_path=ckpt, run_id=run_id, start=start, val=val,
                horizon_epochs=plan.horizon, keep_best=plan.keep_best and val is not None, init=init,
            )
        )
    finally:
        converter.delete()


@dataclass(frozen=True)
class EpochPlan:
    """How many epochs a run trains, over which learning-rate horizon, and what it is validated on."""

    epochs: int
    horizon: int
    keep_best: bool
    labels_as_of: dt.date | None  # the as-of whose validation week monitors the run (fit runs only)
    why: str


def epoch_plan(spark: Any, cfg: Config, as_of: dt.date, role: str, fitted_for: dt.date | None) -> EpochPlan:
    """The epochs of a run of ``role`` at ``as_of``.

    ``train.epochs: auto``: a fit run (fitted for the as-of ``fitted_for``,
    whose validation week starts at this run's cutoff) trains
    ``train.max_epochs`` and keeps the epoch that validates best; a serve run
    trains the epoch count chosen on its validation week (``tables.CHOICES``),
    on the same learning-rate horizon, so it follows the fitted run's
    schedule. A number is trained as it is, by either role.
    """
    tc = cfg.train
    labels = fitted_for if role == "fit" else None
    if tc.epochs != AUTO:
        return EpochPlan(tc.epochs, tc.epochs, False, labels, f"train.epochs={tc.epochs}")
    if role == "fit":
        return EpochPlan(tc.max_epochs, tc.max_epochs, True, labels,
                         f"train.epochs=auto: up to train.max_epochs={tc.max_epochs}, the best validated kept")
    chosen = read_choices(spark, cfg, as_of)
    epochs = (chosen or {}).get("choices", {}).get("train.epochs")
    if epochs is None:
        return EpochPlan(tc.max_epochs, tc.max_epochs, False, None,
                         f"train.epochs=auto but nothing was chosen for {as_of}: train.max_epochs={tc.max_epochs}")
    return EpochPlan(int(epochs), tc.max_epochs, False, None,
                     f"train.epochs=auto: {epochs}, chosen on the validation week from {chosen['fit_cutoff']}")


@dataclass
class WarmStart:
    """What a run starts from: the decision, and for a warm start its initial weights and row counts."""

    decision: WarmDecision
    init: dict | None = None
    counts: dict | None = None


def warm_config(cfg: Config) -> Config:
    """``cfg`` as a warm-started run trains: train.warm_epochs epochs over the train.warm_train_days window."""
    tc = cfg.train
    days = tc.warm_train_days if tc.warm_train_days > 0 else tc.train_days
    return replace(cfg, train=replace(tc, epochs=tc.warm_epochs, train_days=days))


def prepare_start(spark: Any, cfg: Config, as_of: dt.date, role: str, fitted_for: dt.date | None,
                  plan: "EpochPlan") -> tuple[Config, TrainingData, "EpochPlan", WarmStart]:
    """The run's config, data, epoch plan and start: warm from the champion or cold (hmrec.train.warm).

    A warm run trains ``train.warm_epochs`` epochs on the last
    ``train.warm_train_days`` days; when the champion's weights do not fit the
    new model, one line says why and the run trains cold as planned.
    """
    from hmrec.model import registry  # imported here: the training ranks never need mlflow

    cold_cfg = replace(cfg, train=replace(cfg.train, epochs=plan.epochs))
    champion = champion_of(cfg) if cfg.train.warm_start != "off" else None
    decision = decide(cfg, as_of, role, fitted_for, champion)
    if decision.champion is not None:
        wcfg = warm_config(cfg)
        data = prepare_data(spark, wcfg, as_of)
        loaded = registry.load_model(cfg, decision.champion.version)
        champion_args = loaded.meta["model_args"]
        args, why = warm_model_args(champion_args, data.model_args)
        if args is not None:
            init, counts = extend_state(loaded.model.state_dict(), champion_args, args, cfg.train.seed)
            data = replace(data, model_args=args)
            tc = wcfg.train
            warm_plan = EpochPlan(tc.warm_epochs, tc.warm_epochs, False, plan.labels_as_of,
                                  f"{decision.why}: train.warm_epochs={tc.warm_epochs} on the last "
                                  f"{tc.train_days or 'all'} days")
            return wcfg, data, warm_plan, WarmStart(decision, init, counts)
        decision = WarmDecision(None, f"cold: the weights of champion v{decision.champion.version} do not fit ({why})")
    log(STAGE, f"{role} model at {as_of}: {decision.why}")
    return cold_cfg, prepare_data(spark, cold_cfg, as_of), plan, WarmStart(decision)


def flat_train_params(tc: TrainConfig) -> dict[str, object]:
    """The train config as ``train.<key>`` params."""
    return {f"train.{k}": v for k, v in asdict(tc).items()}


def train(cfg: Config, spark: Any, as_of: dt.date, resume: bool = False, role: str = "serve",
          fitted_for: dt.date | None = None) -> str:
    """Train the two-tower model on ``tables.TRAIN`` for ``as_of``, register it, return the version.

    ``role`` serve (the default) is the model scored at ``as_of``; fit is the
    model of an earlier cutoff whose following week, the validation week of
    ``fitted_for``, decides the choices of that as-of (see :func:`epoch_plan`).
    ``resume`` continues from the last epoch checkpoint of a killed run for
    the same as-of and role (and ends with the same weights as an uninterrupted run).
    """
    # imported here, not at the top: the training ranks import this module and never need mlflow
    from hmrec.model import registry

    if role == "fit" and fitted_for is None:
        raise HmrecError("a fit run needs the as-of it is fitted for (fitted_for)")
    with stage(STAGE) as summary:
        started = time.perf_counter()
        versions = {table.name: storage.version(spark, cfg, table) for table in LINEAGE_TABLES}
        plan = epoch_plan(spark, cfg, as_of, role, fitted_for)
        cfg, data, plan, start_from = prepare_start(spark, cfg, as_of, role, fitted_for, plan)
        cfg = fit_batch_size(cfg, data.n_rows)
        tc = cfg.train
        args = data.model_args
        log(
            STAGE,
            f"{role} model at {as_of}: {data.n_rows:,} training rows, {args['num_users']:,} customers, "
            f"{args['num_items']:,} articles; {plan.why}; matrix products in {compute_dtype_name(tc)}",
        )
        warm_record = {"warm_start": "warm" if start_from.decision.warm else "cold",
                       "warm_start_why": start_from.decision.why}
        if start_from.decision.champion is not None:
            counts = start_from.counts or {}
            warm_record["warm_start_from"] = start_from.decision.champion.version
            warm_record.update({f"warm_start_{k}": v for k, v in counts.items()})
            log(
                STAGE,
                f"warm start from v{start_from.decision.champion.version}: {counts['customers_copied']:,} customer "
                f"rows copied, {counts['customers_new']:,} new; {counts['articles_copied']:,} article rows copied, "
                f"{counts['articles_new']:,} new; {counts['attribute_codes_new']:,} new attribute codes",
            )

        ckpt = checkpoint_path(cfg, as_of, role)
        start = resume_state(ckpt, args, cfg) if resume else None
        if start is None and os.path.exists(ckpt):
            os.remove(ckpt)  # left by an earlier run that was not resumed
        tags = {f"delta_version.{name}": "missing" if v is None else str(v) for name, v in versions.items()}
        tags.update({"stage": STAGE, "train_rows": str(data.n_rows), "role": role, "epochs_why": plan.why})
        tags.update({k: str(v) for k, v in warm_record.items()})
        if fitted_for is not None:
            tags["fitted_for"] = fitted_for.isoformat()
        params = {**flat_train_params(tc), "data.num_users": args["num_users"], "data.num_items": args["num_items"]}
        run_id = registry.start_run(cfg, as_of, params, tags, run_id=start["run_id"] if start else None)
        try:
            epochs_before = start["epoch"] if start else 0
            if epochs_before < tc.epochs:
                _train_epochs(spark, cfg, data, as_of, ckpt, run_id, start, plan, init=start_from.init)
            final = load_checkpoint(ckpt)
            if final["epoch"] < tc.epochs:
                raise HmrecError(
                    f"training stopped after epoch {final['epoch']} of {tc.epochs} (see the output above); "
                    f"continue with `hmrec train --as-of {as_of.isoformat()} --resume`"
                )
            history = final["history"]
            trained = history[epochs_before:]
            best = final.get("best")
            weights = best["model"] if best is not None else final["model"]
            best_epoch = best["epoch"] if best is not None else final["epoch"]
            version = registry.register_model(
                cfg, run_id, weights, args, as_of,
                extra_meta={"table_versions": versions, "history": history, "train_rows": data.n_rows,
                            "best_epoch": best_epoch, "epochs_why": plan.why,
                            "fitted_for": fitted_for.isoformat() if fitted_for else None,
                            "warm_start": warm_record},
                role=role,
            )
            end_to_end = sum(r["samples"] for r in trained) / max(time.perf_counter() - started, 1e-9)
            registry.log_run_metrics(cfg, run_id, {"end_to_end_samples_per_s": end_to_end}, step=len(history))
            registry.end_run(cfg, run_id, "FINISHED")
        except BaseException:
            registry.end_run(cfg, run_id, "FAILED")
            raise
        os.remove(ckpt)  # the registered version holds the weights from here on
        last = history[-1]
        train_seconds = sum(r["seconds"] for r in trained)
        summary.update(
            model_version=version,
            role=role,
            rows=data.n_rows,
            epochs=len(history),
            best_epoch=best_epoch,
            steps=final["step"],
            loss=round(last["train_loss"], 4),
            **{k: round(v, 4) for k, v in last.items() if k.startswith("val_")},
            trainer_samples_per_s=round(sum(r["samples"] for r in trained) / max(train_seconds, 1e-9)),
            end_to_end_samples_per_s=round(end_to_end),
            **warm_record,
        )
    return version
