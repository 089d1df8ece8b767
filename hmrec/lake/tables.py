"""The one catalogue of the lakehouse's Delta tables.

Every table has one entry here: its path under ``paths.lakehouse``, its
schema, its partition columns and the stage that writes it. Stages, the
pipeline and the readers refer to tables only through these entries, so a
table's name is written down once. The grain of each table is in DESIGN.md.
"""
from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql.types import StructType

from hmrec.lake import schemas


@dataclass(frozen=True)
class Table:
    """A Delta table of the lakehouse."""

    name: str  # path under the lakehouse root, e.g. "gold/train"
    schema: StructType
    writer: str  # the stage that writes it
    partition_by: tuple[str, ...] = ()
    # where rows of one cutoff are kept apart: an as_of partition or column
    per_as_of: bool = False
    # a finished stage may leave its as-of empty here (no purchase after the cutoff yet)
    may_be_empty: bool = False
    # replaced as a whole by each run, one as-of at a time: earlier as-ofs live on in the table's
    # history and are read by time travel to the last commit made for them
    replaced_whole: bool = False
    # written by ingest and read at the version of the last complete ingest manifest
    # (INGEST_MANIFESTS), never at a version a killed ingest may have left behind
    in_manifest: bool = False

    def __str__(self) -> str:
        return self.name


# ---- bronze: the input files, typed -------------------------------------------------

ARTICLES = Table("bronze/articles", schemas.ARTICLES, "ingest", in_manifest=True)
CUSTOMERS = Table("bronze/customers", schemas.CUSTOMERS, "ingest", in_manifest=True)
TRANSACTIONS = Table("bronze/transactions", schemas.TRANSACTIONS, "ingest", in_manifest=True)
REJECTS = Table("bronze/rejects", schemas.REJECTS, "ingest", in_manifest=True)

# ---- silver: stable ids and indexed interactions ------------------------------------

CUSTOMER_INDEX = Table("silver/customer_index", schemas.CUSTOMER_INDEX, "features")
ARTICLE_INDEX = Table("silver/article_index", schemas.ARTICLE_INDEX, "features")
INTERACTIONS = Table("silver/interactions", schemas.INTERACTIONS, "features")

# ---- gold: per cutoff ------------------------------------------------------------------

USER_FEATURES = Table("gold/user_features", schemas.USER_FEATURES, "features", ("as_of",), per_as_of=True)
ITEM_FEATURES = Table("gold/item_features", schemas.ITEM_FEATURES, "features", ("as_of",), per_as_of=True)
TRAIN = Table("gold/train", schemas.SPLIT_ROWS, "split", ("as_of",), per_as_of=True)
# The last week before the cutoff: the labels every choice at the cutoff is made on.
VALIDATION = Table("gold/validation", schemas.SPLIT_ROWS, "split", ("as_of",), per_as_of=True, may_be_empty=True)
# The week after the cutoff: read only by evaluation, for the report.
HOLDOUT = Table("gold/holdout", schemas.SPLIT_ROWS, "split", ("as_of",), per_as_of=True, may_be_empty=True)
POPULARITY = Table("gold/popularity", schemas.POPULARITY, "popularity", ("as_of",), per_as_of=True)
# Candidates of every customer at a cutoff, from several sources, with the ranker's features.
# Its two roles at one cutoff (a refresh's serving and a later as-of's fit) are kept apart by the role partition.
CANDIDATES = Table("gold/candidates", schemas.CANDIDATES, "candidates", ("as_of", "role"), per_as_of=True)
ITEM_EMBEDDINGS = Table("gold/item_embeddings", schemas.ITEM_EMBEDDINGS, "index", ("as_of",), per_as_of=True)
# Replaced as a whole by each refresh (one atomic commit); as_of is a column.
RECOMMENDATIONS = Table("gold/recommendations", schemas.RECOMMENDATIONS, "score", per_as_of=True, replaced_whole=True)
EVAL_METRICS = Table("gold/eval_metrics", schemas.EVAL_METRICS, "evaluate", ("as_of",), per_as_of=True)

# ---- meta: the pipeline's own records ---------------------------------------------------

STAGE_RUNS = Table("meta/stage_runs", schemas.STAGE_RUNS, "run")
CHOICES = Table("meta/choices", schemas.CHOICES, "choose", per_as_of=True)
# One row per finished ingest: the bronze versions it wrote, committed last (see hmrec.lake.manifest).
INGEST_MANIFESTS = Table("meta/ingest_manifests", schemas.INGEST_MANIFESTS, "ingest")

ALL: tuple[Table, ...] = (
    ARTICLES, CUSTOMERS, TRANSACTIONS, REJECTS,
    CUSTOMER_INDEX, ARTICLE_INDEX, INTERACTIONS,
    USER_FEATURES, ITEM_FEATURES, TRAIN, VALIDATION, HOLDOUT, POPULARITY, ITEM_EMBEDDINGS, CANDIDATES, RECOMMENDATIONS, EVAL_METRICS,
    STAGE_RUNS, CHOICES, INGEST_MANIFESTS,
)
BRONZE: tuple[Table, ...] = (ARTICLES, CUSTOMERS, TRANSACTIONS)


def written_by(stage: str) -> list[Table]:
    """The tables a stage writes, in catalogue order."""
    return [t for t in ALL if t.writer == stage]


def by_name(name: str) -> Table:
    """The catalogue entry of ``name`` (e.g. ``gold/train``); an unknown name is a KeyError naming the known ones."""
    for t in ALL:
        if t.name == name:
            return t
    raise KeyError(f"no table {name!r} in the catalogue (known: {', '.join(t.name for t in ALL)})")
