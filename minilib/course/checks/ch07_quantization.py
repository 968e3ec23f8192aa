"""Checks for chapter 07 (quantization): the symmetric grid, the affine grid, the int8 linear layer, int4 packing.

The chapter's "build it" check: an int8 linear layer whose forward multiplies integers only.
"""
import torch

from minilib.course.checks.core import CheckFailed, exercise, expect_close, expect_equal
from minilib.course.checks.guards import TorchOps, forbidden_calls
from minilib.quant import dequantize, pack_int4, quantize, scale_and_zero_point
from minilib.quant.int8 import int8_matmul


def _pair(got, what):
    if not isinstance(got, tuple) or len(got) != 2:
        raise CheckFailed(what, "a tuple of two tensors", type(got).__name__, "return both values: (first, second)")
    return got


@exercise(points=2)
def check_symmetric_quantize(fn):
    """fn(x, bits) -> (q, scale): s = max|x| / (2^(b−1) − 1), q = clamp(round(x / s)) as integers."""
    x = torch.tensor([-1.2, 0.25, 0.5, 2.0])
    q, scale = _pair(fn(x, 3), "fn(x, 3)")
    expect_close("scale for x = [−1.2, 0.25, 0.5, 2], 3 bits (grid −3 … 3)", torch.as_tensor(scale).float(),
                 torch.tensor(2.0 / 3), hint="s = max|x| / (2^(bits−1) − 1): the largest |x| lands on the last level")
    expect_close("q for x = [−1.2, 0.25, 0.5, 2], 3 bits", q, torch.tensor([-2, 0, 1, 3]),
                 hint="q = round(x / s), e.g. −1.2 / (2/3) = −1.8 → −2")
    generator = torch.Generator().manual_seed(7)
    for bits in (2, 4, 8):
        x = torch.randn(50, generator=generator) * 3
        q, scale = _pair(fn(x, bits), f"fn(x, {bits})")
        reference = quantize(x, bits, symmetric=True)
        expect_close(f"q for 50 random values, {bits} bits, against minilib.quant.quantize", q, reference.q.float(),
                     hint="keep q inside [−(2^(bits−1) − 1), 2^(bits−1) − 1]")
        expect_close(f"round trip s·q for {bits} bits", torch.as_tensor(scale).float() * q.float(), dequantize(reference))


@exercise(points=2)
def check_affine_params(fn):
    """fn(lo, hi, bits) -> (scale, zero_point) for the unsigned grid 0 … 2^b − 1 that covers [lo, hi] and 0."""
    scale, zero_point = _pair(fn(torch.tensor(-1.0), torch.tensor(3.0), 2), "fn(-1, 3, 2)")
    expect_close("scale for [lo, hi] = [−1, 3], 2 bits (levels 0, 1, 2, 3)", torch.as_tensor(scale).float(),
                 torch.tensor(4.0 / 3), hint="s = (hi − lo) / (2^bits − 1)")
    expect_close("zero point for [−1, 3], 2 bits", torch.as_tensor(zero_point).float(), torch.tensor(1.0),
                 hint="z = round(−lo / s): the integer that stands for 0.0")
    for lo, hi, bits in [(-0.3, 5.0, 8), (0.5, 2.0, 4), (-4.0, -1.0, 8)]:
        scale, zero_point = _pair(fn(torch.tensor(lo), torch.tensor(hi), bits), f"fn({lo}, {hi}, {bits})")
        ref_scale, ref_zero = scale_and_zero_point(torch.tensor(lo), torch.tensor(hi), bits, symmetric=False)
        expect_close(f"scale for [{lo}, {hi}], {bits} bits", torch.as_tensor(scale).float(), ref_scale,
                     hint="widen the range to contain 0 first: lo = min(lo, 0), hi = max(hi, 0)")
        expect_close(f"zero point for [{lo}, {hi}], {bits} bits", torch.as_tensor(zero_point).float(), ref_zero.float(),
                     hint="z = round(−lo / s), with lo already widened to contain 0")


