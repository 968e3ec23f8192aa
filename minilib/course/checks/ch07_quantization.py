"""Checks for chapter 07 (quantization): the symmetric grid, the affine grid, the int8 linear layer, int4 packing.

The chapter's "build it" check: an int8 linear layer whose forward multiplies integers only, recorded at PyTorch's
dispatcher (a float product by any route, or by multiply-and-sum, fails), and which never casts NaN to an integer.
"""
import torch

import minilib.quant as quant
from minilib.course.checks.core import (
    CheckFailed,
    as_number,
    describe_value,
    exercise,
    expect_attribute,
    expect_close,
    expect_tensor,
)
from minilib.course.checks.guards import COURSE, NUMPY, guarded
from minilib.quant import dequantize, pack_int4, quantize, scale_and_zero_point
from minilib.quant.int8 import int8_matmul

# The course's quantizers, PyTorch's and torchao's: what the exercises of this chapter write.
QUANTIZERS = (quant, COURSE, "torch.ao", "torchao", "aten::quantize_per", "aten::fake_quantize", "aten::_fake_quantize",
              "aten::choose_qparams", "aten::_choose_qparams", "aten::_convert_weight_to_int4pack", "aten::_dyn_quant",
              "aten::fbgemm", "aten::quantized")


def _pair(got, what: str):
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise CheckFailed(f"{what}: return a pair", "a tuple of two values (first, second)", describe_value(got),
                          "return both values: (first, second)")
    return got


def _scalar(what: str, value) -> torch.Tensor:
    """A scale or zero point: a 0-d or one-element tensor, or a Python number, as a float64 tensor."""
    return torch.tensor(as_number(what, value), dtype=torch.float64)


@exercise(points=2)
def check_symmetric_quantize(fn):
    """fn(x, bits) -> (q, scale): s = max|x| / (2^(b−1) − 1), q = clamp(round(x / s)) as integers."""
    x = torch.tensor([-1.2, 0.25, 0.5, 2.0])
    generator = torch.Generator().manual_seed(7)
    randoms = [(torch.randn(50, generator=generator) * 3, bits) for bits in (2, 4, 8)]
    with guarded(fn, QUANTIZERS, "round and clamp yourself: minilib.quant.quantize (and PyTorch's quantize_per_tensor) "
                                 "is the answer it is checked against"):
        hand = fn(x, 3)
        got = [fn(values, bits) for values, bits in randoms]
    q, scale = _pair(hand, "fn(x, 3)")
    expect_close("scale for x = [−1.2, 0.25, 0.5, 2], 3 bits (grid −3 … 3)", _scalar("the scale", scale),
                 torch.tensor(2.0 / 3), hint="s = max|x| / (2^(bits−1) − 1): the largest |x| lands on the last level")
    expect_tensor("q for x = [−1.2, 0.25, 0.5, 2], 3 bits", q, (4,))
    expect_close("q for x = [−1.2, 0.25, 0.5, 2], 3 bits", q.double(), torch.tensor([-2.0, 0, 1, 3]),
                 hint="q = round(x / s), e.g. −1.2 / (2/3) = −1.8 → −2")
    for (values, bits), answer in zip(randoms, got):
        q, scale = _pair(answer, f"fn(x, {bits})")
        reference = quantize(values, bits, symmetric=True)
        expect_tensor(f"q for 50 random values, {bits} bits", q, (50,))
        expect_close(f"q for 50 random values, {bits} bits, against minilib.quant.quantize", q.double(),
                     reference.q.double(), hint="keep q inside [−(2^(bits−1) − 1), 2^(bits−1) − 1]")
        expect_close(f"round trip s·q for {bits} bits", _scalar("the scale", scale) * q.double(), dequantize(reference))


