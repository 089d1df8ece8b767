"""Layered YAML configuration loaded into frozen dataclasses.

Order, later wins: ``hmrec/conf/base.yaml`` (every key, shipped in the
package), the file given with ``--conf`` (default ``conf/local.yaml`` when it
exists), then each ``--set a.b=value``. An unknown key is an error naming the
key; a ``--set`` value is checked against the field's type.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Literal, Union

import yaml

from hmrec.errors import HmrecError


class ConfigError(HmrecError):
    """A configuration file or override is wrong; the message says where."""


# A setting that may say ``auto``: chosen at each as-of on its validation week
# (see hmrec.evaluation.choose), or pinned to a value by the user.
AUTO = "auto"
AutoInt = Union[int, Literal["auto"]]


@dataclass(frozen=True)
class PathsConfig:
    lakehouse: str
    mlflow_tracking_uri: str
    mlflow_experiment: str
    registered_model: str


@dataclass(frozen=True)
class LoggingConfig:
    level: str


@dataclass(frozen=True)
class SparkConfig:
    master: str
    app_name: str
    delta_package: str
    ivy_dir: str
    driver_memory: str
    conf: dict = field(default_factory=dict)


@dataclass(frozen=True)
class GenerateConfig:
    scale: float
    seed: int
    start_date: str
    end_date: str
    chunk_rows: int
    min_articles: int
    min_customers: int
    repeat_share: float
    explore_share: float
    never_buy_share: float


@dataclass(frozen=True)
class IngestConfig:
    max_price: float
    min_date: str
    persist_level: str
    broadcast_max_customers: int
    min_keep_share: float
    max_reject_share: float


@dataclass(frozen=True)
class FeaturesConfig:
    last_n: int
    recent_days: list
    age_buckets: list
    broadcast_max_customers: int


@dataclass(frozen=True)
class SplitConfig:
    train_days: int
    validation_days: int
    holdout_days: int


@dataclass(frozen=True)
class PopularityConfig:
    window_days: int
    top_n: int


@dataclass(frozen=True)
class TrainConfig:
    embedding_dim: int
    id_dim: int
    attr_dim: int
    hidden_dim: int
    epochs: AutoInt  # auto: the best epoch count on the validation week, up to max_epochs
    max_epochs: int
    batch_size: int
    lr: float
    sparse_lr: float
    weight_decay: float
    warmup_steps: int
    temperature: float
    random_negatives: int
    logq_correction: bool
    num_processes: int
    local_mode: bool
    seed: int
    log_every: int
    train_days: int
    val_users: int
    val_k: int
    loader_workers: int
    max_steps: int
    dist_timeout_s: int
    compute_dtype: str
    warm_start: str  # auto | champion | off: start from the champion's weights (hmrec.train.warm)
    warm_start_max_age_days: int
    warm_epochs: int
    warm_train_days: int


@dataclass(frozen=True)
class IndexConfig:
    kind: str
    hnsw_m: int
    hnsw_ef_search: int
    hnsw_ef_construction: int
    ivf_nlist: int
    ivf_nprobe: int
    recall_sample: int
    candidates: int


@dataclass(frozen=True)
class CandidatesConfig:
    retrieval_n: int
    repurchase_n: int
    colour_n: int
    popular_n: int
    trending_n: int
    history_days: int
    batch_size: int
    copurchase_n: int = 12
    copurchase_days: int = 28
    active_days: AutoInt = AUTO
    active_max_loss: float = 0.005
    serve_features: bool = False


@dataclass(frozen=True)
class RankConfig:
    valid_share: float
    negative_share: float
    num_leaves: int
    learning_rate: float
    max_rounds: int
    early_stopping: int
    min_child_samples: int
    threads: int
    seed: int
    compile: bool = True


@dataclass(frozen=True)
class ScoreConfig:
    method: str
    k: int
    min_history: int
    repurchase: bool
    repurchase_slots: AutoInt
    repurchase_days: int
    repurchase_order: str
    fallback: str
    filter_bought: bool
    batch_size: int


@dataclass(frozen=True)
class EvaluateConfig:
    k: int
    curve_max_k: int
    lapsed_days: int


@dataclass(frozen=True)
class GateConfig:
    min_lift: float
    tolerance: float
    max_fallback_share: float
    min_coverage: float


@dataclass(frozen=True)
class LeaseConfig:
    heartbeat_s: float
    stale_after_s: float


@dataclass(frozen=True)
class Config:
    paths: PathsConfig
    logging: LoggingConfig
    spark: SparkConfig
    generate: GenerateConfig
    ingest: IngestConfig
    features: FeaturesConfig
    split: SplitConfig
    popularity: PopularityConfig
    train: TrainConfig
    index: IndexConfig
    candidates: CandidatesConfig
    rank: RankConfig
    score: ScoreConfig
    evaluate: EvaluateConfig
    gate: GateConfig
    lease: LeaseConfig

    @property
    def lakehouse(self) -> str:
        """Absolute lakehouse root (a URI such as s3a://… is kept as it is)."""
        root = self.paths.lakehouse
        if "://" in root:
            return root.rstrip("/")
        return str(Path(os.path.expanduser(root)).resolve())

    def table_path(self, name: str) -> str:
        """Location of a Delta table such as ``bronze/articles``."""
        return f"{self.lakehouse}/{name}"

    @property
    def mlflow_uri(self) -> str:
        if self.paths.mlflow_tracking_uri:
            return self.paths.mlflow_tracking_uri
        return f"sqlite:///{self.lakehouse}/mlflow.db"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DEFAULT_CONF = "conf/local.yaml"


# ---- what each setting may be ---------------------------------------------------------------
#
# Checked when the config is loaded, so a bad value fails in the first second of
# `hmrec run`, not after training. Every int and float setting has a rule here (a
# test checks that); a rule returns None when the value is fine, else what it must be.

Rule = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Bound:
    """A numeric range rule: ``lo`` <= v (or < v when ``open_lo``) and v <= ``hi``."""

    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False

    def __call__(self, v: float) -> str | None:
        ok = (self.lo is None or (v > self.lo if self.open_lo else v >= self.lo)) and (self.hi is None or v <= self.hi)
        if ok:
            return None
        if self.hi is None:
            return f"{'above' if self.open_lo else 'at least'} {self.lo:g}"
        return f"between {self.lo:g} and {self.hi:g}"


@dataclass(frozen=True)
class OneOf:
    """An enum-like rule: one of ``values``."""

    values: tuple

    def __call__(self, v: object) -> str | None:
        return None if v in self.values else "one of " + ", ".join(str(x) for x in self.values)


def at_least(lo: float) -> Bound:
    return Bound(lo=lo)


def above(lo: float) -> Bound:
    return Bound(lo=lo, open_lo=True)


def between(lo: float, hi: float) -> Bound:
    return Bound(lo=lo, hi=hi)


def one_of(*values: object) -> OneOf:
    return OneOf(tuple(values))


def iso_date(v: str) -> str | None:
    try:
        dt.date.fromisoformat(v)
    except ValueError:
        return "a date of the form YYYY-MM-DD"
    return None


def increasing_ints(n_min: int) -> Rule:
    def check(v: list) -> str | None:
        ok = len(v) >= n_min and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
        ok = ok and all(lo < hi for lo, hi in zip(v, v[1:])) and v[0] >= 0
        return None if ok else f"a list of at least {n_min} increasing non-negative whole numbers"
    return check


def positive_ints(n: int) -> Rule:
    def check(v: list) -> str | None:
        ok = len(v) == n and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)
        return None if ok else f"a list of {n} positive whole numbers"
    return check


