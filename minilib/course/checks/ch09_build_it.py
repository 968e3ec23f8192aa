"""Chapter 09's "build it" check: a grouped FFN with a channel shuffle, without a dense block-diagonal weight."""
import torch

from minilib.course.checks.core import exercise, expect_close, expect_equal
from minilib.course.checks.guards import TorchOps, expect_tensors_under, forbidden_calls


@exercise(points=4)
def check_grouped_ffn(cls):
    """Your grouped FFN, given minilib.arch.GroupedFeedForward's weights, returns its output, computing only the blocks."""
    import minilib.arch as arch
    generator = torch.Generator().manual_seed(9)
    d_model, d_ff, groups = 128, 512, 4
    torch.manual_seed(9)
    reference = arch.GroupedFeedForward(d_model, d_ff, groups)
    with torch.no_grad():
        reference.up.bias.normal_(0, 0.1, generator=generator)
        reference.down.bias.normal_(0, 0.1, generator=generator)
    ffn = cls(d_model, d_ff, groups)
    expect_equal("parameters", sum(p.numel() for p in ffn.parameters()), sum(p.numel() for p in reference.parameters()),
                 hint="keep __init__ as given: groups blocks of (d_in/groups, d_out/groups) per matrix")
    with torch.no_grad():
        for ours, theirs in ((ffn.up_weight, reference.up.weight), (ffn.up_bias, reference.up.bias),
                             (ffn.down_weight, reference.down.weight), (ffn.down_bias, reference.down.bias)):
            ours.copy_(theirs)
    x = torch.randn(2, 5, d_model, generator=generator)
    with torch.no_grad():
        expected = reference(x)
    targets = [(arch, "GroupedFeedForward"), (arch, "GroupedLinear"), (arch, "channel_shuffle")]
    with forbidden_calls(cls, targets, "write the grouped products and the shuffle yourself (your shuffle of "
                                       "exercise 9.2 is your own code: reuse it)"), TorchOps() as ops, torch.no_grad():
        got = ffn(x)
    expect_tensors_under(ops, d_model * d_ff, "your forward",
                         f"no tensor as large as a dense {d_model}×{d_ff} weight ({d_model * d_ff:,} numbers)",
                         hint="a block-diagonal dense matrix multiplies its zeros too: the point of "
                              "groups is 1/groups of the FLOPs; multiply each group's block by its "
                              "slice of the input (one einsum or a batched matmul)")
    expect_close(f"x (2, 5, {d_model}), {groups} groups, against minilib.arch.GroupedFeedForward", got, expected,
                 atol=1e-5, hint="group g of the input (features g·d_in/groups …) goes through block g; gelu, then "
                                 "shuffle the d_ff channels across the groups, then the grouped down projection")
