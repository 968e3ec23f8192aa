"""The course's headline comparisons, one module per chapter (``ch02_self_attention.py``, ``ch07_quantization.py``...).

Each module defines ``headlines() -> list[Headline]``: it measures its chapter's claims on this
machine (e.g. "memory-efficient attention within 1.5× of PyTorch's fused kernel at n = 2048") and
says whether each met its target. A chapter that has one says so in :mod:`minilib.chapters` (``headlines=True``);
``python -m minilib bench`` runs them all (or the chapters named), and one that fails is reported as a failed
row, never a crash of the whole run.
"""
from __future__ import annotations

import importlib
import traceback
from dataclasses import asdict, dataclass
from typing import Callable

from minilib.chapters import CHAPTERS, Chapter
from minilib.support.bench import Headline, text_table


@dataclass
class ChapterResult:
    """What one chapter's headline module gave: its rows, or the error that stopped it."""

    chapter: Chapter
    headlines: list[Headline]
    error: str | None = None

    @property
    def passed(self) -> bool:
        """No error, and every row that could be measured here met its target."""
        return self.error is None and all(h.passed for h in self.headlines if h.available)

    def to_json(self) -> dict:
        rows = [asdict(h) | {"status": h.status} for h in self.headlines]
        return {"rows": rows, "error": self.error}


def run_chapter(chapter: Chapter, headlines: Callable[[], list[Headline]] | None = None) -> ChapterResult:
    """Call the chapter's ``headlines()`` (or ``headlines``); any exception becomes ``ChapterResult.error``."""
    try:
        if headlines is None:
            headlines = importlib.import_module(chapter.module_path("headlines")).headlines
        rows = list(headlines())
        for row in rows:
            if not isinstance(row, Headline):
                raise TypeError(f"headlines() must return Headline objects, got {type(row).__name__}")
        return ChapterResult(chapter, rows)
    except Exception as error:  # report and carry on: one broken chapter must not hide the others
        where = traceback.extract_tb(error.__traceback__)[-1]
        return ChapterResult(chapter, [], f"{type(error).__name__}: {error} ({where.filename}:{where.lineno})")


def with_headlines(chapters: list[Chapter] | None = None) -> list[Chapter]:
    """The chapters (all of :data:`~minilib.chapters.CHAPTERS` by default) that have a headline module."""
    return [chapter for chapter in (CHAPTERS if chapters is None else chapters) if chapter.headlines]


def run(chapters: list[Chapter]) -> list[ChapterResult]:
    """Run the headline module of each of ``chapters``, in order; ValueError for a chapter that has none."""
    without = [chapter.name for chapter in chapters if not chapter.headlines]
    if without:
        raise ValueError(f"no headline rows for {', '.join(without)}; the chapters with headlines are "
                         f"{', '.join(chapter.name for chapter in with_headlines())}")
    return [run_chapter(chapter) for chapter in chapters]


def table(results: list[ChapterResult]) -> str:
    """One plain-text table: chapter, headline, measured, target, PASS/MISS/N/A/ERROR, detail."""
    rows = []
    for result in results:
        number = f"{result.chapter.number:02d}"
        if result.error is not None:
            rows.append((number, "(headlines() failed)", "", "", "ERROR", result.error))
        for h in result.headlines:
            measured = f"{h.measured:.3g} {h.unit}" if h.available else "—"
            rows.append((number, h.name, measured, f"{h.goal} {h.target:.3g} {h.unit}", h.status, h.detail))
    return text_table(("chapter", "headline", "measured", "target", "result", "detail"), rows)
