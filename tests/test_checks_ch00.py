"""Chapter 00's exercise checks pass correct answers however they are written, and fail stubs and mistakes."""
import math

import numpy as np
import torch

from minilib.course.checks import check_gflops, check_matmul_flops, check_tensor_bytes


def test_matmul_flops(stub, refused):
    assert check_matmul_flops(lambda m, k, n: 2 * m * k * n)
    assert check_matmul_flops(lambda m, k, n: float(m * n * (k + k)))           # a float is a number too
    assert check_matmul_flops(lambda m, k, n: torch.tensor(2 * m * k * n))      # ... and so is a 0-d tensor
    assert not check_matmul_flops(stub)
    refused(check_matmul_flops, lambda m, k, n: m * k * n, "matmul_flops(2, 3, 4)", "48", "24")  # multiply-adds
    refused(check_matmul_flops, lambda m, k, n: None, "return a number", "None", "`return`")


def test_gflops(stub, refused):
    assert check_gflops(lambda flops, seconds: flops / seconds / 1e9)
    assert check_gflops(lambda flops, seconds: np.float32(flops / 1e9) / seconds)  # NumPy's float32, rounded
    assert not check_gflops(stub)
    refused(check_gflops, lambda flops, seconds: flops * seconds / 1e9, "gflops(2e+09 FLOPs, 0.5 s)")
    refused(check_gflops, lambda flops, seconds: flops / seconds / 2**30, "gflops")  # GiB-style giga
    refused(check_gflops, lambda flops, seconds: f"{flops / seconds / 1e9:.1f} GFLOP/s", "a number", "str")


def test_tensor_bytes(stub, refused):
    assert check_tensor_bytes(lambda shape, dtype: math.prod(shape) * torch.empty((), dtype=dtype).element_size())
    assert check_tensor_bytes(lambda shape, dtype: torch.zeros(shape, dtype=dtype).nbytes)
    assert check_tensor_bytes(lambda shape, dtype: int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    assert not check_tensor_bytes(stub)
    refused(check_tensor_bytes, lambda shape, dtype: math.prod(shape) * 4, "float16")  # assumes float32
