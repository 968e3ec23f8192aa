"""Notebook budgets: run each notebook headless in a fresh kernel and measure its time and memory.

Every chapter must run top to bottom in at most 90 s on a 2-core CPU with peak memory under
1.5 GB (Binder gives about 2 GB), and the whole course in at most 10 minutes. Wall time includes
starting the kernel; memory is the resident set size (RSS) of the kernel and any processes it
starts, sampled while the notebook runs. The CPU time of those processes is reported too: on a busy
machine wall time is inflated by waiting for a core, CPU time much less so.
"""
from __future__ import annotations

import base64
import contextlib
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import psutil

from minilib.course.notebook_runner import CellFailed, run_cells
from minilib.support.bench import text_table

NOTEBOOK_SECONDS = 90.0
NOTEBOOK_BYTES = 1.5e9
COURSE_SECONDS = 600.0


@dataclass
class NotebookRun:
    """One notebook's wall time and CPU time (s) and peak memory (bytes); ``error`` if a cell failed."""

    path: Path
    seconds: float
    peak_bytes: int
    cpu_seconds: float = 0.0
    error: str | None = None
    figure: bytes | None = None     # the PNG of the cell tagged "readme-figure", if it ran

    @property
    def within_budget(self) -> bool:
        return self.error is None and self.seconds <= NOTEBOOK_SECONDS and self.peak_bytes <= NOTEBOOK_BYTES


class _KernelSampler(threading.Thread):
    """Samples this process's children (the kernel and what it starts): summed RSS and CPU time."""

    def __init__(self, every: float):
        super().__init__(daemon=True)
        self.every, self.peak_rss, self.cpu_seconds = every, 0, 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self._stop_event.wait(self.every):
            rss, cpu = 0, 0.0
            for child in me.children(recursive=True):
                if child.pid in _COMPETITORS:   # the busy neighbour of --competitor is not the notebook's
                    continue
                try:
                    rss += child.memory_info().rss
                    times = child.cpu_times()
                    cpu += times.user + times.system
                except psutil.Error:  # the process ended between listing and reading
                    pass
            self.peak_rss = max(self.peak_rss, rss)
            self.cpu_seconds = max(self.cpu_seconds, cpu)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


_COMPETITORS: set[int] = set()   # process ids of busy_competitor's programs, left out of the measurements


@contextlib.contextmanager
def busy_competitor():
    """Keep one CPU busy with another program while the block runs: a Python loop that never sleeps, as a
    neighbour's training job on a shared hub would. ``python -m minilib notebooks --competitor`` uses it."""
    loop = ("import os\nparent = os.getppid()\n"
            "while os.getppid() == parent:   # ends with us, even if we are killed\n"
            "    for _ in range(1_000_000): pass")
    competitor = subprocess.Popen([sys.executable, "-c", loop])
    _COMPETITORS.add(competitor.pid)
    try:
        yield competitor
    finally:
        competitor.kill()
        competitor.wait()
        _COMPETITORS.discard(competitor.pid)


def run_notebook(path, timeout: float = 600, sample_every: float = 0.05, env: dict | None = None) -> NotebookRun:
    """Execute the notebook at ``path`` in a fresh kernel (the file is not changed) and measure it.

    ``env``: the kernel's environment (default: this process's).
    """
    path = Path(path)
    if not path.is_file() or path.suffix != ".ipynb":
        raise ValueError(f"expected the path of an existing .ipynb file, got {str(path)!r}")
    notebook = nbformat.read(path, as_version=4)
    sampler = _KernelSampler(sample_every)
    sampler.start()
    start, error = time.perf_counter(), None
    try:
        run_cells(notebook, path.parent.resolve(), timeout, env)
    except CellFailed as failure:  # a failing cell is a result to report, not a reason to stop
        error = str(failure)
    seconds = time.perf_counter() - start
    sampler.stop()
    return NotebookRun(path, seconds, sampler.peak_rss, sampler.cpu_seconds, error, key_figure(notebook))


def key_figure(notebook, tag: str = "readme-figure") -> bytes | None:
    """The last PNG drawn by the code cell tagged ``tag``: the chapter's picture in the README."""
    for cell in notebook.cells:
        if cell.cell_type == "code" and tag in cell.metadata.get("tags", []):
            pngs = [output["data"]["image/png"] for output in cell.get("outputs", [])
                    if "image/png" in output.get("data", {})]
            return base64.b64decode(pngs[-1]) if pngs else None
    return None


def budget_table(runs: list[NotebookRun], markdown: bool = False) -> str:
    """Wall time and peak memory of each notebook against its budget, and the course total."""
    rows = [
        (run.path.name, f"{run.seconds:.1f} s", f"{run.cpu_seconds:.1f} s", f"{run.peak_bytes / 1e6:.0f} MB",
         "PASS" if run.within_budget else ("ERROR" if run.error else "MISS"), run.error or "")
        for run in runs
    ]
    total = sum(run.seconds for run in runs)
    cpu_total = sum(run.cpu_seconds for run in runs)
    rows.append(("whole course", f"{total:.1f} s", f"{cpu_total:.1f} s", "",
                 "PASS" if total <= COURSE_SECONDS else "MISS", ""))
    header = ("notebook", f"time (≤ {NOTEBOOK_SECONDS:.0f} s)", "CPU time", f"peak memory (≤ {NOTEBOOK_BYTES / 1e9:.1f} GB)",
              "result", "error")
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    return text_table(header, rows)


def course_passed(runs: list[NotebookRun]) -> bool:
    return all(run.within_budget for run in runs) and sum(run.seconds for run in runs) <= COURSE_SECONDS
