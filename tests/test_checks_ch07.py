"""Chapter 07's exercise checks pass correct answers however they are written, and fail stubs, mistakes and
shortcuts: the library's quantizers, float products by any route (a decoy integer matmul beside them included),
and a NaN cast to int8 for an all-zero token."""
import torch

from minilib.course.checks import (
    check_affine_params,
    check_int8_linear,
    check_int8_linear_layer,
    check_pack_nibbles,
    check_symmetric_quantize,
)
from minilib.quant import pack_int4, quantize, scale_and_zero_point
from minilib.quant.int8 import int8_matmul  # the chapter's int8 GEMM: exercise 7.3 may build on it


def symmetric(x, bits, clamp=True, levels=None):
    q_max = 2 ** (bits - 1) - 1 if levels is None else levels
    scale = x.abs().max() / q_max
    q = torch.round(x / scale)
    return (q.clamp(-q_max, q_max) if clamp else q), scale


def symmetric_int8_codes(x, bits):  # integer codes and a Python float scale
    q_max = 2 ** (bits - 1) - 1
    scale = x.abs().max().item() / q_max
    return torch.clamp(torch.round(x / scale), -q_max, q_max).to(torch.int8), scale


def test_symmetric_quantize(stub, refused):
    assert check_symmetric_quantize(symmetric)
    assert check_symmetric_quantize(symmetric_int8_codes)
    assert not check_symmetric_quantize(stub)
    refused(check_symmetric_quantize, lambda x, bits: symmetric(x, bits, levels=2 ** bits - 1), "scale for x")
    refused(check_symmetric_quantize, lambda x, bits: (torch.trunc(x / symmetric(x, bits)[1]), symmetric(x, bits)[1]),
            "−1.8 → −2")                                                                    # truncates
    refused(check_symmetric_quantize, lambda x, bits: symmetric(x, bits)[0], "return a pair")  # forgets the scale
    refused(check_symmetric_quantize, lambda x, bits: (quantize(x, bits, symmetric=True).q, quantize(x, bits).scale),
            "minilib.quant")

    def by_torch(x, bits):  # PyTorch's own quantizer
        scale = float(x.abs().max()) / (2 ** (bits - 1) - 1)
        return torch.quantize_per_tensor(x, scale, 0, torch.qint8).int_repr().clamp(-(2 ** (bits - 1) - 1)), scale

    refused(check_symmetric_quantize, by_torch, "quantize_per_tensor")


def affine(lo, hi, bits, widen=True):
    if widen:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    scale = (hi - lo) / (2 ** bits - 1)
    return scale, torch.round(-lo / scale)


def affine_floats(lo, hi, bits):  # Python floats throughout
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / (2 ** bits - 1)
    return scale, round(-lo / scale)


def test_affine_params(stub, refused):
    assert check_affine_params(affine)
    assert check_affine_params(affine_floats)
    assert not check_affine_params(stub)
    refused(check_affine_params, lambda lo, hi, bits: affine(lo, hi, bits, widen=False), "widen the range")
    refused(check_affine_params, lambda lo, hi, bits: ((hi - lo) / 2 ** bits, affine(lo, hi, bits)[1]), "2^bits − 1")
    refused(check_affine_params, lambda lo, hi, bits: scale_and_zero_point(lo, hi, bits, symmetric=False),
            "minilib.quant")

    def by_observer(lo, hi, bits):  # PyTorch's observer computes the same grid
        from torch.ao.quantization.observer import MinMaxObserver
        observer = MinMaxObserver(quant_min=0, quant_max=2 ** bits - 1)
        observer(torch.stack([lo, hi]))
        return observer.calculate_qparams()

    refused(check_affine_params, by_observer, "torch.ao")


def int8_linear(x_q, x_scale, w_q, w_scale, bias):
    acc = torch._int_mm(x_q, w_q.t()) if x_q.shape[0] > 16 else (x_q.int() @ w_q.int().t())
    return acc.float() * x_scale * w_scale + bias


def int8_linear_rows(x_q, x_scale, w_q, w_scale, bias):  # a loop over output rows, each an int32 matrix-vector product
    acc = torch.stack([x_q.to(torch.int32) @ row.to(torch.int32) for row in w_q], dim=1)
    return acc.to(torch.float32) * x_scale * w_scale[None, :] + bias


