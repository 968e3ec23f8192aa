"""The course's command line, one entrance: ``python -m minilib <command> [arguments]``.

    python -m minilib chapters                          # the chapters: notebooks, modules, artefacts
    python -m minilib envcheck                          # is this environment ready for the course?
    python -m minilib bench [CHAPTER ...] [--markdown]  # the headline comparisons, measured here
    python -m minilib notebooks [CHAPTER ...] [--cold] [--competitor] [--markdown] [--figures DIR]   # notebook budgets
    python -m minilib profile CHAPTER                   # where a chapter's time goes (07: int8 against fp32)
    python -m minilib zoo list|verify|rebuild [NAME ...]                            # the shipped artefacts
    python -m minilib assignments build|grade ...       # the student edition; grading
    python -m minilib edition [CHAPTER ...] [--out DIR] # the executed edition, as HTML
    python -m minilib diagrams [NAME ...] [--png DIR]   # redraw the chapters' diagrams into the teacher's edition
    python -m minilib readme [--check]                  # the README's generated tables

A chapter is named by its number (``07``), its name (``quantization``, ``07_quantization``) or, where a notebook is
expected, a notebook's path. A wrong argument gets one line that says what was expected (exit code 2); a run that
misses a target or fails exits with 1.

This module is the top floor of the library: it may import every wing, and nothing imports it. Each command
imports what it runs only when it runs, so ``--help`` answers at once.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from minilib.chapters import CHAPTERS, Chapter, find, with_notebooks
from minilib.course.editions import STUDENT_EDITION, TEACHER_EDITION


class UsageError(Exception):
    """A command line that cannot be run as given: the message says what was expected."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad argument reported as one line (:class:`UsageError`) instead of usage and exit."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _chapter(text: str) -> Chapter:
    try:
        return find(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _notebook_in(edition: Path) -> Callable[[str], Path]:
    """An argument type: a notebook's path, or the notebook of the chapter named by the text in ``edition``."""
    def notebook(text: str) -> Path:
        path = Path(text)
        if path.suffix == ".ipynb" or os.sep in text or "/" in text:
            if not path.is_file() or path.suffix != ".ipynb":
                raise argparse.ArgumentTypeError(f"expected a chapter (07, quantization) or the path of an existing "
                                                 f".ipynb file, got {text!r}")
            return path
        return edition / _chapter(text).notebook

    return notebook


def _all_notebooks(edition: Path) -> list[Path]:
    paths = [edition / chapter.notebook for chapter in with_notebooks()]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise UsageError(f"the course's notebooks are not here ({', '.join(missing[:2])} ...): "
                         "name the notebooks to run, or run this from a clone of the course")
    return paths


# ------------------------------------------------------------------------------------------------ chapters
def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _chapters(args) -> int:
    for chapter in CHAPTERS:
        kinds = [kind for kind in ("runs", "headlines", "checks") if getattr(chapter, kind)]
        print(f"{chapter.number:02d} {chapter.title}: notebooks/{chapter.notebook}"
              + ("" if chapter.written else " (being written)"))
        print(f"   teaches with {', '.join(f'minilib.{t}' for t in chapter.techniques) or '-'}; "
              f"{', '.join(kinds) or 'no modules of its own'} in {chapter.module}.py"
              + (f"; ships {', '.join(chapter.artefacts)}" if chapter.artefacts else ""))
    return 0


# ------------------------------------------------------------------------------------------------ envcheck
def _envcheck(args) -> int:
    from minilib.course import envcheck

    return 0 if envcheck.report() else 1


# ------------------------------------------------------------------------------------------------ bench
def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("chapters", nargs="*", type=_chapter, metavar="CHAPTER",
                        help="chapters whose headline rows to measure (default: every chapter that has some)")
    _markdown_option(parser, "headlines", "headline")


def _bench(args) -> int:
    from minilib.experiments import headlines
    from minilib.support.bench import machine_kind, machine_label

    try:
        results = headlines.run(args.chapters or headlines.with_headlines())
    except ValueError as error:
        raise UsageError(f"python -m minilib bench: {error}") from None
    print(headlines.table(results))
    print(f"\nMachine: {machine_label()}")
    if args.markdown:
        from minilib.course import readme

        print(f"\nrecorded in {readme.record_headlines(results, machine_kind(), machine_label())}")
        _write_readme()
        print("\n" + readme.headlines_section())
    return 0 if all(result.passed for result in results) else 1


def _markdown_option(parser: argparse.ArgumentParser, folder: str, table: str) -> None:
    parser.add_argument("--markdown", action="store_true",
                        help=f"record the results as this kind of machine's latest (data/measurements/{folder}/) and "
                             f"rewrite the README's {table} table, then print it")


def _write_readme() -> None:
    from minilib.course import readme

    if readme.README.exists():
        print("README.md " + ("updated" if readme.update_readme() else "already up to date"))


# ------------------------------------------------------------------------------------------------ profile
def _profile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("chapter", type=_chapter, metavar="CHAPTER",
                        help="a chapter whose runs module has a profile() (chapter 07: where a forward pass's time goes)")


def _profile(args) -> int:
    import importlib

    from minilib.support.bench import machine_label

    profiled = [chapter.name for chapter in CHAPTERS if chapter.runs
                and hasattr(importlib.import_module(chapter.module_path("runs")), "profile")]
    if args.chapter.name not in profiled:
        raise UsageError(f"python -m minilib profile: chapter {args.chapter.name} has no profile; the chapters with one "
                         f"are {', '.join(profiled)}")
    print(importlib.import_module(args.chapter.module_path("runs")).profile())
    print(f"\nMeasured on: {machine_label()}")
    return 0


# ------------------------------------------------------------------------------------------------ notebooks
def _notebooks_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebooks", nargs="*", type=_notebook_in(TEACHER_EDITION), metavar="CHAPTER",
                        help="chapters or notebook paths to run (default: every chapter of the teacher's edition: the "
                             "budget holds with every exercise solved)")
    parser.add_argument("--cold", action="store_true",
                        help="start from an empty cache (MINILIB_CACHE in a temporary folder), as a fresh clone or "
                             "Binder does: the chapters use what the course ships in data/ and train the rest")
    parser.add_argument("--competitor", action="store_true",
                        help="run one busy program (a Python loop that never sleeps) beside the notebooks, as a "
                             "shared hub's neighbour would; compare with a run without it, chapter by chapter")
    _markdown_option(parser, "notebooks", "budget")
    parser.add_argument("--figures", type=Path, metavar="DIR",
                        help='save the plot of each notebook\'s cell tagged "readme-figure" as DIR/<notebook>.png')