def memory_size(v: str) -> str | None:
    return None if re.fullmatch(r"[0-9]+[kmgtKMGT]?", v) else "a JVM memory size such as 8g or 512m"


STORAGE_LEVELS = ("MEMORY_AND_DISK", "MEMORY_AND_DISK_DESER", "MEMORY_ONLY", "DISK_ONLY", "MEMORY_AND_DISK_2",
                  "MEMORY_ONLY_2", "DISK_ONLY_2", "DISK_ONLY_3", "OFF_HEAP", "NONE")
SHARE = between(0.0, 1.0)

LOG_LEVELS = ("ERROR", "WARN", "INFO", "DEBUG")

RULES: dict[str, Rule] = {
    "logging.level": one_of(*LOG_LEVELS),
    "spark.driver_memory": memory_size,
    "generate.scale": between(0.0001, 10.0),
    "generate.seed": at_least(0),
    "generate.start_date": iso_date,
    "generate.end_date": iso_date,
    "generate.chunk_rows": at_least(1),
    "generate.min_articles": at_least(1),
    "generate.min_customers": at_least(1),
    "generate.repeat_share": SHARE,
    "generate.explore_share": SHARE,
    "generate.never_buy_share": between(0.0, 0.99),
    "ingest.max_price": above(0),
    "ingest.min_date": iso_date,
    "ingest.persist_level": one_of(*STORAGE_LEVELS),
    "ingest.broadcast_max_customers": at_least(0),
    "ingest.min_keep_share": SHARE,
    "ingest.max_reject_share": SHARE,
    "features.last_n": at_least(1),
    "features.recent_days": positive_ints(2),
    "features.age_buckets": increasing_ints(2),
    "features.broadcast_max_customers": at_least(0),
    "split.train_days": at_least(0),
    "split.validation_days": at_least(1),
    "split.holdout_days": at_least(1),
    "popularity.window_days": at_least(1),
    "popularity.top_n": at_least(1),
    "train.embedding_dim": at_least(1),
    "train.id_dim": at_least(1),
    "train.attr_dim": at_least(1),
    "train.hidden_dim": at_least(1),
    "train.epochs": at_least(1),
    "train.max_epochs": at_least(1),
    "train.batch_size": at_least(1),
    "train.lr": above(0),
    "train.sparse_lr": above(0),
    "train.weight_decay": at_least(0),
    "train.warmup_steps": at_least(0),
    "train.temperature": above(0),
    "train.random_negatives": at_least(0),
    "train.num_processes": at_least(1),
    "train.seed": at_least(0),
    "train.log_every": at_least(0),
    "train.train_days": at_least(0),
    "train.val_users": at_least(0),
    "train.val_k": at_least(1),
    # more reader threads make petastorm 0.13.1 drop row groups
    "train.loader_workers": one_of(0, 1),
    "train.max_steps": at_least(0),
    "train.dist_timeout_s": at_least(1),
    "train.compute_dtype": one_of("auto", "bfloat16", "float32"),
    "train.warm_start": one_of(AUTO, "champion", "off"),
    "train.warm_start_max_age_days": at_least(0),
    "train.warm_epochs": at_least(1),
    "train.warm_train_days": at_least(0),
    "index.kind": one_of("flat", "hnsw", "ivf"),
    "index.hnsw_m": at_least(2),
    "index.hnsw_ef_search": at_least(1),
    "index.hnsw_ef_construction": at_least(1),
    "index.ivf_nlist": at_least(1),
    "index.ivf_nprobe": at_least(1),
    "index.recall_sample": at_least(0),
    "index.candidates": at_least(1),
    "candidates.retrieval_n": at_least(0),
    "candidates.repurchase_n": at_least(0),
    "candidates.colour_n": at_least(0),
    "candidates.popular_n": at_least(0),
    "candidates.trending_n": at_least(0),
    "candidates.copurchase_n": at_least(0),
    "candidates.copurchase_days": at_least(1),
    "candidates.history_days": at_least(0),
    "candidates.batch_size": at_least(1),
    "candidates.active_days": at_least(0),
    "candidates.active_max_loss": SHARE,
    "rank.valid_share": between(0.05, 0.9),
    "rank.negative_share": Bound(lo=0.0, hi=1.0, open_lo=True),
    "rank.num_leaves": at_least(2),
    "rank.learning_rate": above(0),
    "rank.max_rounds": at_least(1),
    "rank.early_stopping": at_least(1),
    "rank.min_child_samples": at_least(1),
    "rank.threads": at_least(1),
    "rank.seed": at_least(0),
    "score.method": one_of("blend", "ranker"),
    "score.k": at_least(1),
    "score.min_history": at_least(0),
    "score.repurchase_slots": at_least(0),
    "score.repurchase_days": at_least(0),
    "score.repurchase_order": one_of(AUTO, "recency", "model"),
    "score.fallback": one_of(AUTO, "segment", "global"),
    "score.batch_size": at_least(1),
    "evaluate.k": at_least(1),
    "evaluate.curve_max_k": at_least(1),
    "evaluate.lapsed_days": at_least(0),
    "gate.min_lift": at_least(0),
    "gate.tolerance": SHARE,
    "gate.max_fallback_share": SHARE,
    "gate.min_coverage": SHARE,
    "lease.heartbeat_s": above(0),
    "lease.stale_after_s": above(0),
}


