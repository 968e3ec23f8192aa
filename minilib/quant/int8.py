"""Int8 linear layers that really run on integers: ``W8A8`` with dynamic per-token activations.

A linear layer ``y = x Wᵀ + b`` with ``x ≈ s_x · x_q`` (one scale per token, i.e. per row of ``x``) and
``W ≈ s_w · W_q`` (one scale per output channel, i.e. per row of ``W``) becomes::

    y[m, n] ≈ s_x[m] · s_w[n] · Σ_k x_q[m, k] · W_q[n, k]  +  b[n]
              └── float rescale ──┘ └──── int8 × int8 → int32 GEMM ────┘

The sum is computed exactly in int32 by an integer matrix multiply (``torch._int_mm``), which is where
the speed comes from: int8 GEMM kernels (VNNI / AMX on x86 CPUs, tensor cores on GPUs) do several times
more multiply-adds per cycle than float32, and read 4× fewer bytes of weights.

What it costs: the activations must be quantized on the fly (find ``max|x|`` per row, divide, round,
convert) and the int32 result rescaled. Each of those steps is a pass over memory. The GEMM is fast
enough that these passes become a large part of the time, so the layer does as few of them as
possible: two reductions for the scales, one divide, one in-place round, one conversion; then one
conversion and two in-place passes for the rescale and bias.

Which kernel runs the integer sum matters as much. x86's int8 instructions (VNNI's ``vpdpbusd``, AMX)
multiply **unsigned** bytes by signed bytes. ``torch._int_mm`` takes two signed matrices, and its CPU kernel
pays for that mismatch: here it is barely faster than a float32 matmul. Shifting the activation codes by 128
(``x_q + 128`` fits in a uint8) and telling the kernel about that zero point lets oneDNN's u8·s8 kernel run
at full speed: it subtracts ``128 · Σ_k W_q[n, k]`` itself, so the sums are exactly the same. On an x86 CPU
with PyTorch's oneDNN, :class:`QuantLinear` uses that kernel (:func:`u8s8_kernel_available`); elsewhere
``torch._int_mm``. Only VNNI and AMX sum the products in 32 bits: on x86 CPUs with AVX2 alone (many laptops)
the kernel is exact only for 7-bit weights (:func:`u8s8_weight_bits`), so there the weights get 7 bits, and
``torch._int_mm``'s reference kernel, tens of times slower than a float32 matmul, is never used.
"""
from __future__ import annotations

import functools
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from minilib.quant.affine import absmax_quantize, quantize

INT8_BITS = 8
U8_ZERO_POINT = 128  # int8 codes + 128 are uint8 codes: what x86's u8·s8 instructions multiply


