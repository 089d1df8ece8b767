"""Warm starts: a refresh's model starts from the champion's weights instead of random ones.

``train.warm_start`` decides (:func:`decide`):

* ``auto`` (the default): warm when a registered version carries the MLflow
  alias ``champion`` and its as-of is at most ``train.warm_start_max_age_days``
  days before the refresh's as-of (and not after it); otherwise cold;
* ``champion``: warm from the champion whatever its age; no champion is an error;
* ``off``: always cold.

The fit model (trained at the fit cutoff, as_of - split.validation_days, and
judged on the validation week that starts there) is warm-started from the
same champion only when the serve model of its refresh would be, and only
when the champion's as-of is at or before the fit cutoff. A champion trained
later has seen (part of) the validation week, and a model seeded with it
would be judged on purchases it was fitted to: such a fit run goes cold. A
champion whose as-of is after the refresh's own as-of has seen the days the
refresh is evaluated on, so it never seeds a run either.

:func:`warm_model_args` sizes the warm model (the champion's shapes, grown to
the new id maps and vocabularies, and the champion's normalisation statistics,
which its weights were learned with); :func:`extend_state` copies the
champion's weights into it. The id maps of :mod:`hmrec.etl.features` only
append, so customer i and article j keep their row; rows of new ids, and of
categorical codes new since the champion, are initialised as a cold model's
are. A change the weights cannot follow (another embedding or hidden size,
other feature columns, more category-share columns) makes the run cold, with
one printed line saying why.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import torch
from torch import Tensor

from hmrec.config import AUTO, Config
from hmrec.errors import HmrecError
from hmrec.model.two_tower import build_model

# model arguments a warm start cannot change: the weights' shapes follow them
FIXED_ARGS = ("embedding_dim", "id_dim", "attr_dim", "hidden_dim")
# normalisation statistics: the warm model keeps the champion's, which its weights were learned with
STAT_ARGS = ("user_num_mean", "user_num_std", "item_num_mean", "item_num_std")


@dataclass(frozen=True)
class Champion:
    """The registered version carrying the alias ``champion``, and the as-of it was trained for."""

    version: str
    as_of: dt.date


@dataclass(frozen=True)
class WarmDecision:
    """Whether a run starts from the champion (``champion`` set) or cold, and why."""

    champion: Champion | None
    why: str

    @property
    def warm(self) -> bool:
        """True when the run starts from the champion's weights."""
        return self.champion is not None


def decide(cfg: Config, as_of: dt.date, role: str, fitted_for: dt.date | None,
           champion: Champion | None) -> WarmDecision:
    """Whether the run of ``role`` at ``as_of`` starts from ``champion`` (see the module docstring).

    ``fitted_for`` is the as-of of the refresh a fit run is fitted for; a
    serve run's refresh is its own as-of.
    """
    tc = cfg.train
    mode = tc.warm_start
    if mode == "off":
        return WarmDecision(None, "cold: train.warm_start=off")
    if champion is None:
        if mode == "champion":
            raise HmrecError(
                f"train.warm_start=champion, but no version of model '{cfg.paths.registered_model}' carries the "
                f"alias champion in {cfg.mlflow_uri}; run a cold refresh first (--set train.warm_start=off) or "
                f"publish a version with `hmrec promote --version V`"
            )
        return WarmDecision(None, "cold: no version carries the alias champion")
    refresh = fitted_for if role == "fit" and fitted_for is not None else as_of
    source = f"champion v{champion.version} (as-of {champion.as_of.isoformat()})"
    if champion.as_of > refresh:
        if mode == "champion":
            raise HmrecError(
                f"train.warm_start=champion: {source} was trained on days after the as-of {refresh.isoformat()}, "
                f"which this refresh is evaluated on; use --set train.warm_start=auto (cold here) or off"
            )
        return WarmDecision(None, f"cold: {source} is later than the as-of {refresh.isoformat()}")
    age = (refresh - champion.as_of).days
    if mode == AUTO and age > tc.warm_start_max_age_days:
        return WarmDecision(
            None, f"cold: {source} is {age} days old, more than train.warm_start_max_age_days="
                  f"{tc.warm_start_max_age_days}"
        )
    if role == "fit" and champion.as_of > as_of:
        # the leak rule: a champion trained after the fit cutoff saw the validation week this model is judged on
        return WarmDecision(
            None, f"cold: {source} saw the validation week from {as_of.isoformat()} that this fit model is judged on"
        )
    return WarmDecision(champion, f"warm from {source}, {age} days before the as-of {refresh.isoformat()}")


