"""The machinery every chapter's checks share: :func:`exercise` registers a check, ``expect_*`` compare answers.

Called plainly, a check never raises: a wrong answer becomes a printed ✘ with what was expected, what was got and a
hint, and the call returns False. ``check_x.assert_passes(answer)`` prints the same, then raises
:class:`CheckNotPassed` (an AssertionError) when the check fails: the form for autograders that count a cell that
raises as failed (nbgrader's test cells) and for the tests of the teacher's edition.

The course's own grader reads results through :func:`recording`, in the grader's own request to the kernel (see
:mod:`minilib.course.assignments.grade`): nothing a student's code prints or writes counts.
"""
from __future__ import annotations

import contextlib
import functools
import math
import numbers
import warnings

import torch

REGISTRY: dict[str, "Exercise"] = {}
_RECORDINGS: list[list] = []   # the result lists of the recordings in progress (see recording())


class CheckFailed(AssertionError):
    """Raised inside a check body to report a wrong answer (caught by :func:`exercise`)."""

    def __init__(self, what: str, expected, got, hint: str = ""):
        self.what, self.expected, self.got, self.hint = what, expected, got, hint
        super().__init__(f"{what}: expected {expected}, got {got}")


class CheckNotPassed(AssertionError):
    """Raised by :meth:`Exercise.assert_passes` when a check fails; the message is the check's ✘ report."""


class Exercise:
    """A registered check: its name, points and the function that tests an answer."""

    def __init__(self, fn, points: int, chapter: str):
        self.fn, self.points, self.chapter = fn, points, chapter
        self.name = fn.__name__

    def __call__(self, *answers, **kwargs) -> bool:
        return self._report(*answers, **kwargs)[0]

    def assert_passes(self, *answers, **kwargs) -> None:
        """Run the check as a plain call does (printing ✔ or ✘), then raise :class:`CheckNotPassed` if it failed.

        For autograders: it returns None (nbgrader would read a number shown by the cell as partial credit), and the
        warnings raised meanwhile are printed to stdout (nbgrader fails a test cell that writes to stderr).
        """
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            passed, message = self._report(*answers, **kwargs)
        for warning in caught:
            print(f"⚠ {warning.category.__name__}: {warning.message}")
        if not passed:
            raise CheckNotPassed(message)

    def _report(self, *answers, **kwargs) -> tuple[bool, str]:
        try:
            self.fn(*answers, **kwargs)
            passed, message = True, f"✔ {self.name}: passed ({self.points}/{self.points} points)"
        except NotImplementedError:
            passed, message = False, f"✘ {self.name}: not done yet — replace `raise NotImplementedError` with your code."
        except CheckFailed as failure:
            passed, message = False, _describe(self.name, failure)
        except Exception as error:  # the learner's code crashed: say where, without a wall of traceback
            passed, message = False, describe_crash(self.name, error)
        print(message)
        for results in _RECORDINGS:
            results.append({"check": self.name, "passed": passed, "message": message})
        return passed, message


@contextlib.contextmanager
def recording():
    """Collect the result of every check that runs inside the block: ``with recording() as results: …`` gives
    ``[{"check": name, "passed": bool, "message": text}, ...]`` (how the grader and the tests read checks)."""
    results = []
    _RECORDINGS.append(results)
    try:
        yield results
    finally:
        _RECORDINGS.remove(results)


def exercise(points: int):
    """Register a check worth ``points``; the check body raises :class:`CheckFailed` on a wrong answer."""

    def register(fn):
        chapter = fn.__module__.rsplit(".", 1)[-1]
        wrapped = functools.wraps(fn)(Exercise(fn, points, chapter))
        if wrapped.name in REGISTRY and REGISTRY[wrapped.name].fn is not fn:
            raise ValueError(f"two checks are named {wrapped.name!r}; check names must be unique")
        REGISTRY[wrapped.name] = wrapped
        return wrapped

    return register


def expect_close(what: str, got, expected: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4, hint: str = "",
                 dtype: torch.dtype | None = None):
    """Raise :class:`CheckFailed` unless tensor ``got`` has ``expected``'s shape (and ``dtype``, where the format fixes
    it) and its values to ``atol`` + ``rtol``·|expected|. A Python number is accepted where a 0-d tensor is expected."""
    if expected.dim() == 0 and _is_number(got):
        got = torch.tensor(float(got), dtype=torch.float64)
    expect_tensor(what, got, tuple(expected.shape), dtype)
    if dtype is None and expected.dtype == torch.bool and got.dtype != torch.bool:
        raise CheckFailed(what, "a bool tensor (True/False)", f"a {_dtype(got.dtype)} tensor", hint)
    close = torch.isclose(got.detach().double(), expected.detach().double(), rtol=rtol, atol=atol, equal_nan=True)
    if not bool(close.all()):
        shown_expected, shown_got = _where_they_differ(got, expected, close)
        raise CheckFailed(what, shown_expected, shown_got, hint)


