"""Warm starts from the champion (hmrec.train.warm): when, and what the warm model starts with.

A toy champion (64 customers, 40 articles) is trained for a few steps on a
fixed pairing; a later refresh has 6 new customers, 5 new articles and two
new codes in one item column. Everything but the last test runs without
Spark; the last trains on the planted groups of tests/test_train.py.
"""
from __future__ import annotations

import datetime as dt

import pytest
import torch

from hmrec.bench import probes
from hmrec.errors import HmrecError
from hmrec.model import registry, two_tower
from hmrec.train import job, step
from hmrec.train.warm import Champion, decide, extend_state, warm_model_args
from tests.conftest import make_cfg
from tests.test_train import N_USERS, TRAIN_SETTINGS, write_planted
from tests.test_train import AS_OF as PLANTED_AS_OF

OLD_USERS, OLD_ITEMS = 64, 40
NEW_USERS, NEW_ITEMS = 70, 45
AS_OF = dt.date(2020, 9, 9)
FIT_CUTOFF = AS_OF - dt.timedelta(days=7)


def _pairs(n_users: int, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    customers = torch.arange(n_users)
    return customers, customers % n_items  # a fixed pairing to learn


def _train(cfg, model, users, items, customers, articles, steps: int) -> list[float]:
    sparse_opt, dense_opt = step.make_optimizers(model, cfg.train)
    gen = torch.Generator().manual_seed(1)
    n_items = model.num_items
    prob = torch.full((n_items,), 1 / n_items)
    return [
        float(step.train_step(model, sparse_opt, dense_opt, users, items, customers, articles,
                              torch.randint(n_items, (32,), generator=gen), prob, cfg.train))
        for _ in range(steps)
    ]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The champion (trained 40 steps), its tables, and the next refresh's arguments and tables."""
    cfg = make_cfg(tmp_path_factory.mktemp("warm"), "train.random_negatives=32", "train.warmup_steps=0",
                   "train.compute_dtype=float32")
    old_args = probes.synthetic_model_args(cfg, num_users=OLD_USERS, num_items=OLD_ITEMS)
    users, items = probes.synthetic_tables(old_args, torch.Generator().manual_seed(0))
    champion = two_tower.build_model(old_args, seed=0)
    _train(cfg, champion, users, items, *_pairs(OLD_USERS, OLD_ITEMS), steps=40)
    new_args = probes.synthetic_model_args(cfg, num_users=NEW_USERS, num_items=NEW_ITEMS)
    new_args["item_cat_sizes"] = [old_args["item_cat_sizes"][0] + 2, *old_args["item_cat_sizes"][1:]]
    new_args["user_num_mean"] = [0.5] * len(old_args["user_num_mean"])  # the new week's statistics
    new_users, new_items = probes.synthetic_tables(new_args, torch.Generator().manual_seed(3))
    # the old ids keep their features, as the append-only id maps keep their indices
    for key in new_users:
        new_users[key][:OLD_USERS] = users[key]
    new_items["item_cat"][:OLD_ITEMS] = items["item_cat"]
    new_items["item_num"][:OLD_ITEMS] = items["item_num"]
    return {"cfg": cfg, "old_args": old_args, "new_args": new_args, "champion": champion.eval(),
            "users": users, "items": items, "new_users": new_users, "new_items": new_items}


def _warm(toy):
    args, why = warm_model_args(toy["old_args"], toy["new_args"])
    assert why == "" and args is not None
    state, counts = extend_state(toy["champion"].state_dict(), toy["old_args"], args, seed=7)
    return args, state, counts


def test_warm_model_keeps_old_rows_bit_for_bit_and_new_rows_start_cold(toy):
    args, state, counts = _warm(toy)
    old = toy["champion"].state_dict()
    assert args["num_users"] == NEW_USERS and args["num_items"] == NEW_ITEMS
    assert args["item_cat_sizes"][0] == toy["old_args"]["item_cat_sizes"][0] + 2
    assert args["user_num_mean"] == toy["old_args"]["user_num_mean"]  # the champion's statistics kept
    assert counts == {"customers_copied": 64, "customers_new": 6, "articles_copied": 40, "articles_new": 5,
                      "attribute_codes_new": 2}
    cold = two_tower.build_model(args, seed=7).state_dict()
    assert torch.equal(state["user_id.weight"][:OLD_USERS], old["user_id.weight"][:OLD_USERS])
    assert torch.equal(state["item_id.weight"][:OLD_ITEMS], old["item_id.weight"][:OLD_ITEMS])
    assert torch.equal(state["user_history.weight"][:OLD_ITEMS + 1], old["user_history.weight"][:OLD_ITEMS + 1])
    # new customers and articles: the cold model's rows; the unseen-id row stays zero
    assert torch.equal(state["user_id.weight"][OLD_USERS:NEW_USERS], cold["user_id.weight"][OLD_USERS:NEW_USERS])
    assert torch.equal(state["item_id.weight"][OLD_ITEMS:NEW_ITEMS], cold["item_id.weight"][OLD_ITEMS:NEW_ITEMS])
    assert not state["user_id.weight"][NEW_USERS].any() and not state["item_id.weight"][NEW_ITEMS].any()
    # item column 0 grew by 2 codes: its old codes keep their rows, every later column moves up by 2
    first = toy["old_args"]["item_cat_sizes"][0]
    assert torch.equal(state["item_attrs.weight"][:first], old["item_attrs.weight"][:first])
    assert torch.equal(state["item_attrs.weight"][first:first + 2], cold["item_attrs.weight"][first:first + 2])
    assert torch.equal(state["item_attrs.weight"][first + 2:], old["item_attrs.weight"][first:])
    assert torch.equal(state["user_attrs.weight"], old["user_attrs.weight"])
    for key in ("user_mlp.0.weight", "user_mlp.2.bias", "item_mlp.0.weight", "user_num_mean"):
        assert torch.equal(state[key], old[key]), key


def test_warm_model_embeds_unchanged_ids_as_the_champion_did(toy):
    args, state, _ = _warm(toy)
    warm = two_tower.build_model(args)
    warm.load_state_dict(state)
    warm.eval()
    champion = toy["champion"]
    old_users = {k: v[:OLD_USERS] for k, v in toy["new_users"].items()}
    old_items = {k: v[:OLD_ITEMS] for k, v in toy["new_items"].items()}
    with torch.no_grad():
        assert torch.equal(warm.user_tower(old_users), champion.user_tower(old_users))
        assert torch.equal(warm.item_tower(old_items), champion.item_tower(old_items))


def test_training_from_the_warm_start_lowers_the_loss_from_below_a_cold_start(toy):
    args, state, _ = _warm(toy)
    customers, articles = _pairs(NEW_USERS, NEW_ITEMS)
    keep = customers < OLD_USERS
    old_pairs = customers[keep], customers[keep] % OLD_ITEMS  # the champion's pairing, for the old ids
    customers = torch.cat([old_pairs[0], customers[~keep]])
    articles = torch.cat([old_pairs[1], articles[~keep]])
    warm = two_tower.build_model(args)
    warm.load_state_dict(state)
    cold = two_tower.build_model(args, seed=7)
    cfg = toy["cfg"]
    warm_losses = _train(cfg, warm, toy["new_users"], toy["new_items"], customers, articles, steps=20)
    cold_losses = _train(cfg, cold, toy["new_users"], toy["new_items"], customers, articles, steps=1)
    assert warm_losses[0] < cold_losses[0] - 0.5, (warm_losses[0], cold_losses[0])
    assert warm_losses[-1] < warm_losses[0] - 0.2, warm_losses


def test_weights_that_cannot_follow_a_changed_shape_give_the_reason(toy):
    changed = dict(toy["new_args"], id_dim=toy["new_args"]["id_dim"] * 2)
    args, why = warm_model_args(toy["old_args"], changed)
    assert args is None and why.startswith("train.id_dim is ")
    wider = dict(toy["new_args"], n_shares=toy["old_args"]["n_shares"] + 1)
    args, why = warm_model_args(toy["old_args"], wider)
    assert args is None and "category-share columns" in why
    narrower = dict(toy["new_args"], n_shares=toy["old_args"]["n_shares"] - 1)
    args, _ = warm_model_args(toy["old_args"], narrower)
    assert args["n_shares"] == toy["old_args"]["n_shares"]  # narrower shares are zero-padded by the tower


# ---- when a run starts warm --------------------------------------------------------------------


def _cfg(tmp_path, *settings: str):
    return make_cfg(tmp_path, "train.warm_start_max_age_days=28", *settings)


def test_auto_without_a_champion_is_cold_and_champion_mode_is_an_error(tmp_path):
    cfg = _cfg(tmp_path)
    assert cfg.train.warm_start == "auto"  # the default
    decision = decide(cfg, AS_OF, "serve", None, None)
    assert not decision.warm and "no version carries the alias champion" in decision.why
    with pytest.raises(HmrecError, match="train.warm_start=champion, but no version .* carries the alias champion"):
        decide(_cfg(tmp_path, "train.warm_start=champion"), AS_OF, "serve", None, None)


def test_auto_is_warm_from_a_recent_champion_and_cold_from_an_old_or_later_one(tmp_path):
    cfg = _cfg(tmp_path)
    recent = Champion("3", AS_OF - dt.timedelta(days=28))
    assert decide(cfg, AS_OF, "serve", None, recent).champion == recent
    old = Champion("2", AS_OF - dt.timedelta(days=29))
    decision = decide(cfg, AS_OF, "serve", None, old)
    assert not decision.warm and "29 days old" in decision.why
    later = Champion("4", AS_OF + dt.timedelta(days=7))  # e.g. a backtest's earlier week
    assert not decide(cfg, AS_OF, "serve", None, later).warm
    # champion: whatever its age, never from a later as-of; off: always cold
    assert decide(_cfg(tmp_path, "train.warm_start=champion"), AS_OF, "serve", None, old).champion == old
    with pytest.raises(HmrecError, match="trained on days after the as-of 2020-09-09"):
        decide(_cfg(tmp_path, "train.warm_start=champion"), AS_OF, "serve", None, later)
    assert not decide(_cfg(tmp_path, "train.warm_start=off"), AS_OF, "serve", None, recent).warm


def test_fit_model_is_never_seeded_by_a_champion_that_saw_its_validation_week(tmp_path):
    cfg = _cfg(tmp_path)
    # the fit model of the refresh at AS_OF is trained at FIT_CUTOFF and judged on [FIT_CUTOFF, AS_OF)
    before = Champion("5", FIT_CUTOFF)  # trained on days before FIT_CUTOFF only
    assert decide(cfg, FIT_CUTOFF, "fit", AS_OF, before).champion == before
    inside = Champion("6", FIT_CUTOFF + dt.timedelta(days=3))  # saw three days of the validation week
    decision = decide(cfg, FIT_CUTOFF, "fit", AS_OF, inside)
    assert not decision.warm and "saw the validation week from 2020-09-02" in decision.why
    assert decide(cfg, AS_OF, "serve", None, inside).champion == inside  # its serve model may start from it
    # the same in champion mode: the fit run goes cold rather than leak
    assert not decide(_cfg(tmp_path, "train.warm_start=champion"), FIT_CUTOFF, "fit", AS_OF, inside).warm
    # the age is the refresh's: a fit run is warm only when its serve model would be
    edge = Champion("7", AS_OF - dt.timedelta(days=29))
    assert not decide(cfg, FIT_CUTOFF, "fit", AS_OF, edge).warm


def test_warm_config_trains_warm_epochs_on_the_recent_window(tmp_path):
    cfg = _cfg(tmp_path, "train.warm_epochs=2", "train.warm_train_days=14", "train.train_days=90")
    warm = job.warm_config(cfg)
    assert (warm.train.epochs, warm.train.train_days) == (2, 14)
    assert job.warm_config(_cfg(tmp_path, "train.warm_train_days=0", "train.train_days=90")).train.train_days == 90


# ---- through the train job --------------------------------------------------------------------


def test_a_serve_run_starts_from_the_champion_trains_warm_epochs_and_records_it(spark, tmp_path, capsys):
    cfg = make_cfg(tmp_path, *TRAIN_SETTINGS, "train.warm_epochs=1", "train.warm_train_days=0")
    write_planted(spark, cfg)
    # the champion: an untrained model of the planted data's shape, registered as a refresh registers one
    args = job.prepare_data(spark, cfg, PLANTED_AS_OF).model_args
    run_id = registry.start_run(cfg, PLANTED_AS_OF, {}, {})
    first = registry.register_model(cfg, run_id, two_tower.build_model(args, seed=1).state_dict(), args,
                                    PLANTED_AS_OF - dt.timedelta(days=7))
    registry.set_alias(cfg, registry.CHAMPION, first)
    capsys.readouterr()
    second = job.train(cfg, spark, PLANTED_AS_OF)
    out = capsys.readouterr()
    meta = registry.load_model(cfg, second).meta
    warm = meta["warm_start"]
    assert (warm["warm_start"], warm["warm_start_from"]) == ("warm", first)
    assert (warm["warm_start_customers_copied"], warm["warm_start_customers_new"]) == (N_USERS, 0)
    assert len(meta["history"]) == 1  # train.warm_epochs, not train.epochs=2
    tags = registry.client(cfg).get_run(meta["run_id"]).data.tags
    assert tags["warm_start_from"] == first
    assert f"warm start from v{first}: {N_USERS} customer rows copied, 0 new" in out.out + out.err
