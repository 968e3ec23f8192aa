"""Checks for chapter 01 (why fast and small): parameters of a layer, attention FLOPs, the crossover length."""
import minilib.support.bench as bench
import minilib.transformer as transformer
from minilib.course.checks.core import exercise, expect_equal
from minilib.course.checks.guards import forbidden_calls
from minilib.support.bench import attention_flops, linear_flops, param_count
from minilib.transformer import EncoderLayer, TransformerConfig


@exercise(points=2)
def check_encoder_layer_params(fn):
    """Parameters of one BERT encoder layer, counted on a real minilib EncoderLayer."""
    with forbidden_calls(fn, [(transformer, "EncoderLayer"), (bench, "param_count")],
                         "count from the shapes yourself: building minilib's EncoderLayer and counting it is the reference"):
        for d_model, d_ff, heads in [(8, 32, 2), (384, 1536, 12), (256, 1024, 4)]:
            layer = EncoderLayer(TransformerConfig(vocab_size=10, d_model=d_model, n_heads=heads, d_ff=d_ff))
            expect_equal(f"encoder_layer_params(d_model={d_model}, d_ff={d_ff})", fn(d_model, d_ff), param_count(layer),
                         hint="Q, K, V and output projections are d×d weights plus d biases each; the FFN is d×d_ff + d_ff "
                              "then d_ff×d + d; each of the two LayerNorms has a weight and a bias of size d")


@exercise(points=2)
def check_attention_matmul_flops(fn):
    """FLOPs of QKᵀ and P·V in one layer for one sequence, all heads together (heads × head_dim = d_model)."""
    with forbidden_calls(fn, [(bench, "attention_flops")],
                         "derive the count yourself: minilib.support.bench.attention_flops is the reference"):
        for seq, d_model, heads in [(4, 2, 1), (128, 384, 12), (512, 256, 4)]:
            expected = attention_flops(batch=1, heads=heads, seq=seq, head_dim=d_model // heads)
            expect_equal(f"attention_matmul_flops(seq={seq}, d_model={d_model})", fn(seq, d_model), expected,
                         hint="QKᵀ: seq×seq scores, each a dot product of length d (2·d FLOPs); P·V costs the same again. "
                              "The number of heads cancels out.")


@exercise(points=3)
def check_crossover_length(fn):
    """The sequence length n at which attention's matmuls cost as many FLOPs as all the layer's linear layers."""
    for d_model, d_ff in [(384, 1536), (256, 1024), (64, 64)]:
        expected = _smallest_n_where_attention_dominates(d_model, d_ff)
        expect_equal(f"crossover_length(d_model={d_model}, d_ff={d_ff})", fn(d_model, d_ff), expected,
                     hint="set 4·n²·d (attention) equal to 8·n·d² (four projections) + 4·n·d·d_ff (FFN) and solve for n")


def _smallest_n_where_attention_dominates(d_model: int, d_ff: int) -> int:
    """Search n = 1, 2, ... with the measurement kit's counts (independent of the closed form)."""
    n = 1
    while attention_flops(1, 1, n, d_model) < (4 * linear_flops(n, d_model, d_model) + linear_flops(n, d_model, d_ff)
                                               + linear_flops(n, d_ff, d_model)):
        n += 1
    return n