@exercise(points=3)
def check_int8_linear(fn):
    """fn(x_q, x_scale, w_q, w_scale, bias) -> y = (x_q W_qᵀ) · s_x · s_w + b, with an integer matmul."""
    x_q = torch.tensor([[1, -2], [3, 4]], dtype=torch.int8)
    w_q = torch.tensor([[2, 0], [1, 1], [0, -1]], dtype=torch.int8)
    x_scale, w_scale, bias = torch.tensor([[0.5], [2.0]]), torch.tensor([1.0, 0.1, 10.0]), torch.tensor([0.0, 1.0, 0.0])
    expected = torch.tensor([[1.0, 0.95, 10.0], [12.0, 2.4, -80.0]])
    got = fn(x_q, x_scale, w_q, w_scale, bias)
    expect_close("hand case: x_q [[1, −2], [3, 4]], w_q [[2, 0], [1, 1], [0, −1]]", got, expected,
                 hint="integer sums x_q @ w_q.T first, then multiply row m by x_scale[m] and column n by w_scale[n], then add b")
    generator = torch.Generator().manual_seed(7)
    x_q = torch.randint(-127, 128, (9, 64), generator=generator, dtype=torch.int8)
    w_q = torch.randint(-127, 128, (5, 64), generator=generator, dtype=torch.int8)
    x_scale, w_scale, bias = torch.rand(9, 1, generator=generator), torch.rand(5, generator=generator), torch.randn(5, generator=generator)
    reference = int8_matmul(x_q, w_q.t()).double() * x_scale.double() * w_scale.double() + bias.double()
    with TorchOps() as ops:
        got = fn(x_q, x_scale, w_q, w_scale, bias)
    expect_close("random (9, 64) int8 activations × (5, 64) int8 weights", got.double(),
                 reference, rtol=1e-5, hint="int8 values overflow int8 arithmetic: multiply as int32 (torch._int_mm) or "
                                            "convert to a wider integer type before the matmul")
    # A float32 matmul gives the same numbers here (it adds integers exactly up to 2^24, and a vectorised sum keeps
    # its partial sums small even at K = 4096), so the dtypes of the products are what tells the two apart.
    if ops.float_matmuls() or not ops.integer_matmuls():
        raise CheckFailed("the matrix product of your int8 linear layer", "an integer matmul (int8 or int32 operands)",
                          ", ".join(ops.float_matmuls()) or "no matrix product",
                          "the exercise is the integer GEMM that makes int8 fast: multiply x_q and w_q as integers "
                          "(torch._int_mm, or x_q.int() @ w_q.int().T) and apply the float scales after the sum")


@exercise(points=2)
def check_pack_nibbles(fn):
    """fn(codes (..., n) in [0, 15]) -> (..., n/2) uint8 with the even column in the low nibble."""
    got = fn(torch.tensor([1, 2, 15, 0], dtype=torch.uint8))
    expect_equal("dtype", getattr(got, "dtype", type(got)), torch.uint8, hint="return uint8 bytes")
    expect_equal("fn([1, 2, 15, 0])", got.tolist(), [0x21, 0x0F],
                 hint="byte = even | (odd << 4): 1 | (2 << 4) = 0x21 = 33")
    codes = torch.randint(0, 16, (3, 8), generator=torch.Generator().manual_seed(7), dtype=torch.uint8)
    expect_equal("random (3, 8) codes", fn(codes).tolist(), pack_int4(codes).tolist(),
                 hint="pair columns 0-1, 2-3, ... of each row: codes[..., 0::2] and codes[..., 1::2]")


# --- the "build it" exercise ------------------------------------------------------------

@exercise(points=4)
def check_int8_linear_layer(cls):
    """Your W8A8 layer: int8 weights like QuantLinear's, the same outputs, and only integer matrix products."""
    import minilib.quant as quant
    import minilib.quant.affine as affine
    import minilib.quant.int8 as int8
    generator = torch.Generator().manual_seed(7)
    linear = torch.nn.Linear(256, 96)
    with torch.no_grad():
        linear.weight.copy_(0.05 * torch.randn(96, 256, generator=generator))
    x = torch.randn(3, 5, 256, generator=generator)
    x[1, 2] = 0.0  # a token of zeros (its scale is 0: it must give the bias, not NaN)
    reference = int8.QuantLinear.from_linear(linear, weight_bits=8)   # the exercise's 8 bits, on any CPU
    expected = reference(x)
    targets = [(quant, "QuantLinear"), (int8, "QuantLinear"), (int8, "int8_matmul"), (int8, "quantize_rows"),
               (int8, "rescale"), (affine, "quantize"), (quant, "quantize")]
    hint = "quantize, multiply and rescale yourself: this is the layer minilib.quant.QuantLinear is"
    with forbidden_calls(cls, targets, hint):
        layer = cls(linear)
        expect_equal("dtype of weight_q", getattr(getattr(layer, "weight_q", None), "dtype", None), torch.int8,
                     hint="store the weights as an int8 buffer: round(W / s_w).to(torch.int8), one s_w per output row")
        expect_close("weight_q: round(W / s_w), s_w[n] = max_k |W[n, k]| / 127", layer.weight_q.float(),
                     reference.weight_q.float(), atol=0, rtol=0,
                     hint="one scale per output channel (row of W, amax over dim=1), not one for the whole tensor")
        with TorchOps() as ops, torch.no_grad():
            got = layer(x)
    floats = ops.float_matmuls()
    if floats:
        raise CheckFailed("your forward multiplies floating-point matrices", "only integer matrix products",
                          ", ".join(floats[:3]),
                          hint="a float matmul (of the dequantized weights, or of the codes cast to float) gives "
                               "the same numbers but none of int8's speed: quantize x to int8 codes and multiply "
                               "the codes, torch._int_mm(x_q, weight_q.t()) (int32 result) or in int32")
    expect_equal("integer matrix products in your forward", ops.integer_matmuls() > 0, True,
                 hint="the Σ_k x_q[m, k] · W_q[n, k] is one integer matmul: torch._int_mm(x_q, weight_q.t())")
    expect_close("output on x (3, 5, 256) with one all-zero token, against minilib.quant.QuantLinear", got,
                 expected, atol=1e-5, rtol=1e-5,
                 hint="y = acc · s_x[m] · s_w[n] + b with s_x[m] = max_k |x[m, k]| / 127 per token (clamp it "
                      "above 0); int8 @ int8 stays int8 and overflows: the sums need int32")
