"""The evaluation job on a hand-made lakehouse whose metrics were worked out by hand.

K = 2, catalogue of 10 articles a0..a9; global popularity a9, a8, a7, a6, a5;
age_25_34 popularity a1, a2. Holdout customers:

- c0, active (bought a3 5 days and a4 10 days before, both online), age 25-34, holdout {a3, a9}, served [a3, a0]
- c1, lapsed (bought a5 100 days before, in store), age unknown, holdout {a1}, served [a2, a1]
- c2, cold (no history), age segment 25-34 (customers.csv says 70), holdout {a1, a8}, served [a9, a8]
- c3 has a list but bought nothing in the holdout week: not evaluated.

By age band (customers.csv): c0 age:25-34, c1 age:unknown (no age), c2 age:65-199; by sales channel:
c0 channel:online, c1 channel:store, c2 channel:none (no purchase).
"""
from __future__ import annotations

import datetime as dt
import json
import math

import pandas as pd
import pytest

from hmrec.lake import schemas, storage
from hmrec.errors import HmrecError
from hmrec.evaluation.baselines import customer_segments
from hmrec.etl import segments
from hmrec.evaluation.evaluate import compute_metrics, run_evaluation
from hmrec.serve.blend import fill_list
from hmrec.lake import tables
from tests.conftest import aid, hashed_cid

AS_OF = dt.date(2020, 9, 16)
L3 = 1 / math.log2(3)


cid = hashed_cid


def a(i: int) -> str:
    return aid(i, 500000000)


def test_customer_segments_and_fill_list():
    last = pd.Series([None, AS_OF - dt.timedelta(days=30), AS_OF - dt.timedelta(days=31), AS_OF - dt.timedelta(days=1)])
    assert customer_segments(last, AS_OF, 30).tolist() == ["cold", "active", "lapsed", "active"]
    assert fill_list(["x", "y", "x"], ["y", "z", "w"], 3) == ["x", "y", "z"]
    assert fill_list(None, ["y", "z"], 5) == ["y", "z"]


def test_the_sales_channel_is_that_of_most_purchases(spark):
    rows = [("store", 1), ("store", 1), ("store", 2), ("online", 2), ("tie", 1), ("tie", 2)]
    frame = spark.createDataFrame(rows, "customer_id string, sales_channel_id int")
    got = {r["customer_id"]: r["channel"] for r in segments.main_channel(frame).collect()}
    assert got == {"store": "channel:store", "online": "channel:online", "tie": "channel:none"}


def test_age_bands_and_a_missing_age():
    buckets = [0, 25, 35, 45, 55, 65, 200]
    ages = pd.Series([24, 25, 34.0, None, float("nan"), 200, 65])
    assert segments.age_band(ages, buckets).tolist() == [
        "age:0-24", "age:25-34", "age:25-34", "age:unknown", "age:unknown", "age:unknown", "age:65-199"]
    assert segments.age_bands(buckets) == ["age:0-24", "age:25-34", "age:35-44", "age:45-54", "age:55-64",
                                           "age:65-199", "age:unknown"]


def test_every_buyer_is_in_one_segment_of_each_kind_and_groups_come_in_report_order():
    frame = pd.DataFrame({
        "actual": [["x"], ["x", "y"], ["y"], ["z"], ["x"]],
        "model": [["x"], ["y", "q"], ["q"], ["q"], ["x"]],
        "segment": ["active", "cold", "active", "lapsed", "cold"],
        "age_band": ["age:35-44", "age:unknown", "age:0-24", "age:35-44", "age:0-24"],
        "channel": ["channel:none", "channel:online", "channel:store", "channel:store", "channel:none"],
    })
    results = compute_metrics(frame, ["model"], 2, 10, age_buckets=[0, 25, 35, 45, 200])
    assert list(results) == ["all", "cold", "lapsed", "active", "age:0-24", "age:35-44", "age:unknown",
                             "channel:store", "channel:online", "channel:none"]
    users = {name: by["model"]["users"] for name, by in results.items()}
    for kind in ("age:", "channel:"):
        assert sum(n for name, n in users.items() if name.startswith(kind)) == users["all"] == 5
    assert users["cold"] + users["lapsed"] + users["active"] == 5
    # recall: 1, 0.5, 0, 0, 1 -> channel:none holds rows 0 and 4, channel:store rows 2 and 3
    assert results["all"]["model"]["recall@2"] == pytest.approx(2.5 / 5)
    assert results["channel:none"]["model"]["recall@2"] == 1.0 and results["channel:store"]["model"]["recall@2"] == 0.0
    assert results["age:0-24"]["model"]["map@2"] == pytest.approx(0.5)  # rows 2 (0) and 4 (1)
    assert results["channel:store"]["model"]["coverage"] == pytest.approx(1 / 10)  # only q


