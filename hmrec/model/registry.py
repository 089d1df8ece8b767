"""MLflow tracking and model registry: training runs, lineage, registered model versions.

A registered version of ``cfg.paths.registered_model`` points at the plain
artifact directory ``model/`` of its training run, which holds

* ``model.pt``: the state dict of :class:`hmrec.model.two_tower.TwoTower`;
* ``meta.json``: the model's constructor arguments, the resolved config, the
  as-of date, the Delta versions of the tables it was trained on and the
  feature column lists it expects.

That is enough to rebuild the model without any config file or the code
that trained it (:func:`load_model`). The SHA-256 of both files is recorded
as tags of the registered version (``sha256.model.pt``, ``sha256.meta.json``)
and checked before they are read (:mod:`hmrec.artifacts`). Every call talks
to ``cfg.mlflow_uri`` through its own client, never through MLflow's
process-global state.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import torch
from mlflow.artifacts import download_artifacts
from mlflow.entities import Metric, Param, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hmrec import artifacts
from hmrec.config import Config
from hmrec.errors import HmrecError
from hmrec.lake import schemas
from hmrec.model.two_tower import TwoTower, build_model

MODEL_DIR = "model"
WEIGHTS_FILE = "model.pt"
META_FILE = "meta.json"
META_FORMAT = 1
AS_OF_TAG = "as_of"
# serve: trained on everything before its as-of, to be scored and served;
# fit: trained at an earlier cutoff, whose following week decides the choices of a later as-of
ROLE_TAG = "role"
ROLES = ("serve", "fit")
CHECKSUM_TAG = "sha256.{}"  # a registered version's tag holding the SHA-256 of one of its files
# Aliases of the registered model: the version whose lists are served, and the latest serve version
# registered by a refresh, which the gate (hmrec.governance.gate) judges before it may be served.
CHAMPION = "champion"
CHALLENGER = "challenger"

# What the model's input tensors were built from; checked again when loading.
FEATURE_COLUMNS = {
    "user_categoricals": schemas.USER_CATEGORICALS,
    "user_numerics": schemas.USER_NUMERICS,
    "item_categoricals": schemas.ITEM_CATEGORICALS,
    "item_numerics": schemas.ITEM_NUMERICS,
}


@dataclass
class LoadedModel:
    """A registered model version rebuilt from its artifacts, in eval mode."""

    model: TwoTower
    version: str
    as_of: dt.date
    meta: dict
    artifact_dir: str


def client(cfg: Config) -> MlflowClient:
    """An MLflow client for the configured tracking and registry URI."""
    return MlflowClient(tracking_uri=cfg.mlflow_uri, registry_uri=cfg.mlflow_uri)


def _artifact_root(cfg: Config) -> str | None:
    """Where runs store artifacts: under the lakehouse unless a tracking server decides."""
    if not cfg.mlflow_uri.startswith(("sqlite:", "file:")) and "://" in cfg.mlflow_uri:
        return None
    root = f"{cfg.lakehouse}/mlartifacts"
    return root if "://" in root else f"file://{root}"


def experiment_id(cfg: Config) -> str:
    """Id of experiment ``cfg.paths.mlflow_experiment``, created on first use."""
    c = client(cfg)
    name = cfg.paths.mlflow_experiment
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=_artifact_root(cfg))
    except MlflowException:
        # another process created it in between
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def metric_key(name: str) -> str:
    """A metric name MLflow accepts: ``recall@12`` becomes ``recall_at_12``."""
    return re.sub(r"[^/\w.\- :]", "_", name.replace("@", "_at_"))


def _now_ms() -> int:
    return int(time.time() * 1000)


def start_run(
    cfg: Config, as_of: dt.date, params: dict[str, object], tags: dict[str, str], run_id: str | None = None
) -> str:
    """Start a training run (or reopen ``run_id`` when resuming) and return its id.

    Params are logged only on a new run: MLflow does not allow a param to change.
    """
    c = client(cfg)
    if run_id is not None:
        try:
            run = c.get_run(run_id)
        except MlflowException:
            run = None
        if run is not None and run.info.lifecycle_stage == "active":
            c.update_run(run_id, status="RUNNING")
            c.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
            return run_id
    run = c.create_run(experiment_id(cfg), run_name=f"train-{as_of.isoformat()}", tags={AS_OF_TAG: as_of.isoformat()})
    c.log_batch(
        run.info.run_id,
        params=[Param(k, str(v)[:6000]) for k, v in sorted(params.items())],
        tags=[RunTag(k, str(v)) for k, v in tags.items()],
    )
    return run.info.run_id


LOG_BATCH = 1000


def log_run_metrics(cfg: Config, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log metrics onto a run at ``step``; names are made MLflow-safe with :func:`metric_key`."""
    now = _now_ms()
    rows = [Metric(metric_key(k), float(v), now, int(step)) for k, v in metrics.items()]
    for start in range(0, len(rows), LOG_BATCH):  # MLflow takes at most 1000 metrics per request
        client(cfg).log_batch(run_id, metrics=rows[start:start + LOG_BATCH])


