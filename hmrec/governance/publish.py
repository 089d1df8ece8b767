"""Publishing by hand: ``hmrec promote`` and ``hmrec rollback``.

    hmrec promote --version V
    hmrec rollback

``promote`` scores the lists of a registered serve version at its as-of and
publishes them (one commit of ``tables.RECOMMENDATIONS``, with scoring's
checks), evaluates them, writes its model card, and moves the alias ``champion`` to it, whatever the
gate said; its tags record that it was promoted by hand.

``rollback`` restores ``tables.RECOMMENDATIONS`` (Delta RESTORE) to the
state before the publish now served, and moves ``champion`` to the version
whose lists that state holds. The table's history says which publish each
state comes from: a written version is its own origin, a restored one has
the origin of the version it restored. So rolling back twice goes back two
publishes, not back and forth.
"""
from __future__ import annotations

import datetime as dt

from delta.tables import DeltaTable
from pyspark.sql import SparkSession

from hmrec.config import Config
from hmrec.errors import HmrecError
from hmrec.governance.card import write_card
from hmrec.governance.gate import DECISION_TAG
from hmrec.lake import storage, tables
from hmrec.model import registry
from hmrec.progress import log, stage


def promote(cfg: Config, spark: SparkSession, version: str) -> dict:
    """Publish the lists of serve version ``version`` at its as-of, evaluate them, make it the champion."""
    from hmrec.evaluation.evaluate import evaluate  # the evaluation stage sits above this one's imports
    from hmrec.serve.score import score

    tags = registry.version_tags(cfg, version)
    role = tags.get(registry.ROLE_TAG, "serve")
    if role != "serve":
        raise HmrecError(f"model version {version} has role {role}: it was fitted to choose settings, not to be "
                         f"served; promote a serve version (`hmrec compare` lists their figures)")
    if registry.AS_OF_TAG not in tags:
        raise HmrecError(f"model version {version} has no {registry.AS_OF_TAG} tag: it was not registered by hmrec")
    as_of = dt.date.fromisoformat(tags[registry.AS_OF_TAG])
    with stage("promote") as summary:
        before = registry.alias_version(cfg, registry.CHAMPION)
        summary.update(version=version, as_of=as_of.isoformat(), previous_champion=before or "none",
                       gate=tags.get(DECISION_TAG, "not judged"))
        scored = score(cfg, spark, as_of, model_version=str(version))
        registry.set_version_tags(cfg, version, {DECISION_TAG: "promoted by hand",
                                                 "gate.promoted_at": dt.datetime.now(dt.timezone.utc).isoformat()})
        summary["table_version"] = scored["version"]
        evaluate(cfg, spark, as_of, model_version=str(version))
        summary["card"] = write_card(cfg, spark, as_of, model_version=str(version))["card"]
        log("promote", f"version {version} is the champion; its lists for {as_of} are served "
                       f"({tables.RECOMMENDATIONS} version {scored['version']})")
    return dict(summary)


def _history(spark: SparkSession, cfg: Config) -> list[dict]:
    """Every commit of ``tables.RECOMMENDATIONS``, oldest first: version, operation, restored version, metadata."""
    path = storage.path(cfg, tables.RECOMMENDATIONS)
    if not DeltaTable.isDeltaTable(spark, path):
        raise HmrecError(f"{tables.RECOMMENDATIONS} does not exist yet: nothing to roll back (run `hmrec run` first)")
    rows = DeltaTable.forPath(spark, path).history().select("version", "operation", "operationParameters").collect()
    out = []
    for row in sorted(rows, key=lambda r: r["version"]):
        params = row["operationParameters"] or {}
        restored = params.get("version") if row["operation"] == "RESTORE" else None
        out.append({"version": int(row["version"]), "operation": row["operation"],
                    "restored": int(restored) if restored not in (None, "") else None})
    return out


def origins(history: list[dict]) -> dict[int, int]:
    """{table version: the written version whose lists it holds}, from :func:`_history` rows."""
    out: dict[int, int] = {}
    for h in history:
        out[h["version"]] = out.get(h["restored"], h["restored"]) if h["restored"] is not None else h["version"]
    return out


def rollback_target(history: list[dict]) -> tuple[int, int]:
    """(current version, the version to restore): the state just before the publish now served."""
    origin = origins(history)
    current = history[-1]["version"]
    target = origin[current] - 1
    if target < 0 or target not in origin:
        raise HmrecError(f"{tables.RECOMMENDATIONS} version {current} holds the first lists ever published "
                         f"(version {origin[current]}): there is nothing earlier to roll back to")
    return current, target


def rollback(cfg: Config, spark: SparkSession) -> dict:
    """Restore the served table to the lists before the current ones; ``champion`` follows their version."""
    with stage("rollback") as summary:
        current, target = rollback_target(_history(spark, cfg))
        served = storage.read(spark, cfg, tables.RECOMMENDATIONS, version=target)
        versions = sorted(r[0] for r in served.select("model_version").distinct().collect())
        as_ofs = sorted(r[0].isoformat() for r in served.select("as_of").distinct().collect())
        DeltaTable.forPath(spark, storage.path(cfg, tables.RECOMMENDATIONS)).restoreToVersion(target)
        champion = versions[0] if len(versions) == 1 else None
        if champion is not None:
            try:
                registry.version_tags(cfg, champion)
            except HmrecError:
                champion = None  # lists of a version the registry does not hold
        previous = registry.alias_version(cfg, registry.CHAMPION)
        registry.set_alias(cfg, registry.CHAMPION, champion)
        summary.update(table_version=current, restored=target, model_version=",".join(versions),
                       as_of=",".join(as_ofs), champion=champion or "none", previous_champion=previous or "none")
        log("rollback", f"{tables.RECOMMENDATIONS} restored to version {target} (lists of model version "
                        f"{','.join(versions)} for {','.join(as_ofs)}); champion: {champion or 'none'}")
    return dict(summary)


def describe(cfg: Config, version: str) -> dict:
    """A registered version's figures for ``hmrec compare``: tags and the metrics of its run."""
    mv = registry.model_version(cfg, version)
    run = registry.client(cfg).get_run(mv.run_id)
    return {"tags": dict(mv.tags or {}), "metrics": dict(run.data.metrics), "aliases": sorted(mv.aliases or [])}


def compare(cfg: Config, versions: list[str]) -> str:
    """Two or more versions' tags and metrics side by side, as a text table (printed by ``hmrec compare``)."""
    described = {v: describe(cfg, v) for v in versions}
    rows: list[tuple[str, list[str]]] = [("aliases", [",".join(d["aliases"]) or "-" for d in described.values()])]
    tag_keys = [registry.AS_OF_TAG, registry.ROLE_TAG, DECISION_TAG] + sorted(
        {k for d in described.values() for k in d["tags"] if k.startswith("gate.") and k != DECISION_TAG})
    for key in tag_keys:
        rows.append((key, [d["tags"].get(key, "-") for d in described.values()]))
    metric_keys = sorted({k for d in described.values() for k in d["metrics"]
                          if k.startswith("eval.") and ".all." in k})
    for key in metric_keys:
        rows.append((key, [f"{d['metrics'][key]:.4f}" if key in d["metrics"] else "-" for d in described.values()]))
    header = ["", *[f"version {v}" for v in versions]]
    widths = [max(len(header[i]), *(len(r[0]) if i == 0 else len(r[1][i - 1]) for r in rows)) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join([name.ljust(widths[0]), *(c.ljust(w) for c, w in zip(cells, widths[1:]))]) for name, cells in rows]
    return "\n".join(lines)
