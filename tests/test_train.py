"""The train job on hand-made data with a planted answer.

Customers fall into three groups and each group buys only from one product
group of articles, so after training a customer must score the articles of
their own group above every other article. One lakehouse holds the data for
the whole module and the main training run is shared by several tests; the
CPU is shared, so everything is tiny.
"""
from __future__ import annotations

import datetime as dt
import math
import os
import random
import shutil
import time

import numpy as np
import pytest
import torch

from hmrec.bench import probes
from hmrec.errors import HmrecError
from hmrec.config import ConfigError
from hmrec.lake import schemas, storage, tables
from hmrec.model import registry, two_tower
from hmrec.model.two_tower import item_inputs, user_inputs
from hmrec.train import checkpoint, distributed, job, pairs, step
from tests.conftest import make_cfg

AS_OF = dt.date(2020, 9, 16)
GROUPS = 3
USERS_PER_GROUP = 12
ITEMS_PER_GROUP = 8
BUYS_PER_USER = 20
N_USERS = GROUPS * USERS_PER_GROUP
N_ITEMS = GROUPS * ITEMS_PER_GROUP
N_ROWS = N_USERS * BUYS_PER_USER

TRAIN_SETTINGS = [
    "train.epochs=2",
    "train.batch_size=64",
    "train.random_negatives=16",
    "train.warmup_steps=2",
    "train.lr=0.01",
    "train.sparse_lr=0.05",
    "train.temperature=0.1",
    "train.embedding_dim=16",
    "train.id_dim=8",
    "train.attr_dim=4",
    "train.hidden_dim=32",
    "train.val_users=100",
    "train.val_k=8",
    "train.log_every=1",
]


def group_of_user(customer_idx: int) -> int:
    return customer_idx % GROUPS


def group_of_item(article_idx: int) -> int:
    return article_idx % GROUPS


def _customer_id(i: int) -> str:
    return f"{i:064x}"


def _article_id(i: int) -> str:
    return f"{108775000 + i:010d}"


# The week after AS_OF is the validation week of the refresh a week later: what a model
# fitted at AS_OF is validated on after every epoch.
FITTED_FOR = AS_OF + dt.timedelta(days=7)


def write_planted(spark, cfg, as_of: dt.date = AS_OF) -> None:
    """``tables.TRAIN``, the week after (as ``tables.VALIDATION`` of the refresh a week later), both
    feature tables and the id maps for the planted groups."""
    rng = random.Random(11)
    items_of = {g: [a for a in range(N_ITEMS) if group_of_item(a) == g] for g in range(GROUPS)}
    train_rows, holdout_rows, users = [], [], []
    for c in range(N_USERS):
        g = group_of_user(c)
        bought = []
        for _ in range(BUYS_PER_USER):
            a = rng.choice(items_of[g])
            day = as_of - dt.timedelta(days=rng.randint(1, 60))
            bought.append((day, a))
            train_rows.append((day, _customer_id(c), _article_id(a), 0.02, rng.choice([1, 2]), c, a, as_of))
        for _ in range(2):
            a = rng.choice(items_of[g])
            day = as_of + dt.timedelta(days=rng.randint(0, 6))
            holdout_rows.append((day, _customer_id(c), _article_id(a), 0.02, 1, c, a, as_of))
        shares = [0.0] * (GROUPS + 1)
        shares[g + 1] = 1.0  # product_group_name_code of group g is g + 1
        last = [a for _, a in sorted(bought, reverse=True)[:5]]
        users.append(
            (as_of, _customer_id(c), c, BUYS_PER_USER, 20 + c, rng.randint(1, 6), 1, rng.randint(1, 3),
             rng.randint(0, 1), rng.randint(0, 1), math.log1p(BUYS_PER_USER), rng.random(), 0.02,
             rng.random(), rng.random() * 3, rng.random(), shares, last)
        )
    items = []
    for a in range(N_ITEMS):
        codes = [rng.randint(1, 5) for _ in schemas.ITEM_CATEGORICALS]
        codes[schemas.ITEM_CATEGORICALS.index("product_group_name")] = group_of_item(a) + 1
        nums = [float(rng.randint(0, 5)), float(rng.randint(0, 20)), float(rng.randint(0, 50)), 0.02, 0.001,
                float(rng.randint(1, 700))]
        items.append((as_of, _article_id(a), a, *codes, *nums))
    storage.write_partition(spark.createDataFrame(train_rows, schemas.SPLIT_ROWS), cfg, tables.TRAIN, as_of)
    week_after = [(*r[:-1], as_of + dt.timedelta(days=7)) for r in holdout_rows]
    storage.write_partition(spark.createDataFrame(week_after, schemas.SPLIT_ROWS), cfg, tables.VALIDATION,
                            as_of + dt.timedelta(days=7))
    storage.write_partition(spark.createDataFrame(users, schemas.USER_FEATURES), cfg, tables.USER_FEATURES, as_of)
    storage.write_partition(spark.createDataFrame(items, schemas.ITEM_FEATURES), cfg, tables.ITEM_FEATURES, as_of)
    storage.write(
        spark.createDataFrame([(_customer_id(c), c) for c in range(N_USERS)], schemas.CUSTOMER_INDEX),
        cfg, tables.CUSTOMER_INDEX,
    )
    storage.write(
        spark.createDataFrame([(_article_id(a), a) for a in range(N_ITEMS)], schemas.ARTICLE_INDEX),
        cfg, tables.ARTICLE_INDEX,
    )


