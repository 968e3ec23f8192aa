"""Checks for chapter 08 (pruning).

The chapter's "build it" check: removing heads from a layer equals masking them.
"""
import torch
import torch.nn.utils.prune as torch_prune

import minilib.prune as prune
from minilib.course.checks.core import CheckFailed, describe_value, exercise, expect_close, expect_equal, expect_number
from minilib.course.checks.guards import COURSE, guarded

_PRUNING = [prune, COURSE, torch_prune, "transformers"]


def _expect_mask(what, got, expected, hint):
    expect_close(what, got, expected, atol=0, rtol=0, dtype=torch.bool, hint=hint)


@exercise(points=2)
def check_magnitude_mask(fn):
    """Keep-mask zeroing exactly round(sparsity · n) smallest |w|: a hand case, then PyTorch's L1 pruning."""
    weight = torch.tensor([[0.5, -3.0, 0.1], [-0.2, 2.0, 1.0]])
    random = torch.randn(16, 24, generator=torch.Generator().manual_seed(8))
    expected = {sparsity: torch_prune.L1Unstructured(amount=sparsity).compute_mask(random, torch.ones_like(random)).bool()
                for sparsity in (0.3, 0.9)}
    with guarded(fn, _PRUNING, "rank the magnitudes yourself: minilib.prune.magnitude_mask (and torch.nn.utils.prune) "
                               "is the answer"):
        hand, none = fn(weight.clone(), 0.5), fn(weight.clone(), 0.0)
        got = {sparsity: fn(random.clone(), sparsity) for sparsity in expected}
    _expect_mask("sparsity 0.5 on [[0.5, -3, 0.1], [-0.2, 2, 1]]", hand,
                 torch.tensor([[False, True, False], [False, True, True]]),
                 hint="rank by absolute value: -3 is large, -0.2 is small; prune the 3 smallest")
    _expect_mask("sparsity 0 keeps everything", none, torch.ones(2, 3, dtype=torch.bool),
                 hint="prune round(sparsity × number of weights) weights, here none")
    for sparsity, mask in got.items():
        _expect_mask(f"random 16 × 24 weight at sparsity {sparsity} (reference: torch.nn.utils.prune)", mask,
                     expected[sparsity],
                     hint="the mask has the weight's shape; exactly round(sparsity × numel) entries are False")


@exercise(points=1)
def check_cubic_sparsity(fn):
    """Zhu & Gupta's schedule s_t = s_f (1 − (1 − t/n)³) with s_i = 0, at the ends and in between."""
    cases = [(0, 0.0), (10, 0.9), (5, 0.9 * (1 - 0.5 ** 3)), (2, 0.9 * (1 - 0.8 ** 3))]
    with guarded(fn, _PRUNING, "write the schedule yourself: minilib.prune.cubic_sparsity is the answer"):
        got = [fn(step, 10, 0.9) for step, _ in cases]
    for (step, expected), answer in zip(cases, got):
        expect_number(f"step {step} of 10 towards sparsity 0.9", answer, expected, abs_=1e-6,
                      hint="s_t = s_f + (s_i − s_f)(1 − t/n)³ with s_i = 0; t/n is the fraction of steps done")


@exercise(points=2)
def check_two_four_mask(fn):
    """2:4 keep-mask: the two largest |w| of every group of four consecutive inputs."""
    weight = torch.tensor([[0.1, -4.0, 3.0, 0.2, 5.0, 6.0, -7.0, 8.0]])
    random = torch.randn(6, 16, generator=torch.Generator().manual_seed(24))
    groups = random.abs().view(6, 4, 4)
    expected = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, dim=-1).indices, True)
    with guarded(fn, _PRUNING, "keep the two largest of every four yourself: minilib.prune.nm_mask is the answer"):
        hand, got = fn(weight.clone()), fn(random.clone())
    _expect_mask("one row [0.1, -4, 3, 0.2 | 5, 6, -7, 8]", hand,
                 torch.tensor([[False, True, True, False, False, False, True, True]]),
                 hint="groups are 4 consecutive entries of a row; compare absolute values (|−4| = 4 > 3)")
    _expect_mask("random 6 × 16 weight", got, expected.view(6, 16),
                 hint="reshape to (rows, groups, 4), keep the top 2 of each group, reshape back")


@exercise(points=2)
def check_head_columns(fn):
    """Which features of a (…, heads·head_dim) tensor belong to the kept heads."""
    order = "keep the heads in the order given, each head's features in increasing order"
    cases = [((0, 2), 2, [0, 1, 4, 5], f"head h owns features h·d_h … h·d_h + d_h − 1; {order}"),
             ((1,), 3, [3, 4, 5], "head h owns features h·d_h … h·d_h + d_h − 1"),
             ((3, 5, 11), 32, list(range(96, 128)) + list(range(160, 192)) + list(range(352, 384)),
              order)]
    with guarded(fn, _PRUNING, "compute the column indices yourself: minilib.prune.head_columns is the answer"):
        got = [fn(torch.tensor(heads), head_dim) for heads, head_dim, _, _ in cases]
    for (heads, head_dim, expected, hint), answer in zip(cases, got):
        what = f"kept heads {list(heads)}, head_dim {head_dim}"
        if isinstance(answer, torch.Tensor) and not answer.is_floating_point():
            answer = answer.tolist()
        if not (isinstance(answer, (list, tuple)) and all(isinstance(i, int) for i in answer)):
            raise CheckFailed(f"{what}: return the indices", "a tensor (or list) of integer indices",
                              describe_value(answer), "return (k · head_dim,) long indices: they index rows of W")
        expect_equal(what, list(answer), expected, hint=hint)


# --- the "build it" exercise ------------------------------------------------------------

@exercise(points=4)
def check_remove_heads(fn):
    """Removing heads shrinks Q, K, V and the output projection, and equals masking those heads."""
    from minilib.attention import MultiHeadAttention
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(2, 9, 256, generator=generator)
    padding = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    padding[1, ..., 6:] = False  # the second sentence: 6 tokens and 3 pads
    for removed in ([1, 3], [0]):
        torch.manual_seed(8)
        layer = MultiHeadAttention(256, 4).eval()  # 4 heads of 64
        with torch.no_grad():
            for linear in (layer.q_proj, layer.k_proj, layer.v_proj, layer.out_proj):
                linear.bias.normal_(0, 0.1, generator=generator)
            mask = torch.ones(4)
            mask[removed] = 0.0
            expected = layer(x, attn_mask=padding, head_mask=mask)[0]
            with guarded(fn, _PRUNING, "slice the projections yourself: this is what minilib.prune.prune_heads does "
                                       "(and Hugging Face's prune_linear_layer)"):
                pruned = fn(layer, list(removed))
            if not isinstance(pruned, MultiHeadAttention):
                raise CheckFailed(f"remove_heads(layer, {removed}): return the layer", "the layer, its heads removed",
                                  describe_value(pruned), "change the layer in place, then `return attention`")
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
