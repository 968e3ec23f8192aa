"""Guards for the "build it" exercises: the answer must do the work itself.

:func:`forbidden_calls` turns the library functions under study into tripwires while an answer runs;
:class:`TorchOps` records every PyTorch operation an answer performs, so a check can reject a float
matrix product where integers are required, or an ``(n, n)`` buffer where the point is to avoid one.
"""
from __future__ import annotations

import contextlib
import types

import torch
from torch.overrides import TorchFunctionMode

from minilib.course.checks.core import CheckFailed

MATMULS = {"matmul", "mm", "bmm", "addmm", "baddbmm", "linear", "einsum", "__matmul__", "__rmatmul__",
           "_int_mm", "tensordot", "dot", "mv", "inner"}


@contextlib.contextmanager
def forbidden_calls(answer, targets, hint: str):
    """While the block runs, calling any ``targets`` (a list of ``(module, attribute name)``) raises CheckFailed.

    The names the answer's code reads (a notebook's globals, a closure's variables) that are bound to a target
    (``from minilib.attention import ...`` in a notebook) are swapped as well, so importing the function under
    study under another name does not slip through.
    """
    for module, name in targets:
        if answer is getattr(module, name):  # the answer *is* the function under study (``shuffle = channel_shuffle``)
            label = f"{module.__name__}.{name}"
            raise CheckFailed(f"your answer is {label} itself", "your own code", label, hint)
    swaps = []  # (namespace or closure cell, key, original, tripwire)
    namespaces, cells = _names_read_by(answer)
    for module, name in targets:
        original, label = getattr(module, name), f"{module.__name__}.{name}"
        wire = _tripwire(label, hint)
        swaps.append((vars(module), name, original, wire))
        for namespace in namespaces:
            swaps += [(namespace, key, value, wire) for key, value in namespace.items() if value is original]
        swaps += [(cell, None, original, wire) for cell in cells if _contents(cell) is original]
    try:
        for holder, key, _, wire in swaps:
            _put(holder, key, wire)
        yield
    finally:
        for holder, key, original, _ in reversed(swaps):
            _put(holder, key, original)


def _put(holder, key, value):
    if key is None:
        holder.cell_contents = value
    else:
        holder[key] = value


def _contents(cell):
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell: a variable not yet assigned
        return None


def _tripwire(label: str, hint: str):
    def call(*args, **kwargs):
        raise CheckFailed(f"your answer calls {label}, the library code this exercise asks you to write",
                          "your own code", f"a call to {label}", hint)
    return call


def _names_read_by(answer) -> tuple[list[dict], list]:
    """The global namespaces (a notebook's, usually) and closure cells the answer's functions read names from."""
    if isinstance(answer, torch.nn.Module):
        answer = type(answer)
    if isinstance(answer, type):
        functions = [value for klass in answer.__mro__ if klass is not object and not klass.__module__.startswith("torch.")
                     for value in vars(klass).values() if isinstance(value, types.FunctionType)]
    else:
        functions = [answer] if isinstance(answer, types.FunctionType) else []
    namespaces, cells, seen = {}, [], set()
    while functions:
        fn = functions.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        namespaces.setdefault(id(fn.__globals__), fn.__globals__)
        for cell in fn.__closure__ or ():
            cells.append(cell)
            if isinstance(_contents(cell), types.FunctionType):  # a helper the answer closes over
                functions.append(_contents(cell))
    return list(namespaces.values()), cells


class TorchOps(TorchFunctionMode):
    """Record every PyTorch function or tensor method called inside ``with TorchOps() as ops:``.

    ``ops.calls`` holds ``(name, input dtypes, output shapes)``, one per call, in order.
    """

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", str(func))
        inputs = [t.dtype for t in _tensors((args, kwargs))]
        self.calls.append((name, inputs, [tuple(t.shape) for t in _tensors(result)]))
        return result

    def float_matmuls(self) -> list[str]:
        """The matrix products that took a floating-point operand, as 'name(dtypes)'."""
        return [f"{name}({', '.join(str(d).replace('torch.', '') for d in dtypes)})"
                for name, dtypes, _ in self.calls
                if name in MATMULS and any(d.is_floating_point for d in dtypes)]

    def integer_matmuls(self) -> int:
        return sum(1 for name, dtypes, _ in self.calls
                   if name in MATMULS and dtypes and not any(d.is_floating_point for d in dtypes))

    def largest(self) -> tuple[int, str, tuple]:
        """(elements, op name, shape) of the largest tensor any recorded call returned."""
        return max(((_numel(shape), name, shape) for name, _, shapes in self.calls for shape in shapes),
                   default=(0, "", ()))


def expect_tensors_under(ops: TorchOps, limit: int, who: str, expected: str, hint: str) -> None:
    """Fail the check when a call recorded by ``ops`` returned a tensor of ``limit`` numbers or more.

    who: whose code, with its inputs, to start the message (``"n = 4096, window 16: your code"``);
    expected: the bound in words (``"every tensor under 8,388,608 numbers"``).
    """
    elements, op, shape = ops.largest()
    if elements >= limit:
        raise CheckFailed(f"{who} built a tensor of {elements:,} numbers (shape {shape}, made by {op})", expected,
                          f"{elements:,}", hint=hint)


def _numel(shape) -> int:
    n = 1
    for size in shape:
        n *= size
    return n


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