# ---- pure helpers (no Spark) ---------------------------------------------------------------


def test_lr_factor_warms_up_then_decays_to_zero():
    assert step.lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert step.lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert step.lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert step.lr_factor(55, 100, 10) == pytest.approx(0.5)  # half way through the cosine
    assert step.lr_factor(100, 100, 10) == pytest.approx(0.0)
    assert step.lr_factor(500, 100, 10) == pytest.approx(0.0)


def test_lookup_table_places_rows_by_id():
    inputs = {"customer_idx": torch.tensor([3, 0]), "user_num": torch.tensor([[3.0], [0.5]])}
    table = job.lookup_table(inputs, "customer_idx", 5)
    assert table["customer_idx"].tolist() == [0, 1, 2, 3, 4]
    assert table["user_num"][[0, 3], 0].tolist() == [0.5, 3.0]
    assert bool(table["user_num"][[1, 2, 4]].isnan().all())  # the towers read NaN as the mean


def test_unknown_compute_dtype_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.compute_dtype must be one of auto, bfloat16, float32, got 'float16'"):
        make_cfg(tmp_path, "train.compute_dtype=float16")


def test_auto_compute_dtype_follows_the_cpu(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, "train.compute_dtype=auto")
    monkeypatch.setattr(step, "_auto_dtype", lambda: torch.float32)  # as on a CPU without bfloat16 instructions
    assert step.compute_dtype(cfg.train) == torch.float32
    monkeypatch.setattr(step, "_auto_dtype", lambda: torch.bfloat16)
    assert step.compute_dtype(cfg.train) == torch.bfloat16


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_train_step_lowers_the_loss_in_both_compute_types(dtype, tmp_path):
    cfg = make_cfg(tmp_path, f"train.compute_dtype={dtype}", "train.random_negatives=32", "train.warmup_steps=0")
    args = probes.synthetic_model_args(cfg, num_users=64, num_items=40)
    gen = torch.Generator().manual_seed(0)
    users, items = probes.synthetic_tables(args, gen)
    model = two_tower.build_model(args, seed=0)
    sparse_opt, dense_opt = step.make_optimizers(model, cfg.train)
    customers = torch.arange(64)
    articles = customers % 40  # a fixed pairing to learn
    negatives = torch.randint(40, (32,), generator=gen)
    prob = torch.full((40,), 1 / 40)
    losses = [
        step.train_step(model, sparse_opt, dense_opt, users, items, customers, articles, negatives, prob, cfg.train)
        for _ in range(30)
    ]
    assert all(loss.dtype == torch.float32 for loss in losses)
    assert float(losses[-1]) < float(losses[0]) - 0.5, [round(float(v), 3) for v in losses]
    for p in model.parameters():  # the weights and their updates stay float32
        assert p.dtype == torch.float32


