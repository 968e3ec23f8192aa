"""Chapter 08's exercise checks pass correct answers however they are written, and fail stubs, mistakes and the
library's (or PyTorch's, or Hugging Face's) pruning by whatever route it is reached."""
import torch

from minilib import prune
from minilib.course.checks import (
    check_cubic_sparsity,
    check_head_columns,
    check_magnitude_mask,
    check_remove_heads,
    check_two_four_mask,
)


def magnitude_mask(weight, sparsity):                                      # the chapter's model answer
    keep = torch.ones(weight.numel(), dtype=torch.bool)
    keep[weight.abs().flatten().argsort()[:round(sparsity * weight.numel())]] = False
    return keep.view_as(weight)


def magnitude_by_threshold(weight, sparsity):                              # a threshold instead of a ranking
    k = round(sparsity * weight.numel())
    if k == 0:
        return torch.ones_like(weight, dtype=torch.bool)
    return weight.abs() > weight.abs().flatten().kthvalue(k).values


def test_magnitude_mask(stub, refused):
    assert check_magnitude_mask(magnitude_mask)
    assert check_magnitude_mask(magnitude_by_threshold)
    assert not check_magnitude_mask(stub)
    refused(check_magnitude_mask, lambda w, s: prune.magnitude_mask(w, s), "minilib.prune.magnitude_mask")
    refused(check_magnitude_mask, lambda w, s: magnitude_mask(w, s).float(), "dtype bool", "float32")
    refused(check_magnitude_mask, lambda w, s: ~magnitude_mask(w, 1 - s), "sparsity 0.5")       # keeps the smallest
    refused(check_magnitude_mask, lambda w, s: w > w.flatten().kthvalue(max(1, round(s * w.numel()))).values,
            "absolute value")                                                                   # signed

    def by_torch(weight, sparsity):  # PyTorch's own L1 pruning, reached through its class
        from torch.nn.utils import prune as torch_prune
        return torch_prune.L1Unstructured(sparsity).compute_mask(weight, torch.ones_like(weight)).bool()

    refused(check_magnitude_mask, by_torch, "torch.nn.utils.prune")


def test_cubic_sparsity(stub, refused):
    assert check_cubic_sparsity(lambda t, n, s: s * (1 - (1 - t / n) ** 3))
    assert check_cubic_sparsity(lambda t, n, s: torch.tensor(s - s * (1 - t / n) ** 3))  # a 0-d tensor
    assert not check_cubic_sparsity(stub)
    refused(check_cubic_sparsity, lambda t, n, s: prune.cubic_sparsity(t, n, s), "minilib.prune.cubic_sparsity")
    refused(check_cubic_sparsity, lambda t, n, s: s * t / n, "step 5 of 10")  # linear schedule
    refused(check_cubic_sparsity, lambda t, n, s: s * (t / n) ** 3, "step 5 of 10")  # slow first, fast at the end