def _notebooks(args) -> int:
    from minilib.course import notebook_budget
    from minilib.support.bench import machine_kind, machine_label

    runs = []
    with tempfile.TemporaryDirectory(prefix="minilib-cold-cache-") as empty_cache, \
            (notebook_budget.busy_competitor() if args.competitor else contextlib.nullcontext()):  # a fresh clone's cache
        env = os.environ | {"MINILIB_CACHE": empty_cache} if args.cold else None
        for path in args.notebooks or _all_notebooks(TEACHER_EDITION):
            runs.append(notebook_budget.run_notebook(path, env=env))
            print(f"{path.name}: {runs[-1].seconds:.1f} s ({runs[-1].cpu_seconds:.1f} s CPU), "
                  f"{runs[-1].peak_bytes / 1e6:.0f} MB", file=sys.stderr, flush=True)
            if args.figures and runs[-1].figure:
                args.figures.mkdir(parents=True, exist_ok=True)
                (args.figures / f"{path.stem}.png").write_bytes(runs[-1].figure)
    print(notebook_budget.budget_table(runs))
    print(f"\nMeasured on: {machine_label()}" + (", starting from an empty cache (--cold)" if args.cold else "")
          + (", beside one busy program (--competitor)" if args.competitor else ""))
    if args.markdown:
        from minilib.course import readme

        print(f"\nrecorded in {readme.record_budgets(runs, machine_kind(), machine_label(), args.cold)}")
        _write_readme()
        print("\n" + readme.budgets_section())
    return 0 if notebook_budget.course_passed(runs) else 1


# ------------------------------------------------------------------------------------------------ zoo
def _zoo_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="list|verify|rebuild")
    actions.add_parser("list", help="each artefact: its size and the metrics recorded when it was built")
    actions.add_parser("verify", help="each matches today's code and loads")
    rebuild = actions.add_parser("rebuild", help="train them again through their chapters' code and record them in "
                                                 "data/manifest.json (and the README's table)")
    rebuild.add_argument("names", nargs="*", metavar="NAME", help="artefacts to rebuild (default: all, about 1.5 h)")


def _zoo(args) -> int:
    from minilib.experiments import zoo

    artefacts = zoo.shipped_artefacts()
    if args.action != "rebuild":
        return zoo.verify_artefacts(artefacts) if args.action == "verify" else zoo.list_artefacts(artefacts)
    try:
        selected = zoo.select(args.names, artefacts)
    except ValueError as error:
        raise UsageError(f"python -m minilib zoo rebuild: {error}") from None
    code = zoo.rebuild_artefacts(selected)
    _write_readme()
    return code


# ------------------------------------------------------------------------------------------------ assignments
def _assignments_arguments(parser: argparse.ArgumentParser) -> None:
    from minilib.course.assignments import cli

    cli.configure(parser)


def _assignments(args) -> int:
    from minilib.course.assignments import cli

    return cli.run(args)


