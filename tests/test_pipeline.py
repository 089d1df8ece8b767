"""`hmrec run` end to end on tiny generated data: contracts, quality, skip and resume.

One pipeline run is shared by the session (tests/conftest.py: it is the expensive part); the
crash test runs on its own lakehouse copy so it cannot disturb the others.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from hmrec import pipeline
from hmrec.lake import storage
from hmrec.lake import tables
from tests.conftest import TINY_AS_OF, TINY_TRAIN, make_cfg

# The module's first test also waits for its whole pipeline run (every stage at two cutoffs): on two
# cores shared with other jobs that can pass pytest.ini's per-test limit.
pytestmark = pytest.mark.timeout(1500)

# The modules that read the holdout week during the session's pipeline run.
HOLDOUT_READERS: list[str] = []


@pytest.fixture(scope="module")
def noisy_run(pipeline_run):
    """The session's pipeline run (tests/conftest.py), with the Spark warnings and Python warnings it caused."""
    *run, readers = pipeline_run
    HOLDOUT_READERS[:] = readers
    return tuple(run)


@pytest.fixture(scope="module")
def ran(noisy_run):
    cfg, results, *_ = noisy_run
    return cfg, results


def test_a_run_logs_no_single_partition_window_and_no_future_warning(noisy_run):
    _, _, run_log, control_log, caught = noisy_run
    assert "WindowExec" in control_log and caught[-1] == ("FutureWarning", "control")  # the capture works
    assert "WindowExec" not in run_log, run_log
    assert [w for w in caught[:-1] if w[0] == "FutureWarning" or "not writable" in w[1]] == []


def test_only_the_evaluation_reads_the_holdout_week(ran):
    assert HOLDOUT_READERS, "the evaluation reads the holdout week"
    assert "hmrec.evaluation.evaluate" in HOLDOUT_READERS
    assert {m for m in HOLDOUT_READERS if not m.startswith("hmrec.evaluation.")} == set()


def test_choices_were_made_on_the_validation_week(spark, ran):
    from hmrec.lake.choices import read_choices

    cfg, results = ran
    assert {"features@fit", "split@fit", "popularity@fit", "train-fit", "index-fit", "choose"} <= set(results)
    chosen = read_choices(spark, cfg, TINY_AS_OF)
    assert chosen["fit_cutoff"] == "2020-09-09"
    assert set(chosen["choices"]["plans"]) == {"cold", "lapsed", "active"}
    assert chosen["choices"]["plans"]["cold"]["source"] == "popular"
    assert chosen["figures"]["users"] > 0
    doc = json.loads((Path(cfg.lakehouse) / "reports" / TINY_AS_OF.isoformat() / "metrics.json").read_text())
    assert doc["validation"]["cutoff"] == "2020-09-09"
    # the served plans beat popularity on the week they were chosen on, by construction
    v = doc["validation"]["methods"]
    assert v["model"]["map@12"] >= max(v["popularity"]["map@12"], v["popularity_segment"]["map@12"])


def test_every_customer_gets_exactly_k_distinct_articles(spark, ran):
    cfg, _ = ran
    k = cfg.score.k
    recs = storage.read(spark, cfg, tables.RECOMMENDATIONS)
    customers = storage.read(spark, cfg, tables.CUSTOMERS).select("customer_id")
    per = recs.groupBy("customer_id").agg(
        F.count(F.lit(1)).alias("n"),
        F.countDistinct("article_id").alias("distinct"),
        F.min("rank").alias("lo"),
        F.max("rank").alias("hi"),
    )
    assert per.count() == customers.count()
    assert customers.join(per, "customer_id", "left_anti").count() == 0
    bad = per.where((F.col("n") != k) | (F.col("distinct") != k) | (F.col("lo") != 1) | (F.col("hi") != k))
    assert bad.count() == 0
    # Kaggle identifier forms, as DESIGN.md requires.
    assert recs.where(~F.col("article_id").rlike("^[0-9]{10}$")).count() == 0
    assert recs.where(~F.col("customer_id").rlike("^[0-9a-f]{64}$")).count() == 0
    assert {r[0] for r in recs.select("source").distinct().collect()} <= {"model", "repurchase", "colour", "popular",
                                                                           "trending", "copurchase"}
    assert recs.select("as_of").distinct().collect()[0][0] == TINY_AS_OF


def test_never_buyers_get_their_age_segments_popular_items(spark, ran):
    cfg, _ = ran
    users = storage.read_as_of(spark, cfg, tables.USER_FEATURES, TINY_AS_OF)
    never = users.where("n_purchases = 0").select("customer_id")
    recs = storage.read(spark, cfg, tables.RECOMMENDATIONS).join(never, "customer_id")
    assert never.count() > 0
    assert recs.where(F.col("source") != "popular").count() == 0


def test_model_beats_popularity_twice_on_recall_and_ndcg(ran):
    cfg, _ = ran
    doc = json.loads((Path(cfg.lakehouse) / "reports" / TINY_AS_OF.isoformat() / "metrics.json").read_text())
    assert doc["as_of"] == TINY_AS_OF.isoformat() and doc["k"] == 12
    model, pop = doc["methods"]["model"], doc["methods"]["popularity"]
    for metric in ("recall@12", "ndcg@12", "map@12", "coverage"):
        assert metric in model and metric in pop
    assert model["recall@12"] >= 2 * pop["recall@12"], doc["methods"]
    assert model["ndcg@12"] >= 2 * pop["ndcg@12"], doc["methods"]


def test_eval_metrics_table_and_report_files(spark, ran):
    cfg, _ = ran
    rows = storage.read_as_of(spark, cfg, tables.EVAL_METRICS, TINY_AS_OF)
    methods = {r[0] for r in rows.select("method").distinct().collect()}
    assert {"model", "popularity", "repurchase"} <= methods
    report = Path(cfg.lakehouse) / "reports" / TINY_AS_OF.isoformat()
    assert (report / "report.html").stat().st_size > 0
    assert list(report.glob("*.png"))