def test_batch_size_is_fitted_to_small_data(tmp_path):
    cfg = make_cfg(tmp_path, "train.batch_size=2048")
    # 25,350 rows: 2048 would be 13 steps an epoch; at most 25,350 / 50 = 507 rows, rounded down to 448
    fitted = job.fit_batch_size(cfg, 25_350)
    assert fitted.train.batch_size == 448
    assert 25_350 / fitted.train.batch_size >= job.MIN_STEPS_PER_EPOCH
    assert job.fit_batch_size(cfg, 31_403_267) is cfg  # large data: unchanged
    assert job.fit_batch_size(cfg, 1_000).train.batch_size == job.FITTED_BATCH_FLOOR
    small = make_cfg(tmp_path, "train.batch_size=64")
    assert job.fit_batch_size(small, 1_000) is small  # already small enough: unchanged


def test_read_ahead_keeps_order_and_reraises():
    assert list(pairs.read_ahead(iter(range(50)), 1)) == list(range(50))
    assert list(pairs.read_ahead(iter(range(5)), 0)) == list(range(5))

    def broken():
        yield 1
        raise ValueError("disk gone")

    got = pairs.read_ahead(broken(), 1)
    assert next(got) == 1
    with pytest.raises(ValueError, match="disk gone"):
        next(got)


def test_checkpoint_written_atomically_and_corruption_reported(tmp_path):
    path = str(tmp_path / "ck" / "last.pt")
    state = {k: 0 for k in checkpoint.CHECKPOINT_KEYS}
    state.update(format=checkpoint.CHECKPOINT_FORMAT, model={"w": torch.ones(2)}, history=[])
    checkpoint.save_checkpoint(path, state)
    assert os.listdir(tmp_path / "ck") == ["last.pt"]  # no temp file left behind
    assert torch.equal(checkpoint.load_checkpoint(path)["model"]["w"], torch.ones(2))
    with open(path, "r+b") as f:
        f.truncate(40)
    with pytest.raises(HmrecError, match=r"last\.pt is corrupted.*delete it or rerun without --resume"):
        checkpoint.load_checkpoint(path)


def test_first_error_line_names_the_failing_rank():
    output = (
        "[rank1]: Traceback (most recent call last):\n"
        "[rank1]:     raise ValueError('bad')\n"
        "[rank1]: ValueError: table gold/train, column article_idx: bad value 7\n"
        "[rank0]: RuntimeError: Connection closed by peer [127.0.0.1]:4015\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n"
    )
    assert distributed.first_error_line(output) == "[rank1]: ValueError: table gold/train, column article_idx: bad value 7"


# ---- the train job -------------------------------------------------------------------------


def test_missing_input_table_names_the_stage_to_run(spark, cfg):
    with pytest.raises(HmrecError, match=r"table gold/train does not exist .*run `hmrec split --as-of 2020-09-16`"):
        job.train(cfg, spark, AS_OF)


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    """A lakehouse holding the planted data, shared by the module's training runs."""
    root = tmp_path_factory.mktemp("train_lake")
    write_planted(spark, make_cfg(root))
    return root


def train_cfg(lake, *extra: str):
    return make_cfg(lake, *TRAIN_SETTINGS, *extra)


@pytest.fixture(scope="module")
def first_run(spark, lake):
    """The reference run (2 epochs), with the weights the trainer checkpointed after each epoch."""
    cfg = train_cfg(lake)
    saved = []
    real_save = job.save_checkpoint

    def recording(path, state):
        saved.append({k: v.clone() for k, v in state["model"].items()})
        real_save(path, state)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(job, "save_checkpoint", recording)
        started = time.perf_counter()
        version = job.train(cfg, spark, AS_OF, role="fit", fitted_for=FITTED_FOR)
        seconds = time.perf_counter() - started
    return {"cfg": cfg, "version": version, "saved": saved, "seconds": seconds}


def _metric_history(cfg, run_id: str, key: str) -> list[float]:
    hist = registry.client(cfg).get_metric_history(run_id, key)
    return [m.value for m in sorted(hist, key=lambda m: m.step)]


def _embeddings(spark, cfg, model):
    updf = storage.read_as_of(spark, cfg, tables.USER_FEATURES, AS_OF).toPandas().sort_values("customer_idx")
    ipdf = storage.read_as_of(spark, cfg, tables.ITEM_FEATURES, AS_OF).toPandas().sort_values("article_idx")
    with torch.no_grad():
        return model.user_tower(user_inputs(updf)), model.item_tower(item_inputs(ipdf))


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def distributed_run(spark, lake):
    """The reference run's settings trained by two processes through TorchDistributor."""
    cfg = train_cfg(lake, "train.num_processes=2", "train.log_every=0")
    started = time.perf_counter()
    version = job.train(cfg, spark, AS_OF, role="fit", fitted_for=FITTED_FOR)
    print(f"2-process TorchDistributor run: {time.perf_counter() - started:.1f}s")
    return {"cfg": cfg, "version": version}


