"""The row-wise Adam for embedding tables against torch's SparseAdam."""
import pytest
import torch
from torch import nn

from hmrec.model.optim import RowAdam, unique_rows


def _run(opt_cls, batches, **kw):
    torch.manual_seed(0)
    emb = nn.Embedding(50, 4, sparse=True)
    opt = opt_cls(emb.parameters(), lr=0.05, **kw)
    for ids, weights in batches:
        opt.zero_grad(set_to_none=True)
        (emb(ids) * weights).sum().backward()
        opt.step()
    return emb.weight.detach().clone(), opt


def test_row_adam_matches_sparse_adam():
    gen = torch.Generator().manual_seed(1)
    # repeated ids inside a batch (uncoalesced gradients) and rows untouched for several steps
    batches = [(torch.randint(20, (30,), generator=gen), torch.randn(30, 4, generator=gen)) for _ in range(8)]
    want, _ = _run(torch.optim.SparseAdam, batches)
    got, opt = _run(RowAdam, batches)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    start = nn.Embedding(50, 4, sparse=True).weight.detach()
    assert torch.equal(got[20:], start[20:])  # rows never seen did not move
    assert not torch.equal(got[:20], start[:20])


def test_row_adam_state_round_trips():
    gen = torch.Generator().manual_seed(2)
    batches = [(torch.randint(50, (10,), generator=gen), torch.randn(10, 4, generator=gen)) for _ in range(4)]
    # 4 steps in one go equal 2 steps, a state_dict round trip, then 2 more
    want, _ = _run(RowAdam, batches)
    torch.manual_seed(0)
    emb = nn.Embedding(50, 4, sparse=True)
    opt = RowAdam(emb.parameters(), lr=0.05)
    for ids, w in batches[:2]:
        opt.zero_grad(set_to_none=True)
        (emb(ids) * w).sum().backward()
        opt.step()
    saved = opt.state_dict()
    opt = RowAdam(emb.parameters(), lr=0.05)
    opt.load_state_dict(saved)
    for ids, w in batches[2:]:
        opt.zero_grad(set_to_none=True)
        (emb(ids) * w).sum().backward()
        opt.step()
    assert torch.equal(emb.weight.detach(), want)


def test_row_adam_refuses_dense_gradients():
    emb = nn.Embedding(5, 2)
    opt = RowAdam(emb.parameters())
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


@pytest.mark.parametrize("n_ids", [3, 40, 5000])  # few ids for the table (torch.unique) and many (dense mark)
def test_unique_rows_equal_torch_unique(n_ids):
    gen = torch.Generator().manual_seed(n_ids)
    idx = torch.randint(1000, (n_ids,), generator=gen)
    rows, inverse = unique_rows(idx, 1000)
    want_rows, want_inverse = torch.unique(idx, return_inverse=True)
    assert torch.equal(rows, want_rows)
    assert torch.equal(inverse, want_inverse)
