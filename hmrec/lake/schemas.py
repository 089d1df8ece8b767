"""Every input file's and every table's schema, in one place.

CSV inputs are read with an all-string schema built from the column lists
below (so a bad value becomes a reject with a reason instead of a silent
null), then cast to the typed bronze schema. Nothing is ever inferred.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql.functions import col
from pyspark.sql.types import (
    ArrayType,
    DateType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

S, I, L, D, F = StringType(), IntegerType(), LongType(), DoubleType(), FloatType()


def _struct(cols: list[tuple[str, object]], nullable: bool = True) -> StructType:
    return StructType([StructField(n, t, nullable) for n, t in cols])


# ---- input files (column order is the Kaggle files' order) -----------------

ARTICLE_COLUMNS: list[tuple[str, object]] = [
    ("article_id", S),
    ("product_code", I),
    ("prod_name", S),
    ("product_type_no", I),
    ("product_type_name", S),
    ("product_group_name", S),
    ("graphical_appearance_no", I),
    ("graphical_appearance_name", S),
    ("colour_group_code", I),
    ("colour_group_name", S),
    ("perceived_colour_value_id", I),
    ("perceived_colour_value_name", S),
    ("perceived_colour_master_id", I),
    ("perceived_colour_master_name", S),
    ("department_no", I),
    ("department_name", S),
    ("index_code", S),
    ("index_name", S),
    ("index_group_no", I),
    ("index_group_name", S),
    ("section_no", I),
    ("section_name", S),
    ("garment_group_no", I),
    ("garment_group_name", S),
    ("detail_desc", S),
]

CUSTOMER_COLUMNS: list[tuple[str, object]] = [
    ("customer_id", S),
    ("FN", D),  # 1.0 or empty, as in the Kaggle file
    ("Active", D),  # 1.0 or empty
    ("club_member_status", S),  # ACTIVE | PRE-CREATE | LEFT CLUB | empty
    ("fashion_news_frequency", S),  # Regularly | Monthly | NONE | None | empty
    ("age", I),
    ("postal_code", S),
]

TRANSACTION_COLUMNS: list[tuple[str, object]] = [
    ("t_dat", DateType()),  # YYYY-MM-DD
    ("customer_id", S),
    ("article_id", S),  # 10 digits, zero-padded
    ("price", D),
    ("sales_channel_id", I),  # 1 or 2
]

INPUT_FILES = {
    "articles": ("articles.csv", ARTICLE_COLUMNS),
    "customers": ("customers.csv", CUSTOMER_COLUMNS),
    "transactions": ("transactions_train.csv", TRANSACTION_COLUMNS),
}


def conform(df: DataFrame, schema: StructType) -> DataFrame:
    """Exactly the columns of ``schema``, in its order, cast to its types."""
    return df.select([col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])


def raw_schema(cols: list[tuple[str, object]]) -> StructType:
    """All-string schema for reading a CSV, plus Spark's corrupt-record column."""
    return _struct([(n, S) for n, _ in cols] + [("_corrupt_record", S)])


# ---- bronze ------------------------------------------------------------------

ARTICLES = _struct(ARTICLE_COLUMNS)
CUSTOMERS = _struct(CUSTOMER_COLUMNS)
TRANSACTIONS = _struct(TRANSACTION_COLUMNS)
REJECTS = _struct(
    [
        ("source", S),  # file path the row came from
        ("raw", S),  # the row's text (fields joined by commas)
        ("reason", S),  # names the column and the bad value
        ("ingested_at", TimestampType()),
    ]
)

# ---- silver -------------------------------------------------------------------

CUSTOMER_INDEX = _struct([("customer_id", S), ("customer_idx", I)])
ARTICLE_INDEX = _struct([("article_id", S), ("article_idx", I)])
INTERACTIONS = _struct(TRANSACTION_COLUMNS + [("customer_idx", I), ("article_idx", I)])

# ---- gold (every gold table but recommendations is partitioned by as_of) ------

# Categorical article attributes, each turned into a dense code (1..n, 0 = unknown)
# named <attribute>_code in gold/item_features. Order matters to the item tower.
ITEM_CATEGORICALS: list[str] = [
    "product_type_no",
    "product_group_name",
    "graphical_appearance_no",
    "colour_group_code",
    "perceived_colour_value_id",
    "perceived_colour_master_id",
    "department_no",
    "index_code",
    "index_group_no",
    "section_no",
    "garment_group_no",
]
ITEM_NUMERICS: list[str] = [
    "sales_7d",
    "sales_28d",
    "sales_total",
    "price_mean",
    "price_std",
    "days_since_first_sale",
]
ITEM_FEATURES = _struct(
    [("as_of", DateType()), ("article_id", S), ("article_idx", I)]
    + [(f"{c}_code", I) for c in ITEM_CATEGORICALS]
    + [(c, F) for c in ITEM_NUMERICS]
)

# Profile attributes as small codes (0 = unknown) for the user tower.
USER_CATEGORICALS: list[str] = ["age_bucket", "club_status_code", "news_freq_code", "fn", "active"]
USER_NUMERICS: list[str] = [
    "n_purchases_log",
    "days_since_last_log",
    "mean_price",
    "online_share",
    "n_distinct_articles_log",
    "repeat_share",
]
USER_FEATURES = _struct(
    [("as_of", DateType()), ("customer_id", S), ("customer_idx", I), ("n_purchases", L), ("age", I)]
    + [(c, I) for c in USER_CATEGORICALS]
    + [(c, F) for c in USER_NUMERICS]
    + [
        # share of the customer's purchases per product_group_name code
        # (index = code, length = number of codes + 1)
        ("category_shares", ArrayType(F)),
        # article_idx of the last N purchases, most recent first (may be empty)
        ("last_articles", ArrayType(I)),
    ]
)