@exercise(points=2)
def check_affine_params(fn):
    """fn(lo, hi, bits) -> (scale, zero_point) for the unsigned grid 0 … 2^b − 1 that covers [lo, hi] and 0."""
    cases = [(-1.0, 3.0, 2), (-0.3, 5.0, 8), (0.5, 2.0, 4), (-4.0, -1.0, 8)]
    with guarded(fn, QUANTIZERS, "compute the scale and zero point yourself: minilib.quant.scale_and_zero_point "
                                 "(and PyTorch's observers) is the answer it is checked against"):
        got = [fn(torch.tensor(lo), torch.tensor(hi), bits) for lo, hi, bits in cases]
    scale, zero_point = _pair(got[0], "fn(-1, 3, 2)")
    expect_close("scale for [lo, hi] = [−1, 3], 2 bits (levels 0, 1, 2, 3)", _scalar("the scale", scale),
                 torch.tensor(4.0 / 3), hint="s = (hi − lo) / (2^bits − 1)")
    expect_close("zero point for [−1, 3], 2 bits", _scalar("the zero point", zero_point), torch.tensor(1.0),
                 hint="z = round(−lo / s): the integer that stands for 0.0")
    for (lo, hi, bits), answer in zip(cases[1:], got[1:]):
        scale, zero_point = _pair(answer, f"fn({lo}, {hi}, {bits})")
        ref_scale, ref_zero = scale_and_zero_point(torch.tensor(lo), torch.tensor(hi), bits, symmetric=False)
        expect_close(f"scale for [{lo}, {hi}], {bits} bits", _scalar("the scale", scale), ref_scale,
                     hint="widen the range to contain 0 first: lo = min(lo, 0), hi = max(hi, 0)")
        expect_close(f"zero point for [{lo}, {hi}], {bits} bits", _scalar("the zero point", zero_point),
                     ref_zero.double(), hint="z = round(−lo / s), with lo already widened to contain 0")


_INTEGER_PRODUCT = ("the exercise is the integer GEMM that makes int8 fast: multiply the int8 codes as integers "
                    "(torch._int_mm(x_q, w_q.t()), or x_q.int() @ w_q.int().t()) and apply the float scales after "
                    "the sums; a float product (of the codes cast to float, dequantized weights, or a multiply-and-"
                    "sum) gives the same numbers without int8's speed")


