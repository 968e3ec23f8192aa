"""The test command on a small machine: the CPUs shared out between pytest-xdist's workers, the longest files first.

``pyproject.toml`` loads it (``-p minilib.course.pytest_workers``) beside ``-n 2 --dist loadscope``, which runs each
file (a test module, or a chapter's notebook with its teacher's cells) on one of two worker processes.

- **Threads.** Each worker, and each notebook kernel it starts, would give PyTorch one thread per usable CPU: on a
  2-core machine, four threads for two cores, and every operation of one worker waits at its barrier for a thread
  that the other worker keeps off its core (:mod:`minilib.support.threads` tells the story). So a worker sets
  ``MINILIB_THREADS`` and ``OMP_NUM_THREADS`` to its share, the usable CPUs over the workers (at least one), for
  itself and the kernels it starts, unless ``MINILIB_THREADS`` was set already.
- **Order.** xdist hands out files in the order it receives them, the next one to whichever worker is nearly done,
  so a long file handed out last keeps one worker busy while the other has nothing left. Files are ordered
  longest first: the fresh Binder environment when it is built (``CI=true``, minutes), then the notebooks, longest
  first-run time first (as recorded in ``data/measurements/notebooks/``; a chapter not measured yet counts as the
  longest), then the test modules, most tests first (xdist's own guess, kept with ``--no-loadscope-reorder``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

NOTEBOOK_TIMES = Path(__file__).resolve().parents[2] / "data" / "measurements" / "notebooks"
LONGEST_FIRST = ["tests/test_binder.py"]
"""Test files that take minutes where they run (the Binder environment is built only in CI); scheduled first."""


def threads_per_worker(cpus: int, workers: int) -> int:
    """PyTorch threads for each of ``workers`` processes sharing ``cpus`` CPUs: an equal share, at least one."""
    return max(1, cpus // max(1, workers))


def share_threads(environ=os.environ) -> int | None:
    """In an xdist worker, give PyTorch (here and in the notebook kernels started from here) this worker's share of
    the usable CPUs; return it, or None outside a worker or when ``MINILIB_THREADS`` is set already."""
    workers = int(environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if not environ.get("PYTEST_XDIST_WORKER") or workers < 2 or environ.get("MINILIB_THREADS", "").strip():
        return None
    import torch

    from minilib.support.threads import usable_cpus

    share = threads_per_worker(usable_cpus(), workers)
    environ["MINILIB_THREADS"] = environ["OMP_NUM_THREADS"] = str(share)   # inherited by the kernels
    torch.set_num_threads(share)
    return share


def notebook_seconds(folder: Path = NOTEBOOK_TIMES) -> dict[str, float]:
    """{notebook file name: its longest recorded first-run time in seconds} over the machines measured."""
    seconds: dict[str, float] = {}
    for path in sorted(folder.glob("*.json")):
        for name, run in json.loads(path.read_text())["notebooks"].items():
            if run.get("seconds") is not None:
                seconds[name] = max(seconds.get(name, 0.0), run["seconds"])
    return seconds


def longest_first(items: list, seconds: dict[str, float], ci: bool) -> list:
    """``items`` (collected tests) regrouped by file, the files in the order of the module's docstring; the
    order inside a file is kept. A file's items need a ``nodeid`` ``"path::name"``."""
    files: dict[str, list] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)
    unknown = max(seconds.values(), default=0.0) + 1.0   # a notebook not measured yet: assume it is long

    def rank(path: str):
        if ci and path in LONGEST_FIRST:
            return (0, 0.0)
        if path.endswith(".ipynb"):
            return (1, -seconds.get(Path(path).name, unknown))
        return (2, -len(files[path]))

    return [item for path in sorted(files, key=rank) for item in files[path]]   # sorted is stable: ties keep order


def pytest_configure(config):
    share_threads()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    items[:] = longest_first(items, notebook_seconds(), os.environ.get("CI", "").lower() == "true")