@pytest.mark.parametrize("run", ["first_run", "distributed_run"], ids=["local", "2-processes"])
def test_users_score_their_own_group_first(run, request, spark):
    """One contract for local and distributed training: the same planted data, the same bar."""
    trained = request.getfixturevalue(run)
    cfg, version = trained["cfg"], trained["version"]
    world = cfg.train.num_processes
    loaded = registry.load_model(cfg, version)
    history = loaded.meta["history"]
    assert [epoch["epoch"] for epoch in history] == [1, 2]
    for epoch in history:
        # every rank contributed: world - 1 ranks alone see at most steps * batch_size rows each
        assert (world - 1) * epoch["steps"] * 64 < epoch["samples"] <= min(world * epoch["steps"] * 64, N_ROWS)
    users, items = _embeddings(spark, cfg, loaded.model)
    scores = users @ items.T  # (N_USERS, N_ITEMS)
    own = torch.tensor([[group_of_user(c) == group_of_item(a) for a in range(N_ITEMS)] for c in range(N_USERS)])
    worst_own = scores.masked_fill(~own, math.inf).min(dim=1).values
    best_other = scores.masked_fill(own, -math.inf).max(dim=1).values
    assert bool((worst_own > best_other).all()), (worst_own - best_other).tolist()
    # the same answer seen through validation: recall@8 over 24 articles (chance: 1/3)
    recall = _metric_history(cfg, loaded.meta["run_id"], "val_recall_at_8")
    assert len(recall) == 2 and recall[-1] >= 0.95, recall
    losses = _metric_history(cfg, loaded.meta["run_id"], "train_loss")
    assert losses[1] < losses[0]


def test_ten_steps_lower_the_loss(spark, lake):
    # through the read-ahead thread (the default reads in the training loop)
    cfg = train_cfg(lake, "train.epochs=1", "train.max_steps=10", "train.log_every=1", "train.loader_workers=1")
    version = job.train(cfg, spark, AS_OF)
    run_id = registry.load_model(cfg, version).meta["run_id"]
    losses = _metric_history(cfg, run_id, "train_loss_step")
    assert len(losses) == 10
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.2, losses


