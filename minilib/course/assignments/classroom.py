"""A class's grades: every submission graded against the teacher's edition, a gradebook across chapters, feedback
for each student, and the points of written answers merged from a CSV the teacher fills in.

    python -m minilib assignments grade submissions/ --out grades --jobs 2
    python -m minilib assignments gradebook --out grades          # after filling in grades/hand_grades.csv

**Who and which chapter.** A submission is a notebook. Its student is the folder it sits in, right under a folder
given on the command line (``submissions/alice/…/02_self_attention.ipynb``: a folder per student, as a git-based
classroom's clones or an LMS download give them), or else what its file name holds besides the chapter's name
(``alice_02_self_attention.ipynb``), or else, for a file named on the command line, its folder's name, and for a
folder named on the command line whose notebooks sit right inside it and name no student, that folder's name
(``grade submissions/dave``: one student's work). Its chapter
is the teacher's notebook whose name its file name contains, or else the one its metadata says it was built from.

**What is written** into ``--out`` (default ``grades/``): ``gradebook.csv`` (one row per student, a column per
exercise, each chapter's total and the grand total), ``grades.json`` (everything, each check's message included),
``feedback/<student>/<chapter>.md`` (what each student gets back) and, unless it exists, ``hand_grades.csv``:
a row per written exercise of each submission with the student's ``answer``, its ``points`` and ``comment`` for the
teacher to fill in.
``gradebook`` merges it without running anything again. Nothing a student submitted is written to.
"""
from __future__ import annotations

import csv
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nbformat

from minilib.course.assignments.exercises import Assignment, AssignmentError
from minilib.course.assignments.grade import EXERCISE_SECONDS, LESSON_SECONDS, Grade, grade_notebook

HAND_GRADES = "hand_grades.csv"
HAND_COLUMNS = ["student", "chapter", "exercise", "title", "max_points", "points", "comment", "answer"]
FLAGS_SHOWN = 10      # in a student's feedback; grades.json keeps them all


@dataclass
class Submission:
    """One notebook to grade: whose (``student``), for which teacher's notebook (``teacher``, None when it cannot be
    told: ``problem`` says why)."""

    path: Path
    student: str
    teacher: Assignment | None
    problem: str = ""

    @property
    def chapter(self) -> str:
        return self.teacher.chapter if self.teacher else ""


def find_submissions(paths, teachers: list[Assignment]) -> list[Submission]:
    """The submissions in ``paths`` (notebooks, or folders searched through), each with its student and chapter.

    Any other file in a folder is a submission too, reported as not a notebook (a student who handed in the wrong
    file should hear about it); hidden files and Jupyter's checkpoints are skipped.
    """
    found = []
    for given in map(Path, paths):
        if given.is_dir():
            found += _folder(given, teachers)
        elif given.is_file():
            teacher = _chapter(given, teachers)
            found.append(_submission(given, teacher, teachers,
                                     _student_from_name(given.stem, teacher) or given.resolve().parent.name))
        else:
            raise AssignmentError(f"no such file or folder: {given}")
    return found


def _folder(given: Path, teachers) -> list[Submission]:
    """A class's folder (a folder per student, or students' names in the file names), or one student's own folder:
    notebooks right inside it, none of whose names holds a student (``grade submissions/dave``)."""
    files = {path: path.relative_to(given).parts for path in sorted(given.rglob("*")) if path.is_file()}
    files = {path: parts for path, parts in files.items() if not any(part.startswith(".") for part in parts)}
    chapters = {path: _chapter(path, teachers) for path in files}
    named = {path: _student_from_name(path.stem, chapters[path]) for path in files}
    own = given.resolve().name if all(len(parts) == 1 for parts in files.values()) and not any(named.values()) else ""
    return [_submission(path, chapters[path], teachers, parts[0] if len(parts) > 1 else named[path] or own)
            for path, parts in files.items()]


def _submission(path: Path, teacher: Assignment | None, teachers, student: str) -> Submission:
    problem = ""
    if path.suffix != ".ipynb":
        problem = "not a notebook (.ipynb): not graded"
    elif teacher is None:
        problem = (f"cannot tell which chapter it answers: its name contains none of "
                   f"{', '.join(t.chapter for t in teachers)}, and it is not a notebook the course built")
    if not student:
        student = path.stem
        problem = problem or ("cannot tell whose it is: put it in a folder named after the student, or put the "
                              "student's name in its file name")
    return Submission(path, student, teacher, problem)