def _check_rules(cfg: "Config") -> None:
    """Raise ConfigError naming the first setting that breaks its rule, with the allowed values."""
    for key, rule in RULES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value == AUTO and not isinstance(rule, OneOf):
            continue
        wanted = rule(value)
        if wanted is not None:
            raise ConfigError(
                f"config key {key} must be {wanted}, got {value!r}; fix it in your config file or with --set {key}=..."
            )
    if cfg.generate.start_date >= cfg.generate.end_date:
        raise ConfigError(
            f"config key generate.start_date ({cfg.generate.start_date}) must be before generate.end_date "
            f"({cfg.generate.end_date})"
        )


def _base_dict() -> dict:
    text = resources.files("hmrec").joinpath("conf/base.yaml").read_text()
    return yaml.safe_load(text)


def defaults() -> dict:
    """Every setting's default value, as the sections and keys of ``hmrec/conf/base.yaml``."""
    return _base_dict()


def _merge(base: dict, over: dict, where: str) -> dict:
    out = dict(base)
    for key, value in (over or {}).items():
        if key not in base:
            raise ConfigError(f"{where}: unknown config key '{key}' (known: {', '.join(sorted(base))})")
        if isinstance(base[key], dict) and key != "conf":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: '{key}' must be a mapping, got {value!r}")
            out[key] = _merge(base[key], value, f"{where}:{key}")
        elif key == "conf" and isinstance(base[key], dict):
            merged = dict(base[key])
            merged.update({str(k): str(v) for k, v in (value or {}).items()})
            out[key] = merged
        else:
            out[key] = value
    return out


