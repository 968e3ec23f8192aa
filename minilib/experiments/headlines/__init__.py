"""The course's headline comparisons, one module per chapter (``attention.py``, ``quant.py``, ...).

Each module defines ``headlines() -> list[Headline]``: it measures its chapter's claims on this
machine (e.g. "memory-efficient attention within 1.5× of PyTorch's fused kernel at n = 2048") and
says whether each met its target. ``python -m minilib.bench`` runs them all; a module that fails
is reported as a failed row, never a crash of the whole run.
"""
from __future__ import annotations

import importlib
import pkgutil
import traceback
from dataclasses import dataclass

from minilib.bench import Headline, _text_table


@dataclass
class FileResult:
    """What one headline module gave: its headlines, or the error that stopped it."""

    name: str
    headlines: list[Headline]
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(h.passed for h in self.headlines)


def available(package: str = __name__) -> list[str]:
    """Names of the headline modules in ``package`` (this package by default), sorted."""
    path = importlib.import_module(package).__path__
    return sorted(info.name for info in pkgutil.iter_modules(path) if not info.name.startswith("_"))


def run_file(name: str, package: str = __name__) -> FileResult:
    """Import ``package.name`` and call its ``headlines()``; any exception becomes ``FileResult.error``."""
    try:
        module = importlib.import_module(f"{package}.{name}")
        if not callable(getattr(module, "headlines", None)):
            raise TypeError(f"{module.__name__} must define headlines() -> list[Headline]")
        headlines = list(module.headlines())
        for headline in headlines:
            if not isinstance(headline, Headline):
                raise TypeError(f"headlines() must return Headline objects, got {type(headline).__name__}")
        return FileResult(name, headlines)
    except Exception as error:  # report and carry on: one broken chapter must not hide the others
        where = traceback.extract_tb(error.__traceback__)[-1]
        return FileResult(name, [], f"{type(error).__name__}: {error} ({where.filename}:{where.lineno})")


def run(names: list[str] | None = None, package: str = __name__) -> list[FileResult]:
    """Run the named headline modules (all of them by default)."""
    known = available(package)
    names = known if not names else names
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"no headline module named {', '.join(map(repr, unknown))}; available: {known}")
    return [run_file(name, package) for name in names]


def table(results: list[FileResult]) -> str:
    """One plain-text table: chapter, headline, measured, target, PASS/MISS/ERROR, detail."""
    rows = []
    for result in results:
        if result.error is not None:
            rows.append((result.name, "(headlines() failed)", "", "", "ERROR", result.error))
        for h in result.headlines:
            rows.append((result.name, h.name, f"{h.measured:.3g} {h.unit}", f"{h.target:.3g} {h.unit}",
                         "PASS" if h.passed else "MISS", h.detail))
    return _text_table(("file", "headline", "measured", "target", "result", "detail"), rows)
