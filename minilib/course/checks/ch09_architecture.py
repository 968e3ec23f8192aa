"""Checks for chapter 09 (lighter architectures).

The chapter's "build it" check: a grouped FFN with a channel shuffle, without a dense block-diagonal weight and
without the dense product's work.
"""
import torch

import minilib.arch as arch
from minilib.arch import GroupedFeedForward, channel_shuffle
from minilib.course.checks.core import exercise, expect_attribute, expect_close, expect_equal, expect_number
from minilib.course.checks.guards import COURSE, NUMPY, guarded
from minilib.support.bench import param_count

_ARCH = [arch, COURSE]


@exercise(points=2)
def check_grouped_ffn_params(fn):
    """Parameters of a grouped FFN, against param_count of minilib.arch's real GroupedFeedForward."""
    why = "write the count as a formula: building grouped layers and counting them is how this check gets the answer"
    for d, d_ff, groups in [(8, 16, 2), (128, 512, 4), (384, 1536, 1), (96, 384, 3)]:
        expected = param_count(GroupedFeedForward(d, d_ff, groups))
        with guarded(fn, _ARCH, why) as run:
            got = fn(d, d_ff, groups)
        run.expect_tensors_under(1_000, f"grouped_ffn_params({d}, {d_ff}, groups={groups})", why)
        expect_number(f"grouped_ffn_params({d}, {d_ff}, groups={groups}) (counted on a real module)", got, expected,
                      hint="each of the two grouped matrices keeps d·d_ff / groups weights; the biases (d_ff and d) "
                           "are not grouped")


@exercise(points=2)
def check_shuffle(fn):
    """Channel shuffle on [0..7] with 2 and 4 groups, then on a batch against minilib.arch.channel_shuffle."""
    x = torch.arange(8.0)
    batch = torch.randn(2, 3, 12, generator=torch.Generator().manual_seed(9))
    expected = channel_shuffle(batch, 3)
    with guarded(fn, _ARCH, "write the reshape and transpose yourself: minilib.arch.channel_shuffle is the answer "
                            "it is checked against"):
        got = fn(x, 2), fn(x, 4), fn(batch.clone(), 3)
    expect_close("shuffle([0..7], groups=2)", got[0], torch.tensor([0., 4, 1, 5, 2, 6, 3, 7]),
                 hint="view as (groups, c) = [[0 1 2 3], [4 5 6 7]], transpose, flatten")
    expect_close("shuffle([0..7], groups=4)", got[1], torch.tensor([0., 2, 4, 6, 1, 3, 5, 7]),
                 hint="4 groups of 2: [[0 1], [2 3], [4 5], [6 7]] transposed is [[0 2 4 6], [1 3 5 7]]")
    expect_close("a (2, 3, 12) batch with 3 groups (only the last dimension moves)", got[2], expected,
                 hint="reshape only the last dimension: x.reshape(*lead, groups, c)")


@exercise(points=2)
def check_albert_savings(fn):
    """Parameters saved by sharing layers and factorising embeddings, on MiniLM-like and hand-sized cases."""
    cases = [((2, 10, 5, 4, 2), 10 + 20 - 18, ""),
             ((12, 7_087_872, 30_000, 768, 128), 11 * 7_087_872 + 30_000 * 768 - (30_000 * 128 + 128 * 768), ""),
             ((1, 10, 5, 4, 4), 5 * 4 - (5 * 4 + 16), "with e = d the factorisation costs e·d extra: the saving can "
                                                      "be negative")]
    with guarded(fn, _ARCH, "write the count as a formula"):
        got = [fn(*args) for args, _, _ in cases]
    for (args, expected, hint), answer in zip(cases, got):
        expect_number(f"albert_savings{args}", answer, expected,
                      hint=hint or "layers: n_layers copies become 1, so (n_layers − 1)·layer_params are saved; "
                                   "embeddings: vocab·d − (vocab·e + e·d)")


# --- the "build it" exercise ------------------------------------------------------------

@exercise(points=4)
def check_grouped_ffn(cls):
    """Your grouped FFN, given minilib.arch.GroupedFeedForward's weights, returns its output, computing only the blocks."""
    generator = torch.Generator().manual_seed(9)
    d_model, d_ff, groups = 128, 512, 4
    torch.manual_seed(9)
    reference = arch.GroupedFeedForward(d_model, d_ff, groups)
    with torch.no_grad():
        reference.up.bias.normal_(0, 0.1, generator=generator)
        reference.down.bias.normal_(0, 0.1, generator=generator)
    x = torch.randn(2, 5, d_model, generator=generator)
    with torch.no_grad():
        expected = reference(x)
    hint = "write the grouped products and the shuffle yourself (your shuffle of exercise 9.2 is your own code: reuse it)"
    with guarded(cls, [*_ARCH, NUMPY], hint) as run, torch.no_grad():
        ffn = run.build(d_model, d_ff, groups)
        expect_equal("parameters", sum(p.numel() for p in ffn.parameters()),
                     sum(p.numel() for p in reference.parameters()),
                     hint="keep __init__ as given: groups blocks of (d_in/groups, d_out/groups) per matrix")
        for name, theirs in (("up_weight", reference.up.weight), ("up_bias", reference.up.bias),
                             ("down_weight", reference.down.weight), ("down_bias", reference.down.bias)):
            expect_attribute("your module's layout", ffn, name, torch.Tensor).copy_(theirs)
        run.start_recording()
        got = ffn(x)
    who = f"your forward on x (2, 5, {d_model})"
    run.expect_tensors_under(d_model * d_ff, who,
                             f"that is as large as a dense {d_model}×{d_ff} weight: a block-diagonal dense matrix "
                             "multiplies its zeros too; multiply each group's block by its slice of the input")
    tokens = x[..., 0].numel()
    run.expect_work_under(tokens * d_model * d_ff, who,  # half the dense products' 2·tokens·d·d_ff; groups do 1/4
                          "that is at least half the dense products' work: the point of groups is 1/groups of the "
                          "FLOPs; multiply each group's block by its slice of the input (one einsum or a batched "
                          "matmul), never a block-diagonal matrix or zero-padded slices")
    expect_close(f"x (2, 5, {d_model}), {groups} groups, against minilib.arch.GroupedFeedForward", got, expected,
                 atol=1e-5, hint="group g of the input (features g·d_in/groups …) goes through block g; gelu, then "
                                 "shuffle the d_ff channels across the groups, then the grouped down projection")
