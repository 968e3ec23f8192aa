"""Chapter 07's exercise checks pass the reference answers and fail stubs and plausible mistakes."""
import torch

from minilib.course.checks import (
    check_affine_params,
    check_int8_linear,
    check_int8_linear_layer,
    check_pack_nibbles,
    check_symmetric_quantize,
)
from minilib.quant.int8 import int8_matmul  # the chapter's int8 GEMM: the model answer builds on it


def symmetric(x, bits, clamp=True, levels=None):
    q_max = 2 ** (bits - 1) - 1 if levels is None else levels
    scale = x.abs().max() / q_max
    q = torch.round(x / scale)
    return (q.clamp(-q_max, q_max) if clamp else q), scale


def test_symmetric_quantize(stub):
    assert check_symmetric_quantize(symmetric)
    assert not check_symmetric_quantize(stub)
    assert not check_symmetric_quantize(lambda x, bits: symmetric(x, bits, levels=2 ** bits - 1))    # unsigned level count
    assert not check_symmetric_quantize(lambda x, bits: (torch.trunc(x / symmetric(x, bits)[1]), symmetric(x, bits)[1]))  # truncates
    assert not check_symmetric_quantize(lambda x, bits: symmetric(x, bits)[0])                       # forgets the scale


def affine(lo, hi, bits, widen=True):
    if widen:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    scale = (hi - lo) / (2 ** bits - 1)
    return scale, torch.round(-lo / scale)


def test_affine_params(stub):
    assert check_affine_params(affine)
    assert not check_affine_params(stub)
    assert not check_affine_params(lambda lo, hi, bits: affine(lo, hi, bits, widen=False))          # 0 not representable
    assert not check_affine_params(lambda lo, hi, bits: ((hi - lo) / 2 ** bits, affine(lo, hi, bits)[1]))  # 2^b steps


def int8_linear(x_q, x_scale, w_q, w_scale, bias):
    acc = torch._int_mm(x_q, w_q.t()) if x_q.shape[0] > 16 else (x_q.int() @ w_q.int().t())
    return acc.float() * x_scale * w_scale + bias


def test_int8_linear(stub):
    assert check_int8_linear(int8_linear)
    assert not check_int8_linear(stub)
    assert not check_int8_linear(lambda x_q, x_scale, w_q, w_scale, bias: (x_q @ w_q.t()).float() * x_scale * w_scale + bias)  # int8 overflow
    assert not check_int8_linear(lambda x_q, x_scale, w_q, w_scale, bias: int8_linear(x_q, x_scale, w_q, w_scale, bias) - bias)  # no bias
    assert not check_int8_linear(lambda x_q, x_scale, w_q, w_scale, bias: int8_linear(x_q, x_scale.T[:, :1], w_q, w_scale, bias))  # one scale
    # right numbers, but a float matmul (exact here) instead of the integer GEMM the exercise is about
    assert not check_int8_linear(lambda x_q, x_scale, w_q, w_scale, bias: (x_q.float() @ w_q.float().t()) * x_scale * w_scale + bias)
    assert not check_int8_linear(lambda x_q, x_scale, w_q, w_scale, bias: (x_q.double() @ w_q.double().t()).float() * x_scale * w_scale + bias)
    assert check_int8_linear(lambda x_q, x_scale, w_q, w_scale, bias: int8_matmul(x_q, w_q.t()).float() * x_scale * w_scale + bias)


def pack(codes):
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def test_pack_nibbles(stub):
    assert check_pack_nibbles(pack)
    assert not check_pack_nibbles(stub)
    assert not check_pack_nibbles(lambda codes: (codes[..., 0::2] << 4) | codes[..., 1::2])          # nibbles swapped
    assert not check_pack_nibbles(lambda codes: (codes[..., 0::2] | (codes[..., 1::2] << 4)).int())  # not uint8


class Int8Layer(torch.nn.Module):
    """The model answer of Exercise 7.6, with switches for the mistakes and shortcuts the check must catch."""

    def __init__(self, linear, per_tensor=False, matmul="int"):
        super().__init__()
        weight = linear.weight.detach()
        scale = (weight.abs().max() if per_tensor else weight.abs().amax(dim=1)) / 127 * torch.ones(weight.shape[0])
        self.register_buffer("weight_q", torch.round(weight / scale[:, None]).to(torch.int8))
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", linear.bias.detach().clone())
        self.matmul = matmul

    @torch.no_grad()
    def forward(self, x):
        rows = x.reshape(-1, x.shape[-1])
        x_scale = (rows.abs().amax(dim=1, keepdim=True) / 127).clamp_min(torch.finfo(torch.float32).tiny)
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


def int8_variant(**mistake):
    return lambda linear: Int8Layer(linear, **mistake)


class StubInt8(Int8Layer):
    def forward(self, x):
        raise NotImplementedError


def test_int8_linear_layer():
    assert check_int8_linear_layer(Int8Layer)
    assert not check_int8_linear_layer(StubInt8)
    assert not check_int8_linear_layer(int8_variant(matmul="library"))
    assert not check_int8_linear_layer(int8_variant(matmul="float"))
    assert not check_int8_linear_layer(int8_variant(matmul="int8"))
    assert not check_int8_linear_layer(int8_variant(per_tensor=True))
