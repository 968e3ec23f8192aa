"""Checks for chapter 08 (pruning).

The chapter's "build it" check: removing heads from a layer equals masking them.
"""
import torch
import torch.nn.utils.prune as torch_prune

import minilib.prune as prune
from minilib.course.checks.core import CheckFailed, exercise, expect_close, expect_equal
from minilib.course.checks.guards import forbidden_calls


def _expect_mask(what, got, expected, hint):
    if not isinstance(got, torch.Tensor) or got.dtype != torch.bool:
        raise CheckFailed(what, "a bool tensor (True = keep)", f"{type(got).__name__} "
                          f"{getattr(got, 'dtype', '')}".strip(), hint)
    expect_close(what, got.int(), expected.int(), atol=0, rtol=0, hint=hint)


@exercise(points=2)
def check_magnitude_mask(fn):
    """Keep-mask zeroing exactly round(sparsity · n) smallest |w|: a hand case, then PyTorch's L1 pruning."""
    with forbidden_calls(fn, [(prune, "magnitude_mask"), (prune, "magnitude_masks"), (torch_prune, "l1_unstructured")],
                         "rank the magnitudes yourself: minilib.prune.magnitude_mask is the answer"):
        weight = torch.tensor([[0.5, -3.0, 0.1], [-0.2, 2.0, 1.0]])
        _expect_mask("sparsity 0.5 on [[0.5, -3, 0.1], [-0.2, 2, 1]]", fn(weight, 0.5),
                     torch.tensor([[False, True, False], [False, True, True]]),
                     hint="rank by absolute value: -3 is large, -0.2 is small; prune the 3 smallest")
        _expect_mask("sparsity 0 keeps everything", fn(weight, 0.0), torch.ones(2, 3, dtype=torch.bool),
                     hint="prune round(sparsity × number of weights) weights, here none")
        generator = torch.Generator().manual_seed(8)
        weight = torch.randn(16, 24, generator=generator)
        for sparsity in (0.3, 0.9):
            expected = torch_prune.L1Unstructured(amount=sparsity).compute_mask(weight, torch.ones_like(weight)).bool()
            _expect_mask(f"random 16 × 24 weight at sparsity {sparsity} (reference: torch.nn.utils.prune)",
                         fn(weight, sparsity), expected,
                         hint="the mask has the weight's shape; exactly round(sparsity × numel) entries are False")


@exercise(points=1)
def check_cubic_sparsity(fn):
    """Zhu & Gupta's schedule s_t = s_f (1 − (1 − t/n)³) with s_i = 0, at the ends and in between."""
    with forbidden_calls(fn, [(prune, "cubic_sparsity")],
                         "write the schedule yourself: minilib.prune.cubic_sparsity is the answer"):
        for step, expected in [(0, 0.0), (10, 0.9), (5, 0.9 * (1 - 0.5 ** 3)), (2, 0.9 * (1 - 0.8 ** 3))]:
            got = fn(step, 10, 0.9)
            expect_close(f"step {step} of 10 towards sparsity 0.9", torch.tensor(float(got)), torch.tensor(expected),
                         hint="s_t = s_f + (s_i − s_f)(1 − t/n)³ with s_i = 0; t/n is the fraction of steps done")


@exercise(points=2)
def check_two_four_mask(fn):
    """2:4 keep-mask: the two largest |w| of every group of four consecutive inputs."""
    with forbidden_calls(fn, [(prune, "nm_mask"), (prune, "nm_masks")],
                         "keep the two largest of every four yourself: minilib.prune.nm_mask is the answer"):
        weight = torch.tensor([[0.1, -4.0, 3.0, 0.2, 5.0, 6.0, -7.0, 8.0]])
        _expect_mask("one row [0.1, -4, 3, 0.2 | 5, 6, -7, 8]", fn(weight),
                     torch.tensor([[False, True, True, False, False, False, True, True]]),
                     hint="groups are 4 consecutive entries of a row; compare absolute values (-4 beats 3? |−4| = 4 > 3)")
        generator = torch.Generator().manual_seed(24)
        weight = torch.randn(6, 16, generator=generator)
        mask = fn(weight)
        groups = weight.abs().view(6, 4, 4)
        expected = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, dim=-1).indices, True)
        _expect_mask("random 6 × 16 weight", mask, expected.view(6, 16),
                     hint="reshape to (rows, groups, 4), keep the top 2 of each group, reshape back")


@exercise(points=2)
def check_head_columns(fn):
    """Which features of a (…, heads·head_dim) tensor belong to the kept heads."""
    with forbidden_calls(fn, [(prune, "head_columns")],
                         "compute the column indices yourself: minilib.prune.head_columns is the answer"):
        expect_equal("kept heads [0, 2], head_dim 2", fn(torch.tensor([0, 2]), 2).tolist(), [0, 1, 4, 5])
        expect_equal("kept heads [1], head_dim 3", fn(torch.tensor([1]), 3).tolist(), [3, 4, 5],
                     hint="head h owns features h·d_h … h·d_h + d_h − 1")
        expect_equal("kept heads [3, 5, 11], head_dim 32 (MiniLM)", fn(torch.tensor([3, 5, 11]), 32).tolist(),
                     list(range(96, 128)) + list(range(160, 192)) + list(range(352, 384)),
                     hint="keep the heads in the order given, each head's features in increasing order")


# --- the "build it" exercise ------------------------------------------------------------

@exercise(points=4)
def check_remove_heads(fn):
    """Removing heads shrinks Q, K, V and the output projection, and equals masking those heads."""
    import minilib.prune as prune
    from minilib.attention import MultiHeadAttention
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(2, 9, 256, generator=generator)
    padding = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    padding[1, ..., 6:] = False  # the second sentence: 6 tokens and 3 pads
    targets = [(prune, "prune_heads"), (prune, "head_columns"), (prune, "_keep_rows"), (prune, "_keep_columns")]
    for removed in ([1, 3], [0]):
        torch.manual_seed(8)
        layer = MultiHeadAttention(256, 4).eval()  # 4 heads of 64
        with torch.no_grad():
            for linear in (layer.q_proj, layer.k_proj, layer.v_proj, layer.out_proj):
                linear.bias.normal_(0, 0.1, generator=generator)
            mask = torch.ones(4)
            mask[removed] = 0.0
            expected = layer(x, attn_mask=padding, head_mask=mask)[0]
            with forbidden_calls(fn, targets, "slice the projections yourself: this is what minilib.prune.prune_heads does"):
                pruned = fn(layer, removed)
            kept = 4 - len(removed)
            expect_equal(f"after removing heads {removed}: (n_heads, q_proj.weight shape, k_proj.weight shape, "
                         f"v_proj.weight shape, out_proj.weight shape)",
                         (pruned.n_heads, *(tuple(pruned.get_submodule(name).weight.shape)
                                            for name in ("q_proj", "k_proj", "v_proj", "out_proj"))),
                         (kept, (64 * kept, 256), (64 * kept, 256), (64 * kept, 256), (256, 64 * kept)),
                         hint="head h owns rows h·64 … h·64 + 63 of W_q, W_k, W_v (and of their biases) and the same "
                              "columns of W_o; update n_heads")
            got = pruned(x, attn_mask=padding)[0]
        expect_close(f"output after removing heads {removed}, against the original layer with those heads masked",
                     got, expected, atol=1e-5,
                     hint="keep W_o's bias whole (it is added once, after the heads are summed) and keep the kept "
                          "heads' rows of the q, k, v biases")
