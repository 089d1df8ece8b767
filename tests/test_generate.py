"""The generator: Kaggle file formats, sizes, determinism, and the planted structure.

Expected sizes and formats are written out here from the Kaggle data set's
description, never read back from the generator's own constants.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hmrec.synth.generate as gen
from conftest import make_cfg
from hmrec.cli import main
from hmrec.config import ConfigError
from hmrec.errors import HmrecError
from hmrec.synth.generate import generate
from hmrec.synth.params import PROFILE_SETTINGS, PROFILES, Params, resolve_profile

FILES = ["articles.csv", "customers.csv", "transactions_train.csv",
         "planted/customer_segments.csv", "planted/article_clusters.csv", "planted/segments.json",
         "planted/profile.json"]

# planted/segments.json's params keys, in order, as the file has always had them.
SEGMENTS_JSON_PARAMS = [
    "scale", "seed", "start_date", "end_date", "articles", "customers", "transactions", "repeat_share",
    "explore_share", "never_buy_share", "min_articles", "min_customers", "cluster_weights",
    "cluster_weight_concentration", "age_in_band", "zipf_exponent", "evergreen_share", "evergreen_level",
    "launch_before_days", "ramp_days", "decay_days", "life_floor", "colour_noise", "appearance_noise", "variant_p",
    "history_size", "repeat_from_last", "repeat_recency_power", "exclude_retries", "new_visit_prob",
    "same_day_duplicate", "online_share_beta", "activity_sigma", "fn_activity", "joined_before_share",
    "lifetime_days", "weekday_weights", "yearly_amplitude", "yearly_peak_doy", "trend", "markdown", "discounts",
    "price_sigma", "price_divisor", "customers_per_postal_code", "default_postal_share", "empty_desc_share",
    "empty_age_share",
]
# Profiles are compared with the default at small_data's scale and seed.
PROFILE_SCALE, PROFILE_SEED = 0.01, 11

ARTICLE_HEADER = (
    "article_id,product_code,prod_name,product_type_no,product_type_name,product_group_name,"
    "graphical_appearance_no,graphical_appearance_name,colour_group_code,colour_group_name,"
    "perceived_colour_value_id,perceived_colour_value_name,perceived_colour_master_id,"
    "perceived_colour_master_name,department_no,department_name,index_code,index_name,index_group_no,"
    "index_group_name,section_no,section_name,garment_group_no,garment_group_name,detail_desc"
)
CUSTOMER_HEADER = "customer_id,FN,Active,club_member_status,fashion_news_frequency,age,postal_code"
TRANSACTION_HEADER = "t_dat,customer_id,article_id,price,sales_channel_id"

AS_OF = pd.Timestamp("2020-09-16")
AGE_BUCKETS = [0, 25, 35, 45, 55, 65, 200]


def _read(path: Path) -> pd.DataFrame:
    """A CSV as raw strings: empty fields stay '' so formats can be checked."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def tiny(tiny_data: Path) -> dict:
    tx = _read(tiny_data / "transactions_train.csv")
    return {
        "articles": _read(tiny_data / "articles.csv"),
        "customers": _read(tiny_data / "customers.csv"),
        "tx": tx,
        "segments": _read(tiny_data / "planted/customer_segments.csv"),
        "clusters": _read(tiny_data / "planted/article_clusters.csv"),
        "info": json.loads((tiny_data / "planted/segments.json").read_text()),
    }


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """Scale 0.01 (318k transactions): big enough that sizes follow the scale and
    the catalogue is not exhausted by heavy buyers."""
    out = tmp_path_factory.mktemp("small_data")
    generate(make_cfg(out / "unused"), out=str(out), scale=0.01, seed=11)
    return out


def _labelled(tx: pd.DataFrame, segments: pd.DataFrame, clusters: pd.DataFrame) -> pd.DataFrame:
    """Transactions with the true segment and cluster, and whether each row re-buys."""
    tx = tx.merge(segments, on="customer_id", how="left").merge(clusters, on="article_id", how="left")
    tx["segment"] = tx["segment"].astype(int)
    tx["cluster"] = tx["cluster"].astype(int)
    tx["day"] = pd.to_datetime(tx["t_dat"])
    tx["pos"] = tx.groupby("customer_id").cumcount()
    earlier = tx.groupby(["customer_id", "article_id"])[["day", "pos"]].shift()
    tx["rebuy"] = earlier["day"].notna() & (earlier["day"] < tx["day"])
    # a re-buy of one of the customer's last 8 purchases: the planted mechanism
    tx["recent_rebuy"] = tx["rebuy"] & (tx["pos"] - earlier["pos"] <= 8)
    return tx