def quantize_rows(x: torch.Tensor, unsigned: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization with one scale per row (per token): :func:`~minilib.quant.affine.absmax_quantize`
    along the last dimension.

    x: ``(tokens, features)`` float. Returns ``x_q`` ``(tokens, features)`` int8 and ``scale`` ``(tokens, 1)``
    with ``scale = max_k |x[m, k]| / 127`` and ``x_q = round(x / scale)``: the same numbers as
    ``quantize(x, 8, symmetric=True, axis=0)``, computed in fewer passes over memory.
    ``unsigned=True`` returns the same codes plus 128 as uint8 (1 … 255), for the u8·s8 kernel.
    """
    return absmax_quantize(x, INT8_BITS, dim=-1, unsigned=unsigned)


def rescale(acc: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Float output of the int8 GEMM: ``y[m, n] = acc[m, n] · s_x[m] · s_w[n] + b[n]``.

    acc ``(M, N)`` int32, x_scale ``(M, 1)``, w_scale ``(N,)``, bias ``(N,)`` or None → ``(M, N)`` float32.
    One conversion, then in-place updates: no further temporary ``(M, N)`` tensors.
    """
    return _scale_rows_add_bias(acc.float().mul_(w_scale), x_scale, bias)


def _scale_rows_add_bias(out: torch.Tensor, x_scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``out[m, n] · s_x[m] + b[n]``, written over ``out``."""
    if bias is None:
        return out.mul_(x_scale)
    return torch.addcmul(bias, out, x_scale, out=out)  # b + out · s_x, one pass, written over out


def int_mm_supported(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``torch._int_mm`` accepts these operands on their device.

    CPU: any shapes. CUDA: needs ``a.shape[0] > 16`` and the inner and output sizes multiples of 8.
    """
    if not hasattr(torch, "_int_mm"):
        return False
    if a.device.type == "cpu":
        return True
    if a.device.type == "cuda":
        return a.shape[0] > 16 and a.shape[1] % 8 == 0 and b.shape[1] % 8 == 0
    return False


_warned_fallback = False


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact integer matrix product ``a @ b``: ``(M, K)`` int8 × ``(K, N)`` int8 → ``(M, N)`` int32.

    Uses ``torch._int_mm`` (a real int8 GEMM) where the device supports the shapes; elsewhere falls back,
    with a one-time warning, to a float32 matmul, which is exact while ``K · 127² < 2²⁴`` (K ≤ 1040)
    and within float rounding beyond.
    """
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise TypeError(f"int8_matmul expects two int8 matrices, got {a.dtype} and {b.dtype}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"int8_matmul expects (M, K) @ (K, N), got {tuple(a.shape)} @ {tuple(b.shape)}")
    if int_mm_supported(a, b):
        return torch._int_mm(a, b)
    global _warned_fallback
    if not _warned_fallback:
        warnings.warn(f"torch._int_mm does not support {tuple(a.shape)} @ {tuple(b.shape)} on {a.device}; "
                      "falling back to a float matmul (correct, but no int8 speed-up)", stacklevel=2)
        _warned_fallback = True
    return torch.round(a.float() @ b.float()).to(torch.int32)


def u8s8_linear(x_u8: torch.Tensor, packed_weight, w_scale: torch.Tensor) -> torch.Tensor:
    """``Σ_k (x_u8[m, k] − 128) · W_q[n, k] · s_w[n]`` on oneDNN's u8·s8 kernel: ``(M, K)`` uint8 → ``(M, N)`` float32.

    ``packed_weight``: ``torch.ops.onednn.qlinear_prepack(W_q, None)`` of the ``(N, K)`` int8 weight (oneDNN's
    own layout, made once per layer). Activation scale 1 and zero point 128: the kernel removes the shift.
    """
    no_zero_points = torch.zeros(w_scale.shape[0], dtype=torch.long)
    return torch.ops.onednn.qlinear_pointwise(x_u8, 1.0, U8_ZERO_POINT, packed_weight, w_scale, no_zero_points, None,
                                              1.0, 0, torch.float32, "none", [], "")


def _u8s8_is_exact(weight_max: int) -> bool:
    """Whether oneDNN's u8·s8 kernel gives the exact integer sums for activation codes 1 … 255 and weights up to
    ``±weight_max``, tried on a small example that includes the worst case (largest codes side by side)."""
    generator = torch.Generator().manual_seed(0)
    w_q = torch.randint(-weight_max, weight_max + 1, (8, 40), dtype=torch.int8, generator=generator)
    x_q = torch.randint(-127, 128, (5, 40), dtype=torch.int8, generator=generator)
    w_q[0], x_q[0] = weight_max, 127                 # every pair of products at its largest
    try:
        packed = torch.ops.onednn.qlinear_prepack(w_q, None)
        got = u8s8_linear((x_q.short() + U8_ZERO_POINT).to(torch.uint8), packed, torch.ones(8))
    except (AttributeError, RuntimeError, NotImplementedError):  # no oneDNN, not x86, or an unsupported CPU
        return False
    return torch.equal(got, (x_q.long() @ w_q.long().t()).float())


_U8S8_WEIGHT_BITS: list[int | None] = []   # filled by the first call: the probe runs once per process


def u8s8_weight_bits() -> int | None:
    """How many bits of weight oneDNN's u8·s8 kernel multiplies exactly here: 8 on x86 CPUs with VNNI or AMX,
    7 on x86 CPUs with AVX2 alone, None where it does not run (not x86, no oneDNN).

    Without VNNI the kernel uses AVX2's ``vpmaddubsw``, which adds each pair of u8·s8 products into 16 bits and
    saturates past 32767: 255·127·2 does not fit, 255·64·2 does. So on those CPUs the weights get 7 bits
    (codes −63 … 63), as fbgemm (torch.ao) gives the activations 7 bits for the same reason (``reduce_range``).
    """
    if not _U8S8_WEIGHT_BITS:
        _U8S8_WEIGHT_BITS.append(8 if _u8s8_is_exact(127) else 7 if _u8s8_is_exact(63) else None)
    return _U8S8_WEIGHT_BITS[0]


def u8s8_kernel_available(weight_bits: int = 8) -> bool:
    """Whether oneDNN's u8·s8 kernel multiplies ``weight_bits``-bit weights exactly here (see :func:`u8s8_weight_bits`)."""
    bits = u8s8_weight_bits()
    return bits is not None and weight_bits <= bits


def default_weight_bits() -> int:
    """The weight bits :class:`QuantLinear` uses unless told: what this CPU's fastest exact kernel multiplies."""
    return u8s8_weight_bits() or 8


_PACKED_WEIGHTS: dict = {}   # id of an int8 weight tensor → (weak reference to it, its version, oneDNN's packed copy)


@torch.library.custom_op("minilib::u8s8_linear", mutates_args=())
def u8s8_linear_op(x_u8: torch.Tensor, weight_q: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """:func:`u8s8_linear` as one PyTorch operation that takes the plain ``(N, K)`` int8 weight.

    oneDNN's packed copy of the weight is made on first use and again whenever the weight changes (a new
    tensor, or new values written into it), and kept beside the weight, not in the module: so a model with
    these layers can be copied, saved, loaded and compiled like any other. ``torch.compile`` sees one opaque
    operation, a GEMM, and fuses what comes before and after it.
    """
    version = 0 if weight_q.is_inference() else weight_q._version   # a weight made under inference_mode has none
    cached = _PACKED_WEIGHTS.get(id(weight_q))
    if cached is None or cached[0]() is not weight_q or cached[1] != version:
        limit = 2 ** ((u8s8_weight_bits() or 8) - 1) - 1          # ±127 or ±63: what the probe found exact
        largest = int(weight_q.to(torch.int16).abs().max())        # int16: in int8, |−128| and 128 wrap around
        if largest > limit:   # e.g. 8-bit codes saved on a VNNI CPU, loaded on an AVX2 one
            raise ValueError(f"this CPU's u8·s8 kernel multiplies weights up to ±{limit} exactly, got codes up to "
                             f"±{largest}: quantize the layer here (QuantLinear.from_linear)")
        key = id(weight_q)
        forget = lambda _, key=key: _PACKED_WEIGHTS.pop(key, None)   # noqa: E731  (the weight is gone)
        cached = weakref.ref(weight_q, forget), version, torch.ops.onednn.qlinear_prepack(weight_q, None)
        _PACKED_WEIGHTS[key] = cached
    return u8s8_linear(x_u8, cached[2], w_scale)


@u8s8_linear_op.register_fake
def _(x_u8, weight_q, w_scale):   # the output's shape and type, for torch.compile's tracing
    return x_u8.new_empty((x_u8.shape[0], weight_q.shape[0]), dtype=torch.float32)


@dataclass(frozen=True)
class Int8Kernels:
    """The two steps around the int8 GEMM: ``quantize`` each row of the input (:func:`quantize_rows`), then
    ``rescale`` the integer sums to floats (:func:`rescale`)."""

    quantize: Callable
    rescale: Callable


EAGER_KERNELS = Int8Kernels(quantize_rows, rescale)


@functools.cache
def compiled_kernels() -> Int8Kernels:
    """:data:`EAGER_KERNELS` compiled by ``torch.compile``: each step becomes one or two fused loops.

    Compiling takes tens of seconds once per process (shapes are dynamic, so it is not repeated per
    layer). Where ``torch.compile`` does not work (no C++ compiler, unsupported platform) this warns
    and returns the plain eager functions, which compute the same numbers.
    """
    quantize_fn = torch.compile(quantize_rows, dynamic=True)
    rescale_fn = torch.compile(rescale, dynamic=True)
    try:  # compile now, on a small example, so that a failure shows here and not in the middle of a model
        x_q, x_scale = quantize_fn(torch.randn(17, 24))
        rescale_fn(int8_matmul(x_q, x_q[:8].t()), x_scale, torch.ones(8), torch.zeros(8))
        quantize_fn(torch.randn(17, 24), unsigned=True)  # the u8·s8 kernel's codes: a second compiled loop
    except Exception as error:  # any failure of the compiler stack means: use the plain path
        warnings.warn(f"torch.compile failed here ({type(error).__name__}: {error}); using the eager int8 kernels", stacklevel=2)
        return EAGER_KERNELS
    return Int8Kernels(quantize_fn, rescale_fn)


class QuantLinear(nn.Module):
    """``nn.Linear`` with int8 per-channel weights and int8 per-token activations, run on an int8 GEMM.

    Build it from a trained layer with :meth:`from_linear`. ``compiled=True`` runs the quantize and rescale
    steps through :func:`compiled_kernels` (fewer passes over memory). Buffers: ``weight_q`` ``(out, in)`` int8,
    ``weight_scale`` ``(out,)`` float32, ``bias`` ``(out,)`` float32 or None. Input ``(..., in)`` float,
    output ``(..., out)`` float32.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, compiled: bool = False,
                 weight_bits: int | None = None):
        super().__init__()
        if weight_bits not in (None, 7, 8):
            raise ValueError(f"weight_bits must be 8, 7 or None (this CPU's choice), got {weight_bits!r}")
        self.in_features, self.out_features, self.compiled = in_features, out_features, compiled
        self.weight_bits = weight_bits or default_weight_bits()
        self.register_buffer("weight_q", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, compiled: bool = False, weight_bits: int | None = None) -> "QuantLinear":
        """Quantize a float ``nn.Linear``: ``W_q = round(W / s_w)`` with ``s_w[n] = max_k |W[n, k]| / 127``
        (``/ 63`` with ``weight_bits=7``; by default this CPU's choice, :func:`default_weight_bits`)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"QuantLinear.from_linear expects an nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, compiled=compiled,
                    weight_bits=weight_bits)
        qw = quantize(linear.weight, bits=layer.weight_bits, symmetric=True, axis=0)
        layer.weight_q.copy_(qw.q)
        layer.weight_scale.copy_(qw.scale.flatten())
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer.to(linear.weight.device)

    @torch.no_grad()  # inference only: rounding has no useful gradient (train with FakeQuantLinear instead)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"QuantLinear expects input (..., {self.in_features}), got {tuple(x.shape)}")
        rows = x.reshape(-1, self.in_features).float()
        kernels = compiled_kernels() if self.compiled else EAGER_KERNELS
        if rows.device.type == "cpu" and u8s8_kernel_available(self.weight_bits):
            return self._forward_u8s8(rows, kernels.quantize).reshape(*x.shape[:-1], self.out_features)
        x_q, x_scale = kernels.quantize(rows)  # (M, K) int8, (M, 1)
        acc = int8_matmul(x_q, self.weight_q.t())  # Σ_k x_q[m,k] · W_q[n,k], exact int32 (M, N)
        out = kernels.rescale(acc, x_scale, self.weight_scale, self.bias)  # · s_x[m] · s_w[n] + b[n]
        return out.reshape(*x.shape[:-1], self.out_features)

    def _forward_u8s8(self, rows: torch.Tensor, quantize_fn=quantize_rows) -> torch.Tensor:
        """The same integer sums on x86's u8·s8 kernel (see the module's docstring): rows (M, K) → (M, N)."""
        x_u8, x_scale = quantize_fn(rows, unsigned=True)  # (M, K) uint8 = x_q + 128, (M, 1)
        out = u8s8_linear_op(x_u8, self.weight_q, self.weight_scale)  # Σ_k x_q · W_q · s_w[n], (M, N)
        return _scale_rows_add_bias(out, x_scale, self.bias)  # · s_x[m] + b[n]

    def extra_repr(self) -> str:
        bits = "int8" if self.weight_bits == 8 else f"int8 activations, {self.weight_bits}-bit weights"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{bits}{', compiled' if self.compiled else ''}")
