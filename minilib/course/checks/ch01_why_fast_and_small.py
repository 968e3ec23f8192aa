"""Checks for chapter 01 (why fast and small): parameters of a layer, attention FLOPs, the crossover length.

The three are counts from the sizes: building a layer (or running attention) and counting is how the checks get
the answers, so an answer that builds tensors, or calls the course's measurement kit, fails.
"""
import minilib.support.bench as bench
import minilib.transformer as transformer
from minilib.course.checks.core import exercise, expect_number
from minilib.course.checks.guards import COURSE, guarded
from minilib.support.bench import attention_flops, linear_flops, param_count
from minilib.transformer import EncoderLayer, TransformerConfig

COUNTERS = [COURSE, bench, transformer, "transformers", "fvcore", "thop", "torch.utils.flop_counter"]
NO_TENSORS = 1_000  # a count from the sizes needs no tensor larger than a handful of numbers


def _expect_count(fn, args: tuple, expected: int, what: str, why: str, hint: str) -> None:
    """``fn(*args) == expected``, computed without the course's counters and without building a tensor."""
    with guarded(fn, COUNTERS, why) as run:
        got = fn(*args)
    run.expect_tensors_under(NO_TENSORS, what, why)
    expect_number(what, got, expected, hint=hint)


@exercise(points=2)
def check_encoder_layer_params(fn):
    """Parameters of one BERT encoder layer, counted on a real minilib EncoderLayer."""
    for d_model, d_ff, heads in [(8, 32, 2), (384, 1536, 12), (256, 1024, 4)]:
        layer = EncoderLayer(TransformerConfig(vocab_size=10, d_model=d_model, n_heads=heads, d_ff=d_ff))
        _expect_count(fn, (d_model, d_ff), param_count(layer), f"encoder_layer_params(d_model={d_model}, d_ff={d_ff})",
                      "count from the shapes: building a layer and counting its parameters is how this check gets "
                      "the answer",
                      "Q, K, V and output projections are d×d weights plus d biases each; the FFN is d×d_ff + d_ff "
                      "then d_ff×d + d; each of the two LayerNorms has a weight and a bias of size d")


@exercise(points=2)
def check_attention_matmul_flops(fn):
    """FLOPs of QKᵀ and P·V in one layer for one sequence, all heads together (heads × head_dim = d_model)."""
    for seq, d_model, heads in [(4, 2, 1), (128, 384, 12), (512, 256, 4)]:
        _expect_count(fn, (seq, d_model), attention_flops(batch=1, heads=heads, seq=seq, head_dim=d_model // heads),
                      f"attention_matmul_flops(seq={seq}, d_model={d_model})",
                      "derive the count yourself: running attention under a FLOP counter is how this check gets the "
                      "answer",
                      "QKᵀ: seq×seq scores, each a dot product of length d (2·d FLOPs); P·V costs the same again. "
                      "The number of heads cancels out.")


@exercise(points=3)
def check_crossover_length(fn):
    """The sequence length n at which attention's matmuls cost as many FLOPs as all the layer's linear layers."""
    for d_model, d_ff in [(384, 1536), (256, 1024), (64, 64), (96, 384)]:
        _expect_count(fn, (d_model, d_ff), _smallest_n_where_attention_dominates(d_model, d_ff),
                      f"crossover_length(d_model={d_model}, d_ff={d_ff})",
                      "solve the equation yourself: searching n with the course's FLOP counts is how this check gets "
                      "the answer",
                      "set 4·n²·d (attention) equal to 8·n·d² (four projections) + 4·n·d·d_ff (FFN) and solve for n")


def _smallest_n_where_attention_dominates(d_model: int, d_ff: int) -> int:
    """Search n = 1, 2, ... with the measurement kit's counts (independent of the closed form)."""
    n = 1
    while attention_flops(1, 1, n, d_model) < (4 * linear_flops(n, d_model, d_model) + linear_flops(n, d_model, d_ff)
                                               + linear_flops(n, d_ff, d_model)):
        n += 1
    return n
