"""The training loss of the two-tower model: a sampled softmax over in-batch and random negatives.

Each user's positive article competes with the batch's other positives and a
set of shared random negatives. :func:`retrieval_loss` takes one column per
candidate; :func:`unique_retrieval_loss` (what training uses) gives the same
loss and gradients with each distinct article embedded once. In both, a
candidate that is a row's own article (an accidental hit) is not a negative
for that row, and both can apply the logQ correction of
:func:`candidate_log_q`.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def candidate_log_q(
    cand_ids: Tensor, item_prob: Tensor, batch_size: int, n_random: int, num_items: int
) -> Tensor:
    """(C,) log of each candidate's expected count in one batch's sample.

    The candidates are the batch's positives (drawn in proportion to item
    frequency ``item_prob``) plus ``n_random`` uniform draws, so an item is
    expected ``batch_size * p(item) + n_random / num_items`` times. Subtracting
    this from the logits (logQ correction) stops popular items from being
    over-penalised as negatives.
    """
    expected = batch_size * item_prob[cand_ids] + n_random / max(num_items, 1)  # (C,)
    return torch.log(expected.clamp_min(1e-12))


class _SampledSoftmax(torch.autograd.Function):
    """Mean softmax cross-entropy over a (B, C) logit matrix built from two embedding matrices.

    Row i's logits are ``user_emb[i] . item_emb / temperature + bias``; its
    target is column ``pos[i]``, whose logit also gets ``pos_bias[i]``; the
    ``hits`` entries are masked out. The value is that of ``F.cross_entropy``
    on those logits, with a hand-written backward: the forward turns the
    logits into unnormalised probabilities in place, and the backward is two
    matrix products whose (B, D) and (C, D) results are scaled by each row's
    normaliser and have the targets subtracted. Autograd would instead keep
    and rewrite the (B, C) matrix for the mask, the log-softmax and the NLL
    separately; on a CPU those passes cost more than the matrix products
    themselves.

    ``dtype`` is the type of the (B, C) matrix, its products and its row
    sums. With ``torch.bfloat16`` they run at about twice the float32 speed on
    CPUs with bfloat16 instructions and move half the memory; the loss and
    the returned gradients are in the inputs' type.
    """

    @staticmethod
    def forward(
        ctx,
        user_emb: Tensor,
        item_emb: Tensor,
        bias: Tensor,
        pos: Tensor,
        pos_bias: Tensor | None,
        hits: tuple[Tensor, Tensor] | None,
        temperature: float,
        dtype: torch.dtype,
    ) -> Tensor:
        b = user_emb.shape[0]
        user = user_emb.to(dtype)  # (B, D)
        item = item_emb.to(dtype)  # (C, D)
        logits = torch.addmm(bias.to(dtype).unsqueeze(0), user, item.T, alpha=1.0 / temperature)  # (B, C)
        at_pos = (torch.arange(b), pos)
        if pos_bias is not None:
            logits.index_put_(at_pos, pos_bias.to(dtype), accumulate=True)
        if hits is not None:
            logits.index_put_(hits, logits.new_tensor(-math.inf))  # accidental hits never count
        target = logits[at_pos].to(user_emb.dtype)  # (B,) each row's positive (a copy)
        # exp(logits - row max) in place; the target is finite, so every row's max is too
        row_max = logits.amax(dim=1, keepdim=True)  # (B, 1)
        weights = logits.sub_(row_max).exp_()  # (B, C), masked entries 0
        # summed in ``dtype`` (accumulated in float32, rounded once): asking for a float32 result
        # would first convert the whole (B, C) matrix
        total = weights.sum(dim=1, keepdim=True).to(user_emb.dtype)  # (B, 1)
        lse = (row_max.to(user_emb.dtype) + total.log()).squeeze(1)  # (B,)
        ctx.save_for_backward(user_emb, item_emb, user, item, weights, total.reciprocal(), pos)
        ctx.temperature = temperature
        return (lse - target).mean()

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        user_emb, item_emb, user, item, weights, inv_total, pos = ctx.saved_tensors
        b = user_emb.shape[0]
        # d loss / d logits = (weights / total - I[targets]) / B; the normaliser and the
        # target part are applied to the products, so ``weights`` is used as it was saved
        scale = grad_out / (b * ctx.temperature)
        grad_user = grad_item = None
        if ctx.needs_input_grad[0]:
            grad_user = (weights @ item).to(user_emb.dtype).mul_(inv_total)  # (B, D)
            grad_user.sub_(item_emb.index_select(0, pos)).mul_(scale)
        if ctx.needs_input_grad[1]:
            # (D, B) @ (B, C), then transposed: a product with ``weights.T`` would first copy the (B, C) matrix
            grad_item = ((user_emb * inv_total).to(weights.dtype).T @ weights).T.to(item_emb.dtype)  # (C, D)
            grad_item.index_add_(0, pos, user_emb, alpha=-1.0)
            grad_item.mul_(scale)
        return grad_user, grad_item, None, None, None, None, None, None


def retrieval_loss(
    user_emb: Tensor,
    item_emb: Tensor,
    cand_ids: Tensor,
    temperature: float,
    log_q: Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Softmax cross-entropy of each user's positive against the other candidates.

    ``user_emb`` (B, D); ``item_emb`` (C, D) with C >= B, where candidate i < B
    is row i's positive and the rest are extra (random) negatives;
    ``cand_ids`` (C,) their article ids. A candidate with the same article as
    a row's positive (the same article bought twice in a batch, or drawn as a
    random negative) is masked out of that row. ``log_q`` (C,), when given, is
    subtracted from every row's logits (the logQ correction); it gets no
    gradient. ``dtype`` is the type the (B, C) logits are computed in
    (default: the embeddings' type); see :class:`_SampledSoftmax`.
    """
    b = user_emb.shape[0]
    hits = accidental_hits(cand_ids, b)
    bias = -log_q.detach() if log_q is not None else item_emb.new_zeros(item_emb.shape[0])  # (C,)
    pos = torch.arange(b)
    return _SampledSoftmax.apply(
        user_emb, item_emb, bias, pos, None, hits, float(temperature), dtype or user_emb.dtype
    )