def _chapter(path: Path, teachers) -> Assignment | None:
    return _chapter_from_name(path.stem, teachers) or _chapter_from_metadata(path, teachers)


def _chapter_from_name(stem: str, teachers):
    matches = [teacher for teacher in teachers if teacher.chapter.lower() in stem.lower()]
    return max(matches, key=lambda teacher: len(teacher.chapter), default=None)


def _chapter_from_metadata(path: Path, teachers):
    try:
        source = nbformat.read(path, as_version=4).metadata.get("minilib", {}).get("source", "")
    except Exception:            # not a notebook at all: reported when it is graded
        return None
    return next((teacher for teacher in teachers if teacher.path.name == Path(str(source)).name), None)


def _student_from_name(stem: str, teacher: Assignment | None) -> str:
    if teacher is None:
        return ""
    rest = re.sub(re.escape(teacher.chapter), " ", stem, flags=re.IGNORECASE)
    return re.sub(r"[\s_.\-]+", " ", rest).strip().replace(" ", "_")


def grade_class(submissions: list[Submission], jobs: int = 1, timeout: float = EXERCISE_SECONDS,
                lesson_timeout: float = LESSON_SECONDS, on_graded=None) -> list[Grade]:
    """Grade every submission, ``jobs`` at a time (each kernel then gets its share of the CPU's cores); in order.

    ``on_graded(grade)`` is called as each one finishes (to print progress).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}

    def grade(submission: Submission) -> Grade:
        if submission.problem:
            result = Grade(str(submission.path), submission.chapter, "invalid", submission.student, submission.problem)
        else:
            result = grade_notebook(submission.path, submission.teacher, timeout, lesson_timeout,
                                    student=submission.student, env=env)
        if on_graded:
            on_graded(result)
        return result

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(grade, submissions))


# --- what the teacher gets ------------------------------------------------------------------------------------

def write_outputs(grades: list[Grade], teachers: list[Assignment], out) -> list[str]:
    """Write grades.json, the hand-grades template (if absent), then the gradebook and the feedback from them.
    Returns the problems found in the hand grades (each names its line)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grades.json").write_text(json.dumps([g.as_dict() for g in grades], indent=1, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
    if not (out / HAND_GRADES).exists():
        _write_hand_grades_template(grades, out / HAND_GRADES)
    return write_gradebook(out, teachers)


def write_gradebook(out, teachers: list[Assignment]) -> list[str]:
    """(Re)write ``gradebook.csv`` and the feedback files from ``grades.json`` and the teacher's ``hand_grades.csv``."""
    out = Path(out)
    records = json.loads((out / "grades.json").read_text(encoding="utf-8"))
    grades = [Grade.from_dict(record) for record in records]
    hand, problems = read_hand_grades(out / HAND_GRADES, grades)
    for grade in grades:
        for exercise in grade.exercises:
            points, comment = hand.get((grade.student, grade.chapter, exercise.number), (None, ""))
            if exercise.written and points is not None:
                exercise.points, exercise.status = points, "graded by hand"
                exercise.detail = comment or "graded by your teacher"
    chapters = [(teacher.chapter, teacher.exercises) for teacher in teachers
                if any(g.chapter == teacher.chapter for g in grades)]
    _write_csv(grades, chapters, out / "gradebook.csv")
    for grade in grades:
        path = out / "feedback" / _safe(grade.student) / f"{grade.chapter or Path(grade.notebook).stem}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(feedback(grade), encoding="utf-8")
    return problems


