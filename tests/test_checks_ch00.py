"""Chapter 00's exercise checks pass the reference answers and fail stubs and plausible mistakes."""
import math

import torch

from minilib.course.checks import check_gflops, check_matmul_flops, check_tensor_bytes


def test_matmul_flops(stub):
    assert check_matmul_flops(lambda m, k, n: 2 * m * k * n)
    assert not check_matmul_flops(stub)
    assert not check_matmul_flops(lambda m, k, n: m * k * n)  # multiply-adds, not FLOPs


def test_gflops(stub):
    assert check_gflops(lambda flops, seconds: flops / seconds / 1e9)
    assert not check_gflops(stub)
    assert not check_gflops(lambda flops, seconds: flops * seconds / 1e9)
    assert not check_gflops(lambda flops, seconds: flops / seconds / 2**30)  # GiB-style giga


def test_tensor_bytes(stub):
    assert check_tensor_bytes(lambda shape, dtype: math.prod(shape) * torch.empty((), dtype=dtype).element_size())
    assert not check_tensor_bytes(stub)
    assert not check_tensor_bytes(lambda shape, dtype: math.prod(shape) * 4)  # assumes float32
