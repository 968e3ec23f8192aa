"""The ``assignments`` command (``python -m minilib assignments build|grade|gradebook``, ``--help`` on each for details)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minilib.course.assignments.build import build, build_nbgrader, build_self_study, read_assignment
from minilib.course.assignments.classroom import find_submissions, grade_class, write_gradebook, write_outputs
from minilib.course.assignments.exercises import AssignmentError
from minilib.course.assignments.grade import EXERCISE_SECONDS, LESSON_SECONDS, Grade
from minilib.course.editions import TEACHER_EDITION, teacher_notebooks


def run(args: argparse.Namespace) -> int:
    try:
        return {"build": _build, "grade": _grade, "gradebook": _gradebook}[args.command](args)
    except AssignmentError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def configure(parser: argparse.ArgumentParser) -> None:
    """The command's arguments, on ``parser``: ``build ...``, ``grade ...`` and ``gradebook ...``."""
    commands = parser.add_subparsers(dest="command", required=True, metavar="build|grade|gradebook")
    make = commands.add_parser("build", help="write a student edition (solutions replaced by stubs)")
    make.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                      help="teacher's notebooks (default: every chapter of the teacher's edition, notebooks/solutions/)")
    where = make.add_mutually_exclusive_group()
    where.add_argument("--out", default="student", metavar="DIR",
                       help="folder of a class's student edition, rubrics left out (default: student)")
    where.add_argument("--self-study", action="store_true",
                       help="regenerate the course's own student edition, notebooks/NN_*.ipynb (rubrics kept as "
                            "self-assessment), from every chapter of the teacher's edition")
    where.add_argument("--nbgrader", metavar="COURSE_DIR",
                       help="write an nbgrader course folder: COURSE_DIR/source/<chapter>/<chapter>.ipynb with "
                            "nbgrader's cell metadata, and nbgrader_config.py unless it exists")
    make.add_argument("--force", action="store_true",
                      help="overwrite notebooks edited since the last build, after copying them to DIR/backups/")

    grade = commands.add_parser("grade", help="grade submitted notebooks: a gradebook, feedback, hand-grade sheet")
    grade.add_argument("paths", nargs="+", metavar="PATH",
                       help="submitted notebooks, or folders of them (a subfolder per student, or the student's name "
                            "in each file name)")
    grade.add_argument("--out", default="grades", metavar="DIR",
                       help="folder for gradebook.csv, grades.json, feedback/ and hand_grades.csv (default: grades)")
    grade.add_argument("--jobs", type=int, default=1, metavar="N", help="notebooks graded at once (default: 1)")
    grade.add_argument("--timeout", type=float, default=EXERCISE_SECONDS, metavar="S",
                       help=f"seconds for each exercise, its cells and its checks (default: {EXERCISE_SECONDS:g})")
    grade.add_argument("--lesson-timeout", type=float, default=LESSON_SECONDS, metavar="S",
                       help=f"seconds for all the cells outside the exercises (default: {LESSON_SECONDS:g})")
    _teacher_option(grade)
    book = commands.add_parser("gradebook", help="merge hand_grades.csv into the gradebook and feedback (no grading)")
    book.add_argument("--out", default="grades", metavar="DIR", help="the folder grade wrote (default: grades)")
    _teacher_option(book)


def _teacher_option(command) -> None:
    command.add_argument("--teacher", metavar="PATH",
                         help="the teacher's notebook, or a folder of them, that submissions answer (default: the "
                              "course's teacher's edition, notebooks/solutions/)")


def _build(args) -> int:
    if (args.self_study or args.nbgrader) and args.notebooks and args.self_study:
        raise AssignmentError("--self-study rebuilds every chapter of the course's student edition; "
                              "name no notebooks (or use --out DIR for a class's edition of some chapters)")
    if args.self_study:
        results = build_self_study(args.force)
    elif args.nbgrader:
        results = build_nbgrader(args.notebooks, args.nbgrader, force=args.force)
    else:
        results = build(args.notebooks, args.out, force=args.force)
    for result in results:
        checked = sum(e.points for e in result.exercises if not e.written)
        by_hand = sum(e.points for e in result.exercises if e.written)
        line = (f"{result.action:<9} {result.path}  ({len(result.exercises)} exercises: "
                f"{checked} points checked automatically, {by_hand} graded by hand)")
        if result.backup:
            line += f"\n          the edited version was kept as {result.backup}"
        print(line)
    if args.nbgrader:
        print(f"next: cd {args.nbgrader} && nbgrader generate_assignment <chapter> (see the README's For teachers)")
    return 0


def _teachers(args) -> list:
    """The teacher's notebooks that submissions answer, read and validated."""
    if args.teacher is None:
        found, where = teacher_notebooks(), TEACHER_EDITION
    else:
        where = Path(args.teacher)
        found = sorted(where.glob("*.ipynb")) if where.is_dir() else [where] if where.is_file() else []
    if not found:
        raise AssignmentError(f"no teacher's notebook found in {where}")
    return [read_assignment(path) for path in found]


def _grade(args) -> int:
    if args.jobs < 1:
        raise AssignmentError(f"--jobs must be at least 1, got {args.jobs}")
    if not (args.timeout > 0 and args.lesson_timeout > 0):
        raise AssignmentError("--timeout and --lesson-timeout must be positive numbers of seconds")
    teachers = _teachers(args)
    submissions = find_submissions(args.paths, teachers)
    if not submissions:
        raise AssignmentError(f"no submissions found in {', '.join(args.paths)}")
    print(f"grading {len(submissions)} submission(s), {args.jobs} at a time", flush=True)
    grades = grade_class(submissions, args.jobs, args.timeout, args.lesson_timeout,
                         on_graded=lambda grade: print(report(grade), flush=True))
    problems = write_outputs(grades, teachers, args.out)
    return _finish(args.out, problems)


def _gradebook(args) -> int:
    if not (Path(args.out) / "grades.json").is_file():
        raise AssignmentError(f"{args.out}/grades.json not found: run `grade … --out {args.out}` first")
    return _finish(args.out, write_gradebook(args.out, _teachers(args)))


def _finish(out, problems) -> int:
    for problem in problems:
        print(f"hand grades: {problem}", file=sys.stderr)
    print(f"wrote {out}/gradebook.csv, {out}/grades.json, {out}/feedback/; written answers: {out}/hand_grades.csv")
    return 1 if problems else 0


def report(grade: Grade) -> str:
    """A few lines for the terminal: the student, the total, then one line per exercise."""
    head = f"{grade.student or '?'} · {grade.chapter or grade.notebook}: "
    if grade.status == "invalid":
        return head + f"not graded: {grade.reason}"
    hand = f" (+{grade.hand_graded_points} graded by hand)" if grade.hand_graded_points else ""
    lines = [head + f"{grade.score:g}/{grade.max_score} points{hand}, {grade.status}, {grade.seconds:.0f} s"]
    for e in grade.exercises:
        points = "–" if e.points is None else f"{e.points:g}"
        detail = e.detail.splitlines()[0] if e.detail else ""
        lines.append(f"  {e.number:>5}  {e.title[:40]:<40} {points}/{e.max_points}  {e.status}"
                     + (f" — {detail[:100]}" if detail and e.status != "passed" else ""))
    return "\n".join(lines)