def test_candidate_recall_of_each_source_over_every_holdout_buyer(spark):
    from hmrec.evaluation.evaluate import source_recall
    from hmrec.rank import sources

    index = spark.createDataFrame([(1, "A"), (2, "B"), (3, "C")], "article_idx int, article_id string")
    rows = [("c1", 1, {"retrieval": 1.0, "repurchase": 2.0}), ("c1", 3, {"popular": 1.0}),
            ("c2", 2, {"colour": 1.0}), ("c3", 1, {"trending": 1.0})]
    cols = [f"{s}_rank" for s in sources.SOURCES]
    cands = spark.createDataFrame([(c, a, *[ranks.get(s) for s in sources.SOURCES]) for c, a, ranks in rows],
                                  "customer_id string, article_idx int, " + ", ".join(f"{c} double" for c in cols))
    # c1 bought A and B (A proposed by retrieval and repurchase), c2 bought A and C (neither proposed),
    # c4 bought B and has no candidates; c5 bought nothing and does not count
    frame = pd.DataFrame({"customer_id": ["c1", "c2", "c4", "c5"],
                          "actual": [["A", "B", "A"], ["A", "C"], ["B"], []]})
    recall = source_recall(spark, cands, frame, index)
    assert recall["retrieval"] == recall["repurchase"] == recall["union"] == pytest.approx(0.5 / 3, abs=1e-5)
    assert recall["popular"] == recall["colour"] == recall["trending"] == 0.0


def test_the_bootstrap_draws_the_resamples_of_a_plain_loop():
    import numpy as np

    from hmrec.evaluation.metrics import bootstrap_interval, bootstrap_intervals

    values = np.random.default_rng(3).random(137)
    rng = np.random.default_rng(0)  # the documented procedure, one resample at a time
    means = [values[rng.integers(0, 137, 137)].mean() for _ in range(1000)]
    expected = [round(float(np.percentile(means, 2.5)), 6), round(float(np.percentile(means, 97.5)), 6)]
    assert bootstrap_interval(values) == expected
    both = bootstrap_intervals(np.stack([values, 1 - values]))
    assert both[0].tolist() == expected
    assert both[1].tolist() == pytest.approx([1 - expected[1], 1 - expected[0]], abs=2e-6)


def _write_lake(spark, cfg) -> None:
    user = []
    for i, bucket in [(0, 2), (1, 0), (2, 2), (3, 2)]:
        row = {f.name: None for f in schemas.USER_FEATURES.fields}
        row.update(as_of=AS_OF, customer_id=cid(i), customer_idx=i, n_purchases=0, age_bucket=bucket)
        user.append(row)
    storage.write_partition(spark.createDataFrame(user, schemas.USER_FEATURES), cfg, tables.USER_FEATURES, AS_OF)

    def split_rows(items, channel=None):
        return [(d, cid(c), a(x), 0.01, channel[c] if channel else 1, c, x, AS_OF) for c, x, d in items]

    train = [(0, 3, AS_OF - dt.timedelta(days=5)), (0, 4, AS_OF - dt.timedelta(days=10)), (1, 5, AS_OF - dt.timedelta(days=100))]
    storage.write_partition(spark.createDataFrame(split_rows(train, {0: 2, 1: 1}), schemas.SPLIT_ROWS), cfg,
                            tables.TRAIN, AS_OF)
    people = [(cid(i), None, None, "ACTIVE", "NONE", age, "p") for i, age in [(0, 30), (1, None), (2, 70), (3, 40)]]
    storage.write(spark.createDataFrame(people, schemas.CUSTOMERS), cfg, tables.CUSTOMERS)
    day = AS_OF + dt.timedelta(days=1)
    holdout = [(0, 3, day), (0, 9, day), (0, 3, day), (1, 1, day), (2, 1, day), (2, 8, day)]
    storage.write_partition(spark.createDataFrame(split_rows(holdout), schemas.SPLIT_ROWS), cfg, tables.HOLDOUT, AS_OF)

    served = {0: [3, 0], 1: [2, 1], 2: [9, 8], 3: [7, 6]}
    recs = [(cid(c), a(x), r + 1, 1.0, "model", "v1", AS_OF) for c, xs in served.items() for r, x in enumerate(xs)]
    storage.write(spark.createDataFrame(recs, schemas.RECOMMENDATIONS), cfg, tables.RECOMMENDATIONS)

    pop = [(AS_OF, "global", r + 1, a(x), x, 10.0 - r) for r, x in enumerate([9, 8, 7, 6, 5])]
    pop += [(AS_OF, "age_25_34", r + 1, a(x), x, 5.0 - r) for r, x in enumerate([1, 2])]
    storage.write_partition(spark.createDataFrame(pop, schemas.POPULARITY), cfg, tables.POPULARITY, AS_OF)

    arts = []
    for i in range(10):
        row = {n: None for n, _ in schemas.ARTICLE_COLUMNS}
        row["article_id"] = a(i)
        arts.append(tuple(row[n] for n, _ in schemas.ARTICLE_COLUMNS))
    storage.write(spark.createDataFrame(arts, schemas.ARTICLES), cfg, tables.ARTICLES)


