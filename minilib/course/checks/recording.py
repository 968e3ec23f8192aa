"""What an answer asked PyTorch to do, recorded at the dispatcher.

:class:`Recording` watches a block of code at two levels at once:

- the **dispatcher** (a ``TorchDispatchMode``): every ATen operation that runs, whichever Python route reached it
  (``q @ k.T``, ``torch.einsum``, ``torch.ops.aten.mm``, ``torch._C._nn.linear``, a module's forward, an unbound
  ``Class.forward(instance, ...)``), with its input and output dtypes and shapes, the storage it allocated and the
  work it did;
- the **Python API** (a ``TorchFunctionMode``): the name of every ``torch`` function or tensor method called, so
  that a composite function such as ``scaled_dot_product_attention`` is seen as itself, not only as its pieces.

A check then asks: the largest tensor materialised, the total work, whether the matrix products were on integers,
whether a NaN was cast to an integer type.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# Matrix products at the dispatcher (``matmul`` and ``einsum`` decompose into these), as multiply-add counts.
_MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::_int_mm", "aten::dot",
            "aten::vdot", "aten::mv", "aten::addmv", "aten::_scaled_mm", "aten::convolution", "aten::_convolution"}
# Operations that return a view or metadata: they move no data and do no arithmetic.
_NO_WORK = {"aten::view", "aten::_unsafe_view", "aten::reshape", "aten::transpose", "aten::permute", "aten::t",
            "aten::expand", "aten::select", "aten::slice", "aten::unsqueeze", "aten::squeeze", "aten::as_strided",
            "aten::alias", "aten::detach", "aten::unbind", "aten::split", "aten::split_with_sizes", "aten::chunk",
            "aten::narrow", "aten::diagonal", "aten::unfold", "aten::lift_fresh", "aten::_reshape_alias",
            "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::zeros", "aten::ones", "aten::full",
            "aten::scalar_tensor", "aten::arange", "aten::new_empty", "aten::new_zeros", "aten::new_ones",
            "aten::new_full", "aten::_local_scalar_dense", "aten::sym_size", "aten::is_nonzero"}
_ATTENTION_KERNELS = ("aten::_scaled_dot_product", "aten::_flash_attention", "aten::_efficient_attention")
_CASTS = {"aten::_to_copy", "aten::copy_", "aten::copy", "aten::to", "aten::_to_dtype"}


@dataclasses.dataclass(frozen=True)
class Op:
    """One ATen operation: its name (``aten::mm``), input and output (dtype, shape) pairs, the numbers it
    materialised in new storage, and its work (multiply-adds for a product, elements touched otherwise)."""

    name: str
    inputs: tuple
    outputs: tuple
    new_numbers: int
    work: int
    nonfinite_to_integer: bool = False

    def describe(self) -> str:
        dtypes = ", ".join(str(dtype).replace("torch.", "") for dtype, _ in self.inputs)
        return f"{self.name}({dtypes})"


class Recording:
    """``with Recording() as rec:`` records every PyTorch operation of the block (see the module's docstring).

    refuse_ops: ATen name prefixes (``"aten::_scaled_dot_product"``) and torch function names
    (``"scaled_dot_product_attention"``) that raise at once, through ``on_refused(label)``.
    """

    def __init__(self, refuse_ops=(), refuse_functions=(), on_refused=None):
        self.ops: list[Op] = []
        self.functions: list[str] = []
        self._refuse_ops, self._refuse_functions = tuple(refuse_ops), set(refuse_functions)
        self._on_refused = on_refused
        self._modes = (_FunctionLevel(self), _DispatchLevel(self))

    def __enter__(self) -> Recording:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        return False

    def clear(self) -> None:
        """Forget what was recorded so far (a module's __init__, say), to judge only what follows."""
        self.ops.clear()
        self.functions.clear()

    # --- what the answer did ---------------------------------------------------------------------------------

    def largest_new_tensor(self) -> tuple[int, str, tuple]:
        """(numbers, op name, shape) of the largest tensor the block materialised (views of others do not count)."""
        return max(((op.new_numbers, op.name, op.outputs[0][1] if op.outputs else ()) for op in self.ops),
                   default=(0, "", ()))

    def work(self, floating: bool | None = None) -> int:
        """Multiply-adds of the matrix products plus the elements every other operation touched.

        floating: count only operations on floating-point inputs (True) or only integer ones (False).
        """
        return sum(op.work for op in self.ops if floating is None or _is_floating(op) == floating)

    def matmuls(self, floating: bool) -> list[Op]:
        """The matrix products whose inputs were floating point (floating=True) or all integers (False)."""
        return [op for op in self.ops if op.name in _MATMULS and _is_floating(op) == floating]

    def nonfinite_casts(self) -> list[Op]:
        """Operations that turned a NaN or an infinity into an integer (its value is then up to the machine)."""
        return [op for op in self.ops if op.nonfinite_to_integer]

    def called(self, *names: str) -> list[str]:
        """The torch functions or tensor methods of ``names`` that the block called (``"numpy"``, ``"__array__"``)."""
        return [name for name in self.functions if name in names]

    # --- called by the two modes ----------------------------------------------------------------------------

    def _function(self, name: str) -> None:
        self.functions.append(name)
        if name in self._refuse_functions:
            self._on_refused(f"torch's {name}")

    def _op(self, name: str, args, kwargs, result) -> None:
        inputs = list(_tensors((args, kwargs)))
        outputs = list(_tensors(result))
        inputs_storage = {_storage_id(t) for t in inputs}
        new_numbers = sum(_storage_numbers(t) for t in outputs if _storage_id(t) not in inputs_storage)
        self.ops.append(Op(name, tuple((t.dtype, tuple(t.shape)) for t in inputs),
                           tuple((t.dtype, tuple(t.shape)) for t in outputs), new_numbers,
                           _work(name, inputs, outputs), _nonfinite_to_integer(name, inputs, outputs)))
        if any(name.startswith(prefix) for prefix in self._refuse_ops):
            self._on_refused(f"PyTorch's {name}")


class _FunctionLevel(TorchFunctionMode):
    def __init__(self, recording: Recording):
        super().__init__()
        self.recording = recording

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.recording._function(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


class _DispatchLevel(TorchDispatchMode):
    def __init__(self, recording: Recording):
        super().__init__()
        self.recording = recording

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # PyTorch would import its compiler (seconds) to keep it out of this mode: nothing compiles here

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        self.recording._op(func._schema.name, args, kwargs, result)
        return result


def _is_floating(op: Op) -> bool:
    return any(dtype.is_floating_point or dtype.is_complex for dtype, _ in op.inputs)


def _work(name: str, inputs: list, outputs: list) -> int:
    if name in _NO_WORK:
        return 0
    if name in ("aten::convolution", "aten::_convolution"):  # every output element: one dot product per kernel
        return outputs[0].numel() * inputs[1][0].numel()
    if name.startswith(_ATTENTION_KERNELS):  # q (…, L, E) against k (…, S, E), then v (…, S, Ev)
        q, k, v = inputs[:3]
        return q.numel() * k.shape[-2] + q[..., 0].numel() * k.shape[-2] * v.shape[-1]
    if name in _MATMULS:  # (…, m, k) times (k, n): m·k·n multiply-adds per batch
        first, second = inputs[1:3] if name.startswith(("aten::add", "aten::baddbmm")) else inputs[:2]
        return first.numel() * (second.shape[-1] if second.dim() >= 2 else 1)
    return max([t.numel() for t in inputs + outputs], default=0)


def _nonfinite_to_integer(name: str, inputs: list, outputs: list) -> bool:
    """A cast (``.to(torch.int8)``, ``copy_`` into an integer tensor) of a NaN or an infinity."""
    if name not in _CASTS or not any(_is_integer(t.dtype) for t in outputs):
        return False
    with torch._C.DisableTorchFunction():  # the check's own look is not the answer's work
        return any(t.dtype.is_floating_point and t.numel() and not bool(torch.isfinite(t).all()) for t in inputs)


def _is_integer(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _storage_id(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except RuntimeError:  # a tensor without storage (a meta or functional tensor)
        return id(t)


def _storage_numbers(t: torch.Tensor) -> int:
    try:
        return math.ceil(t.untyped_storage().nbytes() / max(t.element_size(), 1))
    except RuntimeError:
        return t.numel()


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