def expect_tensor(what: str, got, shape: tuple | None = None, dtype: torch.dtype | None = None, hint: str = ""):
    """Raise :class:`CheckFailed` unless ``got`` is a tensor (of ``shape`` and ``dtype`` when given), saying what it is."""
    wanted = "a tensor" + (f" of shape {shape}" if shape is not None else "") + (f", {_dtype(dtype)}" if dtype else "")
    if not isinstance(got, torch.Tensor):
        raise CheckFailed(f"{what}: return {wanted}", wanted, describe_value(got), _kind_hint(got) or hint)
    if shape is not None and tuple(got.shape) != tuple(shape):
        same_count = math.prod(shape) == got.numel()
        raise CheckFailed(what, f"shape {tuple(shape)}", f"shape {tuple(got.shape)}",
                          "the right number of values in another shape: check the order of your view, transpose "
                          "and reshape" if same_count else hint)
    if dtype is not None and got.dtype != dtype:
        raise CheckFailed(what, f"dtype {_dtype(dtype)}", f"dtype {_dtype(got.dtype)}",
                          f"this format stores {_dtype(dtype)}: convert with .to(torch.{_dtype(dtype)})")


def expect_tensors(what: str, got, count: int, hint: str = "") -> list:
    """``got`` as a list of ``count`` tensors (a list or a tuple), or :class:`CheckFailed` saying what it is."""
    if not (isinstance(got, (list, tuple)) and len(got) == count and all(isinstance(t, torch.Tensor) for t in got)):
        wanted = f"a list of {count} tensor{'s' if count > 1 else ''}"
        raise CheckFailed(f"{what}: return {wanted}", wanted, describe_value(got),
                          hint or "return one tensor for each one given, in the same order")
    return list(got)


def expect_equal(what: str, got, expected, hint: str = ""):
    """Raise :class:`CheckFailed` unless ``got == expected`` (plain Python values)."""
    if isinstance(expected, numbers.Number) and not isinstance(expected, bool):
        expect_number(what, got, expected, hint=hint)
        return
    sequences = isinstance(got, (list, tuple)) and isinstance(expected, (list, tuple))
    if type(got) is not type(expected) and not sequences:
        raise CheckFailed(what, describe_value(expected), describe_value(got), _kind_hint(got) or hint)
    if _plain(got) != _plain(expected):
        raise CheckFailed(what, repr(expected), repr(got), hint)


def _plain(value):
    """Lists and tuples alike (a learner may return either), all the way down."""
    return [_plain(item) for item in value] if isinstance(value, (list, tuple)) else value


def expect_number(what: str, got, expected: float, rel: float = 0.0, abs_: float = 0.0, hint: str = ""):
    """Raise :class:`CheckFailed` unless ``got`` is a number (Python, NumPy, or a one-element tensor) within
    ``abs_`` + ``rel``·|expected| of ``expected`` (exactly equal by default)."""
    got = as_number(what, got, hint)
    if not abs(got - float(expected)) <= abs_ + rel * abs(float(expected)):
        raise CheckFailed(what, f"{expected!r}", f"{got!r}", hint)


def as_number(what: str, got, hint: str = "") -> float:
    """``got`` as a float when it is a number (Python, NumPy, or a one-element tensor), else :class:`CheckFailed`."""
    if isinstance(got, torch.Tensor) and got.numel() == 1 and got.dtype != torch.bool:
        got = got.item()
    if not _is_number(got):
        raise CheckFailed(f"{what}: return a number", "a number", describe_value(got), _kind_hint(got) or hint)
    return float(got)


def expect_attribute(what: str, obj, name: str, kind: type = object, hint: str = ""):
    """``obj.name``, or :class:`CheckFailed` saying the exercise's layout needs it (``kind``: the type it must have)."""
    value = getattr(obj, name, None)
    if not isinstance(value, kind):
        wanted = f"an attribute {name}" + (f" ({kind.__name__})" if kind is not object else "")
        raise CheckFailed(what, wanted, f"{name} is {describe_value(value)}",
                          hint or "keep the names the exercise's __init__ gives: the check loads weights into them")
    return value