def test_int8_linear(stub, refused):
    assert check_int8_linear(int8_linear)
    assert check_int8_linear(int8_linear_rows)
    assert check_int8_linear(lambda x_q, x_scale, w_q, w_scale, bias: torch.einsum(
        "mk,nk->mn", x_q.long(), w_q.long()).float() * x_scale * w_scale + bias)              # einsum on int64
    assert check_int8_linear(lambda x_q, x_scale, w_q, w_scale, bias:                       # the chapter's int8 GEMM
                             int8_matmul(x_q, w_q.t()).float() * x_scale * w_scale + bias)
    assert not check_int8_linear(stub)
    refused(check_int8_linear, lambda x_q, x_scale, w_q, w_scale, bias: (x_q @ w_q.t()).float() * x_scale * w_scale + bias,
            "overflows")                                                                       # int8 overflow
    refused(check_int8_linear, lambda x_q, x_scale, w_q, w_scale, bias: int8_linear(x_q, x_scale, w_q, w_scale, bias) - bias,
            "add b")                                                                           # no bias
    refused(check_int8_linear, lambda x_q, x_scale, w_q, w_scale, bias: int8_linear(x_q, x_scale.T[:, :1], w_q, w_scale, bias),
            "hand case")                                                                       # one scale


def test_int8_linear_refuses_float_products_by_any_route(refused):
    floats = "multiplies floating-point matrices"
    refused(check_int8_linear, lambda x_q, x_scale, w_q, w_scale, bias: (x_q.float() @ w_q.float().t()) * x_scale * w_scale + bias,
            floats)   # right numbers: a float32 matmul adds these integers exactly
    refused(check_int8_linear, lambda x_q, x_scale, w_q, w_scale, bias: (x_q.double() @ w_q.double().t()).float() * x_scale * w_scale + bias,
            floats)
    refused(check_int8_linear, lambda x_q, x_scale, w_q, w_scale, bias:
            torch.ops.aten.mm(x_q.float(), w_q.float().t()) * x_scale * w_scale + bias, floats, "aten::mm")

    def decoy(x_q, x_scale, w_q, w_scale, bias):  # an integer matmul for show, the result by multiply-and-sum
        torch._int_mm(x_q[:17].contiguous(), w_q.t().contiguous()) if x_q.shape[0] > 16 else x_q.int() @ w_q.int().t()
        acc = (x_q.float()[:, None, :] * w_q.float()[None, :, :]).sum(-1)
        return acc * x_scale * w_scale + bias

    refused(check_int8_linear, decoy, "floating-point operations")
    refused(check_int8_linear, lambda x_q, x_scale, w_q, w_scale, bias:
            torch.from_numpy(x_q.numpy().astype("int32") @ w_q.numpy().T.astype("int32")).float() * x_scale * w_scale + bias,
            "NumPy")


def pack(codes):
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def test_pack_nibbles(stub, refused):
    assert check_pack_nibbles(pack)
    assert check_pack_nibbles(lambda codes: codes[..., ::2] + codes[..., 1::2] * 16)                     # arithmetic
    assert check_pack_nibbles(lambda codes: (codes.unflatten(-1, (-1, 2)) * torch.tensor([1, 16], dtype=torch.uint8))
                              .sum(-1, dtype=torch.uint8))                                              # pairs, weighted
    assert not check_pack_nibbles(stub)
    refused(check_pack_nibbles, lambda codes: (codes[..., 0::2] << 4) | codes[..., 1::2], "0x21")        # swapped
    refused(check_pack_nibbles, lambda codes: (codes[..., 0::2] | (codes[..., 1::2] << 4)).int(), "dtype uint8", "int32")
    refused(check_pack_nibbles, lambda codes: pack(codes).tolist(), "return a tensor", "a list")
    refused(check_pack_nibbles, lambda codes: pack_int4(codes), "minilib.quant")