def unique_candidates(cand_ids: Tensor, b: int) -> tuple[Tensor, Tensor, Tensor]:
    """(articles, positives, counts): the distinct articles among ``cand_ids`` (ascending),
    the position among them of each of the first ``b`` (the rows' positives), and how
    often each occurs in ``cand_ids``; the input of :func:`unique_retrieval_loss`."""
    articles, inverse, counts = torch.unique(cand_ids, return_inverse=True, return_counts=True)
    return articles, inverse[:b], counts


def unique_retrieval_loss(
    user_emb: Tensor,
    item_emb: Tensor,
    positives: Tensor,
    counts: Tensor,
    temperature: float,
    log_q: Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """:func:`retrieval_loss` with each distinct candidate article embedded once.

    ``item_emb`` (U, D) holds one row per distinct article of the candidate
    list, ``counts`` (U,) how many times each occurs in it, and ``positives``
    (B,) the row of each user's positive (from :func:`unique_candidates`).
    An article seen n times among the candidates counts n times in a row's
    softmax, which is a logit raised by log n; the row's own positive counts
    once, because its other copies are accidental hits. So the loss and its
    gradients are those of :func:`retrieval_loss` on the full candidate list,
    with the item tower, the logit matrix and their gradients a column per
    distinct article instead of one per candidate. ``log_q`` (U,) is per
    distinct article.
    """
    log_counts = counts.to(user_emb.dtype).log()  # (U,)
    bias = log_counts if log_q is None else log_counts - log_q.detach()  # (U,)
    return _SampledSoftmax.apply(
        user_emb, item_emb, bias, positives, -log_counts[positives], None, float(temperature), dtype or user_emb.dtype
    )


def accidental_hits(cand_ids: Tensor, b: int) -> tuple[Tensor, Tensor]:
    """(rows, cols) of the candidates that are the same article as row i's positive, i.e. ``cand_ids[i]``.

    Row i's own positive (col i) is left out. Found by sorting the candidate
    ids rather than comparing all B x C pairs: hits are few, the pairs many.
    """
    order = torch.argsort(cand_ids, stable=True)  # (C,)
    sorted_ids = cand_ids[order]
    positives = cand_ids[:b]  # (B,)
    first = torch.searchsorted(sorted_ids, positives)  # (B,) where each positive's run of equal ids starts
    counts = torch.searchsorted(sorted_ids, positives, right=True) - first  # (B,) >= 1: the positive itself
    rows = torch.repeat_interleave(torch.arange(b), counts)  # (H,)
    run_start = torch.repeat_interleave(counts.cumsum(0) - counts, counts)  # (H,)
    cols = order[torch.repeat_interleave(first, counts) + torch.arange(rows.shape[0]) - run_start]  # (H,)
    keep = cols != rows
    return rows[keep], cols[keep]
