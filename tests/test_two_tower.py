"""The two-tower model, its feature tensors and its loss, without Spark."""
from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from hmrec.lake import schemas
from hmrec.model.loss import accidental_hits, candidate_log_q, retrieval_loss, unique_candidates, unique_retrieval_loss
from hmrec.model.two_tower import TwoTower, build_model, item_inputs, model_args_from_features, user_inputs


def user_frame() -> pd.DataFrame:
    """Three rows of ``tables.USER_FEATURES`` as Arrow's toPandas returns them (nulls included)."""
    rows = {
        "customer_idx": [0, 1, 2],
        "age_bucket": [1, np.nan, 3],
        "club_status_code": [1, 2, 1],
        "news_freq_code": [0, 1, 2],
        "fn": [1, 0, 1],
        "active": [0, 0, 1],
        "n_purchases_log": [1.0, 3.0, np.nan],
        "days_since_last_log": [2.0, 2.0, 2.0],
        "mean_price": [0.01, 0.03, 0.02],
        "online_share": [0.0, 1.0, 0.5],
        "n_distinct_articles_log": [1.0, 2.0, 3.0],
        "repeat_share": [0.0, 0.0, 0.5],
        "category_shares": [np.array([0.0, 0.5, 0.5]), None, np.array([1.0])],
        "last_articles": [np.array([5, 2], dtype=np.int32), np.array([], dtype=np.int32), None],
    }
    return pd.DataFrame(rows)


def item_frame() -> pd.DataFrame:
    data = {"article_idx": [0, 1, 2, 3]}
    for i, c in enumerate(schemas.ITEM_CATEGORICALS):
        data[f"{c}_code"] = [1 + (i % 3), 2, np.nan, 1]
    data.update(
        {
            "sales_7d": [3.0, 0.0, -1.0, 7.0],
            "sales_28d": [3.0, 1.0, 0.0, 7.0],
            "sales_total": [10.0, 1.0, 0.0, 100.0],
            "price_mean": [0.5, 0.25, 0.1, np.nan],
            "price_std": [0.0, 0.01, 0.0, 0.0],
            "days_since_first_sale": [10.0, 0.0, 3.0, 700.0],
        }
    )
    return pd.DataFrame(data)


def small_args(**over: object) -> dict:
    users, items = user_inputs(user_frame()), item_inputs(item_frame())
    args = model_args_from_features(users, items, num_users=3, num_items=6, embedding_dim=8, id_dim=4, attr_dim=2, hidden_dim=16)
    args.update(over)
    return args