# ------------------------------------------------------------------------------------------------ edition
def _edition_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebooks", nargs="*", type=_notebook_in(STUDENT_EDITION), metavar="CHAPTER",
                        help="chapters or notebook paths to include (default: every chapter of the student edition: "
                             "no model answers in the pages)")
    parser.add_argument("--out", type=Path, default=Path("build/edition"), metavar="DIR",
                        help="folder to write (default: build/edition)")
    parser.add_argument("--timeout", type=_positive, default=600.0, metavar="S",
                        help="seconds one cell may take (default: 600)")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _edition(args) -> int:
    from minilib.course import edition

    pages = edition.build(args.notebooks or _all_notebooks(STUDENT_EDITION), args.out, args.timeout)
    print(f"wrote {args.out / 'index.html'} ({len(pages)} chapters)")
    return 1 if any(page.errors for page in pages) else 0


# ------------------------------------------------------------------------------------------------ diagrams
def _diagrams_arguments(parser: argparse.ArgumentParser) -> None:
    from minilib.course import diagrams

    def diagram(name: str) -> str:
        if name not in diagrams.DIAGRAMS:
            raise argparse.ArgumentTypeError(f"no diagram {name!r}; the diagrams are {', '.join(diagrams.DIAGRAMS)}")
        return name

    parser.add_argument("names", nargs="*", metavar="NAME", type=diagram,
                        help=f"diagrams to draw (default: all): {', '.join(diagrams.DIAGRAMS)}")
    parser.add_argument("--png", type=Path, metavar="DIR",
                        help="only write the diagrams as PNG files into DIR, to look at them (the notebooks are left "
                             "alone)")


def _diagrams(args) -> int:
    from minilib.course import diagrams

    written = diagrams.write_png(args.png, args.names) if args.png else diagrams.embed(names=args.names)
    for path in written:
        print(path)
    if not args.png:
        print("the teacher's edition has changed" if written else "every diagram was already up to date")
        print("now rebuild the student edition: python -m minilib assignments build --self-study")
    return 0


# ------------------------------------------------------------------------------------------------ readme
def _readme_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit with 1 and name the tables that are out of date")


def _readme(args) -> int:
    from minilib.course import readme

    if not readme.README.exists():
        raise UsageError(f"python -m minilib readme: no README at {readme.README} (run it in a clone of the course)")
    if args.check:
        stale = readme.stale_sections()
        print(f"out of date: {', '.join(stale)} (python -m minilib readme rewrites them)" if stale
              else "every generated table of the README is up to date")
        return 1 if stale else 0
    _write_readme()
    return 0


# ------------------------------------------------------------------------------------------------ the entrance
@dataclass(frozen=True)
class Command:
    help: str
    run: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments


COMMANDS = {
    "chapters": Command("the chapters: their notebooks, modules and shipped artefacts", _chapters),
    "envcheck": Command("is this environment ready for the course? (what to fix if not)", _envcheck),
    "bench": Command("the course's headline comparisons, measured on this machine", _bench, _bench_arguments),
    "notebooks": Command("each notebook's time and peak memory against its budget", _notebooks, _notebooks_arguments),
    "profile": Command("where a chapter's time goes, by kind of work (chapter 07's forward passes)", _profile,
                       _profile_arguments),
    "zoo": Command("the trained models and results shipped in data/: list, verify, rebuild", _zoo, _zoo_arguments),
    "assignments": Command("for teachers: build the student edition, grade submissions", _assignments,
                           _assignments_arguments),
    "edition": Command("the executed edition: every chapter run and written as HTML", _edition, _edition_arguments),
    "diagrams": Command("redraw the chapters' diagrams into the teacher's edition (PNG, byte for byte)", _diagrams,
                        _diagrams_arguments),
    "readme": Command("rewrite the README's generated tables from their sources", _readme, _readme_arguments),
}
"""Every command, by name: what it does, how it runs, its arguments."""


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m minilib <command> [arguments]", "", "Faster, Smaller Transformers: the course's commands.",
             ""]
    lines += [f"  {name.ljust(width)}  {command.help}" for name, command in COMMANDS.items()]
    lines += ["", "python -m minilib <command> --help describes a command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 1 a target missed or a run failed, 2 a wrong command line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"python -m minilib: no command {name!r}; expected one of {', '.join(COMMANDS)} "
              "(python -m minilib --help)", file=sys.stderr)
        return 2
    command = COMMANDS[name]
    parser = _Parser(prog=f"python -m minilib {name}", description=command.help)
    try:
        command.arguments(parser)
        return command.run(parser.parse_args(rest))
    except UsageError as error:
        print(error, file=sys.stderr)
        return 2
    except SystemExit as done:  # --help prints and exits: the same here
        return done.code or 0
