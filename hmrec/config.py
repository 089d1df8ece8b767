"""Layered YAML configuration loaded into frozen dataclasses.

Order, later wins: ``hmrec/conf/base.yaml`` (every key, shipped in the
package), the file given with ``--conf`` (default ``conf/local.yaml`` when it
exists), then each ``--set a.b=value``. An unknown key is an error naming the
key; a ``--set`` value is checked against the field's type.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from hmrec.errors import HmrecError


class ConfigError(HmrecError):
    """A configuration file or override is wrong; the message says where."""


@dataclass(frozen=True)
class PathsConfig:
    lakehouse: str
    mlflow_tracking_uri: str
    mlflow_experiment: str
    registered_model: str


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


@dataclass(frozen=True)
class FeaturesConfig:
    last_n: int
    recent_days: list
    age_buckets: list
    broadcast_max_customers: int


@dataclass(frozen=True)
class SplitConfig:
    train_days: int
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
    epochs: int
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
class ScoreConfig:
    k: int
    min_history: int
    repurchase: bool
    repurchase_slots: int
    repurchase_days: int
    repurchase_order: str
    filter_bought: bool
    batch_size: int


@dataclass(frozen=True)
class EvaluateConfig:
    k: int
    curve_max_k: int
    lapsed_days: int


@dataclass(frozen=True)
class Config:
    paths: PathsConfig
    spark: SparkConfig
    generate: GenerateConfig
    ingest: IngestConfig
    features: FeaturesConfig
    split: SplitConfig
    popularity: PopularityConfig
    train: TrainConfig
    index: IndexConfig
    score: ScoreConfig
    evaluate: EvaluateConfig

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


def _base_dict() -> dict:
    text = resources.files("hmrec").joinpath("conf/base.yaml").read_text()
    return yaml.safe_load(text)


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
    value = yaml.safe_load(raw) if raw.strip() else ""
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
    return _build(Config, data)