def two_four_mask(weight):                                                 # the chapter's model answer
    groups = weight.abs().view(weight.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return keep.view_as(weight)


def two_four_by_rank(weight):                                              # each entry's rank in its group
    groups = weight.abs().unflatten(-1, (-1, 4))
    rank = groups.argsort(dim=-1, descending=True).argsort(dim=-1)
    return (rank < 2).flatten(-2)


def test_two_four_mask(stub, refused):
    assert check_two_four_mask(two_four_mask)
    assert check_two_four_mask(two_four_by_rank)
    assert not check_two_four_mask(stub)
    refused(check_two_four_mask, lambda w: prune.nm_mask(w), "minilib.prune.nm_mask")
    refused(check_two_four_mask, lambda w: magnitude_mask(w, 0.5), "groups are 4 consecutive")  # 50 % sparse, not 2 of 4
    refused(check_two_four_mask, lambda w: torch.zeros_like(w, dtype=torch.bool).view(w.shape[0], -1, 4).scatter_(
        -1, w.view(w.shape[0], -1, 4).topk(2, dim=-1).indices, True).view_as(w), "compare absolute values")  # signed


def test_head_columns(stub, refused):
    assert check_head_columns(lambda heads, d: (heads[:, None] * d + torch.arange(d)).flatten())
    assert check_head_columns(lambda heads, d: [h * d + i for h in heads.tolist() for i in range(d)])  # a list
    assert check_head_columns(lambda heads, d: torch.cat([torch.arange(h * d, (h + 1) * d) for h in heads]))
    assert not check_head_columns(stub)
    refused(check_head_columns, lambda heads, d: prune.head_columns(heads, d), "minilib.prune.head_columns")
    refused(check_head_columns, lambda heads, d: (heads[:, None] + torch.arange(d)).flatten(), "kept heads [0, 2]")
    refused(check_head_columns, lambda heads, d: (heads[:, None] * d + torch.arange(d)).T.flatten(), "in the order")
    refused(check_head_columns, lambda heads, d: (heads[:, None] * d + torch.arange(d)).flatten().float(),
            "integer indices")


def new_linear(weight, bias):  # an nn.Linear holding copies of weight (out, in) and bias (out,)
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def remove_heads_answer(attention, heads, head_index_as_column=False, out_bias=True):
    """The model answer of Exercise 8.6, with switches for the mistakes the check must catch."""
    kept = [h for h in range(attention.n_heads) if h not in heads]
    d_h = attention.head_dim
    if head_index_as_column:
        index = torch.tensor(kept)
    else:
        index = torch.cat([torch.arange(h * d_h, (h + 1) * d_h) for h in kept])
    for name in ("q_proj", "k_proj", "v_proj"):
        old = getattr(attention, name)
        setattr(attention, name, new_linear(old.weight[index], old.bias[index]))
    out = attention.out_proj
    attention.out_proj = new_linear(out.weight[:, index], out.bias if out_bias else None)
    attention.n_heads = len(kept)
    return attention


def remove_heads_in_place(attention, heads):
    """Another correct answer: index_select into new Parameters of the existing Linear modules."""
    d_h = attention.head_dim
    keep = torch.tensor([f for f in range(attention.n_heads * d_h) if f // d_h not in heads])
    with torch.no_grad():
        for linear in (attention.q_proj, attention.k_proj, attention.v_proj):
            linear.weight = torch.nn.Parameter(linear.weight.index_select(0, keep))
            linear.bias = torch.nn.Parameter(linear.bias.index_select(0, keep))
            linear.out_features = len(keep)
        attention.out_proj.weight = torch.nn.Parameter(attention.out_proj.weight.index_select(1, keep))
        attention.out_proj.in_features = len(keep)
    attention.n_heads -= len(heads)
    return attention


def test_remove_heads(stub, refused):
    assert check_remove_heads(remove_heads_answer)
    assert check_remove_heads(remove_heads_in_place)
    assert not check_remove_heads(stub)
    refused(check_remove_heads, lambda a, h: remove_heads_answer(a, h, head_index_as_column=True), "n_heads")
    refused(check_remove_heads, lambda a, h: remove_heads_answer(a, h, out_bias=False), "W_o's bias")
    refused(check_remove_heads, lambda a, h: None, "return the layer", "None")

    def library(attention, heads):
        from minilib.prune import head_columns, linear_from
        index = head_columns(torch.tensor([h for h in range(attention.n_heads) if h not in heads]), attention.head_dim)
        attention.q_proj = linear_from(attention.q_proj.weight[index], attention.q_proj.bias[index])
        return attention

    refused(check_remove_heads, library, "minilib.prune")

    def private_helper(attention, heads):  # the library's private slicing helpers
        keep = torch.tensor([f for f in range(attention.n_heads * attention.head_dim)
                             if f // attention.head_dim not in heads])
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(attention, name, prune._keep_rows(getattr(attention, name), keep))
        attention.out_proj = prune._keep_columns(attention.out_proj, keep)
        attention.n_heads -= len(heads)
        return attention

    refused(check_remove_heads, private_helper, "minilib.prune")

    def hugging_face(attention, heads):  # Hugging Face's helper for the same slicing
        from transformers.pytorch_utils import prune_linear_layer
        index = torch.tensor([f for f in range(attention.n_heads * attention.head_dim)
                              if f // attention.head_dim not in heads])
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(attention, name, prune_linear_layer(getattr(attention, name), index))
        attention.out_proj = prune_linear_layer(attention.out_proj, index, dim=1)
        attention.n_heads -= len(heads)
        return attention

    refused(check_remove_heads, hugging_face, "transformers")
