"""`hmrec recommend` reads the current gold/recommendations without Spark."""
from __future__ import annotations

import datetime as dt
import io

import pytest

from hmrec.lake import schemas, storage
from hmrec.cli import main
from hmrec.errors import HmrecError
from hmrec.serve.recommend import recommend
from hmrec.lake import tables
from tests.conftest import hashed_cid as cid

AS_OF = dt.date(2020, 9, 16)


def article(i: int, name: str, kind: str, colour: str | None = None) -> tuple:
    row = {n: None for n, _ in schemas.ARTICLE_COLUMNS}
    row.update(article_id=f"{108775000 + i:010d}", prod_name=name, product_type_name=kind, colour_group_name=colour)
    return tuple(row[n] for n, _ in schemas.ARTICLE_COLUMNS)


def write_recs(spark, cfg, lists: dict[int, list[tuple[int, str]]], version: str) -> None:
    rows = [
        (cid(c), f"{108775000 + a:010d}", rank, 1.0 / rank, source, version, AS_OF)
        for c, items in lists.items()
        for rank, (a, source) in enumerate(items, start=1)
    ]
    storage.write(spark.createDataFrame(rows, schemas.RECOMMENDATIONS), cfg, tables.RECOMMENDATIONS)


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    from conftest import make_cfg

    cfg = make_cfg(tmp_path_factory.mktemp("recommend") / "lake")
    arts = [article(1, "Strap top", "Vest top", "Black"), article(2, "Jade HW Skinny", "Trousers", "Dark Blue"),
            article(3, "Tilly", "Sweater", "Light Pink")]
    storage.write(spark.createDataFrame(arts, schemas.ARTICLES), cfg, tables.ARTICLES)
    # Customer 0 bought article 2 twice and article 1 before the as-of, article 3 after it.
    tx = [(dt.date(2020, 9, d), cid(0), f"{108775000 + a:010d}", 0.03, 2) for d, a in ((1, 2), (5, 1), (9, 2), (18, 3))]
    storage.write(spark.createDataFrame(tx, schemas.TRANSACTIONS), cfg, tables.TRANSACTIONS)
    write_recs(spark, cfg, {0: [(3, "model"), (1, "model"), (2, "popular")], 1: [(1, "popular")] * 1}, "v1")
    # A later refresh replaces the whole table: the reader must see only the current version.
    write_recs(spark, cfg, {0: [(2, "repurchase"), (3, "model"), (1, "popular")], 1: [(2, "popular")]}, "v2")
    return cfg


def test_prints_and_returns_the_current_list_with_article_names(lake):
    out = io.StringIO()
    rows = recommend(lake, cid(0).upper(), out=out)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert [r["article_id"] for r in rows] == ["0108775002", "0108775003", "0108775001"]
    assert [r["prod_name"] for r in rows] == ["Jade HW Skinny", "Tilly", "Strap top"]
    assert [r["product_type_name"] for r in rows] == ["Trousers", "Sweater", "Vest top"]
    assert [r["source"] for r in rows] == ["repurchase", "model", "popular"]
    assert [r["colour_group_name"] for r in rows] == ["Dark Blue", "Light Pink", "Black"]
    assert rows[1]["score"] == pytest.approx(0.5)
    text = out.getvalue()
    assert "model version v2" in text and "Jade HW Skinny" in text and "2020-09-16" in text
    assert "colour" in text.splitlines()[1] and "Light Pink" in text
    # what the score is, and why it is not in rank order when recent purchases lead
    assert "compare only within one source" in text and "does not fall with the rank" in text
    assert [r["article_id"] for r in recommend(lake, cid(0), k=2, out=io.StringIO())] == ["0108775002", "0108775003"]


def test_k_is_at_most_the_stored_k(lake):
    assert len(recommend(lake, cid(0), k=3, out=io.StringIO())) == 3
    with pytest.raises(HmrecError, match=r"--k 4: the last refresh stored 3 recommendations per customer"):
        recommend(lake, cid(0), k=4, out=io.StringIO())


def test_history_splits_the_purchases_at_the_as_of(lake):
    out = io.StringIO()
    recommend(lake, cid(0), history=2, out=out)
    text = out.getvalue()
    before = text[text.index("last 2 purchases before 2020-09-16"):text.index("on or after")]
    assert before.count("Jade HW Skinny") == 1 and "Strap top" in before and "2020-09-09" in before
    assert "2020-09-01" not in before  # only the last 2
    after = text[text.index("1 purchase on or after 2020-09-16"):]
    assert "Tilly" in after and "2020-09-18" in after


def test_bad_ids_and_missing_tables_are_one_line_errors(lake, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HmrecError, match="expected 64 hexadecimal characters"):
        recommend(lake, "not-a-customer")
    with pytest.raises(HmrecError, match="no recommendations"):
        recommend(lake, cid(99))
    with pytest.raises(HmrecError, match="positive"):
        recommend(lake, cid(0), k=0)
    from conftest import make_cfg

    empty = make_cfg(tmp_path / "empty")
    with pytest.raises(HmrecError, match="gold/recommendations does not exist.*paths.lakehouse.*hmrec run"):
        recommend(empty, cid(0))
    # After `make demo`, the demo's lakehouse is named, with the option that reads it.
    (tmp_path / "lakehouse" / "demo" / tables.RECOMMENDATIONS.name).mkdir(parents=True)
    with pytest.raises(HmrecError, match=r"the lakehouse at \./lakehouse/demo has recommendations: "
                                         r"add --set paths\.lakehouse=\./lakehouse/demo"):
        recommend(make_cfg(tmp_path / "lakehouse"), cid(0))

    code = main(["recommend", "--customer-id", "xyz", "--set", f"paths.lakehouse={lake.lakehouse}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "hmrec recommend: error: customer id 'xyz'" in err