def _shape(data: Path) -> dict:
    """Shape figures of a data set, measured from its CSV files."""
    tx = _read(data / "transactions_train.csv")
    n_customers = len(_read(data / "customers.csv"))
    per = tx.groupby("customer_id").size()
    day = pd.to_datetime(tx["t_dat"])
    first_sale = day.groupby(tx["article_id"]).transform("min")
    # past the first 12 weeks, so that "first sold" is not just the first day
    late = day >= day.min() + pd.Timedelta(days=84)
    tx = tx.merge(_read(data / "planted/customer_segments.csv"), on="customer_id")
    tx = tx.merge(_read(data / "planted/article_clusters.csv"), on="article_id")
    prefs = json.loads((data / "planted/segments.json").read_text())["segments"]
    return {
        "repeat": tx.duplicated(["customer_id", "article_id"]).mean(),
        "cold": (n_customers - len(per) + (per == 1).sum()) / n_customers,
        "median": per.median(),
        "articles_per_row": len(_read(data / "articles.csv")) / len(tx),
        "sold_per_row": tx["article_id"].nunique() / len(tx),
        "new": ((day - first_sale).dt.days[late] < 28).mean(),
        "taste": np.mean([int(c) in prefs[s] for s, c in zip(tx["segment"], tx["cluster"])]),
    }


def _recall(truth: pd.Series, recs) -> float:
    return float(np.mean([len(set(recs(c)) & set(items)) / len(set(items)) for c, items in truth.items()]))


# ---- formats ------------------------------------------------------------------


def test_headers_are_the_kaggle_headers(tiny_data: Path):
    for name, header in (("articles.csv", ARTICLE_HEADER), ("customers.csv", CUSTOMER_HEADER),
                         ("transactions_train.csv", TRANSACTION_HEADER)):
        with open(tiny_data / name, encoding="utf-8") as f:
            assert f.readline().rstrip("\n") == header, name
    assert (tiny_data / "planted/customer_segments.csv").read_text().startswith("customer_id,segment\n")
    assert (tiny_data / "planted/article_clusters.csv").read_text().startswith("article_id,cluster\n")


