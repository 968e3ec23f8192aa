"""The ``assignments`` command (``python -m minilib assignments build|grade``, ``--help`` on each for details)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minilib.course.assignments.build import build, build_self_study
from minilib.course.assignments.exercises import AssignmentError
from minilib.course.assignments.grade import grade_notebook, report, write_csv, write_json


def run(args: argparse.Namespace) -> int:
    try:
        return _build(args) if args.command == "build" else _grade(args)
    except AssignmentError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def configure(parser: argparse.ArgumentParser) -> None:
    """The command's arguments, on ``parser``: ``build [--out DIR] [--force] [NOTEBOOK ...]`` and ``grade ...``."""
    commands = parser.add_subparsers(dest="command", required=True, metavar="build|grade")
    make = commands.add_parser("build", help="write the student edition (solutions replaced by stubs)")
    make.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                      help="teacher's notebooks (default: every chapter of the teacher's edition, notebooks/solutions/)")
    where = make.add_mutually_exclusive_group()
    where.add_argument("--out", default="student", metavar="DIR",
                       help="folder of a class's student edition, rubrics left out (default: student)")
    where.add_argument("--self-study", action="store_true",
                       help="regenerate the course's own student edition, notebooks/NN_*.ipynb (rubrics kept as "
                            "self-assessment), from every chapter of the teacher's edition")
    make.add_argument("--force", action="store_true",
                      help="overwrite notebooks edited since the last build, after copying them to DIR/backups/")
    grade = commands.add_parser("grade", help="run submitted notebooks and score their exercises")
    grade.add_argument("notebooks", nargs="+", metavar="NOTEBOOK", help="submitted notebooks")
    grade.add_argument("--timeout", type=float, default=300.0, metavar="S",
                       help="seconds each notebook may run (default: 300)")
    output = grade.add_mutually_exclusive_group()
    output.add_argument("--json", metavar="FILE", help="also write the grades as JSON")
    output.add_argument("--csv", metavar="FILE", help="also write the grades as CSV, one row per notebook")


def _build(args) -> int:
    if args.self_study and args.notebooks:
        raise AssignmentError("--self-study rebuilds every chapter of the course's student edition; "
                              "name no notebooks (or use --out DIR for a class's edition of some chapters)")
    results = build_self_study(args.force) if args.self_study else build(args.notebooks, args.out, force=args.force)
    for result in results:
        checked = sum(e.points for e in result.exercises if not e.written)
        by_hand = sum(e.points for e in result.exercises if e.written)
        line = (f"{result.action:<9} {result.path}  ({len(result.exercises)} exercises: "
                f"{checked} points checked automatically, {by_hand} graded by hand)")
        if result.backup:
            line += f"\n          the edited version was kept as {result.backup}"
        print(line)
    return 0


def _grade(args) -> int:
    missing = [name for name in args.notebooks if not Path(name).is_file()]
    if missing:
        raise AssignmentError(f"no such notebook: {', '.join(missing)}")
    if not args.timeout > 0:
        raise AssignmentError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    grades = []
    for name in args.notebooks:
        grades.append(grade_notebook(name, timeout=args.timeout))
        print(report(grades[-1]), flush=True)
    if args.json:
        write_json(grades, args.json)
    if args.csv:
        write_csv(grades, args.csv)
    if args.json or args.csv:
        print(f"wrote {args.json or args.csv}")
    return 0
