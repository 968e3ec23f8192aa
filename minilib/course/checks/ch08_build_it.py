"""Chapter 08's "build it" check: removing heads from a layer equals masking them."""
import torch

from minilib.course.checks.core import exercise, expect_close, expect_equal
from minilib.course.checks.guards import forbidden_calls


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