def test_model_retrieval_curve_runs_past_k_and_matches_a_brute_force_ranking(spark, ran):
    import numpy as np
    import pandas as pd

    import torch

    from hmrec.evaluation.evaluate import model_retrieval_lists
    from hmrec.model.registry import load_model
    from hmrec.model.two_tower import item_inputs, user_inputs

    cfg, _ = ran
    doc = json.loads((Path(cfg.lakehouse) / "reports" / TINY_AS_OF.isoformat() / "metrics.json").read_text())
    curve = doc["recall_curve"]["model_retrieval"]
    assert len(curve) == cfg.evaluate.curve_max_k > cfg.score.k
    assert len(doc["recall_curve"]["model"]) == cfg.score.k
    assert all(b >= a for a, b in zip(curve, curve[1:]))  # recall never falls as K grows
    assert "model_retrieval" in doc["methods"]

    holdout = storage.read_as_of(spark, cfg, tables.HOLDOUT, TINY_AS_OF).select("customer_id").distinct().toPandas()
    frame = pd.DataFrame({"customer_id": holdout["customer_id"], "popularity_segment": [["fallback"]] * len(holdout)})
    lists = dict(zip(frame["customer_id"], model_retrieval_lists(cfg, spark, TINY_AS_OF, doc["model_version"], frame, 50)))

    # The same ranking without the serving path (no embedder, no FAISS): the registered model's towers
    # on the feature rows, every article scored, sorted with numpy; compare the scores of the listed articles.
    model = load_model(cfg, doc["model_version"]).model
    items = storage.read_as_of(spark, cfg, tables.ITEM_FEATURES, TINY_AS_OF).toPandas()
    users = storage.read_as_of(spark, cfg, tables.USER_FEATURES, TINY_AS_OF).toPandas()
    users = users[users["customer_id"].isin(lists) & (users["n_purchases"] >= cfg.score.min_history)]
    with torch.no_grad():
        item_emb = model.item_tower(item_inputs(items)).float().numpy()  # (I, D)
        user_emb = model.user_tower(user_inputs(users)).float().numpy()  # (U, D)
    position = {a: i for i, a in enumerate(items["article_id"])}
    scores = user_emb @ item_emb.T  # (U, I)
    ranked = set(users["customer_id"])
    assert 0 < len(ranked) < len(lists)  # both model-ranked and fallback customers among the holdout
    for customer, row in zip(users["customer_id"], scores):
        got = np.array([row[position[a]] for a in lists[customer]])
        np.testing.assert_allclose(got, np.sort(row)[::-1][:50], rtol=0, atol=1e-5)
    assert all(lists[c] == ["fallback"] for c in lists if c not in ranked)


def test_rerun_skips_every_finished_stage(spark, ran, tiny_data, capsys):
    cfg, _ = ran
    before = storage.version(spark, cfg, tables.RECOMMENDATIONS)
    results = pipeline.run(cfg, spark, data_dir=str(tiny_data), as_of=TINY_AS_OF)
    assert set(results) == {"ingest"}  # nothing after ingest ran
    assert storage.version(spark, cfg, tables.RECOMMENDATIONS) == before
    assert "already done" in capsys.readouterr().err


def test_a_crash_in_score_resumes_at_score(spark, ran, tiny_data, tmp_path, monkeypatch):
    cfg0, _ = ran
    lake = tmp_path / "lake"
    shutil.copytree(cfg0.lakehouse, lake)
    cfg = make_cfg(lake, *TINY_TRAIN)
    data = str(tiny_data)
    # As if the last refresh had stopped right after the index stage.
    from delta.tables import DeltaTable

    DeltaTable.forPath(spark, cfg.table_path(tables.STAGE_RUNS.name)).delete("stage IN ('score', 'evaluate')")
    before = storage.version(spark, cfg, tables.RECOMMENDATIONS)

    import hmrec.serve.score

    def broken(*args, **kwargs):
        raise RuntimeError("injected failure in score")

    monkeypatch.setattr(hmrec.serve.score, "score", broken)
    with pytest.raises(RuntimeError, match="injected"):
        pipeline.run(cfg, spark, data_dir=data, as_of=TINY_AS_OF)
    # The previous recommendations are untouched by the failed refresh.
    assert storage.version(spark, cfg, tables.RECOMMENDATIONS) == before
    monkeypatch.undo()

    results = pipeline.run(cfg, spark, data_dir=data, as_of=TINY_AS_OF)
    assert set(results) == {"ingest", "score", "evaluate", "card"}  # the gate passed already: not judged again
    assert storage.version(spark, cfg, tables.RECOMMENDATIONS) == before + 1


def test_a_changed_setting_reruns_the_stages_it_affects(spark, ran, tiny_data, tmp_path, capsys):
    cfg0, _ = ran
    lake = tmp_path / "lake"
    shutil.copytree(cfg0.lakehouse, lake)
    data = str(tiny_data)
    # evaluate.curve_max_k is read by evaluate only: nothing before it runs again
    cfg = make_cfg(lake, *TINY_TRAIN, "evaluate.curve_max_k=50")
    before = storage.version(spark, cfg, tables.RECOMMENDATIONS)
    results = pipeline.run(cfg, spark, data_dir=data, as_of=TINY_AS_OF)
    assert set(results) == {"ingest", "evaluate", "card"}
    assert "settings changed (evaluate.curve_max_k 100 -> 50)" in capsys.readouterr().err
    assert storage.version(spark, cfg, tables.RECOMMENDATIONS) == before
    # a setting that only changes speed reruns nothing
    cfg = make_cfg(lake, *TINY_TRAIN, "evaluate.curve_max_k=50", "score.batch_size=1024", "train.log_every=7")
    assert set(pipeline.run(cfg, spark, data_dir=data, as_of=TINY_AS_OF)) == {"ingest"}