class Int8Layer(torch.nn.Module):
    """The model answer of Exercise 7.6, with switches for the mistakes and shortcuts the check must catch."""

    def __init__(self, linear, per_tensor=False, matmul="int", guard_zero_rows=True):
        super().__init__()
        weight = linear.weight.detach()
        scale = (weight.abs().max() if per_tensor else weight.abs().amax(dim=1)) / 127 * torch.ones(weight.shape[0])
        self.register_buffer("weight_q", torch.round(weight / scale[:, None]).to(torch.int8))
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", linear.bias.detach().clone())
        self.matmul, self.guard_zero_rows = matmul, guard_zero_rows

    @torch.no_grad()
    def forward(self, x):
        rows = x.reshape(-1, x.shape[-1])
        x_scale = rows.abs().amax(dim=1, keepdim=True) / 127
        if self.guard_zero_rows:
            x_scale = x_scale.clamp_min(torch.finfo(torch.float32).tiny)
        x_q = torch.round(rows / x_scale).to(torch.int8)
        if self.matmul == "int":
            acc = torch._int_mm(x_q, self.weight_q.t())
        elif self.matmul == "float":          # the same numbers, from a float GEMM
            acc = x_q.float() @ self.weight_q.float().t()
        elif self.matmul == "int8":           # int8 @ int8 stays int8: the sums overflow
            acc = x_q @ self.weight_q.t()
        else:                                 # the library's kernel
            from minilib.quant.int8 import int8_matmul
            acc = int8_matmul(x_q, self.weight_q.t())
        return (acc.float() * x_scale * self.weight_scale + self.bias).reshape(*x.shape[:-1], -1)


class Int8Einsum(torch.nn.Module):
    """Another correct answer: scales kept as a column, an int32 einsum, a where() for the all-zero tokens."""

    def __init__(self, linear):
        super().__init__()
        w = linear.weight.detach()
        self.register_buffer("weight_scale", w.abs().amax(dim=1, keepdim=True) / 127)        # (out, 1)
        self.register_buffer("weight_q", (w / self.weight_scale).round().char())
        self.register_buffer("bias", linear.bias.detach())

    def forward(self, x):
        s_x = x.abs().amax(dim=-1, keepdim=True) / 127
        safe = torch.where(s_x > 0, s_x, torch.ones_like(s_x))
        x_q = (x / safe).round().to(torch.int8)
        acc = torch.einsum("...k,nk->...n", x_q.int(), self.weight_q.int())
        return acc.float() * safe * self.weight_scale.T + self.bias


def int8_variant(**mistake):
    return lambda linear: Int8Layer(linear, **mistake)


class StubInt8(Int8Layer):
    def forward(self, x):
        raise NotImplementedError


class DequantizedDecoy(Int8Layer):
    """A shortcut: an integer matmul for show, the output from the dequantized weights, row by row."""

    def forward(self, x):
        rows = x.reshape(-1, x.shape[-1])
        x_scale = (rows.abs().amax(dim=1, keepdim=True) / 127).clamp_min(1e-12)
        torch._int_mm(torch.round(rows[:17] / x_scale[:17]).to(torch.int8).contiguous(), self.weight_q.t().contiguous())
        weight = self.weight_q.float() * self.weight_scale[:, None]
        out = torch.stack([(rows * w).sum(-1) for w in weight], dim=-1)
        return (out + self.bias).reshape(*x.shape[:-1], -1)


def test_int8_linear_layer(refused):
    assert check_int8_linear_layer(Int8Layer)
    assert check_int8_linear_layer(Int8Einsum)
    assert not check_int8_linear_layer(StubInt8)
    refused(check_int8_linear_layer, int8_variant(matmul="library"), "minilib.quant")
    refused(check_int8_linear_layer, int8_variant(matmul="float"), "multiplies floating-point matrices")
    refused(check_int8_linear_layer, int8_variant(matmul="int8"), "overflows")
    refused(check_int8_linear_layer, int8_variant(per_tensor=True), "one scale per output channel")
    refused(check_int8_linear_layer, int8_variant(guard_zero_rows=False), "casts NaN", "all-zero token")
    refused(check_int8_linear_layer, DequantizedDecoy, "floating-point operations")
    refused(check_int8_linear_layer, Int8Layer(torch.nn.Linear(4, 4)), "pass the class Int8Layer")