def test_evaluation_job_metrics_files_and_mlflow_sink(spark, tmp_path):
    from conftest import make_cfg

    cfg = make_cfg(tmp_path / "lake", "evaluate.k=2", "evaluate.curve_max_k=4", "evaluate.lapsed_days=30")
    _write_lake(spark, cfg)
    logged = []

    out = run_evaluation(cfg, spark, AS_OF, log_metrics=lambda v, m: logged.append((v, m)))
    doc = out["metrics"]

    ndcg_first_of_two = 1 / (1 + L3)
    model = doc["methods"]["model"]
    assert model["map@2"] == pytest.approx((0.5 + 0.5 + 0.25) / 3, abs=1e-6)
    assert model["recall@2"] == pytest.approx((0.5 + 1.0 + 0.5) / 3, abs=1e-6)
    assert model["ndcg@2"] == pytest.approx((ndcg_first_of_two + L3 + L3 / (1 + L3)) / 3, abs=1e-6)
    assert model["hitrate@2"] == pytest.approx(1.0)
    assert model["coverage"] == pytest.approx(6 / 10)
    pop = doc["methods"]["popularity"]
    assert pop["map@2"] == pytest.approx((0.5 + 0 + 0.25) / 3, abs=1e-6)
    assert pop["hitrate@2"] == pytest.approx(2 / 3, abs=1e-6)
    assert pop["coverage"] == pytest.approx(2 / 10)
    assert doc["methods"]["popularity_segment"]["map@2"] == pytest.approx(0.5 / 3, abs=1e-6)
    assert doc["methods"]["repurchase"]["map@2"] == pytest.approx((0.5 + 0 + 0.25) / 3, abs=1e-6)
    assert doc["methods"]["repurchase"]["recall@2"] == pytest.approx(1 / 3, abs=1e-6)

    assert list(doc["users"].items()) == [
        ("all", 3), ("cold", 1), ("lapsed", 1), ("active", 1), ("age:25-34", 1), ("age:65-199", 1),
        ("age:unknown", 1), ("channel:store", 1), ("channel:online", 1), ("channel:none", 1)]
    # one customer per age band and channel: each has that customer's figures, and no interval width
    assert doc["segments"]["age:25-34"]["model"]["map@2"] == pytest.approx(0.5)  # c0
    assert doc["segments"]["age:unknown"]["model"]["recall@2"] == pytest.approx(1.0)  # c1
    assert doc["segments"]["channel:none"]["model"]["map@2"] == pytest.approx(0.25)  # c2
    assert doc["segments"]["channel:store"]["repurchase"]["map@2"] == 0.0  # c1
    assert doc["intervals"]["channel:online"]["model"]["map@2"] == [0.5, 0.5]  # c0
    assert set(doc["intervals"]) == set(doc["users"])
    low, high = doc["intervals"]["all"]["model"]["map@2"]
    assert low <= model["map@2"] <= high and low < high
    assert doc["segments"]["cold"]["model"]["map@2"] == pytest.approx(0.25)
    assert doc["segments"]["lapsed"]["model"]["map@2"] == pytest.approx(0.5)
    assert doc["segments"]["active"]["repurchase"]["map@2"] == pytest.approx(0.5)
    assert doc["segments"]["lapsed"]["repurchase"]["recall@2"] == 0.0

    # Repurchase lists run to curve_max_k = 4: c0 [a3 a4 a9 a8], c1 [a5 a9 a8 a7], c2 [a9 a8 a7 a6].
    assert doc["recall_curve"]["repurchase"] == pytest.approx([1 / 6, 1 / 3, 1 / 2, 1 / 2], abs=1e-6)
    assert doc["recall_curve"]["model"] == pytest.approx([1 / 6, 2 / 3], abs=1e-6)

    report = tmp_path / "lake" / "reports" / "2020-09-16"
    on_disk = json.loads((report / "metrics.json").read_text())
    assert on_disk["as_of"] == "2020-09-16" and on_disk["k"] == 2
    assert on_disk["methods"]["model"] == model
    for name in ["recall_at_k.png", "segments.png"]:
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (report / "report.html").read_text()
    assert "recall_at_k.png" in page and "popularity_segment" in page

    rows = storage.read_as_of(spark, cfg, tables.EVAL_METRICS, AS_OF).toPandas()
    assert set(rows["model_version"]) == {"v1"}
    got = rows.set_index(["method", "segment", "metric"])["value"]
    assert got[("model", "all", "map@2")] == pytest.approx(model["map@2"])
    assert got[("repurchase", "cold", "users")] == 1.0
    assert got[("model", "age:65-199", "map@2")] == pytest.approx(0.25)
    assert got[("popularity", "channel:online", "users")] == 1.0
    assert len(rows) == 4 * 10 * 6  # methods x (all + 3 history segments + 3 age bands + 3 channels) x (5 metrics + users)

    (version, flat), = logged
    assert version == "v1"
    assert flat["eval.model.all.map@2"] == pytest.approx(model["map@2"])
    assert flat["eval.model.age:25-34.map@2"] == pytest.approx(0.5)
    assert not any(key.endswith(".users") for key in flat)

    with pytest.raises(HmrecError, match="scored with model version v1, not v9"):
        run_evaluation(cfg, spark, AS_OF, model_version="v9")
