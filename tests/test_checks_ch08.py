"""Chapter 08's exercise checks pass the reference answers and fail stubs and plausible mistakes."""
import torch

from minilib import prune
from minilib.course.checks import (
    check_cubic_sparsity,
    check_head_columns,
    check_magnitude_mask,
    check_remove_heads,
    check_two_four_mask,
)


def test_magnitude_mask(stub):
    def magnitude_mask(weight, sparsity):                                  # the chapter's model answer
        keep = torch.ones(weight.numel(), dtype=torch.bool)
        keep[weight.abs().flatten().argsort()[:round(sparsity * weight.numel())]] = False
        return keep.view_as(weight)

    assert check_magnitude_mask(magnitude_mask)
    assert not check_magnitude_mask(lambda w, s: prune.magnitude_mask(w, s))           # the library's own
    assert not check_magnitude_mask(stub)
    assert not check_magnitude_mask(lambda w, s: prune.magnitude_mask(w, s).float())  # not a bool mask
    assert not check_magnitude_mask(lambda w, s: prune.magnitude_mask(-w.abs() + w.abs().max(), s))  # keeps the smallest
    assert not check_magnitude_mask(lambda w, s: w > w.flatten().kthvalue(max(1, round(s * w.numel()))).values)  # signed


def test_cubic_sparsity(stub):
    assert check_cubic_sparsity(lambda t, n, s: s * (1 - (1 - t / n) ** 3))
    assert not check_cubic_sparsity(lambda t, n, s: prune.cubic_sparsity(t, n, s))     # the library's own
    assert not check_cubic_sparsity(stub)
    assert not check_cubic_sparsity(lambda t, n, s: s * t / n)  # linear schedule
    assert not check_cubic_sparsity(lambda t, n, s: s * (t / n) ** 3)  # slow first, fast at the end


def test_two_four_mask(stub):
    def two_four_mask(weight):                                             # the chapter's model answer
        groups = weight.abs().view(weight.shape[0], -1, 4)
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, dim=-1).indices, True)
        return keep.view_as(weight)

    assert check_two_four_mask(two_four_mask)
    assert not check_two_four_mask(lambda w: prune.nm_mask(w))                         # the library's own
    assert not check_two_four_mask(stub)
    assert not check_two_four_mask(lambda w: prune.magnitude_mask(w, 0.5))  # 50% sparse, but not 2 in every 4
    assert not check_two_four_mask(lambda w: torch.zeros_like(w, dtype=torch.bool).view(w.shape[0], -1, 4).scatter_(
        -1, w.view(w.shape[0], -1, 4).topk(2, dim=-1).indices, True).view_as(w))  # signed, not |w|


def test_head_columns(stub):
    assert check_head_columns(lambda heads, d: (heads[:, None] * d + torch.arange(d)).flatten())
    assert not check_head_columns(lambda heads, d: prune.head_columns(heads, d))       # the library's own
    assert not check_head_columns(stub)
    assert not check_head_columns(lambda heads, d: (heads[:, None] + torch.arange(d)).flatten())  # forgot × d_h
    assert not check_head_columns(lambda heads, d: (heads[:, None] * d + torch.arange(d)).T.flatten())  # interleaved


def remove_heads_answer(attention, heads, head_index_as_column=False, out_bias=True, library=False):
    """The model answer of Exercise 8.6, with switches for the mistakes and the shortcut the check must catch."""
    if library:
        from minilib.prune import head_columns
    kept = [h for h in range(attention.n_heads) if h not in heads]
    d_h = attention.head_dim
    if library:
        index = head_columns(torch.tensor(kept), d_h)
    elif head_index_as_column:
        index = torch.tensor(kept)
    else:
        index = torch.cat([torch.arange(h * d_h, (h + 1) * d_h) for h in kept])
    for name in ("q_proj", "k_proj", "v_proj"):
        old = getattr(attention, name)
        setattr(attention, name, prune.linear_from(old.weight[index], old.bias[index]))
    out = attention.out_proj
    attention.out_proj = prune.linear_from(out.weight[:, index], out.bias if out_bias else None)
    attention.n_heads = len(kept)
    return attention


def test_remove_heads(stub):
    assert check_remove_heads(remove_heads_answer)
    assert not check_remove_heads(stub)
    assert not check_remove_heads(lambda a, h: remove_heads_answer(a, h, library=True))
    assert not check_remove_heads(lambda a, h: remove_heads_answer(a, h, head_index_as_column=True))
    assert not check_remove_heads(lambda a, h: remove_heads_answer(a, h, out_bias=False))
