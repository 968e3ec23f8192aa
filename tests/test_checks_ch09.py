"""Chapter 09's exercise checks pass the reference answers and fail stubs and plausible mistakes."""
from minilib.arch import GroupedFeedForward, channel_shuffle
from minilib.bench import param_count
from minilib.course.checks import check_albert_savings, check_grouped_ffn_params, check_shuffle


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
