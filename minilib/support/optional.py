"""Optional tools: a row that needs something this machine lacks says so instead of failing.

The course compares its own code with today's libraries (FlexAttention, torchao, ONNX Runtime). On a
learner's machine one of them may be missing (not installed, no C++ compiler for ``torch.compile``).
Every such reference row goes through :func:`optional_row`: it returns the row's value, or an
:class:`Unavailable` that prints as one line, "not available here", the reason and how to install::

    row = optional_row("torchao int8", lambda: torchao_variant(model, "int8 dynamic"), hint="pip install torchao")
    if isinstance(row, Unavailable):
        print(row)          # torchao int8: not available here (No module named 'torchao'); pip install torchao
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")


class NotAvailable(RuntimeError):
    """Raised by code that needs an optional tool this machine does not have; ``hint`` says how to get it."""

    def __init__(self, reason: str, hint: str = ""):
        super().__init__(reason)
        self.reason, self.hint = reason, hint


@dataclass(frozen=True)
class Unavailable:
    """A reference row that could not run here: what, why (one line), and how to get it."""

    name: str
    reason: str
    hint: str = ""

    def __str__(self) -> str:
        return f"{self.name}: not available here ({self.reason})" + (f"; {self.hint}" if self.hint else "")


def require(module: str, hint: str):
    """Import ``module`` or raise :class:`NotAvailable` with the import error as the reason."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise NotAvailable(f"{type(error).__name__}: {error}", hint) from error


def optional_row(name: str, build: Callable[[], T], hint: str = "") -> T | Unavailable:
    """``build()``, or an :class:`Unavailable` row when it raises :class:`NotAvailable` or ``ImportError``.

    Only those two mean "this machine lacks a tool"; any other exception is a bug and propagates.
    ``hint`` is used when the error does not carry its own.
    """
    try:
        return build()
    except NotAvailable as error:
        return Unavailable(name, _one_line(error.reason), error.hint or hint)
    except ImportError as error:
        return Unavailable(name, _one_line(f"{type(error).__name__}: {error}"), hint)


def _one_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "unknown reason"
    return line if len(line) <= limit else line[:limit - 1] + "…"


def runnable(rows: dict) -> dict:
    """The entries of ``rows`` that are not :class:`Unavailable`: the ones there is something to measure."""
    return {name: row for name, row in rows.items() if not isinstance(row, Unavailable)}
