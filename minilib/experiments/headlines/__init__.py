"""The course's headline comparisons, one module per chapter (``attention.py``, ``quant.py``, ...).

Each module defines ``headlines() -> list[Headline]``: it measures its chapter's claims on this
machine (e.g. "memory-efficient attention within 1.5× of PyTorch's fused kernel at n = 2048") and
says whether each met its target. This package's own code runs them: ``python -m minilib.bench``
(:mod:`minilib.experiments.cli`, where ``CHAPTERS`` lists the modules; a new chapter's module is added there)
runs them all, and one that fails is reported as a failed row, never a crash of the whole run.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Callable

from minilib.support.bench import Headline, _text_table


@dataclass
class FileResult:
    """What one headline module gave: its headlines, or the error that stopped it."""

    name: str
    headlines: list[Headline]
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(h.passed for h in self.headlines)


def run_file(name: str, headlines: Callable[[], list[Headline]]) -> FileResult:
    """Call one module's ``headlines()``; any exception becomes ``FileResult.error``."""
    try:
        rows = list(headlines())
        for row in rows:
            if not isinstance(row, Headline):
                raise TypeError(f"headlines() must return Headline objects, got {type(row).__name__}")
        return FileResult(name, rows)
    except Exception as error:  # report and carry on: one broken chapter must not hide the others
        where = traceback.extract_tb(error.__traceback__)[-1]
        return FileResult(name, [], f"{type(error).__name__}: {error} ({where.filename}:{where.lineno})")


def run(chapters: dict[str, Callable[[], list[Headline]]], names: list[str] | None = None) -> list[FileResult]:
    """Run the named headline modules of ``chapters`` (all of them by default), in name order."""
    names = sorted(chapters) if not names else names
    unknown = [name for name in names if name not in chapters]
    if unknown:
        raise ValueError(f"no headline module named {', '.join(map(repr, unknown))}; available: {sorted(chapters)}")
    return [run_file(name, chapters[name]) for name in names]


def table(results: list[FileResult], markdown: bool = False) -> str:
    """One table: chapter, headline, measured, target, PASS/MISS/ERROR, detail (plain text, or Markdown)."""
    rows = []
    for result in results:
        if result.error is not None:
            rows.append((result.name, "(headlines() failed)", "", "", "ERROR", result.error))
        for h in result.headlines:
            rows.append((result.name, h.name, f"{h.measured:.3g} {h.unit}", f"{h.goal} {h.target:.3g} {h.unit}".strip(),
                         "PASS" if h.passed else "MISS", h.detail))
    header = ("file", "headline", "measured", "target", "result", "detail")
    if markdown:
        cell = lambda text: str(text).replace("|", "\\|")   # noqa: E731  (a "|" inside a detail would split the cell)
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                          *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows)])
    return _text_table(header, rows)
