"""The machinery every chapter's checks share: :func:`exercise` registers a check, ``expect_*`` compare answers.

Called plainly, a check never raises: a wrong answer becomes a printed ✘ with what was expected, what was got and a
hint, and the call returns False. ``check_x.assert_passes(answer)`` prints the same, then raises
:class:`CheckNotPassed` (an AssertionError) when the check fails: the form for autograders that count a cell that
raises as failed (nbgrader's test cells) and for the tests of the teacher's edition.
"""
from __future__ import annotations

import functools
import json
import os
import traceback

import torch

REGISTRY: dict[str, "Exercise"] = {}


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

        Returns None, so that a cell ending with it shows no result (nbgrader would read a number as partial credit).
        """
        passed, message = self._report(*answers, **kwargs)
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
            where = traceback.extract_tb(error.__traceback__)[-1]
            passed, message = False, (
                f"✘ {self.name}: your code raised {type(error).__name__}: {error}\n"
                f"   (line {where.lineno}: {where.line})"
            )
        print(message)
        _log(self.name, passed, self.points if passed else 0, message)
        return passed, message


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


def expect_close(what: str, got, expected, atol: float = 1e-5, rtol: float = 1e-4, hint: str = ""):
    """Raise :class:`CheckFailed` unless tensors ``got`` and ``expected`` have equal shapes and values."""
    if not isinstance(got, torch.Tensor):
        raise CheckFailed(what, f"a tensor of shape {tuple(expected.shape)}", f"{type(got).__name__}", hint)
    if got.shape != expected.shape:
        raise CheckFailed(what, f"shape {tuple(expected.shape)}", f"shape {tuple(got.shape)}", hint)
    if not torch.allclose(got.float(), expected.float(), atol=atol, rtol=rtol):
        worst = (got.float() - expected.float()).abs().max().item()
        raise CheckFailed(what, _preview(expected), f"{_preview(got)} (max abs difference {worst:.3g})", hint)


def expect_equal(what: str, got, expected, hint: str = ""):
    """Raise :class:`CheckFailed` unless ``got == expected`` (plain Python values)."""
    if got != expected:
        raise CheckFailed(what, repr(expected), repr(got), hint)


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


def _preview(t: torch.Tensor, n: int = 6) -> str:
    flat = t.detach().float().flatten()[:n].tolist()
    more = ", …" if t.numel() > n else ""
    return "[" + ", ".join(f"{x:.4g}" for x in flat) + more + "]"


def _describe(name: str, f: CheckFailed) -> str:
    lines = [f"✘ {name}: {f.what}", f"   expected: {f.expected}", f"   got:      {f.got}"]
    if f.hint:
        lines.append(f"   hint: {f.hint}")
    return "\n".join(lines)


def _log(name: str, passed: bool, points: int, message: str) -> None:
    path = os.environ.get("MINILIB_GRADING_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps({"check": name, "passed": passed, "points": points, "message": message}) + "\n")
