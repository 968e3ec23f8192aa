"""Checks for chapter 00 (welcome): counting matmul FLOPs, turning a time into GFLOP/s, tensor bytes."""
import torch

from minilib.course.checks.core import exercise, expect_number


@exercise(points=1)
def check_matmul_flops(fn):
    """FLOPs of (m, k) @ (k, n): m·n outputs, each k multiplies and k adds = 2·m·k·n."""
    hint = "each of the m·n outputs is a dot product of length k: k multiplications and k additions"
    for (m, k, n), what in [((2, 3, 4), "a (2, 3) matrix times a (3, 4) matrix"), ((1, 1, 1), "1 × 1 times 1 × 1"),
                            ((1024, 1024, 1024), "two 1024 × 1024 matrices"), ((5, 7, 3), "(5, 7) times (7, 3)")]:
        expect_number(f"matmul_flops({m}, {k}, {n}): {what}", fn(m, k, n), 2 * m * k * n, hint=hint)


@exercise(points=1)
def check_gflops(fn):
    """Rate in GFLOP/s: floating-point operations per second, in units of 10⁹."""
    hint = "divide the FLOPs by the seconds, then by 1e9 (giga = 10⁹)"
    for flops, seconds, rate in [(2e9, 0.5, 4.0), (2 * 1024**3, 0.02, 2 * 1024**3 / 0.02 / 1e9), (1e6, 1e-3, 1.0)]:
        expect_number(f"gflops({flops:g} FLOPs, {seconds:g} s)", fn(flops, seconds), rate, rel=1e-6, hint=hint)


@exercise(points=2)
def check_tensor_bytes(fn):
    """Bytes of a tensor's data: number of elements × bytes per element (4 for float32, 2 for float16, 1 for int8)."""
    for shape, dtype in [((3, 4), torch.float32), ((10,), torch.float16), ((2, 2, 2), torch.int8),
                         ((384, 1536), torch.float32), ((5,), torch.float64), ((), torch.float32)]:
        reference = torch.empty(shape, dtype=dtype)  # ask PyTorch itself
        expect_number(f"tensor_bytes({shape}, {dtype})", fn(shape, dtype), reference.numel() * reference.element_size(),
                      hint="multiply all sizes in the shape together (an empty shape () is one number), then by the "
                           "bytes of one element (torch.empty((), dtype=dtype).element_size(), or dtype.itemsize)")