def end_run(cfg: Config, run_id: str, status: str) -> None:
    """Mark a run FINISHED, FAILED or KILLED."""
    client(cfg).set_terminated(run_id, status)


def register_model(
    cfg: Config,
    run_id: str,
    state_dict: dict[str, torch.Tensor],
    model_args: dict,
    as_of: dt.date,
    extra_meta: dict | None = None,
    role: str = "serve",
) -> str:
    """Attach weights + meta.json to the run as ``model/`` and register them; returns the version."""
    c = client(cfg)
    meta = {
        "format": META_FORMAT,
        "model_args": model_args,
        "config": cfg.to_dict(),
        "as_of": as_of.isoformat(),
        "run_id": run_id,
        "feature_columns": FEATURE_COLUMNS,
        "role": role,
        **(extra_meta or {}),
    }
    with tempfile.TemporaryDirectory(prefix="hmrec-model-") as tmp:
        torch.save(state_dict, os.path.join(tmp, WEIGHTS_FILE))
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True, default=str)
        checksums = {CHECKSUM_TAG.format(n): artifacts.sha256_file(os.path.join(tmp, n)) for n in (WEIGHTS_FILE, META_FILE)}
        c.log_artifacts(run_id, tmp, MODEL_DIR)
    name = cfg.paths.registered_model
    try:
        c.create_registered_model(name, description="hmrec two-tower retrieval model")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{c.get_run(run_id).info.artifact_uri}/{MODEL_DIR}"
    mv = c.create_model_version(name, source=source, run_id=run_id,
                                tags={AS_OF_TAG: as_of.isoformat(), ROLE_TAG: role, **checksums})
    if role == "serve":
        c.set_registered_model_alias(name, CHALLENGER, str(mv.version))
    return str(mv.version)


def alias_version(cfg: Config, alias: str) -> str | None:
    """The version that carries ``alias`` (e.g. :data:`CHAMPION`), or None when no version does."""
    try:
        return str(client(cfg).get_model_version_by_alias(cfg.paths.registered_model, alias).version)
    except MlflowException:
        return None


def set_alias(cfg: Config, alias: str, version: str | None) -> None:
    """Move ``alias`` to ``version``; None removes it."""
    c = client(cfg)
    if version is None:
        try:
            c.delete_registered_model_alias(cfg.paths.registered_model, alias)
        except MlflowException:
            pass  # no version carried it
        return
    c.set_registered_model_alias(cfg.paths.registered_model, alias, str(version))


def model_version(cfg: Config, version: str) -> ModelVersion:
    """The registry's record of ``version``; an unknown version is an HmrecError naming it."""
    return _model_version(cfg, version)


def version_tags(cfg: Config, version: str) -> dict[str, str]:
    """The tags of a registered version; an unknown version is an HmrecError naming it."""
    return dict(_model_version(cfg, version).tags or {})


