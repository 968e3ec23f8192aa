"""Where the course's two editions of its notebooks live.

- ``notebooks/solutions/NN_*.ipynb``: the **teacher's edition**, the one source that authors edit. Each exercise's
  answer sits between ``### BEGIN SOLUTION`` and ``### END SOLUTION``, each written exercise's rubric between
  ``### BEGIN RUBRIC`` and ``### END RUBRIC``.
- ``notebooks/NN_*.ipynb``: the **student edition**, what a learner opens first (the Quick start, Binder, Colab, a
  hub). It is generated from the teacher's edition and committed: the answers are stubs, the rubrics stay as
  self-assessment. Regenerate it after every change to the teacher's edition::

      python -m minilib assignments build --self-study

  (``tests/test_editions.py`` fails while it is stale.)
"""
from __future__ import annotations

from pathlib import Path

from minilib.chapters import with_notebooks

COURSE = Path(__file__).resolve().parents[2]
STUDENT_EDITION = COURSE / "notebooks"
TEACHER_EDITION = STUDENT_EDITION / "solutions"


def teacher_notebooks() -> list[Path]:
    """The teacher's edition, one notebook per chapter (:mod:`minilib.chapters`), in chapter order."""
    return [TEACHER_EDITION / chapter.notebook for chapter in with_notebooks()]


def student_notebooks() -> list[Path]:
    """The committed student edition, one notebook per chapter (:mod:`minilib.chapters`), in chapter order."""
    return [STUDENT_EDITION / chapter.notebook for chapter in with_notebooks()]
