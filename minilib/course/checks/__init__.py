"""Exercise feedback: the visible checks that follow every code exercise.

Each chapter that has exercises has its own module here (``ch02_self_attention.py``, ``ch07_quantization.py``, ...),
declared in :mod:`minilib.chapters`; this package imports every declared one and offers their checks under one
name. A check is a plain function decorated with :func:`~minilib.course.checks.core.exercise`; it tests the
learner's answer on small hand-made cases against the reference and *never raises*: it prints what was expected,
what was got and a hint, and returns ``True`` or ``False``. The machinery the checks share is in
:mod:`minilib.course.checks.core`.

    from minilib.course.checks import check_attention_scores
    check_attention_scores(attention_scores)   # prints ✔ or ✘ with a hint

``check_attention_scores.assert_passes(attention_scores)`` raises when the check fails (for autograders such as
nbgrader). Graders read results with :func:`~minilib.course.checks.core.recording`.
"""
from __future__ import annotations

import importlib

from minilib.chapters import CHAPTERS, Chapter
from minilib.course.checks.core import REGISTRY, CheckFailed, Exercise, exercise, expect_close, expect_equal
from minilib.course.checks.quizzes import CHECKS as _RECAP_QUIZZES  # check_recap_NN: each chapter's recap quiz


def chapter_checks(chapters: list[Chapter] | None = None) -> dict[str, Exercise]:
    """Every check of the chapters' check modules (all of :data:`~minilib.chapters.CHAPTERS` by default), by name.

    Importing a module registers its exercises (:data:`~minilib.course.checks.core.REGISTRY`); a chapter's recap quiz
    (``check_recap_NN``, :mod:`~minilib.course.checks.quizzes`) counts as one of its checks.
    """
    checks = {}
    for chapter in CHAPTERS if chapters is None else chapters:
        if chapter.module_path("checks") is None:
            continue
        module = importlib.import_module(chapter.module_path("checks"))
        for name, value in vars(module).items():
            if isinstance(value, Exercise) and value.chapter == chapter.module:
                checks[name] = value
        checks.update({name: quiz for name, quiz in _RECAP_QUIZZES.items() if quiz.chapter == chapter.module})
    return checks


def __getattr__(name: str):
    """A check of a chapter declared after this package was imported (or an AttributeError naming the checks)."""
    if not name.startswith("check_"):
        raise AttributeError(f"module 'minilib.course.checks' has no attribute {name!r}")
    checks = chapter_checks()
    if name not in checks:
        raise AttributeError(f"minilib.course.checks has no {name!r}; the checks are {', '.join(sorted(checks))}")
    return checks[name]


globals().update(chapter_checks())
__all__ = ["REGISTRY", "CheckFailed", "Exercise", "chapter_checks", "exercise", "expect_close", "expect_equal",
           *sorted(chapter_checks())]
