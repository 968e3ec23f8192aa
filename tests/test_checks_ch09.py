"""Chapter 09's exercise checks pass correct answers however they are written, and fail stubs, mistakes and
shortcuts (the library, a dense block-diagonal weight, dense work done in pieces)."""
import torch
import torch.nn.functional as F

from minilib.arch import GroupedFeedForward, channel_shuffle
from minilib.course.checks import check_albert_savings, check_grouped_ffn, check_grouped_ffn_params, check_shuffle
from minilib.support.bench import param_count


def test_grouped_ffn_params(stub, refused):
    assert check_grouped_ffn_params(lambda d, f, g: 2 * d * f // g + f + d)
    assert check_grouped_ffn_params(lambda d, f, g: g * (d // g) * (f // g) * 2 + (f + d))    # block by block
    assert not check_grouped_ffn_params(stub)
    refused(check_grouped_ffn_params, lambda d, f, g: 2 * d * f // g, "biases")                # forgot the biases
    refused(check_grouped_ffn_params, lambda d, f, g: 2 * d * f // g ** 2 + f + d, "groups=2")  # divided twice
    refused(check_grouped_ffn_params, lambda d, f, g: param_count(GroupedFeedForward(d, f, g)), "minilib")
    refused(check_grouped_ffn_params,                                                        # its own layers, counted
            lambda d, f, g: sum(p.numel() for p in torch.nn.Conv1d(d, f, 1, groups=g).parameters()) * 2 - f + d,
            "built a tensor")


def shuffle(x, groups):
    *lead, channels = x.shape
    return x.reshape(*lead, groups, channels // groups).transpose(-1, -2).reshape(*lead, channels)


def test_shuffle(stub, refused):
    assert check_shuffle(shuffle)
    assert check_shuffle(lambda x, g: x[..., torch.arange(x.shape[-1]).view(g, -1).T.flatten()])  # a permutation index
    assert check_shuffle(lambda x, g: torch.stack(x.chunk(g, dim=-1), dim=-1).flatten(-2))        # chunks interleaved
    assert not check_shuffle(stub)
    refused(check_shuffle, lambda x, g: channel_shuffle(x, g), "minilib.arch.channel_shuffle")
    refused(check_shuffle, lambda x, g: x, "shuffle([0..7], groups=2)")                           # no shuffle
    refused(check_shuffle, lambda x, g: x.reshape(*x.shape[:-1], x.shape[-1] // g, g).transpose(-1, -2)
            .reshape(x.shape), "transpose, flatten")                                              # the inverse


def test_albert_savings(stub, refused):
    assert check_albert_savings(lambda n, p, v, d, e: (n - 1) * p + v * d - (v * e + e * d))
    assert check_albert_savings(lambda n, p, v, d, e: (n * p + v * d) - (p + v * e + e * d))   # before minus after
    assert not check_albert_savings(stub)
    refused(check_albert_savings, lambda n, p, v, d, e: n * p + v * d - (v * e + e * d), "(n_layers − 1)")
    refused(check_albert_savings, lambda n, p, v, d, e: (n - 1) * p + v * d - v * e, "vocab·e + e·d")
    refused(check_albert_savings, lambda n, p, v, d, e: max(0, (n - 1) * p + v * d - (v * e + e * d)), "negative")


class GroupedFFN(torch.nn.Module):
    """The model answer of Exercise 9.5, with switches for the mistakes and shortcuts the check must catch."""

    def __init__(self, d_model, d_ff, groups, shuffle="right", dense=False):
        super().__init__()
        self.groups = groups
        self.up_weight = torch.nn.Parameter(torch.randn(groups, d_model // groups, d_ff // groups))
        self.up_bias = torch.nn.Parameter(torch.zeros(d_ff))
        self.down_weight = torch.nn.Parameter(torch.randn(groups, d_ff // groups, d_model // groups))
        self.down_bias = torch.nn.Parameter(torch.zeros(d_model))
        self.shuffle, self.dense = shuffle, dense

    def grouped(self, t, weight, bias):
        if self.dense:  # the block-diagonal matrix, zeros included
            return t @ torch.block_diag(*weight) + bias
        slices = t.reshape(*t.shape[:-1], self.groups, -1)
        return torch.einsum("...gi,gio->...go", slices, weight).flatten(-2) + bias

    def forward(self, x):
        hidden = F.gelu(self.grouped(x, self.up_weight, self.up_bias))
        *lead, d_ff = hidden.shape
        if self.shuffle == "right":
            hidden = hidden.reshape(*lead, self.groups, d_ff // self.groups).transpose(-1, -2).reshape(*lead, d_ff)
        elif self.shuffle == "transposed":  # a (c, groups) grid instead of (groups, c)
            hidden = hidden.reshape(*lead, d_ff // self.groups, self.groups).transpose(-1, -2).reshape(*lead, d_ff)
        return self.grouped(hidden, self.down_weight, self.down_bias)


class GroupLoopFFN(GroupedFFN):
    """Another correct answer: a loop over the groups, one matmul each, then cat; the learner's shuffle of 9.2."""

    def grouped(self, t, weight, bias):
        return torch.cat([part @ block for part, block in zip(t.chunk(self.groups, dim=-1), weight)], dim=-1) + bias

    def forward(self, x):
        hidden = F.gelu(self.grouped(x, self.up_weight, self.up_bias))
        return self.grouped(shuffle(hidden, self.groups), self.down_weight, self.down_bias)


class LibraryShuffleFFN(GroupedFFN):
    def forward(self, x):
        from minilib.arch import channel_shuffle
        hidden = channel_shuffle(F.gelu(self.grouped(x, self.up_weight, self.up_bias)), self.groups)
        return self.grouped(hidden, self.down_weight, self.down_bias)


class ZeroPaddedFFN(GroupLoopFFN):
    """A shortcut in pieces: each group's slice padded with zeros to the full width, times a full-height block."""

    def grouped(self, t, weight, bias):
        width = t.shape[-1] // self.groups
        outs = []
        for g, block in enumerate(weight):
            padded = torch.zeros_like(t)
            padded[..., g * width:(g + 1) * width] = t[..., g * width:(g + 1) * width]
            tall = torch.zeros(t.shape[-1], block.shape[1])
            tall[g * width:(g + 1) * width] = block
            outs.append(padded @ tall)
        return torch.cat(outs, dim=-1) + bias


def grouped_variant(**mistake):
    return lambda d_model, d_ff, groups: GroupedFFN(d_model, d_ff, groups, **mistake)


class StubGroupedFFN(GroupedFFN):
    def forward(self, x):
        raise NotImplementedError


def test_grouped_ffn(refused):
    assert check_grouped_ffn(GroupedFFN)
    assert check_grouped_ffn(GroupLoopFFN)
    assert not check_grouped_ffn(StubGroupedFFN)
    refused(check_grouped_ffn, LibraryShuffleFFN, "minilib.arch")
    refused(check_grouped_ffn, grouped_variant(dense=True), "built a tensor", "block-diagonal")
    refused(check_grouped_ffn, ZeroPaddedFFN, "operations", "dense products' work")
    refused(check_grouped_ffn, grouped_variant(shuffle="none"), "shuffle the d_ff channels")
    refused(check_grouped_ffn, grouped_variant(shuffle="transposed"), "shuffle the d_ff channels")
