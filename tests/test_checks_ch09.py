"""Chapter 09's exercise checks pass the reference answers and fail stubs and plausible mistakes."""
import torch
import torch.nn.functional as F

from minilib.arch import GroupedFeedForward, channel_shuffle
from minilib.course.checks import check_albert_savings, check_grouped_ffn, check_grouped_ffn_params, check_shuffle
from minilib.support.bench import param_count


def test_grouped_ffn_params(stub):
    assert check_grouped_ffn_params(lambda d, f, g: 2 * d * f // g + f + d)
    assert not check_grouped_ffn_params(stub)
    assert not check_grouped_ffn_params(lambda d, f, g: 2 * d * f // g)                    # forgot the biases
    assert not check_grouped_ffn_params(lambda d, f, g: 2 * d * f // g ** 2 + f + d)       # divided twice
    assert not check_grouped_ffn_params(lambda d, f, g: param_count(GroupedFeedForward(d, f, g)))   # counts the library's


def shuffle(x, groups):
    *lead, channels = x.shape
    return x.reshape(*lead, groups, channels // groups).transpose(-1, -2).reshape(*lead, channels)


def test_shuffle(stub):
    assert check_shuffle(shuffle)
    assert not check_shuffle(stub)
    assert not check_shuffle(lambda x, g: channel_shuffle(x, g))                          # the library's own shuffle
    assert not check_shuffle(lambda x, g: x)                                              # no shuffle
    assert not check_shuffle(lambda x, g: x.reshape(*x.shape[:-1], x.shape[-1] // g, g).transpose(-1, -2)
                             .reshape(x.shape))                                          # (c, g) grid: the inverse


def test_albert_savings(stub):
    assert check_albert_savings(lambda n, p, v, d, e: (n - 1) * p + v * d - (v * e + e * d))
    assert not check_albert_savings(stub)
    assert not check_albert_savings(lambda n, p, v, d, e: n * p + v * d - (v * e + e * d))   # keeps no layer
    assert not check_albert_savings(lambda n, p, v, d, e: (n - 1) * p + v * d - v * e)       # forgot e·d


class GroupedFFN(torch.nn.Module):
    """The model answer of Exercise 9.5, with switches for the mistakes and shortcuts the check must catch."""

    def __init__(self, d_model, d_ff, groups, shuffle="right", dense=False, library=False):
        super().__init__()
        self.groups = groups
        self.up_weight = torch.nn.Parameter(torch.randn(groups, d_model // groups, d_ff // groups))
        self.up_bias = torch.nn.Parameter(torch.zeros(d_ff))
        self.down_weight = torch.nn.Parameter(torch.randn(groups, d_ff // groups, d_model // groups))
        self.down_bias = torch.nn.Parameter(torch.zeros(d_model))
        self.shuffle, self.dense, self.library = shuffle, dense, library

    def grouped(self, t, weight, bias):
        if self.dense:  # the block-diagonal matrix, zeros included
            return t @ torch.block_diag(*weight) + bias
        slices = t.reshape(*t.shape[:-1], self.groups, -1)
        return torch.einsum("...gi,gio->...go", slices, weight).flatten(-2) + bias

    def forward(self, x):
        hidden = F.gelu(self.grouped(x, self.up_weight, self.up_bias))
        *lead, d_ff = hidden.shape
        if self.library:
            from minilib.arch import channel_shuffle
            hidden = channel_shuffle(hidden, self.groups)
        elif self.shuffle == "right":
            hidden = hidden.reshape(*lead, self.groups, d_ff // self.groups).transpose(-1, -2).reshape(*lead, d_ff)
        elif self.shuffle == "transposed":  # a (c, groups) grid instead of (groups, c)
            hidden = hidden.reshape(*lead, d_ff // self.groups, self.groups).transpose(-1, -2).reshape(*lead, d_ff)
        return self.grouped(hidden, self.down_weight, self.down_bias)


def grouped_variant(**mistake):
    return lambda d_model, d_ff, groups: GroupedFFN(d_model, d_ff, groups, **mistake)


class StubGroupedFFN(GroupedFFN):
    def forward(self, x):
        raise NotImplementedError


def test_grouped_ffn():
    assert check_grouped_ffn(GroupedFFN)
    assert not check_grouped_ffn(StubGroupedFFN)
    assert not check_grouped_ffn(grouped_variant(library=True))
    assert not check_grouped_ffn(grouped_variant(dense=True))
    assert not check_grouped_ffn(grouped_variant(shuffle="none"))
    assert not check_grouped_ffn(grouped_variant(shuffle="transposed"))