def _coerce(value: Any, typ: Any, name: str) -> Any:
    """Check ``value`` against a dataclass field type; ints are accepted as floats."""
    origin = typing.get_origin(typ) or typ
    if origin is Union:
        # AutoInt: the word auto, or a value of the other type
        if value == AUTO:
            return AUTO
        others = [t for t in typing.get_args(typ) if typing.get_origin(t) is not Literal]
        if isinstance(value, str):
            # a --set over a default of auto keeps its text: read it as YAML, as other values are
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        try:
            return _coerce(value, others[0], name)
        except ConfigError:
            raise ConfigError(f"config key '{name}' must be auto or {others[0].__name__}, got {value!r}") from None
    if origin is bool:
        if isinstance(value, bool):
            return value
    elif origin is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif origin is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads '1e-2' (no dot) as a string.
            try:
                return float(value)
            except ValueError:
                pass
    elif origin is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, dt.date):
            # an unquoted date in a YAML file
            return value.isoformat()
    elif origin is list:
        if isinstance(value, list):
            return value
    elif origin is dict:
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
    raise ConfigError(f"config key '{name}' must be {getattr(origin, '__name__', origin)}, got {value!r}")


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        if f.name not in data:
            raise ConfigError(f"config key '{name}' is missing")
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            kwargs[f.name] = _build(typ, data[f.name], f"{name}.")
        else:
            kwargs[f.name] = _coerce(data[f.name], typ, name)
    return cls(**kwargs)


def _apply_set(data: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set '{assignment}': expected key=value, e.g. --set train.epochs=3")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"--set {key}: unknown config key '{'.'.join(parts[: i + 1])}'")
        node = node[part]
    leaf = parts[-1]
    if not isinstance(node, dict):
        raise ConfigError(f"--set {key}: '{'.'.join(parts[:-1])}' is not a section")
    if leaf not in node and not (len(parts) >= 2 and parts[-2] == "conf"):
        raise ConfigError(f"--set {key}: unknown config key '{key}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError):
        # e.g. '2020-13-01' looks like a YAML date but is none; the key's own rule judges the text
        value = raw
    if isinstance(node.get(leaf), str) and not isinstance(value, str):
        value = raw
    node[leaf] = value


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load base defaults, then ``path`` (if given or if conf/local.yaml exists), then overrides.

    A spark conf key may be set as ``--set spark.conf.spark.executor.memory=4g``.
    """
    data = _base_dict()
    conf_path = path
    if conf_path is None and Path(DEFAULT_CONF).exists():
        conf_path = DEFAULT_CONF
    if conf_path is not None:
        p = Path(conf_path)
        if not p.exists():
            raise ConfigError(f"config file {conf_path} does not exist")
        try:
            over = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {conf_path} is not valid YAML: {exc}") from exc
        if not isinstance(over, dict):
            raise ConfigError(f"config file {conf_path} must hold a mapping at the top level")
        data = _merge(data, over, str(conf_path))
    for assignment in overrides:
        if assignment.startswith("spark.conf."):
            # spark conf keys contain dots themselves: everything after
            # 'spark.conf.' is one key.
            key, _, raw = assignment[len("spark.conf."):].partition("=")
            if not raw and "=" not in assignment:
                raise ConfigError(f"--set '{assignment}': expected key=value")
            data["spark"]["conf"] = {**data["spark"]["conf"], key: raw}
            continue
        _apply_set(data, assignment)
    # Resolved here, on the driver: executors and training processes run in
    # other working directories and must see the same root.
    root = str(data["paths"]["lakehouse"])
    if "://" not in root:
        data["paths"]["lakehouse"] = str(Path(os.path.expanduser(root)).resolve())
    cfg = _build(Config, data)
    _check_rules(cfg)
    return cfg
