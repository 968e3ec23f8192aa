"""Chapter 07's "build it" check: an int8 linear layer whose forward multiplies integers only."""
import torch

from minilib.course.checks.core import CheckFailed, exercise, expect_close, expect_equal
from minilib.course.checks.guards import TorchOps, forbidden_calls


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
    reference = int8.QuantLinear.from_linear(linear)
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