def test_a_two_week_backtest_then_a_refresh_with_no_holdout_week(spark, ran, tiny_data, tmp_path, capsys):
    import datetime as dt

    from hmrec.backtest import backtest

    cfg0, _ = ran
    lake = tmp_path / "lake"
    shutil.copytree(cfg0.lakehouse, lake)
    cfg = make_cfg(lake, *TINY_TRAIN)
    data = str(tiny_data)
    first = json.loads((Path(cfg0.lakehouse) / "reports" / TINY_AS_OF.isoformat() / "metrics.json").read_text())

    out = backtest(cfg, spark, data_dir=data, as_of=TINY_AS_OF, weeks=2)
    weeks = out["weeks"]
    assert sorted(weeks["as_of"].unique()) == ["2020-09-09", "2020-09-16"]
    assert {"model", "popularity", "popularity_segment", "repurchase"} <= set(weeks["method"])
    # the last cutoff was done already: reused, so its figures are the first run's
    last = weeks[(weeks["as_of"] == "2020-09-16") & (weeks["method"] == "model")]["map@12"].item()
    assert last == first["methods"]["model"]["map@12"]
    report = Path(out["report"])
    assert report.name == "backtest-2020-09-16-2w"
    summary = json.loads((report / "summary.json").read_text())
    assert summary["methods"]["model"]["weeks"] == 2
    model_maps = weeks[weeks["method"] == "model"]["map@12"]
    assert summary["methods"]["model"]["map@12_mean"] == pytest.approx(model_maps.mean(), abs=1e-6)
    assert (report / "map_by_week.png").stat().st_size > 1000
    rows = storage.read_as_of(spark, cfg, tables.EVAL_METRICS, TINY_AS_OF).where(F.col("model_version") == "backtest-2w")
    assert rows.where(F.col("metric") == "map@12_mean").count() >= 4

    # The weekly refresh's own case: the as-of is the day after the last purchase.
    after = dt.date(2020, 9, 23)
    capsys.readouterr()
    # the gate's decision is recorded, not enforced: on tiny data a few dozen buyers decide it (the decision
    # itself is tested on known figures in tests/test_governance.py)
    results = pipeline.run(cfg, spark, data_dir=data, as_of=after, enforce_gate=False)
    assert results["evaluate"]["holdout"] == "none yet"
    # the champion (the backtest's 2020-09-16 version) is judged on the same validation week by its published lists
    judged = results["gate"]
    assert judged["champion_same_week_users"] > 0 and 0 <= judged["champion_same_week_map@12"] <= 1
    assert "no holdout week to evaluate yet" in capsys.readouterr().err
    recs = storage.read_as_of(spark, cfg, tables.RECOMMENDATIONS, after)
    per = recs.groupBy("customer_id").count()
    assert per.count() == storage.read(spark, cfg, tables.CUSTOMERS).count()
    assert per.where(F.col("count") != cfg.score.k).count() == 0
    doc = json.loads((lake / "reports" / after.isoformat() / "metrics.json").read_text())
    assert doc["methods"] == {} and doc["validation"]["cutoff"] == "2020-09-16"
    assert "no holdout week yet" in (lake / "reports" / after.isoformat() / "report.html").read_text()


