"""Chapter 07's exercise checks pass the reference answers and fail stubs and plausible mistakes."""
import torch

from minilib.course.checks import check_affine_params, check_int8_linear, check_pack_nibbles, check_symmetric_quantize
from minilib.quant.int8 import int8_matmul   # the chapter's int8 GEMM: the model answer builds on it


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
