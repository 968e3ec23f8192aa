"""Grading a submitted notebook: run it top to bottom in a fresh kernel, under a time limit, and score its checks.

Every check the notebook runs appends one JSON line to the file named by ``MINILIB_GRADING_LOG``
(see :mod:`minilib.course.checks`); the grader points that variable at a temporary file, executes the notebook
(:mod:`minilib.course.notebook_runner`), and reads the lines back. A notebook that raises or runs out of time
stops there and keeps the points of the checks that ran before.
"""
from __future__ import annotations

import csv
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from time import monotonic

from minilib.course.assignments.exercises import AssignmentError, describe_cell, find_exercises, read_notebook
from minilib.course.notebook_runner import CellFailed, run_cells


@dataclass
class ExerciseScore:
    """The score of one exercise. ``points`` is None for written answers ("graded by hand")."""

    number: str
    title: str
    max_points: int
    points: int | None
    status: str  # "passed", "failed", "not run" or "graded by hand"
    detail: str = ""


@dataclass
class Grade:
    """One notebook's grade. ``status``: "completed", "crashed", "timed out" or "invalid" (not a notebook),
    with the ``reason`` when it is not "completed"."""

    notebook: str
    status: str
    reason: str = ""
    exercises: list[ExerciseScore] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def score(self) -> int:
        """Points earned on the automatically checked exercises."""
        return sum(e.points for e in self.exercises if e.points is not None)

    @property
    def max_score(self) -> int:
        """Points of the automatically checked exercises."""
        return sum(e.max_points for e in self.exercises if e.status != "graded by hand")

    @property
    def hand_graded_points(self) -> int:
        """Points of the written exercises, for the teacher to award."""
        return sum(e.max_points for e in self.exercises if e.status == "graded by hand")

    def as_dict(self) -> dict:
        return {**asdict(self), "score": self.score, "max_score": self.max_score,
                "hand_graded_points": self.hand_graded_points}


def grade_notebook(path, timeout: float = 300.0) -> Grade:
    """Execute the notebook at ``path`` (at most ``timeout`` seconds of cell execution) and score its exercises."""
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    started = monotonic()
    try:
        nb = read_notebook(path)
        exercises = find_exercises(nb, path)
    except AssignmentError as error:
        return Grade(str(path), "invalid", str(error))
    with tempfile.TemporaryDirectory(prefix="minilib-grade-") as folder:
        log = Path(folder) / "checks.jsonl"
        status, reason = _execute(nb, Path(path), timeout, log)
        results = _read_log(log)
    scores = [_score(exercise, results) for exercise in exercises]
    return Grade(str(path), status, reason, scores, round(monotonic() - started, 1))


def _execute(nb, path: Path, timeout: float, log: Path) -> tuple[str, str]:
    """Run every cell of ``nb`` in a fresh kernel of this Python; ("completed", "") or (status, reason)."""
    try:
        run_cells(nb, path.resolve().parent, timeout, env={**os.environ, "MINILIB_GRADING_LOG": str(log)})
    except CellFailed as failure:
        cell = describe_cell(path, nb, failure.index)
        if failure.reason == "timeout":
            return "timed out", f"stopped at the {timeout:g} s limit while running {cell}"
        if failure.reason == "dead":
            return "crashed", f"Python died while running {cell} (out of memory, or the code exited the kernel)"
        return "crashed", f"{cell} raised {failure.ename}: {failure.evalue}"
    return "completed", ""


def _read_log(log: Path) -> dict[str, dict]:
    """The last result of each check that ran: {check name: {"passed", "points", "message"}}."""
    if not log.exists():
        return {}
    lines = log.read_text(encoding="utf-8").splitlines()
    return {record["check"]: record for record in map(json.loads, filter(None, lines))}


def _score(exercise, results) -> ExerciseScore:
    score = ExerciseScore(exercise.number, exercise.title, exercise.points, 0, "passed")
    checks = list(dict.fromkeys(exercise.checks))
    if exercise.written:
        score.points, score.status = None, "graded by hand"
    elif not checks:
        score.status, score.detail = "failed", "no check_…(…) call found under this exercise"
    elif not any(name in results for name in checks):
        score.status, score.detail = "not run", "its check never ran (the notebook stopped before it)"
    else:
        ran = [results[name] for name in checks if name in results]
        score.points = min(exercise.points, sum(r["points"] for r in ran if r["passed"]))
        failed = [r for r in ran if not r["passed"]]
        if failed or len(ran) < len(checks):
            score.status = "failed"
            score.detail = failed[0]["message"] if failed else "one of its checks never ran"
    return score


def report(grade: Grade) -> str:
    """A few lines for the terminal: the total, then one line per exercise."""
    hand = f" (+{grade.hand_graded_points} graded by hand)" if grade.hand_graded_points else ""
    lines = [f"{grade.notebook}: {grade.score}/{grade.max_score} points{hand}, {grade.status}"
             + (f": {grade.reason}" if grade.reason else "")]
    for e in grade.exercises:
        points = "–" if e.points is None else e.points
        detail = e.detail.splitlines()[0] if e.detail else ""
        lines.append(f"  {e.number:>5}  {e.title[:40]:<40} {points}/{e.max_points}  {e.status}"
                     + (f" — {detail}" if detail else ""))
    return "\n".join(lines)


def write_json(grades: list[Grade], path) -> None:
    Path(path).write_text(json.dumps([g.as_dict() for g in grades], indent=1, ensure_ascii=False) + "\n",
                          encoding="utf-8")


def write_csv(grades: list[Grade], path) -> None:
    """One row per notebook, one column per exercise (written ones left empty for the teacher to fill)."""
    columns = {}
    for grade in grades:
        for e in grade.exercises:
            kind = "written, " if e.status == "graded by hand" else ""
            unit = "point" if e.max_points == 1 else "points"
            columns.setdefault(e.number, f"Exercise {e.number}: {e.title} ({kind}{e.max_points} {unit})")
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["notebook", "status", "score", "max_score", "hand_graded_points", "seconds", "reason",
                         *columns.values()])
        for grade in grades:
            points = {e.number: "" if e.points is None else e.points for e in grade.exercises}
            writer.writerow([grade.notebook, grade.status, grade.score, grade.max_score, grade.hand_graded_points,
                             grade.seconds, grade.reason, *(points.get(number, "") for number in columns)])