@pytest.mark.parametrize("name", ["01_explore.ipynb", "02_results.ipynb"])
def test_notebooks_run_top_to_bottom_on_the_run(ran, tiny_data, name, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    cfg, _ = ran
    monkeypatch.setenv("HMREC_DATA", str(tiny_data))
    monkeypatch.setenv("HMREC_LAKEHOUSE", cfg.lakehouse)
    monkeypatch.setenv("HMREC_AS_OF", TINY_AS_OF.isoformat())
    notebooks = Path(__file__).resolve().parent.parent / "notebooks"
    nb = nbformat.read(notebooks / name, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(notebooks)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert any(c.get("outputs") for c in code)
    # A figure cell shows its figure as an image, not as the text "<Figure size ...>".
    figures = [c for c in code if "figure" in c.metadata.get("tags", [])]
    assert figures, "each notebook has at least one figure cell (tagged 'figure')"
    for c in figures:
        images = [o for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        assert len(images) == 1, (c.source, c.get("outputs"))
    # (an image output also carries that text, as its plain-text fallback)
    texts = [o.get("data", {}).get("text/plain", "") + o.get("text", "") for c in code for o in c.get("outputs", [])
             if "image/png" not in o.get("data", {})]
    assert not [t for t in texts if "<Figure size" in t]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_until(command: str, cwd: Path, url: str, headers: dict, timeout: float = 120.0) -> str:
    """Start a server with ``command`` (a shell line), return the body of ``url`` once it answers, stop it."""
    import os
    import signal
    import subprocess
    import time
    import urllib.error
    import urllib.request

    proc = subprocess.Popen(command, shell=True, cwd=cwd, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"{command} exited: {proc.stderr.read()[-2000:]}"
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as answer:
                    return answer.read().decode()
            except urllib.error.HTTPError:
                raise  # the server is up and said no
            except OSError:  # not listening yet
                time.sleep(1)
        raise AssertionError(f"{url} did not answer within {timeout} s of `{command}`")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def test_the_commands_a_run_prints_work_as_printed(ran, tiny_data):
    """Each command `hmrec run` prints at its end, run as printed (servers on a free port, then stopped)."""
    import io
    import subprocess

    from hmrec.next_steps import next_steps, print_next_steps

    cfg, _ = ran
    root = Path(__file__).resolve().parent.parent
    steps = {s.what: s for s in next_steps(cfg, TINY_AS_OF, str(tiny_data), ["--set", f"paths.lakehouse={cfg.lakehouse}"],
                                           cwd=root)}
    assert set(steps) == {"the evaluation report", "one customer's list", "the notebooks", "MLflow's runs and models"}
    shown = io.StringIO()
    print_next_steps(list(steps.values()), shown)
    for s in steps.values():
        assert s.command in shown.getvalue()

    report = subprocess.run(steps["the evaluation report"].command, shell=True, cwd=root, capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    assert (Path(cfg.lakehouse) / "reports" / TINY_AS_OF.isoformat() / "report.html").exists()

    rec = subprocess.run(steps["one customer's list"].command, shell=True, cwd=root, capture_output=True, text=True,
                         timeout=120)
    assert rec.returncode == 0, rec.stderr
    assert "12 recommendations as of 2020-09-16" in rec.stdout and "purchases before 2020-09-16" in rec.stdout

    port = _free_port()
    token = "hmrec-test"
    body = _serve_until(f"{steps['the notebooks'].command} --no-browser --port={port} --IdentityProvider.token={token}",
                        root, f"http://127.0.0.1:{port}/api/contents", {"Authorization": f"token {token}"})
    assert "01_explore.ipynb" in body and "02_results.ipynb" in body
    assert f"HMREC_LAKEHOUSE={cfg.lakehouse}" in steps["the notebooks"].command

    mlflow_ui = steps["MLflow's runs and models"]
    port = _free_port()
    body = _serve_until(f"{mlflow_ui.command} --port {port}", root,
                        f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search?max_results=10", {})
    assert cfg.paths.mlflow_experiment in {e["name"] for e in json.loads(body)["experiments"]}


# ---- governance: the gate, promote, rollback, compare ---------------------------------------


def _served(spark, cfg):
    """The served table as sorted rows, and its Delta version."""
    rows = storage.read(spark, cfg, tables.RECOMMENDATIONS).orderBy("customer_id", "rank").collect()
    return [tuple(r) for r in rows], storage.head_version(spark, cfg, tables.RECOMMENDATIONS)


def test_the_refresh_judged_its_model_and_crowned_it(ran):
    from hmrec.model import registry
    from hmrec.rank.ranker import validation_maps

    cfg, results = ran
    version = registry.latest_version(cfg, TINY_AS_OF, role="serve")
    assert results["gate"]["passed"] and results["gate"]["version"] == version
    assert registry.alias_version(cfg, registry.CHAMPION) == version
    assert registry.alias_version(cfg, registry.CHALLENGER) == version
    tags = registry.version_tags(cfg, version)
    doc = json.loads((Path(cfg.lakehouse) / "reports" / TINY_AS_OF.isoformat() / "metrics.json").read_text())
    v = doc["validation"]["methods"]
    # the gate's figures are the validation week's: the run serves the ranker (it beat the blend on the
    # held-out buyers), so the lift judged is the ranker's over popularity on those buyers, as the rank
    # stage logged them; the coverage is the choose stage's lists', as the report has them
    assert tags["gate.decision"] == "passed"
    assert results["gate"]["judged_list"] == "ranker"
    maps = validation_maps(cfg, version)
    assert maps["ranker"] == pytest.approx(results["rank"]["ranker_map@12"])
    assert float(tags["gate.validation_lift"]) == pytest.approx(maps["ranker"] / maps["popularity"], rel=1e-5)
    assert float(tags["gate.validation_coverage"]) == pytest.approx(v["model"]["coverage"], rel=1e-5)
    assert 0 < v["popularity"]["coverage"] < v["model"]["coverage"] <= 1
    assert 0 < float(tags["gate.fallback_share"]) < cfg.gate.max_fallback_share


def test_a_challenger_worse_than_popularity_is_not_published_then_promote_and_rollback(
        spark, ran, tiny_data, tmp_path, capsys):
    """A second serve version at the same as-of whose validation week says it is worse than popularity."""
    from hmrec.cli import main
    from hmrec.errors import GateFailed
    from hmrec.lake.choices import read_choices, write_choices
    from hmrec.model import registry
    from hmrec.rank import ranker
    from hmrec.serve.index import build_index

    cfg0, _ = ran
    lake = tmp_path / "lake"
    shutil.copytree(cfg0.lakehouse, lake)
    cfg = make_cfg(lake, *TINY_TRAIN)
    flags = ["--set", f"paths.lakehouse={lake}", *[a for s in TINY_TRAIN for a in ("--set", s)]]
    champion = registry.alias_version(cfg, registry.CHAMPION)
    # the challenger: the champion's weights registered again (as a refresh registers), and indexed
    loaded = registry.load_model(cfg, champion)
    run_id = registry.start_run(cfg, TINY_AS_OF, {}, {"purpose": "test challenger"})
    challenger = registry.register_model(cfg, run_id, loaded.model.state_dict(), loaded.meta["model_args"], TINY_AS_OF)
    registry.end_run(cfg, run_id, "FINISHED")
    build_index(cfg, spark, TINY_AS_OF, model_version=challenger)
    assert registry.alias_version(cfg, registry.CHALLENGER) == challenger
    # its validation week: half of popularity's MAP@12
    chosen = read_choices(spark, cfg, TINY_AS_OF)
    figures = chosen["figures"]
    figures["methods"]["model"]["map@12"] = figures["methods"]["popularity"]["map@12"] / 2
    write_choices(spark, cfg, TINY_AS_OF, dt.date.fromisoformat(chosen["fit_cutoff"]), chosen["fit_model_version"],
                  chosen["choices"], figures)
    # and its ranker (the champion's booster), whose held-out buyers say the same: the served list is judged
    booster, meta = ranker.load_ranker(cfg, champion)
    ranker.save_ranker(cfg, challenger, ranker.Trained(booster, meta["best_iteration"], meta["train_rows"],
                                                       meta["train_groups"], 0.0, meta["importance_gain"]), meta)
    registry.log_run_metrics(cfg, run_id, {"validation.ranker.map@12": 0.02, "validation.blend.map@12": 0.01,
                                           "validation.popularity.map@12": 0.04, "validation.ranker.users": 50})
    before, table_version = _served(spark, cfg)

    capsys.readouterr()
    assert main(["gate", "--as-of", TINY_AS_OF.isoformat(), *flags]) == 4
    err = capsys.readouterr().err
    assert f"model version {challenger}" in err and "0.50x popularity" in err and f"version {champion}) stay" in err
    assert _served(spark, cfg) == (before, table_version)
    tags = registry.version_tags(cfg, challenger)
    assert tags["gate.decision"] == "failed" and "below gate.min_lift" in tags["gate.reason"]
    assert float(tags["gate.validation_lift"]) == pytest.approx(0.5)
    assert registry.alias_version(cfg, registry.CHAMPION) == champion

    # the scheduled refresh stops at the gate (it runs again: a gate setting changed), unrecorded
    cfg_t = make_cfg(lake, *TINY_TRAIN, "gate.tolerance=0.1")
    gates = storage.read(spark, cfg, tables.STAGE_RUNS).where("stage = 'gate'").count()
    with pytest.raises(GateFailed) as failed:
        pipeline.run(cfg_t, spark, data_dir=str(tiny_data), as_of=TINY_AS_OF)
    assert failed.value.decision.version == challenger
    assert storage.read(spark, cfg, tables.STAGE_RUNS).where("stage = 'gate'").count() == gates
    assert _served(spark, cfg) == (before, table_version)
    assert "FAILED" in capsys.readouterr().err

    # by hand: promote publishes it and crowns it; rollback restores the champion's lists and the champion
    assert main(["promote", "--version", challenger, *flags]) == 0
    after, promoted_version = _served(spark, cfg)
    assert promoted_version == table_version + 1 and {r[5] for r in after} == {challenger}
    assert registry.alias_version(cfg, registry.CHAMPION) == challenger
    assert registry.version_tags(cfg, challenger)["gate.decision"] == "promoted by hand"

    assert main(["compare", "--versions", champion, challenger, *flags[:2]]) == 0
    table = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:]}
    assert lines["gate.decision"] == ["passed", "promoted", "by", "hand"]
    assert lines["aliases"] == ["-", "challenger,champion"]
    assert lines["gate.validation_lift"][1] == "0.5"

    assert main(["rollback", *flags]) == 0
    assert _served(spark, cfg) == (before, promoted_version + 1)
    assert registry.alias_version(cfg, registry.CHAMPION) == champion
    # the champion's lists were the first ever published here: nothing before them
    assert main(["rollback", *flags]) == 2
    assert "nothing earlier to roll back to" in capsys.readouterr().err


def test_the_model_card_holds_the_runs_figures(spark, ran):
    from hmrec.governance.card import CARD_JSON, CARD_MD
    from hmrec.model import registry

    cfg, results = ran
    version = registry.latest_version(cfg, TINY_AS_OF, role="serve")
    reports = Path(cfg.lakehouse) / "reports" / TINY_AS_OF.isoformat()
    card = json.loads((reports / CARD_JSON).read_text())
    assert json.loads((reports / f"v{version}" / CARD_JSON).read_text()) == card
    doc = json.loads((reports / "metrics.json").read_text())
    assert json.loads((reports / f"v{version}" / "metrics.json").read_text()) == doc  # the version's report, kept
    d = card["model_details"]
    assert (d["version"], d["as_of"], d["role"]) == (version, TINY_AS_OF.isoformat(), "serve")
    meta = registry.load_model(cfg, version).meta
    assert d["model_args"] == meta["model_args"] and d["epochs"] == len(meta["history"]) == 3
    assert card["training_data"]["table_versions"] == meta["table_versions"]
    train = storage.read_as_of(spark, cfg, tables.TRAIN, TINY_AS_OF).where(
        F.col("t_dat") >= F.lit(TINY_AS_OF - dt.timedelta(days=cfg.train.train_days)))
    rows = card["training_data"]["training_rows"]
    assert rows["rows"] == train.count() and rows["customers"] == train.select("customer_id").distinct().count()
    ev = card["evaluation"]
    md = (reports / CARD_MD).read_text()
    assert ev["holdout"]["methods"] == doc["methods"] and ev["holdout"]["segments"] == doc["segments"]
    assert ev["holdout"]["customers"] == doc["users"]
    assert ev["holdout"]["intervals"] == doc["intervals"]
    low, high = doc["intervals"]["all"]["model"]["map@12"]
    assert low < doc["methods"]["model"]["map@12"] < high
    assert set(doc["intervals"]) == {"all", *doc["segments"]}
    # age bands and sales channels beside the history segments: each splits the same buyers
    ages = [s for s in doc["segments"] if s.startswith("age:")]
    channels = [s for s in doc["segments"] if s.startswith("channel:")]
    assert ages and channels and set(channels) <= {"channel:store", "channel:online", "channel:none"}
    for kind in (ages, channels, ["cold", "lapsed", "active"]):
        assert sum(doc["users"].get(s, 0) for s in kind) == doc["users"]["all"]
    for seg in (ages[0], channels[0]):
        assert ev["holdout"]["segments"][seg] == doc["segments"][seg]
        assert ev["holdout"]["intervals"][seg] == doc["intervals"][seg]
        assert ev["holdout"]["customers"][seg] == doc["users"][seg]
        assert f"Segment {seg} ({doc['users'][seg]:,} customers):" in md
        assert f"{doc['segments'][seg]['model']['map@12']:.4f}" in md
    assert ev["validation"]["methods"] == doc["validation"]["methods"]
    # the validation week's intervals: the served lists', overall and per history group
    val = ev["validation"]
    assert val["intervals"] == doc["validation"]["intervals"] and set(val["intervals"]) >= {"all", "active"}
    for group, methods in [("all", val["methods"])] + [(g, v["methods"]) for g, v in val["groups"].items()]:
        low, high = val["intervals"][group]["model"]["map@12"]
        assert low <= methods["model"]["map@12"] <= high, group
    low, high = val["intervals"]["all"]["model"]["map@12"]
    assert f"{low:.4f} .. {high:.4f}" in md
    ranked = val["ranker"]
    assert ranked is not None and val["served_list"] == ("ranker" if ranked["served"] else "blend")
    low, high = ranked["intervals"]["all"]["ranker"]["map@12"]
    assert low <= ranked["methods"]["ranker"]["map@12"] <= high
    assert ev["holdout"]["lift_over"]["popularity"] == pytest.approx(
        doc["methods"]["model"]["map@12"] / doc["methods"]["popularity"]["map@12"], rel=1e-3)
    tags = registry.version_tags(cfg, version)
    assert card["gate"] == {key.removeprefix("gate."): v for key, v in tags.items() if key.startswith("gate.")}
    assert card["gate"]["decision"] == "passed"
    recs = storage.read(spark, cfg, tables.RECOMMENDATIONS)
    by_source = {r[0]: r[1] for r in recs.groupBy("source").count().collect()}
    assert card["exposure"]["source_share"] == {s: round(n / recs.count(), 6) for s, n in sorted(by_source.items())}
    assert card["exposure"]["catalogue_coverage"] == round(
        recs.select("article_id").distinct().count() / storage.read(spark, cfg, tables.ARTICLES).count(), 6)
    assert 0 < card["exposure"]["gini"] < 1
    for section in ("## Model details", "## Training data", "## Evaluation", "## Exposure and popularity bias",
                    "## Intended use", "## Out-of-scope uses", "## Known limitations", "## The gate's decision"):
        assert section in md
    assert f"{doc['methods']['model']['map@12']:.4f}" in md
    assert f'href="{CARD_MD}"' in (reports / "report.html").read_text()
    artifacts = registry.client(cfg).list_artifacts(registry.model_version(cfg, version).run_id, "model_card")
    assert {Path(a.path).name for a in artifacts} == {CARD_MD, CARD_JSON}


def test_a_card_is_built_before_any_list_was_ever_published(spark, ran, monkeypatch):
    # a lakehouse's first refresh that fails the gate has no gold/recommendations yet; its card still records
    # the decision, without exposure figures
    from hmrec.governance import card as card_mod
    from hmrec.lake import storage, tables
    from hmrec.model import registry

    cfg, _ = ran
    real = storage.exists
    monkeypatch.setattr(storage, "exists", lambda spark_, cfg_, table: table != tables.RECOMMENDATIONS
                        and real(spark_, cfg_, table))
    version = registry.latest_version(cfg, TINY_AS_OF, role="serve")
    built = card_mod.build_card(cfg, spark, TINY_AS_OF, str(version))
    assert built["exposure"] is None and built["gate"]
    assert "This version's lists are not served for this as-of: no exposure figures." in card_mod.render_md(built)


def test_the_two_stage_list_is_built_trained_on_the_validation_week_and_evaluated(spark, ran):
    from hmrec.model import registry
    from hmrec.rank import ranker, sources
    from hmrec.rank.candidates import candidate_rows

    cfg, results = ran
    fit = results["candidates-fit"]
    assert fit["cutoff"] == "2020-09-09" and fit["role"] == "fit"
    assert 0 < fit["recall_retrieval"] <= fit["recall_union"] <= 1
    assert fit["recall_union"] >= max(fit[f"recall_{s}"] for s in sources.SOURCES)
    cands = candidate_rows(spark, cfg, TINY_AS_OF, "serve")
    assert cands.count() == results["candidates"]["rows"] > 0
    # one row per (customer, article), each proposed by at least one source
    assert cands.groupBy("customer_idx", "article_idx").count().where("count > 1").count() == 0
    assert cands.where("n_sources < 1").count() == 0
    # the validation-week buyers only at the fit cutoff
    buyers = storage.read_as_of(spark, cfg, tables.VALIDATION, TINY_AS_OF).select("customer_idx").distinct()
    at_fit = candidate_rows(spark, cfg, fit_cutoff_of(cfg), "fit")
    assert at_fit.join(buyers, "customer_idx", "left_anti").count() == 0
    rank = results["rank"]
    assert rank["fit_cutoff"] == "2020-09-09" and rank["train_rows"] > 0
    assert 0 <= rank["ranker_map@12"] <= 1 and 0 <= rank["blend_map@12"] <= 1
    # the served version carries the ranker, and it re-scores identically after a reload
    version = registry.latest_version(cfg, TINY_AS_OF)
    b1, meta = ranker.load_ranker(cfg, version)
    b2, _ = ranker.load_ranker(cfg, version)
    sample = at_fit.limit(500).toPandas()  # rows with every feature (the served ones placed as made keep few)
    np.testing.assert_array_equal(ranker.predict(b1, sample), ranker.predict(b2, sample))
    assert meta["features"] == list(sources.FEATURES) and meta["fit_cutoff"] == "2020-09-09"
    c = registry.client(cfg)
    run_id = c.get_model_version(cfg.paths.registered_model, version).run_id
    names = {Path(f.path).name for f in c.list_artifacts(run_id, ranker.RANKER_DIR)}
    assert {ranker.BOOSTER_FILE, ranker.META_FILE, ranker.IMPORTANCE_FILE} <= names
    doc = json.loads((Path(cfg.lakehouse) / "reports" / TINY_AS_OF.isoformat() / "metrics.json").read_text())
    assert "two_stage" in doc["methods"] and doc["candidates"]["week"] == "holdout"
    assert doc["candidates"]["recall"]["union"] >= doc["candidates"]["recall"]["retrieval"]
    assert doc["methods"]["two_stage"]["recall@12"] <= doc["candidates"]["recall"]["union"] + 1e-9


def test_the_evaluations_blend_is_the_list_the_scoring_job_serves_with_score_method_blend(spark, ran, tmp_path):
    from hmrec.evaluation.evaluate import BLEND, blend_lists
    from hmrec.model import registry
    from hmrec.serve.embedders import ModelEmbedder
    from hmrec.serve.index import load_index
    from hmrec.serve.score import score_customers, served_plans

    cfg0, _ = ran
    doc = json.loads((Path(cfg0.lakehouse) / "reports" / TINY_AS_OF.isoformat() / "metrics.json").read_text())
    assert BLEND in doc["methods"] and doc["users"]["all"] > 0
    # the blend published by the scoring job (Spark's workers) in a copy of the lakehouse ...
    lake = tmp_path / "lake"
    shutil.copytree(cfg0.lakehouse, lake)
    cfg = make_cfg(lake, *TINY_TRAIN, "score.method=blend")
    loaded = registry.load_model(cfg, as_of=TINY_AS_OF)
    version = str(loaded.version)
    index, meta = load_index(cfg, version, TINY_AS_OF)
    plans, _ = served_plans(spark, cfg, TINY_AS_OF)
    score_customers(cfg, spark, TINY_AS_OF, ModelEmbedder.from_loaded(loaded), index, index_meta=meta, plans=plans)
    recs = storage.read(spark, cfg, tables.RECOMMENDATIONS).toPandas().sort_values(["customer_id", "rank"])
    served = {c: g["article_id"].tolist() for c, g in recs.groupby("customer_id")}
    # ... is, for every holdout customer, the evaluation's blend list (made on the driver)
    frame = storage.read_as_of(spark, cfg, tables.HOLDOUT, TINY_AS_OF).select("customer_id").distinct().toPandas()
    lists = blend_lists(cfg, spark, TINY_AS_OF, version, frame)
    assert len(lists) == len(frame) > 0
    assert all(got == served[c] for c, got in zip(frame["customer_id"], lists))


def test_the_rank_stages_validation_blend_reads_the_purchases_scoring_reads(spark, ran):
    # with score.repurchase_days > 0 scoring's recent purchases are those of that window, not last_articles
    from hmrec.etl import segments
    from hmrec.model import registry
    from hmrec.rank.ranker import blend_on
    from hmrec.serve.embedders import ModelEmbedder
    from hmrec.serve.index import load_index
    from hmrec.serve.score import build_context, score_frame, scoring_users

    cfg0, _ = ran
    cutoff = fit_cutoff_of(cfg0)

    def validation_users(cfg):
        return (storage.read_as_of(spark, cfg, tables.USER_FEATURES, cutoff).where("n_purchases >= 1")
                .withColumn("segment", segments.age_segment(F.col("age_bucket"), cfg.features.age_buckets))
                .orderBy("customer_idx").limit(300).toPandas())

    cfg = make_cfg(cfg0.lakehouse, *TINY_TRAIN, "score.repurchase_days=7")
    users = validation_users(cfg)
    lists, ctx, plans = blend_on(cfg, spark, TINY_AS_OF, users)
    # what the scoring job's batch code makes at the cutoff from scoring's own rows of these customers
    loaded = registry.load_model(cfg, as_of=cutoff, role="fit")
    index, _ = load_index(cfg, str(loaded.version), cutoff)
    _, scoring, rep_col = scoring_users(cfg, spark, cutoff, plans)
    rows = scoring.join(F.broadcast(spark.createDataFrame(users[["customer_idx"]])), "customer_idx").toPandas()
    sctx = build_context(cfg, spark, cutoff, ModelEmbedder.from_loaded(loaded), index, rep_col, plans)
    served = score_frame(rows, sctx).sort_values(["customer_id", "rank"])
    served = {c: g["article_id"].tolist() for c, g in served.groupby("customer_id")}
    got = {c: ctx.article_ids[row].tolist() for c, row in zip(users["customer_id"], lists)}
    assert rep_col == "recent_articles" and len(got) == len(users) > 0 and got == served
    # and the setting matters: with last_articles (the default) some of these lists differ
    default, _, _ = blend_on(make_cfg(cfg0.lakehouse, *TINY_TRAIN), spark, TINY_AS_OF, users)
    assert (default != lists).any()


def fit_cutoff_of(cfg):
    from hmrec.etl.split import fit_cutoff

    return fit_cutoff(cfg, TINY_AS_OF)


def test_the_ranker_serves_exactly_k_distinct_articles_to_every_customer(spark, ran, tmp_path):
    from hmrec.model import registry
    from hmrec.rank.serve import score_ranked

    cfg0, _ = ran
    lake = tmp_path / "lake"
    shutil.copytree(cfg0.lakehouse, lake)
    cfg = make_cfg(lake, *TINY_TRAIN, "score.method=ranker")
    summary = score_ranked(cfg, spark, TINY_AS_OF, registry.latest_version(cfg, TINY_AS_OF))
    k = cfg.score.k
    recs = storage.read(spark, cfg, tables.RECOMMENDATIONS)
    per = recs.groupBy("customer_id").agg(F.count(F.lit(1)).alias("n"), F.countDistinct("article_id").alias("d"),
                                          F.min("rank").alias("lo"), F.max("rank").alias("hi"))
    assert per.count() == storage.read(spark, cfg, tables.CUSTOMERS).select("customer_id").distinct().count()
    assert per.where((F.col("n") != k) | (F.col("d") != k) | (F.col("lo") != 1) | (F.col("hi") != k)).count() == 0
    sources = {r[0] for r in recs.select("source").distinct().collect()}
    assert "model" in sources and sources <= {"model", "repurchase", "colour", "popular", "trending", "copurchase"}
    # customers without a purchase before the as-of have no candidates: their segment's popular list
    never = storage.read_as_of(spark, cfg, tables.USER_FEATURES, TINY_AS_OF).where("n_purchases = 0").select("customer_id")
    assert recs.join(never, "customer_id").where(F.col("source") != "popular").count() == 0
    assert summary["customers"] == per.count()


def test_the_served_candidates_are_ranked_as_they_are_made_and_scoring_reads_only_the_best(spark, ran, tmp_path,
                                                                                             monkeypatch, capsys):
    from hmrec.errors import HmrecError
    from hmrec.evaluation import evaluate
    from hmrec.model import registry
    from hmrec.rank import ranker, serve, sources
    from hmrec.rank.candidates import RANKED_COLUMNS, candidate_rows, candidates, ranked_by, written_features

    cfg0, results = ran
    version = registry.latest_version(cfg0, TINY_AS_OF)
    assert results["candidates"]["ranked"] and not results["candidates"]["features_kept"]
    assert ranked_by(spark, cfg0, TINY_AS_OF, "serve") == ranker.ranker_sha256(cfg0, version) is not None
    assert ranked_by(spark, cfg0, fit_cutoff_of(cfg0), "fit") is None  # the fit rows train the ranker
    # placed as they were made: only the places and the sources are kept, the other features are null
    slim = candidate_rows(spark, cfg0, TINY_AS_OF, "serve").toPandas()
    dropped = [c for c in sources.FEATURES if c not in RANKED_COLUMNS]
    assert "times_bought" in dropped and slim[dropped].isna().all().all()
    assert slim["ranker_rank"].notna().all() and slim["n_sources"].ge(1).all()
    assert written_features(spark, cfg0, TINY_AS_OF, "serve") == [c for c in sources.FEATURES if c in RANKED_COLUMNS]
    assert written_features(spark, cfg0, fit_cutoff_of(cfg0), "fit") == list(sources.FEATURES)
    lake = tmp_path / "lake"
    shutil.copytree(cfg0.lakehouse, lake)
    cfg = make_cfg(lake, *TINY_TRAIN, "score.method=ranker")
    # another booster cannot rank rows without features: scoring says what to rerun
    monkeypatch.setattr(serve, "ranked_by", lambda *a: None)
    with pytest.raises(HmrecError, match=r"written without the feature columns .*times_bought.* unless "
                                         r"candidates.serve_features is true: rerun `hmrec candidates --as-of 2020-09-16`"):
        serve.score_ranked(cfg, spark, TINY_AS_OF, version)
    monkeypatch.undo()
    # with candidates.serve_features the same rows, places and scores, and every feature
    cfg = make_cfg(lake, *TINY_TRAIN, "score.method=ranker", "candidates.serve_features=true")
    assert candidates(cfg, spark, TINY_AS_OF)["features_kept"]
    rows = candidate_rows(spark, cfg, TINY_AS_OF, "serve").toPandas()
    key = ["customer_idx", "article_idx"]
    kept = [c for c in RANKED_COLUMNS if c != "as_of"]
    pd.testing.assert_frame_equal(rows[kept].sort_values(key).reset_index(drop=True),
                                  slim[kept].sort_values(key).reset_index(drop=True))
    assert rows["times_bought"].notna().all()
    booster, _ = ranker.load_ranker(cfg0, version)
    # scored by the compiled trees (rank.compile), LightGBM's own predict to within rounding
    np.testing.assert_allclose(rows["ranker_score"].to_numpy(), ranker.predict(booster, rows), rtol=0, atol=1e-12)
    # places 1..n within each customer, by score and then article_idx
    for _, g in rows.groupby("customer_idx"):
        g = g.sort_values(["ranker_score", "article_idx"], ascending=[False, True])
        assert g["ranker_rank"].tolist() == list(range(1, len(g) + 1))
    # the evaluation's two_stage list from the stored places is the one the booster ranks from the features
    buyers = rows.drop_duplicates("customer_id")["customer_id"].head(300).tolist()
    frame = pd.DataFrame({"customer_id": buyers + ["nobody"], "popularity_segment": [["p1", "p2"]] * (len(buyers) + 1),
                          "actual": [[]] * (len(buyers) + 1)})
    placed, _ = evaluate.two_stage_lists(cfg, spark, TINY_AS_OF, str(version), frame, 12)
    monkeypatch.setattr(serve, "ranked_by", lambda *a: None)
    assert evaluate.two_stage_lists(cfg, spark, TINY_AS_OF, str(version), frame, 12)[0] == placed
    monkeypatch.undo()
    assert placed[-1] == ["p1", "p2"] and any(len(x) == 12 for x in placed[:-1])  # "nobody": the fallback alone
    # scoring from the stored places gives the lists that scoring every candidate gives
    stored = serve.score_ranked(cfg, spark, TINY_AS_OF, version)
    assert stored["ranked_in_candidates"]
    fast = storage.read(spark, cfg, tables.RECOMMENDATIONS).toPandas()
    monkeypatch.setattr(serve, "ranked_by", lambda *a: None)  # as if written before the ranker was trained
    capsys.readouterr()
    assert not serve.score_ranked(cfg, spark, TINY_AS_OF, version)["ranked_in_candidates"]
    assert (f"the candidates at {TINY_AS_OF} were written before this version's ranker was trained: the ranker "
            f"scores all of them here; `hmrec candidates --as-of {TINY_AS_OF}` after `hmrec rank`") in capsys.readouterr().err
    slow = storage.read(spark, cfg, tables.RECOMMENDATIONS).toPandas()
    key = ["customer_id", "rank"]
    pd.testing.assert_frame_equal(fast.sort_values(key).reset_index(drop=True), slow.sort_values(key).reset_index(drop=True))


def test_only_customers_who_bought_within_the_window_get_served_candidates_the_others_the_popularity_list(
        spark, ran, tmp_path):
    from hmrec.etl import segments
    from hmrec.model import registry
    from hmrec.rank import ranker, serve
    from hmrec.rank.candidates import candidate_rows, candidates

    cfg0, results = ran
    version = registry.latest_version(cfg0, TINY_AS_OF)
    # the run's rank stage measured every window on the held-out buyers and recorded its choice
    _, meta = ranker.load_ranker(cfg0, version)
    assert meta["active_days"]["chosen"] == results["rank"]["active_days"] == results["candidates"]["active_days"]
    assert set(meta["active_days"]["map@12"]) == {str(w) for w in ranker.ACTIVE_CHOICES}
    lake = tmp_path / "lake"
    shutil.copytree(cfg0.lakehouse, lake)
    cfg = make_cfg(lake, *TINY_TRAIN, "score.method=ranker", "candidates.active_days=0")
    candidates(cfg, spark, TINY_AS_OF)
    serve.score_ranked(cfg, spark, TINY_AS_OF, version)
    every = storage.read(spark, cfg, tables.RECOMMENDATIONS).toPandas()
    cfg = make_cfg(lake, *TINY_TRAIN, "score.method=ranker", "candidates.active_days=28")
    summary = candidates(cfg, spark, TINY_AS_OF)
    feats = storage.read_as_of(spark, cfg, tables.USER_FEATURES, TINY_AS_OF).toPandas()
    days = segments.days_since_last(feats["days_since_last_log"].to_numpy(np.float64))
    buyers = feats[feats["n_purchases"] >= 1]
    inside = set(buyers.loc[days[feats["n_purchases"] >= 1] <= 28, "customer_idx"])
    assert 0 < len(inside) < len(buyers) and summary["customers_lapsed"] == len(buyers) - len(inside)
    assert set(candidate_rows(spark, cfg, TINY_AS_OF, "serve").toPandas()["customer_idx"]) == inside
    serve.score_ranked(cfg, spark, TINY_AS_OF, version)
    window = storage.read(spark, cfg, tables.RECOMMENDATIONS).toPandas()
    key = ["customer_id", "rank"]
    ids = set(feats.loc[feats["customer_idx"].isin(inside), "customer_id"])
    same = lambda f: f[f["customer_id"].isin(ids)].sort_values(key).reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(same(window), same(every))  # their candidates and lists are unchanged
    out = set(buyers["customer_id"]) - ids
    lapsed = window[window["customer_id"].isin(out)].sort_values(key)
    assert (lapsed["source"] == "popular").all()
    # each age segment's popularity list, the same for every lapsed customer of the segment
    lists = lapsed.groupby("customer_id")["article_id"].agg(tuple)
    segment = feats.set_index("customer_id").loc[lists.index, "age_bucket"]
    assert (lists.groupby(segment.to_numpy()).nunique() == 1).all()
    before = every[every["customer_id"].isin(out)].sort_values(key).groupby("customer_id")["article_id"].agg(tuple)
    assert (before != lists).any()  # with candidates, some of them had lists of their own


def test_the_gate_judges_the_rankers_lift_when_the_ranker_is_what_scoring_serves(spark, ran, tmp_path):
    from hmrec.governance.gate import gate
    from hmrec.model import registry
    from hmrec.rank import ranker

    cfg0, _ = ran
    lake = tmp_path / "lake"
    shutil.copytree(cfg0.lakehouse, lake)
    cfg = make_cfg(lake, *TINY_TRAIN, "score.method=ranker")
    champion = registry.alias_version(cfg, registry.CHAMPION)
    loaded = registry.load_model(cfg, champion)
    run_id = registry.start_run(cfg, TINY_AS_OF, {}, {"purpose": "test challenger"})
    challenger = registry.register_model(cfg, run_id, loaded.model.state_dict(), loaded.meta["model_args"], TINY_AS_OF)
    registry.end_run(cfg, run_id, "FINISHED")
    # a ranker better than the blend (so scoring would serve it) but below popularity on its held-out buyers
    registry.set_version_tags(cfg, challenger, {registry.CHECKSUM_TAG.format(f"{ranker.RANKER_DIR}/{ranker.BOOSTER_FILE}"): "0"})
    registry.log_run_metrics(cfg, run_id, {"validation.ranker.map@12": 0.01, "validation.blend.map@12": 0.005,
                                           "validation.popularity.map@12": 0.02, "validation.ranker.users": 40})
    summary = gate(cfg, spark, TINY_AS_OF, enforce=False)
    assert summary["judged_list"] == "ranker" and not summary["passed"]
    assert summary["validation_lift"] == pytest.approx(0.5) and summary["validation_users"] == 40
    # the same version under score.method blend is judged on the choose stage's lists
    summary = gate(make_cfg(lake, *TINY_TRAIN, "score.method=blend"), spark, TINY_AS_OF, enforce=False)
    assert summary["judged_list"] == "blend" and summary["validation_lift"] != pytest.approx(0.5)


def test_a_ranker_worse_than_the_blend_on_the_validation_week_is_not_served(spark, ran, tmp_path, capsys):
    from hmrec.model import registry
    from hmrec.serve.score import score

    cfg0, _ = ran
    lake = tmp_path / "lake"
    shutil.copytree(cfg0.lakehouse, lake)
    cfg = make_cfg(lake, *TINY_TRAIN, "score.method=ranker")
    version = registry.latest_version(cfg, TINY_AS_OF)
    run_id = registry.client(cfg).get_model_version(cfg.paths.registered_model, version).run_id
    registry.log_run_metrics(cfg, run_id, {"validation.ranker.map@12": 0.01, "validation.blend.map@12": 0.2})
    capsys.readouterr()
    summary = score(cfg, spark, TINY_AS_OF)
    assert "the blend is served: on the validation week's held-out buyers the ranker's MAP@12 0.0100 is below " \
           "the blend's 0.2000" in capsys.readouterr().err
    assert "plans" in summary  # the blend's summary names each group's recipe
    sources = {r[0] for r in storage.read(spark, cfg, tables.RECOMMENDATIONS).select("source").distinct().collect()}
    assert sources <= {"model", "repurchase", "popular"}