@pytest.fixture(scope="module")
def killed_run(first_run, spark, tmp_path_factory):
    """The reference run again, killed right after its epoch-1 checkpoint; keeps a copy of that checkpoint."""
    cfg = first_run["cfg"]
    real_save = job.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt("killed after epoch 1")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(job, "save_checkpoint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            job.train(cfg, spark, AS_OF)
    ckpt = checkpoint.checkpoint_path(cfg, AS_OF)
    copy = tmp_path_factory.mktemp("killed") / "last.pt"
    shutil.copyfile(ckpt, copy)
    return {"checkpoint": checkpoint.load_checkpoint(str(copy)), "copy": copy}


def test_same_seed_same_weights(first_run, killed_run):
    """Two runs with the same seed and data hold identical weights after epoch 1."""
    killed = killed_run["checkpoint"]
    assert killed["epoch"] == 1
    _assert_same_weights(killed["model"], first_run["saved"][0])
    reference = registry.load_model(first_run["cfg"], first_run["version"]).meta["history"][0]
    assert killed["history"][0]["train_loss"] == reference["train_loss"]


def test_resume_after_a_kill_matches_the_uninterrupted_run(first_run, killed_run, spark):
    cfg = first_run["cfg"]
    killed = killed_run["checkpoint"]
    client = registry.client(cfg)
    assert client.get_run(killed["run_id"]).info.status == "FAILED"
    ckpt = checkpoint.checkpoint_path(cfg, AS_OF)
    shutil.copyfile(killed_run["copy"], ckpt)  # as the killed run left it

    version = job.train(cfg, spark, AS_OF, resume=True)
    loaded = registry.load_model(cfg, version)
    _assert_same_weights(loaded.model.state_dict(), registry.load_model(cfg, first_run["version"]).model.state_dict())
    assert loaded.meta["run_id"] == killed["run_id"]  # the resumed run continues the same MLflow run
    assert client.get_run(killed["run_id"]).info.status == "FINISHED"
    assert [h["epoch"] for h in loaded.meta["history"]] == [1, 2]
    assert not os.path.exists(ckpt)


def test_corrupted_checkpoint_is_a_clear_error(spark, lake):
    cfg = train_cfg(lake)
    ckpt = checkpoint.checkpoint_path(cfg, AS_OF)
    os.makedirs(os.path.dirname(ckpt), exist_ok=True)
    with open(ckpt, "wb") as f:
        f.write(b"\x00 not a checkpoint")
    try:
        with pytest.raises(HmrecError, match=rf"{ckpt} is corrupted.*delete it or rerun without --resume"):
            job.train(cfg, spark, AS_OF, resume=True)
    finally:
        os.remove(ckpt)


def test_load_model_rebuilds_the_trained_model_from_artifacts(first_run, spark):
    cfg, version = first_run["cfg"], first_run["version"]
    # a config with the default train section (embedding_dim 64): only the tracking URI is used
    plain = make_cfg(cfg.paths.lakehouse)
    loaded = registry.load_model(plain, version)
    assert not loaded.model.training
    assert loaded.as_of == AS_OF and loaded.version == version
    assert loaded.model.model_args["embedding_dim"] == 16
    assert loaded.meta["config"]["train"]["lr"] == 0.01
    assert sorted(os.listdir(loaded.artifact_dir)) == ["meta.json", "model.pt"]
    # identical to what the trainer held after its last epoch
    _assert_same_weights(loaded.model.state_dict(), first_run["saved"][-1])
    assert len(first_run["saved"]) == 2

    assert registry.latest_version(plain, AS_OF) is not None
    assert registry.latest_version(plain, AS_OF + dt.timedelta(days=7)) is None
    run = registry.client(cfg).get_run(loaded.meta["run_id"])
    assert run.data.tags["as_of"] == AS_OF.isoformat()
    assert run.data.tags["delta_version.gold/train"] == str(storage.version(spark, cfg, tables.TRAIN))
    assert run.data.tags["delta_version.silver/article_index"] == str(storage.version(spark, cfg, tables.ARTICLE_INDEX))
    assert run.data.params["train.batch_size"] == "64"


def test_registry_attaches_artifacts_and_metrics_to_a_version(first_run, tmp_path):
    cfg, version = first_run["cfg"], first_run["version"]
    (tmp_path / "index.faiss").write_bytes(b"faiss bytes")
    registry.log_artifacts(cfg, version, str(tmp_path), "faiss")
    registry.log_metrics(cfg, version, {"recall@12": 0.25})
    run_id = registry.load_model(cfg, version).meta["run_id"]
    client = registry.client(cfg)
    assert [f.path for f in client.list_artifacts(run_id, "faiss")] == ["faiss/index.faiss"]
    assert client.get_run(run_id).data.metrics["recall_at_12"] == 0.25
    with pytest.raises(HmrecError, match="model version 999 .* does not exist"):
        registry.load_model(cfg, "999")


# Long enough that no start-up of two processes on a loaded machine comes near it, short enough
# for pytest's timeout: a rank left waiting for the failed one would show as a run this long.
GLOO_TIMEOUT_S = 300


def test_a_failing_process_fails_the_job_with_its_error():
    """Rank 1 fails while rank 0 waits for it in an all-reduce: one clear error, no hang."""

    def fails_on_rank_1():
        import datetime as _dt

        import torch as _torch
        import torch.distributed as _dist

        _dist.init_process_group("gloo", timeout=_dt.timedelta(seconds=GLOO_TIMEOUT_S))
        if _dist.get_rank() == 1:
            raise ValueError("table gold/train, column article_idx: bad value 7")
        _dist.all_reduce(_torch.ones(1))

    started = time.perf_counter()
    with pytest.raises(HmrecError, match=r"\[rank1\]: ValueError: table gold/train, column article_idx: bad value 7"):
        distributed.run_distributed(fails_on_rank_1, num_processes=2, local_mode=True)
    seconds = time.perf_counter() - started
    print(f"failing 2-process run stopped after {seconds:.1f}s")
    assert seconds < GLOO_TIMEOUT_S / 2  # far below the gloo timeout: rank 0 was stopped, not timed out