def test_user_inputs_pads_history_and_shares_and_fills_null_codes():
    u = user_inputs(user_frame())
    assert u["customer_idx"].tolist() == [0, 1, 2]
    # history ids are shifted by one: 0 is the padding slot
    assert u["last_articles"].tolist() == [[6, 3], [0, 0], [0, 0]]
    assert u["category_shares"].tolist() == [[0.0, 0.5, 0.5], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    age = schemas.USER_CATEGORICALS.index("age_bucket")
    assert u["user_cat"][:, age].tolist() == [1, 0, 3]
    assert u["user_num"].shape == (3, len(schemas.USER_NUMERICS))
    assert math.isnan(float(u["user_num"][2, 0]))
    assert u["user_cat"].dtype == torch.int64 and u["user_num"].dtype == torch.float32


def test_item_inputs_log1p_only_the_counts():
    it = item_inputs(item_frame())
    col = {c: i for i, c in enumerate(schemas.ITEM_NUMERICS)}
    assert it["item_num"][0, col["sales_7d"]].item() == pytest.approx(math.log(4.0))
    assert it["item_num"][2, col["sales_7d"]].item() == 0.0  # a negative count is clipped, not NaN
    assert it["item_num"][3, col["days_since_first_sale"]].item() == pytest.approx(math.log(701.0))
    assert it["item_num"][0, col["price_mean"]].item() == pytest.approx(0.5)
    assert it["item_cat"][2].tolist() == [0] * len(schemas.ITEM_CATEGORICALS)


def test_model_args_measure_vocabularies_and_statistics():
    args = small_args()
    age = schemas.USER_CATEGORICALS.index("age_bucket")
    assert args["user_cat_sizes"][age] == 4  # codes 0..3
    assert args["n_shares"] == 3
    # n_purchases_log is [1, 3, NaN]: mean 2, population std 1, NaN ignored
    assert args["user_num_mean"][0] == pytest.approx(2.0)
    assert args["user_num_std"][0] == pytest.approx(1.0)
    # days_since_last_log is constant: std falls back to 1
    assert args["user_num_std"][1] == 1.0
    json.dumps(args)  # must be JSON-serialisable to travel in meta.json


def test_build_model_is_seeded_and_materialised():
    a = build_model(small_args(), seed=3)
    b = build_model(small_args(), seed=3)
    c = build_model(small_args(), seed=4)
    for name, t in a.state_dict().items():
        assert t.device.type == "cpu"
        assert torch.equal(t, b.state_dict()[name]), name
    assert any(not torch.equal(t, c.state_dict()[n]) for n, t in a.state_dict().items() if t.dtype.is_floating_point)
    assert torch.count_nonzero(a.user_id.weight[-1]) == 0  # unseen customers
    assert torch.count_nonzero(a.item_id.weight[-1]) == 0  # unseen articles
    assert torch.count_nonzero(a.user_history.weight[0]) == 0  # history padding
    assert a.user_num_mean.tolist() == pytest.approx(small_args()["user_num_mean"])


def test_build_model_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(small_args(), seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_towers_give_unit_vectors_and_handle_unseen_ids_and_codes():
    model = build_model(small_args(), seed=1).eval()
    users = user_inputs(user_frame())
    items = item_inputs(item_frame())
    with torch.no_grad():
        u, v = model(users, items)
        assert u.shape == (3, 8) and v.shape == (4, 8)
        assert torch.allclose(u.norm(dim=1), torch.ones(3), atol=1e-5)
        assert torch.allclose(v.norm(dim=1), torch.ones(4), atol=1e-5)
        # an id past the table and a negative id both use the 'unseen' row
        far = {**users, "customer_idx": torch.tensor([99, 99, 99])}
        neg = {**users, "customer_idx": torch.tensor([-1, -1, -1])}
        assert torch.allclose(model.user_tower(far), model.user_tower(neg))
        # a code past the vocabulary counts as unknown (0)
        big = {**items, "item_cat": torch.full_like(items["item_cat"], 500)}
        zero = {**items, "item_cat": torch.zeros_like(items["item_cat"])}
        assert torch.allclose(model.item_tower(big), model.item_tower(zero))
        # a wider category_shares (more product groups at scoring time) is truncated, not an error
        wide = {**users, "category_shares": torch.nn.functional.pad(users["category_shares"], (0, 2))}
        assert torch.allclose(model.user_tower(wide), u)


def test_rebuilt_model_gives_the_same_embeddings():
    """Normalisation statistics travel in the model: model_args + state_dict are enough."""
    trained = build_model(small_args(), seed=5)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01)
    args = json.loads(json.dumps(trained.model_args))
    rebuilt = build_model(args)
    rebuilt.load_state_dict(trained.state_dict())
    users = user_inputs(user_frame())
    items = item_inputs(item_frame())
    with torch.no_grad():
        assert torch.equal(rebuilt.user_tower(users), trained.user_tower(users))
        assert torch.equal(rebuilt.item_tower(items), trained.item_tower(items))


# The id tables, whose gradients are sparse; every other parameter is dense.
SPARSE_PARAMETERS = {"user_id.weight", "user_history.weight", "item_id.weight"}


def test_sparse_and_dense_parameters_are_split():
    model = build_model(small_args(), seed=1)
    sparse, dense = model.parameter_groups()
    name_of = {id(p): name for name, p in model.named_parameters()}
    # each parameter of the model in exactly one group, and nothing else
    grouped = [name_of.get(id(p), "not a parameter of the model") for p in [*sparse, *dense]]
    assert sorted(grouped) == sorted(name_of.values())
    assert {name_of[id(p)] for p in sparse} == SPARSE_PARAMETERS
    assert {name_of[id(p)] for p in dense} == set(name_of.values()) - SPARSE_PARAMETERS
    users = user_inputs(user_frame())
    items = item_inputs(item_frame())
    u, v = model(users, items)
    (u @ v.T).sum().backward()
    # the groups agree with the gradients autograd actually produced
    assert {name for name, p in model.named_parameters() if p.grad.is_sparse} == SPARSE_PARAMETERS
    assert all(p.grad.is_sparse for p in sparse)
    assert all(not p.grad.is_sparse for p in dense)


def test_retrieval_loss_known_value():
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # (B=2, D)
    item = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # positives 10, 11 and a random negative 12
    ids = torch.tensor([10, 11, 12])
    # row 0 logits [1, 0, 1], row 1 logits [0, 1, 1]; the positive is the diagonal
    expected = -(math.log(math.e / (math.e + 1 + math.e)) + math.log(math.e / (1 + math.e + math.e))) / 2
    assert retrieval_loss(user, item, ids, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)
    # temperature 0.5 doubles every logit
    expected_t = -(math.log(math.e**2 / (2 * math.e**2 + 1)))
    assert retrieval_loss(user, item, ids, temperature=0.5).item() == pytest.approx(expected_t, rel=1e-6)


def test_retrieval_loss_masks_accidental_hits():
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    item = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # both rows bought article 4; the random negative is article 4 as well
    ids = torch.tensor([4, 4, 4])
    # every off-diagonal candidate is the row's own article: each row only sees its positive
    assert retrieval_loss(user, item, ids, temperature=1.0).item() == pytest.approx(0.0, abs=1e-6)
    ids = torch.tensor([4, 4, 9])
    # row 0: [1, masked, 0]; row 1: [masked, 0, 1]
    expected = -(math.log(math.e / (math.e + 1)) + math.log(1 / (1 + math.e))) / 2
    assert retrieval_loss(user, item, ids, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_retrieval_loss_gradients_match_autograd_reference():
    gen = torch.Generator().manual_seed(0)
    user = torch.randn(5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    item = torch.randn(9, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    ids = torch.tensor([3, 1, 3, 7, 2, 1, 8, 3, 0])  # accidental hits: 3 in rows 0/2 and candidate 7, 1 in row 1
    log_q = torch.rand(9, dtype=torch.float64, generator=gen)
    # the fused loss against finite differences
    assert torch.autograd.gradcheck(lambda u, i: retrieval_loss(u, i, ids, 0.3, log_q), (user, item))
    # and against the plain formula written with autograd ops
    logits = (user @ item.T) / 0.3 - log_q
    hits = ids[:5].unsqueeze(1) == ids.unsqueeze(0)
    hits.diagonal().fill_(False)
    reference = F.cross_entropy(logits.masked_fill(hits, -math.inf), torch.arange(5))
    ref_grads = torch.autograd.grad(reference, (user, item))
    loss = retrieval_loss(user, item, ids, 0.3, log_q)
    grads = torch.autograd.grad(loss, (user, item))
    assert loss.item() == pytest.approx(reference.item(), rel=1e-12)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)


def test_bfloat16_loss_and_gradients_stay_close_to_float32():
    """The bfloat16 logits path agrees with the float32 one to bfloat16's precision, with float32 outputs."""
    gen = torch.Generator().manual_seed(4)
    user = F.normalize(torch.randn(64, 16, generator=gen), dim=-1).requires_grad_()
    item = F.normalize(torch.randn(160, 16, generator=gen), dim=-1).requires_grad_()
    ids = torch.randint(100, (160,), generator=gen)  # repeats: accidental hits are masked in both
    log_q = torch.rand(160, generator=gen)
    want = retrieval_loss(user, item, ids, 0.05, log_q)
    want_grads = torch.autograd.grad(want, (user, item))
    got = retrieval_loss(user, item, ids, 0.05, log_q, dtype=torch.bfloat16)
    got_grads = torch.autograd.grad(got, (user, item))
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=1e-2)
    for g, w in zip(got_grads, want_grads):
        assert g.dtype == torch.float32
        assert ((g - w).norm() / w.norm()).item() < 2e-2


@pytest.mark.parametrize("with_log_q", [False, True])
def test_unique_candidates_loss_equals_the_full_candidate_list(with_log_q):
    """Each distinct article embedded once gives the full list's loss, and its gradient is the copies' sum."""
    gen = torch.Generator().manual_seed(5)
    cand = torch.tensor([4, 7, 4, 2, 9, 7, 7, 1, 4, 3, 2])  # 5 positives (4 and 7 twice), 6 negatives
    b = 5
    user = torch.randn(b, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    table = torch.randn(10, 6, dtype=torch.float64, generator=gen, requires_grad=True)  # an article's one vector
    prob = torch.rand(10, dtype=torch.float64, generator=gen)
    log_q = (lambda ids: candidate_log_q(ids, prob, b, 6, 10)) if with_log_q else (lambda ids: None)

    full = retrieval_loss(user, table[cand], cand, 0.3, log_q(cand))
    full_grads = torch.autograd.grad(full, (user, table))
    articles, positives, counts = unique_candidates(cand, b)
    assert articles.tolist() == [1, 2, 3, 4, 7, 9]
    assert counts.tolist() == [1, 2, 1, 3, 3, 1]
    assert articles[positives].tolist() == cand[:b].tolist()
    got = unique_retrieval_loss(user, table[articles], positives, counts, 0.3, log_q(articles))
    got_grads = torch.autograd.grad(got, (user, table))
    assert got.item() == pytest.approx(full.item(), rel=1e-12)
    for g, w in zip(got_grads, full_grads):
        torch.testing.assert_close(g, w)
    # and against finite differences
    assert torch.autograd.gradcheck(
        lambda u, t: unique_retrieval_loss(u, t, positives, counts, 0.3, log_q(articles)), (user, table[articles].detach().requires_grad_())
    )


def test_accidental_hits_equal_the_pairwise_comparison():
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(6, (40,), generator=gen)  # many repeats
    rows, cols = accidental_hits(ids, 25)
    dense = ids[:25].unsqueeze(1) == ids.unsqueeze(0)
    dense.diagonal().fill_(False)
    assert sorted(zip(rows.tolist(), cols.tolist())) == sorted(map(tuple, dense.nonzero().tolist()))


def test_candidate_log_q_is_expected_count():
    prob = torch.tensor([0.5, 0.25, 0.25, 0.0])
    got = candidate_log_q(torch.tensor([0, 1, 3]), prob, batch_size=4, n_random=2, num_items=4)
    # expected count = batch * p + random / num_items
    assert got.tolist() == pytest.approx([math.log(2.5), math.log(1.5), math.log(0.5)])


def test_logq_correction_moves_loss_only_when_not_constant():
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    item = torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
    ids = torch.tensor([1, 2, 3])
    plain = retrieval_loss(user, item, ids, temperature=1.0)
    shifted = retrieval_loss(user, item, ids, temperature=1.0, log_q=torch.full((3,), 2.0))
    assert shifted.item() == pytest.approx(plain.item(), rel=1e-6)  # a constant cancels in the softmax
    # penalising the popular item 3 (a negative for both rows) lowers the loss
    popular = retrieval_loss(user, item, ids, temperature=1.0, log_q=torch.tensor([0.0, 0.0, 2.0]))
    assert popular.item() < plain.item()


def test_constructor_kwargs_round_trip():
    """``model_args`` hold every constructor argument, and the constructor rebuilds the same model from them."""
    args = small_args()
    model = TwoTower(**args)
    assert set(model.model_args) == set(inspect.signature(TwoTower).parameters)
    original = build_model(args, seed=2)
    rebuilt = TwoTower(**json.loads(json.dumps(original.model_args)))
    # the state dict does not hold the vocabulary sizes and offsets: the rebuild must get those from model_args
    rebuilt.load_state_dict(original.state_dict())
    users = user_inputs(user_frame())
    items = item_inputs(item_frame())
    with torch.no_grad():
        assert torch.equal(rebuilt.user_tower(users), original.user_tower(users))
        assert torch.equal(rebuilt.item_tower(items), original.item_tower(items))
