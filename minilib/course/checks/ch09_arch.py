"""Checks for chapter 09 (lighter architectures)."""
import torch

import minilib.arch as arch
from minilib.arch import GroupedFeedForward, channel_shuffle
from minilib.course.checks.guards import forbidden_calls
from minilib.bench import param_count
from minilib.course.checks.core import CheckFailed, exercise, expect_close, expect_equal


@exercise(points=2)
def check_grouped_ffn_params(fn):
    """Parameters of a grouped FFN, against param_count of minilib.arch's real GroupedFeedForward."""
    hint = "write the count as a formula: building minilib.arch's grouped layers and counting them is the reference"
    for d, d_ff, groups in [(8, 16, 2), (128, 512, 4), (384, 1536, 1)]:
        with forbidden_calls(fn, [(arch, "GroupedFeedForward"), (arch, "GroupedLinear")], hint):
            got = fn(d, d_ff, groups)
        expect_equal(f"grouped_ffn_params({d}, {d_ff}, groups={groups}) (counted on a real module)",
                     got, param_count(GroupedFeedForward(d, d_ff, groups)),
                     hint="each of the two grouped matrices keeps d·d_ff / groups weights; "
                          "the biases (d_ff and d) are not grouped")


@exercise(points=2)
def check_shuffle(fn):
    """Channel shuffle on [0..7] with 2 and 4 groups, then on a batch against minilib.arch.channel_shuffle."""
    x = torch.arange(8.0)
    batch = torch.randn(2, 3, 12, generator=torch.Generator().manual_seed(9))
    with forbidden_calls(fn, [(arch, "channel_shuffle")], "write the reshape and transpose yourself: "
                                                          "minilib.arch.channel_shuffle is the answer it is checked against"):
        got = fn(x, 2), fn(x, 4), fn(batch, 3)
    expect_close("shuffle([0..7], groups=2)", got[0], torch.tensor([0., 4, 1, 5, 2, 6, 3, 7]),
                 hint="view as (groups, c) = [[0 1 2 3], [4 5 6 7]], transpose, flatten")
    expect_close("shuffle([0..7], groups=4)", got[1], torch.tensor([0., 2, 4, 6, 1, 3, 5, 7]),
                 hint="4 groups of 2: [[0 1], [2 3], [4 5], [6 7]] transposed is [[0 2 4 6], [1 3 5 7]]")
    expect_close("a (2, 3, 12) batch with 3 groups (only the last dimension moves)", got[2],
                 channel_shuffle(batch, 3), hint="reshape only the last dimension: x.reshape(*lead, groups, c)")


@exercise(points=2)
def check_albert_savings(fn):
    """Parameters saved by sharing layers and factorising embeddings, on MiniLM-like and hand-sized cases."""
    cases = [((2, 10, 5, 4, 2), 10 + 20 - 18), ((12, 7_087_872, 30_000, 768, 128), 11 * 7_087_872 + 30_000 * 768 - (30_000 * 128 + 128 * 768))]
    for args, expected in cases:
        expect_equal(f"albert_savings{args}", fn(*args), expected,
                     hint="layers: n_layers copies become 1, so (n_layers − 1)·layer_params are saved; "
                          "embeddings: vocab·d − (vocab·e + e·d)")
    if fn(1, 10, 5, 4, 4) != 5 * 4 - (5 * 4 + 16):
        raise CheckFailed("albert_savings(1, 10, 5, 4, 4): one layer, e = d", 5 * 4 - (5 * 4 + 16), fn(1, 10, 5, 4, 4),
                          "with e = d the factorisation costs e·d extra: the saving can be negative")
