"""Command line: the course's headline comparisons and notebook budgets (run as ``python -m minilib.bench``).

    python -m minilib.bench                      # every headline module: measured vs target
    python -m minilib.bench attention quant      # only these headline modules
    python -m minilib.bench --markdown           # the same as a Markdown table naming the machine (for the README)
    python -m minilib.bench notebooks            # every notebook's time and memory vs its budget
    python -m minilib.bench notebooks --cold     # the same from an empty cache, as on a fresh clone
    python -m minilib.bench notebooks --cold --competitor   # beside one busy program, as on a shared hub
    python -m minilib.bench notebooks notebooks/solutions/02_self_attention.ipynb --markdown
    python -m minilib.bench notebooks --figures notebooks/figures   # also save each chapter's key plot

Exit code 0 when everything met its target, 1 otherwise, 2 for a bad command line.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

from minilib.course import notebook_budget as notebooks
from minilib.course.editions import TEACHER_EDITION
from minilib.experiments import headlines
from minilib.experiments.headlines import (
    ch02_self_attention,
    ch04_sparse_attention,
    ch05_linear_attention,
    ch06_distillation,
    ch07_quantization,
    ch08_pruning,
    ch09_architecture,
    ch13_fast_generation,
)
from minilib.support.bench import machine_label

NOTEBOOK_DIR = TEACHER_EDITION   # the budget holds with every exercise solved (the teacher's edition runs the answers)
CHAPTERS = {"attention": ch02_self_attention.headlines, "sparse": ch04_sparse_attention.headlines,
            "linear": ch05_linear_attention.headlines, "distill": ch06_distillation.headlines,
            "quant": ch07_quantization.headlines, "prune": ch08_pruning.headlines, "arch": ch09_architecture.headlines,
            "generation": ch13_fast_generation.headlines}
"""Each headline module's name and its ``headlines()`` function."""


def headlines_main(names: list[str], markdown: bool = False) -> int:
    try:
        results = headlines.run(CHAPTERS, names)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    if not results:
        print("No headline modules yet: chapters add them to minilib/experiments/headlines/.")
        return 0
    print(headlines.table(results, markdown))
    print(f"\nMachine: {machine_label()}")
    return 0 if all(result.passed for result in results) else 1


def notebooks_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m minilib.bench notebooks",
                                     description="Run notebooks headless and check time and memory budgets.")
    parser.add_argument("paths", nargs="*", type=Path, help=f"notebooks to run (default: all in {NOTEBOOK_DIR})")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (for the README)")
    parser.add_argument("--cold", action="store_true",
                        help="start from an empty cache (MINILIB_CACHE in a temporary folder), as a fresh clone does: "
                             "the chapters use what the course ships in data/ and train the rest")
    parser.add_argument("--competitor", action="store_true",
                        help="run one busy program (a Python loop that never sleeps) beside the notebooks, as a "
                             "shared hub's neighbour would; compare with a run without it, chapter by chapter")
    parser.add_argument("--figures", type=Path, metavar="DIR",
                        help='save the plot of each notebook\'s cell tagged "readme-figure" as DIR/<notebook>.png')
    args = parser.parse_args(argv)
    paths = args.paths or sorted(NOTEBOOK_DIR.glob("[0-9]*.ipynb"))
    if not paths:
        print(f"No notebooks found in {NOTEBOOK_DIR}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="minilib-cold-cache-") as empty_cache, \
            (notebooks.busy_competitor() if args.competitor else contextlib.nullcontext()):
        env = os.environ | {"MINILIB_CACHE": empty_cache} if args.cold else None
        return _run_notebooks(paths, env, args)


def _run_notebooks(paths: list[Path], env: dict | None, args) -> int:
    runs = []
    for path in paths:
        try:
            runs.append(notebooks.run_notebook(path, env=env))
        except ValueError as error:
            print(error, file=sys.stderr)
            return 2
        print(f"{path.name}: {runs[-1].seconds:.1f} s ({runs[-1].cpu_seconds:.1f} s CPU), "
              f"{runs[-1].peak_bytes / 1e6:.0f} MB", file=sys.stderr)
        if args.figures and runs[-1].figure:
            args.figures.mkdir(parents=True, exist_ok=True)
            (args.figures / f"{path.stem}.png").write_bytes(runs[-1].figure)
    print(notebooks.budget_table(runs, markdown=args.markdown))
    print(f"\nMeasured on: {machine_label()}" + (", starting from an empty cache (--cold)" if args.cold else "")
          + (", beside one busy program (--competitor)" if args.competitor else ""))
    return 0 if notebooks.course_passed(runs) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["notebooks"]:
        return notebooks_main(argv[1:])
    markdown = "--markdown" in argv
    argv = [arg for arg in argv if arg != "--markdown"]
    if any(arg.startswith("-") for arg in argv):
        print(__doc__, file=sys.stderr)
        return 0 if set(argv) & {"-h", "--help"} else 2
    return headlines_main(argv, markdown)

