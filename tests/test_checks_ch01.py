"""Chapter 01's exercise checks pass correct answers however they are written, and fail stubs, mistakes and
counts taken from a built layer."""
import torch

from minilib.course.checks import check_attention_matmul_flops, check_crossover_length, check_encoder_layer_params
from minilib.support.bench import attention_flops, param_count
from minilib.transformer import EncoderLayer, TransformerConfig


def layer_params(d, d_ff):
    return 4 * (d * d + d) + (d * d_ff + d_ff) + (d_ff * d + d) + 2 * 2 * d


def layer_params_by_parts(d_model, d_ff):  # another correct way: a table of (weight, bias) shapes
    shapes = [(d_model, d_model)] * 4 + [(d_ff, d_model), (d_model, d_ff)]
    linears = sum(rows * cols + rows for rows, cols in shapes)
    return linears + 2 * (d_model + d_model)


def test_encoder_layer_params(stub, refused):
    assert check_encoder_layer_params(layer_params)
    assert check_encoder_layer_params(layer_params_by_parts)
    assert not check_encoder_layer_params(stub)
    refused(check_encoder_layer_params, lambda d, d_ff: 4 * d * d + 2 * d * d_ff, "encoder_layer_params(d_model=8")
    refused(check_encoder_layer_params,   # counts the library's layer instead of deriving the count
            lambda d, d_ff: param_count(EncoderLayer(TransformerConfig(vocab_size=10, d_model=d, n_heads=1, d_ff=d_ff))),
            "minilib.support.bench.param_count")
    refused(check_encoder_layer_params,   # PyTorch's own layer, counted: a layer built is refused by any route
            lambda d, d_ff: sum(p.numel() for p in torch.nn.TransformerEncoderLayer(d, 1, d_ff).parameters()),
            "built a tensor")
    refused(check_encoder_layer_params, lambda d, d_ff: (layer_params(d, d_ff), "parameters"), "a number", "tuple")


def test_attention_matmul_flops(stub, refused):
    assert check_attention_matmul_flops(lambda n, d: 4 * n * n * d)
    assert check_attention_matmul_flops(lambda seq, d_model: 2 * (2 * seq * d_model * seq))
    assert not check_attention_matmul_flops(stub)
    refused(check_attention_matmul_flops, lambda n, d: 2 * n * n * d, "attention_matmul_flops(seq=4")  # only QKᵀ
    refused(check_attention_matmul_flops, lambda n, d: attention_flops(1, 1, n, d), "attention_flops")

    def measured(seq, d_model):  # runs attention under PyTorch's FLOP counter
        from torch.utils.flop_counter import FlopCounterMode
        q = torch.randn(1, 1, seq, d_model)
        with FlopCounterMode(display=False) as counter:
            torch.softmax(q @ q.transpose(-1, -2), -1) @ q
        return counter.get_total_flops()

    refused(check_attention_matmul_flops, measured, "torch.utils.flop_counter")


def test_crossover_length(stub, refused):
    assert check_crossover_length(lambda d, d_ff: 2 * d + d_ff)
    assert check_crossover_length(lambda d_model, d_ff: (8 * d_model ** 2 + 4 * d_model * d_ff) // (4 * d_model))
    assert not check_crossover_length(stub)
    refused(check_crossover_length, lambda d, d_ff: d_ff, "crossover_length(d_model=384")  # forgets the projections
