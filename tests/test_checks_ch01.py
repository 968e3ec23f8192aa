"""Chapter 01's exercise checks pass the reference answers and fail stubs and plausible mistakes."""
from minilib.course.checks import check_attention_matmul_flops, check_crossover_length, check_encoder_layer_params
from minilib.support.bench import attention_flops, param_count
from minilib.transformer import EncoderLayer, TransformerConfig


def test_encoder_layer_params(stub):
    assert check_encoder_layer_params(lambda d, d_ff: 4 * (d * d + d) + (d * d_ff + d_ff) + (d_ff * d + d) + 2 * 2 * d)
    assert not check_encoder_layer_params(stub)
    assert not check_encoder_layer_params(lambda d, d_ff: 4 * d * d + 2 * d * d_ff)  # forgets biases and norms
    assert not check_encoder_layer_params(   # counts the library's layer instead of deriving the count
        lambda d, d_ff: param_count(EncoderLayer(TransformerConfig(vocab_size=10, d_model=d, n_heads=1, d_ff=d_ff))))


def test_attention_matmul_flops(stub):
    assert check_attention_matmul_flops(lambda n, d: 4 * n * n * d)
    assert not check_attention_matmul_flops(stub)
    assert not check_attention_matmul_flops(lambda n, d: 2 * n * n * d)  # only QKᵀ
    assert not check_attention_matmul_flops(lambda n, d: attention_flops(1, 1, n, d))  # the library's own count


def test_crossover_length(stub):
    assert check_crossover_length(lambda d, d_ff: 2 * d + d_ff)
    assert not check_crossover_length(stub)
    assert not check_crossover_length(lambda d, d_ff: d_ff)  # attention vs FFN only, forgetting the projections