SPLIT_ROWS = _struct(TRANSACTION_COLUMNS + [("customer_idx", I), ("article_idx", I), ("as_of", DateType())])

POPULARITY = _struct(
    [
        ("as_of", DateType()),
        ("segment", S),  # 'global' or an age segment label such as 'age_25_34'
        ("rank", I),  # 1 = most popular
        ("article_id", S),
        ("article_idx", I),
        ("score", D),  # purchases in the window
    ]
)

ITEM_EMBEDDINGS = _struct(
    [
        ("as_of", DateType()),
        ("model_version", S),
        ("article_id", S),
        ("article_idx", I),
        ("embedding", ArrayType(F)),
    ]
)

# One row per customer and candidate article at a cutoff (hmrec.rank): each source's score and
# rank (null where the source did not propose the article) and the ranker's features.
# The column list is hmrec.rank.sources.FEATURES, written out here so the schema stays explicit.
CANDIDATE_SOURCES = ["retrieval", "repurchase", "colour", "popular", "trending", "copurchase"]
CANDIDATE_FEATURES = (
    [f"{s}_{c}" for s in CANDIDATE_SOURCES for c in ("score", "rank")]
    + ["times_bought", "days_since_bought", "same_product_bought", "share_product_type", "share_colour",
       "share_index_group", "price_vs_user", "n_sources", "age_vs_item_buyers"]
    + ["item_sales_1d", "item_sales_7d", "item_sales_28d", "item_trend", "item_price_mean", "item_price_std",
       "item_buyer_age_mean", "item_days_since_first_sale"]
    + ["user_n_purchases", "user_days_since_last", "user_mean_price", "user_age"]
)
CANDIDATES = _struct(
    # role: serve (every customer, the served model) or fit (the validation week's buyers, the fitted model)
    [("as_of", DateType()), ("role", S), ("customer_id", S), ("customer_idx", I), ("segment", S), ("article_idx", I)]
    + [(c, D) for c in CANDIDATE_FEATURES]
    # the served version's ranker's score and the candidate's place in its customer's list (1 = best),
    # when the ranker existed as the candidates were made (role serve); null otherwise
    + [("ranker_score", D), ("ranker_rank", I)]
)

RECOMMENDATIONS = _struct(
    [
        ("customer_id", S),
        ("article_id", S),
        ("rank", I),  # 1..K
        ("score", D),
        ("source", S),  # model | repurchase | popular; with score.method ranker also colour | trending
        ("model_version", S),
        ("as_of", DateType()),
    ]
)

EVAL_METRICS = _struct(
    [
        ("as_of", DateType()),
        ("model_version", S),
        ("method", S),  # model | popularity | repurchase | ...
        ("segment", S),  # all | cold | lapsed | active
        ("metric", S),  # recall@12, ndcg@12, map@12, hitrate@12, coverage, users
        ("value", D),
    ]
)

# ---- meta ----------------------------------------------------------------------

# What was chosen for an as-of on its validation week (hmrec.evaluation.choose).
CHOICES = _struct(
    [
        ("as_of", DateType()),
        ("fit_cutoff", DateType()),  # the cutoff the choices were fitted at: as_of - split.validation_days
        ("fit_model_version", S),
        ("chosen_at", TimestampType()),
        ("choices", S),  # JSON: setting -> chosen value (train.epochs, the list plan of each customer group)
        ("figures", S),  # JSON: the validation figures behind each choice
    ]
)

# One row per finished stage of `hmrec run`, so a rerun skips what is done.
STAGE_RUNS = _struct(
    [
        ("as_of", DateType()),
        ("stage", S),
        ("bronze_version", L),  # Delta version of the bronze transactions table the stage built on
        ("finished_at", TimestampType()),
        ("summary", S),  # the stage's summary as JSON
        ("settings", S),  # the settings the stage reads, as JSON
        ("fingerprint", S),  # digest of those settings: a changed setting reruns the stage
        ("manifest_id", S),  # the ingest manifest (the bronze data) the stage built on
    ]
)

# One row per finished ingest: the Delta version of every bronze table it wrote. Readers
# read bronze at the versions of the latest row, so an ingest lands whole or not at all.
INGEST_MANIFESTS = _struct(
    [
        # the bronze data the row pins: a row that only records a new fingerprint keeps its predecessor's id
        ("manifest_id", S),
        ("seq", L),  # 1, 2, ...: the latest row is the one with the highest seq
        ("committed_at", TimestampType()),
        ("versions", MapType(S, L)),  # table name -> Delta version written
        ("rows", MapType(S, L)),  # table name -> rows in that version
        ("fingerprint", S),  # the ingest's input fingerprint, as JSON
        # every transactions_train.csv row ingested so far, by t_dat ("-": no valid t_dat): the row count and
        # the sum mod 2^64 of each row's xxhash64 (hmrec.etl.ingest.day_stats); empty in older manifests
        ("day_rows", MapType(S, L)),
        ("day_sums", MapType(S, L)),
        ("batch", S),  # what this ingest added, as JSON: mode, dates, rows, per-date counts, catalogue upserts
    ]
)