def _write_csv(grades, chapters, path: Path) -> None:
    """One row per student, one column per exercise of every chapter graded, each chapter's total, the total."""
    header = ["student"]
    for chapter, exercises in chapters:
        header.append(f"{chapter[:2]} status")
        header += [f"{e.number} {e.title} ({'written, ' if e.written else ''}{e.points})" for e in exercises]
        header.append(f"{chapter[:2]} total ({sum(e.points for e in exercises)})")
    header += ["total", "out of"]
    by_student = {}
    for grade in grades:
        by_student.setdefault(grade.student, {})[grade.chapter] = grade
    rows = []
    for student in sorted(by_student):
        row, total, out_of = [student], 0.0, 0
        for chapter, exercises in chapters:
            grade = by_student[student].get(chapter)
            points = {e.number: e.points for e in grade.exercises} if grade else {}
            row.append(grade.status if grade else "missing")
            row += ["" if points.get(e.number) is None else _number(points[e.number]) for e in exercises]
            earned = sum(p for p in points.values() if p is not None)
            row.append(_number(earned))
            total, out_of = total + earned, out_of + sum(e.points for e in exercises)
        rows.append(row + [_number(total), out_of])
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def feedback(grade: Grade) -> str:
    """What a student gets back for one notebook: the points, then what to look at, in Markdown."""
    title = f"# {grade.chapter or Path(grade.notebook).name}: {grade.student}\n\n"
    if grade.status == "invalid":
        return title + f"**Not graded**: {grade.reason}\n"
    written = [e for e in grade.exercises if e.written]
    lines = [title + f"**{_number(grade.score)} / {grade.max_score} points** checked automatically"
             + (f", and {grade.hand_graded_points} points of written answers graded by your teacher"
                + (f": {_number(sum(e.points for e in written if e.points is not None))}"
                   if all(e.points is not None for e in written) else " (not graded yet)") if written else "")
             + ".\n", "| exercise | points | result |", "|---|---|---|"]
    for e in grade.exercises:
        points = "–" if e.points is None else _number(e.points)
        lines.append(f"| {e.number} {e.title} | {points} / {e.max_points} | {e.status} |")
    notes = [e for e in grade.exercises if e.detail and e.status not in ("passed",)]
    if notes:
        lines += ["", "## What to look at", ""]
        for e in notes:
            lines += [f"**Exercise {e.number}, {e.title}** ({e.status})", "", "```", e.detail.strip(), "```", ""]
    if grade.cell_errors:
        lines += ["## Cells that failed", ""] + [f"- {error}" for error in grade.cell_errors] + [""]
    if grade.flags:
        shown = grade.flags[:FLAGS_SHOWN]
        more = [f"- … and {len(grade.flags) - len(shown)} more"] if len(grade.flags) > len(shown) else []
        lines += ["## Flagged", "", "Checks that ran after your notebook changed the course's check machinery give "
                  "no points. What changed (each where it was first seen):", ""] + [f"- {flag}" for flag in shown]
        lines += more + [""]
    return "\n".join(lines).rstrip() + "\n"


# --- the points of written answers ----------------------------------------------------------------------------

def _write_hand_grades_template(grades: list[Grade], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(HAND_COLUMNS)
        for grade in sorted(grades, key=lambda g: (g.student, g.chapter)):
            for e in grade.exercises:
                if e.written:
                    writer.writerow([grade.student, grade.chapter, e.number, e.title, e.max_points, "", "", e.answer])


def read_hand_grades(path: Path, grades: list[Grade]):
    """{(student, chapter, exercise): (points, comment)} from the teacher's CSV, and the problems found, each naming
    its line: a number that is not one, points outside 0 … max, a student or exercise that was not graded."""
    if not path.exists():
        return {}, []
    written = {(g.student, g.chapter, e.number): e.max_points for g in grades for e in g.exercises if e.written}
    hand, problems = {}, []
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = [c for c in ("student", "chapter", "exercise", "points") if c not in (reader.fieldnames or [])]
        if missing:
            return {}, [f"{path}: the columns {', '.join(missing)} are missing (expected {', '.join(HAND_COLUMNS)})"]
        for line, row in enumerate(reader, start=2):
            key = (row["student"].strip(), row["chapter"].strip(), row["exercise"].strip())
            text = (row.get("points") or "").strip()
            if not text:
                continue                                  # not graded yet
            where = f"{path.name}, line {line}"
            if key not in written:
                problems.append(f"{where}: {key[0]} has no written exercise {key[2]} in {key[1]} among the grades")
                continue
            try:
                points = float(text.replace(",", "."))
            except ValueError:
                problems.append(f"{where}: points must be a number, got {text!r}")
                continue
            if not 0 <= points <= written[key]:
                problems.append(f"{where}: exercise {key[2]} is worth 0 to {written[key]} points, got {text}")
                continue
            hand[key] = (points, (row.get("comment") or "").strip())
    return hand, problems


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name) or "unknown"
