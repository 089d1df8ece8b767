"""``python -m hmrec.bench train``: the Petastorm loader alone, the trainer from memory, and one epoch end to end."""
from __future__ import annotations

from hmrec.bench.common import AS_OF, prepared, report, timed
from hmrec.bench.probes import loader_throughput, synthetic_model_args, trainer_throughput
from hmrec.lake import storage, tables
from hmrec.model.registry import load_model
from hmrec.train.job import train
from hmrec.train.step import compute_dtype_name


def bench_train(scale: float, seed: int, overrides: list[str]) -> None:
    """The Petastorm loader alone, the trainer fed from memory, then one epoch of the train job."""
    rows: list[dict] = []
    # one epoch over the whole training window unless --set train.train_days=N says otherwise
    cfg, spark = prepared(scale, seed, ["train.epochs=1", "train.train_days=0", *overrides], rows)
    n_users = storage.read_as_of(spark, cfg, tables.USER_FEATURES, AS_OF).count()
    n_items = storage.read_as_of(spark, cfg, tables.ITEM_FEATURES, AS_OF).count()
    with timed(rows, "petastorm loader alone") as loader:
        loader["per_s"] = round(loader_throughput(cfg, spark, AS_OF, max_batches=10**9), 1)
    with timed(rows, "trainer from memory") as trainer:
        args = synthetic_model_args(cfg, n_users, n_items)
        trainer["per_s"] = round(trainer_throughput(args, n_steps=200, batch_size=cfg.train.batch_size, cfg=cfg), 1)
        trainer["n"] = 200 * cfg.train.batch_size
    with timed(rows, "train job, 1 epoch (loader + trainer + registry)") as job:
        job["model_version"] = train(cfg, spark, as_of=AS_OF)
    # the rows trained and the epoch's own figures, as the train job registered them
    meta = load_model(cfg, job["model_version"]).meta
    n_train, epoch = meta["train_rows"], meta["history"][0]
    job.update(n=n_train, per_s=round(n_train / job["seconds"], 1))
    rows.append({"stage": "the epoch alone (training loop fed by the loader)", "n": epoch["samples"],
                 "seconds": round(epoch["seconds"], 2), "per_s": round(epoch["samples_per_s"], 1)})
    tc = cfg.train
    report("train", scale, rows, {"train_rows": n_train, "users": n_users, "items": n_items,
                                  "loader_over_trainer": round(loader["per_s"] / trainer["per_s"], 1),
                                  "batch_size": tc.batch_size, "random_negatives": tc.random_negatives,
                                  "compute_dtype": compute_dtype_name(tc), "train_days": tc.train_days})