def describe_value(value) -> str:
    """What a learner's code returned, in words: ``None``, ``a tuple of 2: (a tensor (2, 7, 128) float32, None)``."""
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"a tensor {tuple(value.shape)} {_dtype(value.dtype)}"
    if isinstance(value, bool):
        return repr(value)
    if _is_number(value):
        return f"the number {value!r}"
    if isinstance(value, (tuple, list)):
        items = ", ".join(describe_value(item) for item in value[:3]) + (", …" if len(value) > 3 else "")
        return f"a {type(value).__name__} of {len(value)}: ({items})"
    if isinstance(value, dict):
        keys = ", ".join(repr(key) for key in list(value)[:5]) + (", …" if len(value) > 5 else "")
        return f"a dict with keys {keys}"
    if isinstance(value, type):
        return f"the class {value.__name__}"
    if callable(value) and hasattr(value, "__name__"):
        return f"the function {value.__name__}"
    if type(value).__module__ == "numpy":
        return f"a NumPy {type(value).__name__} {getattr(value, 'shape', '')}".rstrip()
    return f"a {type(value).__name__}"


def describe_crash(name: str, error: Exception) -> str:
    """The message for an answer that raised: the error and the line of the learner's code it came from."""
    from minilib.course.checks.reading import learner_frame, source_line

    frame = learner_frame(error.__traceback__)
    if frame is None:  # nothing of the learner's on the stack: the check tripped over what the answer returned
        return (f"✘ {name}: the check could not use what your answer returned ({type(error).__name__}: {error})\n"
                "   look at what the exercise asks your code to return (its kind and shape)")
    line = source_line(frame.f_code, frame.f_lineno)
    return (f"✘ {name}: your code raised {type(error).__name__}: {error}\n"
            f"   (in {frame.f_code.co_name}, line {frame.f_lineno}" + (f": {line})" if line else ")"))


def with_gradients(check):
    """Run ``check`` with autograd on, whatever the chapter set: it may have turned gradients off globally."""
    @functools.wraps(check)
    def run(*args, **kwargs):
        with torch.enable_grad():
            return check(*args, **kwargs)

    return run


def padded_batch(generator: torch.Generator, vocab_size: int, batch: int, seq: int, n_full: int, length: int):
    """Random token ids in [1, vocab_size) and their attention mask, both (batch, seq).

    The first ``n_full`` rows are all real tokens; the others hold ``length`` real tokens, then padding (id 0, mask 0).
    """
    input_ids = torch.randint(1, vocab_size, (batch, seq), generator=generator)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    attention_mask[n_full:, length:] = 0
    return input_ids * attention_mask, attention_mask


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _kind_hint(got) -> str:
    if got is None:
        return "your function returns None: is the `return` statement missing?"
    if isinstance(got, (tuple, list)):
        return "return only what the exercise asks for, not a tuple of several results"
    if isinstance(got, type):
        return "return the result, not the class"
    if callable(got):
        return "return the result of the computation, not a function (call it)"
    if type(got).__module__ == "numpy":
        return "return a torch tensor: torch.from_numpy(array) converts a NumPy array"
    return ""


def _where_they_differ(got: torch.Tensor, expected: torch.Tensor, close: torch.Tensor) -> tuple[str, str]:
    """Both tensors shown where they differ most, with how many values differ: not their (maybe equal) first values."""
    g, e = got.detach().double(), expected.detach().double()
    gap = (g - e).abs().nan_to_num(nan=math.inf).masked_fill(close, 0)
    worst = [int(i) for i in torch.unravel_index(gap.flatten().argmax(), gap.shape)] if gap.dim() else []
    if not worst:
        return _values(e.reshape(1))[1:-1], _values(g.reshape(1))[1:-1]
    last, column = gap.shape[-1], worst[-1]
    start = max(0, min(column - 2, last - 6))
    index = "[" + "".join(f"{i}, " for i in worst[:-1]) + f"{start}:{min(last, start + 6)}]"
    row = tuple(worst[:-1])
    bad, total = int((~close).sum()), close.numel()
    summary = (f"  ({bad:,} of {total:,} values differ; the largest gap, {gap.max().item():.3g}, "
               f"at [{', '.join(map(str, worst))}])")
    return (f"at {index}: {_values(e[row][start:start + 6], more=last > start + 6)}",
            f"at {index}: {_values(g[row][start:start + 6], more=last > start + 6)}{summary}")


def _values(t: torch.Tensor, more: bool = False) -> str:
    text = ", ".join(f"{x:.4g}" if isinstance(x, float) and not x.is_integer() else f"{x:g}" for x in t.tolist())
    return "[" + text + (", …" if more else "") + "]"


def _describe(name: str, f: CheckFailed) -> str:
    lines = [f"✘ {name}: {f.what}", f"   expected: {f.expected}", f"   got:      {f.got}"]
    if f.hint:
        lines.append(f"   hint: {f.hint}")
    return "\n".join(lines)