def champion_of(cfg: Config) -> Champion | None:
    """The version carrying the alias ``champion`` in the registry, or None."""
    from hmrec.model import registry  # imported here: the training ranks import this module

    version = registry.alias_version(cfg, registry.CHAMPION)
    if version is None:
        return None
    day = registry.version_tags(cfg, version).get(registry.AS_OF_TAG)
    if not day:
        return None  # registered without an as-of: nothing to judge its age by
    return Champion(version, dt.date.fromisoformat(day))


def warm_model_args(champion_args: dict, new_args: dict) -> tuple[dict | None, str]:
    """(arguments of the warm model, '') or (None, why the champion's weights do not fit).

    The warm model has the larger of the two id counts and, per categorical
    column, vocabulary sizes, the champion's category-share width and
    normalisation statistics, and the new run's everything else.
    """
    for key in FIXED_ARGS:
        if champion_args.get(key) != new_args.get(key):
            return None, f"train.{key} is {new_args.get(key)}, the champion's {champion_args.get(key)}"
    for key in ("user_cat_sizes", "item_cat_sizes", *STAT_ARGS):
        if len(champion_args.get(key, [])) != len(new_args.get(key, [])):
            return None, f"the model's {key} has {len(new_args.get(key, []))} columns, the champion's {len(champion_args.get(key, []))}"
    if new_args["n_shares"] > champion_args["n_shares"]:
        return None, (f"the feature tables have {new_args['n_shares']} category-share columns, "
                      f"the champion was trained with {champion_args['n_shares']}")
    if new_args["num_users"] < champion_args["num_users"] or new_args["num_items"] < champion_args["num_items"]:
        return None, (f"the id maps have {new_args['num_users']:,} customers and {new_args['num_items']:,} articles, "
                      f"fewer than the champion's {champion_args['num_users']:,} and {champion_args['num_items']:,}")
    args = dict(new_args)
    for key in ("user_cat_sizes", "item_cat_sizes"):
        args[key] = [max(a, b) for a, b in zip(champion_args[key], new_args[key])]
    args["n_shares"] = champion_args["n_shares"]
    for key in STAT_ARGS:
        args[key] = list(champion_args[key])
    return args, ""


def _copy_attr_rows(new: Tensor, old: Tensor, new_sizes: list[int], old_sizes: list[int]) -> int:
    """Copy each column's block of a shared attribute table to its new offset; returns the rows kept new."""
    new_start = old_start = 0
    for new_size, old_size in zip(new_sizes, old_sizes):
        new[new_start:new_start + old_size] = old[old_start:old_start + old_size]
        new_start += new_size
        old_start += old_size
    return sum(new_sizes) - sum(old_sizes)


@torch.no_grad()
def extend_state(champion_state: dict[str, Tensor], champion_args: dict, model_args: dict,
                 seed: int) -> tuple[dict[str, Tensor], dict[str, int]]:
    """(initial weights of the warm model of ``model_args``, counts of rows copied and new).

    ``model_args`` comes from :func:`warm_model_args`. The model is first
    built as a cold run builds it (same seed); then the champion's rows
    0..n_old-1 of the customer and article tables, its history-bag rows
    (padding and articles 0..n_old-1), each categorical column's codes and
    every dense weight overwrite the cold ones. The row for unseen ids (the
    last of each id table) stays zero.
    """
    model = build_model(model_args, seed=seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    old_u, old_i = champion_args["num_users"], champion_args["num_items"]
    state["user_id.weight"][:old_u] = champion_state["user_id.weight"][:old_u]
    state["item_id.weight"][:old_i] = champion_state["item_id.weight"][:old_i]
    state["user_history.weight"][:old_i + 1] = champion_state["user_history.weight"][:old_i + 1]
    new_user_attrs = _copy_attr_rows(state["user_attrs.weight"], champion_state["user_attrs.weight"],
                                     model_args["user_cat_sizes"], champion_args["user_cat_sizes"])
    new_item_attrs = _copy_attr_rows(state["item_attrs.weight"], champion_state["item_attrs.weight"],
                                     model_args["item_cat_sizes"], champion_args["item_cat_sizes"])
    done = {"user_id.weight", "item_id.weight", "user_history.weight", "user_attrs.weight", "item_attrs.weight"}
    for key, value in champion_state.items():
        if key in done:
            continue
        if key not in state or state[key].shape != value.shape:
            raise HmrecError(
                f"the champion's weight {key} has shape {tuple(value.shape)}, the warm model's "
                f"{tuple(state[key].shape) if key in state else 'none'}; train cold with --set train.warm_start=off"
            )
        state[key] = value.clone()
    counts = {
        "customers_copied": old_u,
        "customers_new": model_args["num_users"] - old_u,
        "articles_copied": old_i,
        "articles_new": model_args["num_items"] - old_i,
        "attribute_codes_new": new_user_attrs + new_item_attrs,
    }
    return state, counts