@exercise(points=3)
def check_int8_linear(fn):
    """fn(x_q, x_scale, w_q, w_scale, bias) -> y = (x_q W_qᵀ) · s_x · s_w + b, with an integer matmul."""
    x_q = torch.tensor([[1, -2], [3, 4]], dtype=torch.int8)
    w_q = torch.tensor([[2, 0], [1, 1], [0, -1]], dtype=torch.int8)
    x_scale, w_scale, bias = torch.tensor([[0.5], [2.0]]), torch.tensor([1.0, 0.1, 10.0]), torch.tensor([0.0, 1.0, 0.0])
    generator = torch.Generator().manual_seed(7)
    m, k, n = 33, 256, 48
    big = (torch.randint(-127, 128, (m, k), generator=generator, dtype=torch.int8), torch.rand(m, 1, generator=generator),
           torch.randint(-127, 128, (n, k), generator=generator, dtype=torch.int8), torch.rand(n, generator=generator),
           torch.randn(n, generator=generator))
    reference = int8_matmul(big[0], big[2].t()).double() * big[1].double() * big[3].double() + big[4].double()
    forbid = [*QUANTIZERS, NUMPY]
    with guarded(fn, forbid, _INTEGER_PRODUCT, allow=[int8_matmul]):  # the chapter's integer GEMM is fine
        hand = fn(x_q, x_scale, w_q, w_scale, bias)
    expect_close("hand case: x_q [[1, −2], [3, 4]], w_q [[2, 0], [1, 1], [0, −1]]", hand,
                 torch.tensor([[1.0, 0.95, 10.0], [12.0, 2.4, -80.0]]),
                 hint="integer sums x_q @ w_q.T first, then multiply row m by x_scale[m] and column n by w_scale[n], "
                      "then add b")
    with guarded(fn, forbid, _INTEGER_PRODUCT, allow=[int8_matmul]) as run:
        got = fn(*big)
    run.expect_integer_matmuls(f"your function on x_q ({m}, {k}) and w_q ({n}, {k})", _INTEGER_PRODUCT,
                               float_work_limit=m * n * k // 8)
    expect_tensor(f"random ({m}, {k}) int8 activations × ({n}, {k}) int8 weights", got, (m, n))
    expect_close(f"random ({m}, {k}) int8 activations × ({n}, {k}) int8 weights", got.double(), reference, rtol=1e-5,
                 hint="int8 @ int8 stays int8 and overflows: multiply as int32 (torch._int_mm) or convert to a wider "
                      "integer type before the matmul")


@exercise(points=2)
def check_pack_nibbles(fn):
    """fn(codes (..., n) in [0, 15]) -> (..., n/2) uint8 with the even column in the low nibble."""
    codes = torch.randint(0, 16, (3, 8), generator=torch.Generator().manual_seed(7), dtype=torch.uint8)
    with guarded(fn, QUANTIZERS, "shift and combine the nibbles yourself: minilib.quant.pack_int4 is the answer"):
        hand, got = fn(torch.tensor([1, 2, 15, 0], dtype=torch.uint8)), fn(codes)
    expect_close("fn([1, 2, 15, 0])", hand, torch.tensor([0x21, 0x0F], dtype=torch.uint8), atol=0, rtol=0,
                 dtype=torch.uint8, hint="byte = even | (odd << 4): 1 | (2 << 4) = 0x21 = 33")
    expect_close("random (3, 8) codes", got, pack_int4(codes), atol=0, rtol=0, dtype=torch.uint8,
                 hint="pair columns 0-1, 2-3, ... of each row: codes[..., 0::2] and codes[..., 1::2]")


# --- the "build it" exercise ------------------------------------------------------------

@exercise(points=4)
def check_int8_linear_layer(cls):
    """Your W8A8 layer: int8 weights like QuantLinear's, the same outputs, only integer matrix products, and an
    all-zero token that gives its bias without a NaN cast to int8 on the way."""
    import minilib.quant.int8 as int8
    generator = torch.Generator().manual_seed(7)
    linear = torch.nn.Linear(256, 384)
    with torch.no_grad():
        linear.weight.copy_(0.05 * torch.randn(384, 256, generator=generator))
    x = torch.randn(3, 5, 256, generator=generator)
    x[1, 2] = 0.0  # a token of zeros: its scale is 0, and 0/0 is NaN
    reference = int8.QuantLinear.from_linear(linear, weight_bits=8)   # the exercise's 8 bits, on any CPU
    expected = reference(x)
    m, k, n = 15, 256, 384
    hint = "quantize, multiply and rescale yourself: this is the layer minilib.quant.QuantLinear is"
    with guarded(cls, [*QUANTIZERS, NUMPY], hint) as run:
        layer = run.build(linear)
        weight_q = expect_attribute("your layer's weights", layer, "weight_q", torch.Tensor,
                                    "store the int8 weights as self.weight_q (a buffer): round(W / s_w).to(torch.int8)")
        weight_q = weight_q.clone()
        run.start_recording()  # the forward is what must multiply integers
        with torch.no_grad():
            got = layer(x)
    expect_close("weight_q: round(W / s_w), s_w[n] = max_k |W[n, k]| / 127", weight_q, reference.weight_q, atol=0,
                 rtol=0, dtype=torch.int8,
                 hint="one scale per output channel (row of W, amax over dim=1), not one for the whole tensor")
    who = "your forward on x (3, 5, 256)"
    run.expect_integer_matmuls(who, _INTEGER_PRODUCT, float_work_limit=m * n * k // 8)
    run.expect_finite_casts(who, "the all-zero token has max|x| = 0, so its scale is 0 and x / s is 0/0 = NaN; NaN "
                                 "has no int8 value (x86 happens to give 0, other machines anything): clamp the scale "
                                 "above 0 first, e.g. .clamp_min(1e-12)")
    expect_close("output on x (3, 5, 256) with one all-zero token, against minilib.quant.QuantLinear", got,
                 expected, atol=1e-5, rtol=1e-5,
                 hint="y = acc · s_x[m] · s_w[n] + b with s_x[m] = max_k |x[m, k]| / 127 per token; int8 @ int8 "
                      "stays int8 and overflows: the sums need int32")