def set_version_tags(cfg: Config, version: str, tags: dict[str, object]) -> None:
    """Set tags on a registered version (and the same ones on its run, where the MLflow UI shows runs)."""
    c = client(cfg)
    mv = _model_version(cfg, version)
    for key, value in tags.items():
        c.set_model_version_tag(cfg.paths.registered_model, str(version), key, str(value))
    c.log_batch(mv.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def latest_version(cfg: Config, as_of: dt.date | None = None, role: str = "serve") -> str | None:
    """The highest registered version of ``role`` (trained for ``as_of`` if given), or None.

    Versions registered before roles were recorded count as ``serve``.
    """
    c = client(cfg)
    versions = c.search_model_versions(f"name='{cfg.paths.registered_model}'")
    versions = [v for v in versions if (v.tags or {}).get(ROLE_TAG, "serve") == role]
    if as_of is not None:
        versions = [v for v in versions if (v.tags or {}).get(AS_OF_TAG) == as_of.isoformat()]
    if not versions:
        return None
    return str(max(int(v.version) for v in versions))


def _model_version(cfg: Config, version: str) -> ModelVersion:
    c = client(cfg)
    try:
        return c.get_model_version(cfg.paths.registered_model, str(version))
    except MlflowException:
        raise HmrecError(
            f"model version {version} of '{cfg.paths.registered_model}' does not exist in {cfg.mlflow_uri}; "
            f"leave out --model-version to use the latest, or check paths.mlflow_tracking_uri"
        ) from None


def _local_dir(uri: str) -> str:
    """The local directory of a file: artifact URI, or '' when the artifacts are remote."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = unquote(parsed.path) if parsed.scheme else uri
        if os.path.isdir(path):
            return path
    return ""


def load_model(cfg: Config, model_version: str | None = None, as_of: dt.date | None = None,
               role: str = "serve") -> LoadedModel:
    """Rebuild a registered model from its artifacts alone, in eval mode on the CPU.

    ``model_version`` None means the latest registered version of ``role``, for
    ``as_of`` when that is given (``as_of`` only narrows that search).
    """
    version = model_version if model_version is not None else latest_version(cfg, as_of, role)
    if version is None:
        which = f" for as-of {as_of.isoformat()}" if as_of is not None else ""
        day = as_of.isoformat() if as_of is not None else "YYYY-MM-DD"
        raise HmrecError(
            f"no registered version of model '{cfg.paths.registered_model}'{which} in {cfg.mlflow_uri}; "
            f"run `hmrec train --as-of {day}` first"
        )
    mv = _model_version(cfg, version)
    artifact_dir = _local_dir(mv.source)
    if not artifact_dir:
        artifact_dir = download_artifacts(
            artifact_uri=mv.source,
            dst_path=tempfile.mkdtemp(prefix=f"hmrec-model-v{version}-"),
            tracking_uri=cfg.mlflow_uri,
        )
    meta_path = os.path.join(artifact_dir, META_FILE)
    weights_path = os.path.join(artifact_dir, WEIGHTS_FILE)
    tags = mv.tags or {}
    day = tags.get(AS_OF_TAG) or (as_of.isoformat() if as_of is not None else "YYYY-MM-DD")
    fix = f"train again with `hmrec train --as-of {day}`, or pick another --model-version"
    for name, path in ((META_FILE, meta_path), (WEIGHTS_FILE, weights_path)):
        # versions registered before checksums were recorded have no tag: only their readability is checked
        artifacts.verify(path, tags.get(CHECKSUM_TAG.format(name)), f"the {name} of model version {version}", fix)
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise artifacts.unreadable(meta_path, f"the {META_FILE} of model version {version}", fix, exc) from None
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # whatever a damaged file makes the unpickler raise (UnpicklingError, EOFError, ...)
        raise artifacts.unreadable(weights_path, f"the weights of model version {version}", fix, exc) from None
    if meta.get("format") != META_FORMAT:
        raise HmrecError(f"{meta_path}: meta format {meta.get('format')!r} is not {META_FORMAT}; retrain the model")
    for key, expected in FEATURE_COLUMNS.items():
        if meta.get("feature_columns", {}).get(key) != expected:
            raise HmrecError(
                f"model version {version} was trained with {key} {meta.get('feature_columns', {}).get(key)} "
                f"but hmrec.lake.schemas now has {expected}; retrain with `hmrec train`"
            )
    try:
        model = build_model(meta["model_args"])
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise artifacts.unreadable(
            weights_path, f"the weights of model version {version} (they do not fit its {META_FILE})", fix, exc
        ) from None
    model.eval()
    return LoadedModel(
        model=model,
        version=str(version),
        as_of=dt.date.fromisoformat(meta["as_of"]),
        meta=meta,
        artifact_dir=artifact_dir,
    )


def log_artifacts(cfg: Config, model_version: str, local_dir: str, artifact_path: str) -> None:
    """Attach the files of ``local_dir`` (e.g. a FAISS index) to the run of ``model_version``."""
    mv = _model_version(cfg, model_version)
    client(cfg).log_artifacts(mv.run_id, local_dir, artifact_path)


def log_metrics(cfg: Config, model_version: str, metrics: dict[str, float]) -> None:
    """Log metrics (e.g. evaluation results) onto the run of ``model_version``.

    Names are made MLflow-safe: ``recall@12`` is stored as ``recall_at_12``.
    """
    mv = _model_version(cfg, model_version)
    log_run_metrics(cfg, mv.run_id, metrics, step=0)
