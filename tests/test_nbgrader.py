"""The course as an nbgrader course: the real nbgrader generates, releases and autogrades one chapter's assignment,
and gives each submission the points the course's own grader gives it."""
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from minilib.course.assignments.build import build_nbgrader, read_assignment
from minilib.course.assignments.classroom import find_submissions, grade_class
from minilib.course.assignments.exercises import BEGIN, END, RUBRIC, find_exercises, read_notebook
from minilib.course.assignments.nbgrader_course import MARK_SCHEME
from minilib.course.editions import TEACHER_EDITION

pytest.importorskip("nbgrader")
from nbgrader.api import Gradebook  # noqa: E402

CHAPTER = "00_welcome"


def light_chapter(path):
    """Chapter 00's teacher's edition without its measurements (they take seconds, and grade nothing): its text,
    its setup cell, its exercises; saved at ``path``."""
    nb = read_notebook(TEACHER_EDITION / f"{CHAPTER}.ipynb")
    exercise_cells = {index for exercise in find_exercises(nb) for index in exercise.cells}
    nb.cells = [cell for index, cell in enumerate(nb.cells)
                if cell.cell_type == "markdown" or index in exercise_cells or cell.id == "ch00-03"]
    nbformat.write(nb, path)
    return path


def nbgrader(*args, cwd):
    # nbgrader runs `alembic` from PATH: this Python's scripts first, for a virtual environment never activated
    scripts = os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PATH": scripts})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def answered(released, teacher, answers):
    """The released notebook with the teacher's model answer (or ``answers[grade_id]``) in each solution cell."""
    nb = nbformat.reads(nbformat.writes(released), as_version=4)
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in answers:
            cell.source = answers[grade_id] if answers[grade_id] is not None else models(teacher)[grade_id]
    return nb


def models(teacher) -> dict:
    """The teacher's model answer of each solution cell, by grade_id."""
    return {cell.metadata["nbgrader"]["grade_id"]: cell.source for cell in teacher.cells
            if cell.get("metadata", {}).get("nbgrader", {}).get("solution")}


def test_nbgrader_generates_and_autogrades_a_chapter_as_the_course_grader_does(tmp_path):
    teacher_path = light_chapter(tmp_path / f"{CHAPTER}.ipynb")
    course = tmp_path / "course"
    build_nbgrader([teacher_path], course)
    source = read_notebook(course / "source" / CHAPTER / f"{CHAPTER}.ipynb")
    kinds = {cell.metadata["nbgrader"]["grade_id"]: cell.metadata["nbgrader"] for cell in source.cells
             if "nbgrader" in cell.metadata}
    assert [cell.source for cell in source.cells if "nbgrader" not in cell.metadata] == ["YOUR ANSWER HERE"]
    assert kinds["ex0_1-check"]["grade"] and kinds["ex0_1-check"]["points"] == 1 and kinds["ex0_1-check"]["locked"]
    assert kinds["ex0_3-answer"]["solution"] and not kinds["ex0_3-answer"]["grade"]
    assert kinds["ex0_4-task"]["task"] and kinds["ex0_4-task"]["points"] == 2
    assert all(meta["locked"] for name, meta in kinds.items() if not name.startswith("ex"))   # the lesson: read-only

    nbgrader("generate_assignment", CHAPTER, "--force", cwd=course)
    released = read_notebook(course / "release" / CHAPTER / f"{CHAPTER}.ipynb")
    text = "\n".join(cell.source for cell in released.cells)
    for secret in (BEGIN, END, *RUBRIC, *MARK_SCHEME, "return 2 * m * k * n", "Model answer", "**1 point**"):
        assert secret not in text, f"{secret!r} reached the students"
    assert "check_matmul_flops.assert_passes(matmul_flops)" in text and "YOUR ANSWER HERE" in text

    solved = {"ex0_1-answer": None, "ex0_2-answer": None, "ex0_3-answer": None, "ex0_5-answer": None}
    quiz_wrong = 'def recap_00():\n    return {1: 64 * 128 * 32, 2: "b", 3: 100, 4: "b", 5: "a"}   # multiply-adds, not FLOPs'
    submissions = {
        "correct": answered(released, source, solved),
        "wrong": answered(released, source, {**solved, "ex0_1-answer": "def matmul_flops(m, k, n):\n    return m * k * n",
                                             "ex0_5-answer": quiz_wrong}),
        "empty": released,
        "crashing": answered(released, source, {**solved, "ex0_1-answer": "def matmul_flops(m, k, n)\n    return 2 * m * k * n"}),
    }
    for student, nb in submissions.items():
        path = course / "submitted" / student / CHAPTER / f"{CHAPTER}.ipynb"
        path.parent.mkdir(parents=True)
        nbformat.write(nb, path)
    nbgrader("autograde", CHAPTER, "--force", cwd=course)

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        theirs = {student: {grade.cell.name: grade.auto_score for grade in
                            gradebook.find_submission_notebook(CHAPTER, CHAPTER, student).grades
                            if grade.cell.name.endswith("-check")}
                  for student in submissions}
    graded = grade_class(find_submissions([course / "submitted"], [read_assignment(teacher_path)]), jobs=2, timeout=60)
    ours = {grade.student: {f"ex{e.number.replace('.', '_')}-check": e.points for e in grade.exercises if not e.written}
            for grade in graded}
    assert theirs == ours
    assert ours["correct"] == {"ex0_1-check": 1, "ex0_2-check": 1, "ex0_3-check": 2, "ex0_5-check": 2}
    assert ours["wrong"] == {"ex0_1-check": 0, "ex0_2-check": 1, "ex0_3-check": 2, "ex0_5-check": 0}
    assert ours["crashing"] == {"ex0_1-check": 0, "ex0_2-check": 1, "ex0_3-check": 2, "ex0_5-check": 2}
    assert ours["empty"] == {"ex0_1-check": 0, "ex0_2-check": 0, "ex0_3-check": 0, "ex0_5-check": 0}