def test_transaction_formats(tiny):
    tx = tiny["tx"]
    assert tx["t_dat"].str.fullmatch(r"\d{4}-\d{2}-\d{2}").all()
    assert tx["customer_id"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert tx["article_id"].str.fullmatch(r"0\d{9}").all()
    assert set(tx["sales_channel_id"]) == {"1", "2"}
    assert tx["price"].str.fullmatch(r"0\.\d+").all()
    price = tx["price"].astype(float)
    assert price.gt(0).all() and price.lt(1).all()
    assert price.between(0.005, 0.1).mean() > 0.95
    assert 0.015 < price.mean() < 0.045  # the Kaggle mean is 0.0278
    # every id refers to a row of the other files
    assert set(tx["article_id"]) <= set(tiny["articles"]["article_id"])
    assert set(tx["customer_id"]) <= set(tiny["customers"]["customer_id"])


def test_customer_formats(tiny):
    cu = tiny["customers"]
    assert cu["customer_id"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert cu["customer_id"].is_unique
    assert list(cu["customer_id"]) == sorted(cu["customer_id"])
    assert cu["customer_id"].str[0].nunique() == 16, "ids spread over the whole hex range"
    assert cu["postal_code"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert set(cu["FN"]) == {"1.0", ""}
    assert set(cu["Active"]) == {"1.0", ""}
    assert 0.55 < (cu["FN"] == "").mean() < 0.75
    assert 0.55 < (cu["Active"] == "").mean() < 0.75
    assert set(cu["club_member_status"]) <= {"ACTIVE", "PRE-CREATE", "LEFT CLUB", ""}
    assert (cu["club_member_status"] == "ACTIVE").mean() > 0.8
    assert set(cu["fashion_news_frequency"]) <= {"NONE", "Regularly", "Monthly", ""}
    age = cu["age"]
    assert age.str.fullmatch(r"\d{2}|").all()
    known = age[age != ""].astype(int)
    assert known.between(16, 99).all()
    assert 0.0 < (age == "").mean() < 0.04


def test_article_formats(tiny, tiny_data: Path):
    ar = tiny["articles"]
    assert ar["article_id"].str.fullmatch(r"0\d{9}").all()
    assert ar["article_id"].is_unique
    assert list(ar["article_id"]) == sorted(ar["article_id"])
    # article_id = product_code * 1000 + variant
    assert (ar["article_id"].str[:7].astype(int) == ar["product_code"].astype(int)).all()
    assert ar["product_code"].duplicated().any(), "products come in several colour variants"
    assert set(ar["index_code"]) <= set("ABCDEFGHIJ")
    assert set(ar["index_group_name"]) == {"Ladieswear", "Menswear", "Baby/Children", "Sport", "Divided"}
    assert {"Garment Upper body", "Garment Lower body", "Accessories"} <= set(ar["product_group_name"])
    for col in ("product_type_no", "graphical_appearance_no", "colour_group_code", "perceived_colour_value_id",
                "perceived_colour_master_id", "department_no", "index_group_no", "section_no", "garment_group_no"):
        assert ar[col].str.fullmatch(r"\d+").all(), col
    # one index code, one index name
    assert (ar.groupby("index_code")["index_name"].nunique() == 1).all()
    desc = ar["detail_desc"]
    assert (desc == "").any() and (desc == "").mean() < 0.05
    assert desc.str.contains(",").any()
    # a description with a comma is quoted in the file, and reads back whole
    with open(tiny_data / "articles.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert all(len(r) == 25 for r in rows)
    assert '"' in (tiny_data / "articles.csv").read_text(encoding="utf-8")


# ---- sizes, dates and order ---------------------------------------------------


def test_sizes_follow_the_scale_with_floors(tiny, small_data: Path):
    # scale 0.001: 105.5 articles is below the floor of 300, the rest is proportional
    assert len(tiny["articles"]) == 300
    assert len(tiny["customers"]) == 1372  # round(1_371_980 * 0.001)
    assert len(tiny["tx"]) == 31788  # round(31_788_324 * 0.001)
    assert len(_read(small_data / "articles.csv")) == 1055  # round(105_542 * 0.01)
    assert len(_read(small_data / "customers.csv")) == 13720
    assert len(_read(small_data / "transactions_train.csv")) == 317883


def test_transactions_sorted_and_cover_the_period(tiny):
    tx = tiny["tx"]
    assert tx["t_dat"].is_monotonic_increasing
    assert tx["t_dat"].iloc[0] == "2018-09-20" and tx["t_dat"].iloc[-1] == "2020-09-22"
    last_week = {str(dt.date(2020, 9, 16) + dt.timedelta(days=i)) for i in range(7)}
    assert last_week <= set(tx["t_dat"])
    assert (tx["t_dat"] >= "2020-09-16").sum() > 200
    # within a day, rows are ordered by customer as in the Kaggle file
    assert (tx.groupby("t_dat")["customer_id"].apply(lambda s: s.is_monotonic_increasing)).all()
    # weekly seasonality: weekends are busier than Tuesdays
    weekday = pd.to_datetime(tx["t_dat"]).dt.dayofweek.value_counts()
    assert weekday[5] > 1.1 * weekday[1]


def test_same_seed_same_bytes_other_seed_other_data(tiny_data: Path, tmp_path: Path):
    # a different chunk size must not change a byte either
    again = tmp_path / "again"
    generate(make_cfg(tmp_path / "lake", "generate.chunk_rows=1000"), out=str(again), scale=0.001, seed=3)
    for name in FILES:
        assert (again / name).read_bytes() == (tiny_data / name).read_bytes(), name
    assert not list(again.rglob("*.tmp"))
    other = tmp_path / "other"
    summary = generate(make_cfg(tmp_path / "lake"), out=str(other), scale=0.001, seed=4)
    # the summary reports what the files hold
    other_tx = _read(other / "transactions_train.csv")
    assert summary["transactions"] == len(other_tx) == 31788
    assert summary["articles"] == len(_read(other / "articles.csv"))
    assert summary["customers"] == len(_read(other / "customers.csv"))
    assert summary["buyers"] == other_tx["customer_id"].nunique()
    assert summary["out"] == str(other)
    assert (other / "transactions_train.csv").read_bytes() != (tiny_data / "transactions_train.csv").read_bytes()
    assert (other / "customers.csv").read_bytes() != (tiny_data / "customers.csv").read_bytes()


# ---- planted structure --------------------------------------------------------


def test_ground_truth_files(tiny):
    info = tiny["info"]
    segs = {int(k): v for k, v in info["segments"].items()}
    assert sorted(segs) == list(range(12))
    assert all(len(v) == 3 and all(0 <= c < 30 for c in v) for v in segs.values())
    assert set().union(*map(set, segs.values())) == set(range(30)), "every cluster is some segment's taste"
    assert info["params"]["scale"] == 0.001 and info["params"]["seed"] == 3
    assert list(tiny["segments"]["customer_id"]) == list(tiny["customers"]["customer_id"])
    assert set(tiny["clusters"]["article_id"]) == set(tiny["articles"]["article_id"])
    assert tiny["segments"]["segment"].astype(int).between(0, 11).all()


def test_clusters_show_in_article_attributes(tiny):
    ar = tiny["articles"].merge(tiny["clusters"], on="article_id")
    # index, section and product type almost pin the cluster down: an item tower
    # can learn it from attributes
    key = ["index_code", "section_name", "product_type_name"]
    majority = ar.groupby(key)["cluster"].agg(lambda s: s.value_counts().iloc[0]).sum()
    assert majority / len(ar) > 0.9
    # colours follow the cluster's palette most of the time
    palette = {int(k): set(v["colours"]) for k, v in tiny["info"]["clusters"].items()}
    in_palette = [c in palette[int(k)] for c, k in zip(ar["colour_group_name"], ar["cluster"])]
    assert 0.8 < np.mean(in_palette) < 0.97


def test_customers_buy_from_their_segments_clusters(tiny):
    tx = _labelled(tiny["tx"], tiny["segments"], tiny["clusters"])
    prefs = {int(k): set(v) for k, v in tiny["info"]["segments"].items()}
    in_seg = np.array([c in prefs[s] for s, c in zip(tx["segment"], tx["cluster"])])
    assert in_seg.mean() > 0.8
    # for a random assignment it would be about 3 / 30
    per_customer = pd.Series(in_seg).groupby(tx["customer_id"].values).mean()
    assert per_customer.median() > 0.8


def test_age_does_not_determine_the_segment(tiny):
    cu = tiny["customers"].merge(tiny["segments"], on="customer_id")
    cu = cu[cu["age"] != ""]
    bucket = np.searchsorted(AGE_BUCKETS, cu["age"].astype(int), side="right")
    for b, group in cu.groupby(bucket):
        shares = group["segment"].value_counts(normalize=True)
        assert shares.iloc[0] < 0.6 and len(shares[shares > 0.1]) >= 2, f"age bucket {b}"


def test_purchases_heavy_tailed_and_some_never_buy(tiny):
    tx, cu = tiny["tx"], tiny["customers"]
    per = tx.groupby("customer_id").size()
    never = 1 - len(per) / len(cu)
    assert 0.02 < never < 0.1
    assert per.mean() > 15, "enough history per buying customer to learn a taste"
    assert per.max() > 8 * per.median()
    online = (tx["sales_channel_id"] == "2").groupby(tx["customer_id"]).mean()
    assert 0.55 < (tx["sales_channel_id"] == "2").mean() < 0.85
    assert online[per[per >= 20].index].std() > 0.1, "online share differs between customers"


def test_taste_beats_popularity_on_the_last_week(tiny):
    """Knowing the true segment beats global and per-age popularity on the holdout week."""
    tx = _labelled(tiny["tx"], tiny["segments"], tiny["clusters"])
    train = tx[tx["day"] < AS_OF]
    hold = tx[(tx["day"] >= AS_OF) & (tx["day"] < AS_OF + pd.Timedelta(days=7))]
    truth = hold.groupby("customer_id")["article_id"].agg(list)
    assert len(truth) > 100
    recent = train[train["day"] >= AS_OF - pd.Timedelta(days=28)]
    top = recent["article_id"].value_counts().index[:12].tolist()
    by_segment = {s: g["article_id"].value_counts().index[:12].tolist() for s, g in recent.groupby("segment")}
    ages = tiny["customers"].set_index("customer_id")["age"]
    bucket_of = {c: (np.searchsorted(AGE_BUCKETS, int(a), side="right") if a else -1) for c, a in ages.items()}
    recent_bucket = recent["customer_id"].map(bucket_of)
    by_age = {b: g["article_id"].value_counts().index[:12].tolist() for b, g in recent.groupby(recent_bucket)}
    segment_of = dict(zip(tiny["segments"]["customer_id"], tiny["segments"]["segment"].astype(int)))

    r_global = _recall(truth, lambda c: top)
    r_age = _recall(truth, lambda c: by_age.get(bucket_of[c], top))
    r_taste = _recall(truth, lambda c: by_segment.get(segment_of[c], top))
    assert r_taste > 2 * r_global, (r_taste, r_global)
    assert r_taste > 1.5 * r_age, (r_taste, r_age)
    # recent launches matter: some of the holdout week's purchases are of
    # articles that first sold less than two months before
    first_sale = tx.groupby("article_id")["day"].min()
    age_at_sale = (hold["day"] - hold["article_id"].map(first_sale)).dt.days
    assert (age_at_sale < 60).mean() > 0.05


def test_repeat_purchases(small_data: Path):
    tx = _labelled(_read(small_data / "transactions_train.csv"), _read(small_data / "planted/customer_segments.csv"),
                   _read(small_data / "planted/article_clusters.csv"))
    assert 0.12 < tx["recent_rebuy"].mean() < 0.24
    assert tx["rebuy"].mean() < 0.4
    # two of the same article in one visit: identical rows, as in the Kaggle file
    assert 0.0 < tx.duplicated(["t_dat", "customer_id", "article_id", "price", "sales_channel_id"]).mean() < 0.06


def test_repeat_share_setting_is_honoured(tiny, tmp_path: Path):
    generate(make_cfg(tmp_path / "lake", "generate.repeat_share=0.0"), out=str(tmp_path), scale=0.001, seed=3)
    without = _labelled(_read(tmp_path / "transactions_train.csv"), _read(tmp_path / "planted/customer_segments.csv"),
                        _read(tmp_path / "planted/article_clusters.csv"))
    default = _labelled(tiny["tx"], tiny["segments"], tiny["clusters"])
    assert default["recent_rebuy"].mean() - without["recent_rebuy"].mean() > 0.1


# ---- profiles -----------------------------------------------------------------


@pytest.fixture(scope="module")
def default_shape(small_data: Path) -> dict:
    return _shape(small_data)


@pytest.fixture(scope="module")
def profile_data(tmp_path_factory):
    """Generate a profile at small_data's scale and seed (once per profile)."""
    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in made:
            out = tmp_path_factory.mktemp(name)
            generate(make_cfg(out / "unused"), out=str(out), scale=PROFILE_SCALE, seed=PROFILE_SEED, profile=name)
            made[name] = out
        return made[name]
    return make


def test_profiles_override_known_parameters(tiny, tiny_data: Path):
    fields = {f.name for f in dataclasses.fields(Params)}
    assert set(PROFILES) == {"default", "no-repeat", "trend", "sparse", "big-catalogue"}
    for name, over in PROFILES.items():
        assert set(over) <= fields | set(PROFILE_SETTINGS), name
        assert not fields & set(PROFILE_SETTINGS)
    # default overrides nothing, so it is the generator with its defaults
    g = make_cfg("unused").generate
    assert resolve_profile("default", g) == (g, Params())
    # segments.json keeps its layout whatever the profile: the same keys in the same order
    assert list(tiny["info"]["params"]) == SEGMENTS_JSON_PARAMS
    assert json.loads((tiny_data / "planted/profile.json").read_text())["profile"] == "default"


def test_no_repeat_profile(profile_data, default_shape):
    shape = _shape(profile_data("no-repeat"))
    assert default_shape["repeat"] > 0.05, default_shape  # measured 0.36
    assert shape["repeat"] < 0.01, shape  # measured 0.001


def test_trend_profile(profile_data, default_shape):
    shape = _shape(profile_data("trend"))
    # most purchases are of articles first sold in the last four weeks (measured 0.56 against 0.13)
    assert shape["new"] > 0.35 and shape["new"] > 2.5 * default_shape["new"], (shape, default_shape)
    # and taste is weak: far fewer purchases in the customer's own clusters (0.45 against 0.89)
    assert shape["taste"] < default_shape["taste"] - 0.25, (shape, default_shape)


def test_sparse_profile(profile_data, default_shape):
    shape = _shape(profile_data("sparse"))
    assert shape["median"] <= 2, shape  # per buying customer; 11 in the default
    # most customers bought nothing or once (measured 0.59 against 0.10)
    assert shape["cold"] > 0.45 and shape["cold"] > 3 * default_shape["cold"], (shape, default_shape)


def test_big_catalogue_profile(profile_data, default_shape):
    shape = _shape(profile_data("big-catalogue"))
    # six times the articles for the same transactions, and they do sell (rarely)
    assert shape["articles_per_row"] > 4 * default_shape["articles_per_row"], (shape, default_shape)
    assert shape["sold_per_row"] > 4 * default_shape["sold_per_row"], (shape, default_shape)


def test_profile_is_recorded(profile_data):
    planted = profile_data("no-repeat") / "planted"
    record = json.loads((planted / "profile.json").read_text())
    assert record["profile"] == "no-repeat"
    assert record["overrides"]["history_size"] == 384 and record["params"]["history_size"] == 384
    assert record["settings"]["repeat_share"] == 0.0
    assert record["params"]["article_factor"] == 1.0, "parameters the profile leaves alone are listed too"
    # segments.json lists the values the profile resolved to
    params = json.loads((planted / "segments.json").read_text())["params"]
    assert params["history_size"] == 384 and params["repeat_share"] == 0.0


def test_profile_errors_and_command_line(tmp_path: Path, capsys):
    with pytest.raises(HmrecError, match=r"unknown profile 'dense'; the profiles are: default, no-repeat, trend, "
                                         r"sparse, big-catalogue"):
        generate(make_cfg(tmp_path / "lake"), out=str(tmp_path), scale=0.001, profile="dense")
    # six times the articles of the Kaggle catalogue per unit of scale run out of product codes sooner
    with pytest.raises(HmrecError, match=r"profile big-catalogue .* use scale <= 1\.66667"):
        generate(make_cfg(tmp_path / "lake"), out=str(tmp_path), scale=2.0, profile="big-catalogue")
    code = main(["generate", "--out", str(tmp_path / "x"), "--scale", "0.001", "--profile", "dense",
                 "--set", f"paths.lakehouse={tmp_path}"])
    assert code == 2
    assert "hmrec generate: error: unknown profile 'dense'" in capsys.readouterr().err
    assert not (tmp_path / "x" / "articles.csv").exists()
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    generate_help = capsys.readouterr().out
    assert all(name in generate_help for name in PROFILES), "--help names every profile"


# ---- failures -----------------------------------------------------------------


def test_failed_run_leaves_no_complete_looking_file(tmp_path: Path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gen, "write_planted", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(make_cfg(tmp_path / "lake"), out=str(tmp_path / "out"), scale=0.001, seed=3)
    left = sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert left == []


def test_bad_settings_are_one_clear_error(tmp_path: Path, capsys):
    with pytest.raises(HmrecError, match=r"scale 0\.0 is out of range"):
        generate(make_cfg(tmp_path / "lake"), out=str(tmp_path), scale=0.0, seed=3)
    with pytest.raises(ConfigError, match=r"generate.end_date must be a date of the form YYYY-MM-DD, got '22/09/2020'"):
        make_cfg(tmp_path / "lake", "generate.end_date=22/09/2020")
    code = main(["generate", "--out", str(tmp_path / "x"), "--scale", "-1", "--set", f"paths.lakehouse={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(r"hmrec generate: error: scale -1\.0 is out of range", err)
    assert "Traceback" not in err
