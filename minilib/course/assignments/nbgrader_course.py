"""An nbgrader course folder made from the teacher's edition: for a class on a JupyterHub that runs nbgrader.

    python -m minilib assignments build --nbgrader COURSE_DIR [NOTEBOOK ...]

writes ``COURSE_DIR/source/<chapter>/<chapter>.ipynb`` (one nbgrader assignment per chapter) and, if there is none
yet, ``COURSE_DIR/nbgrader_config.py``. From there nbgrader does the rest: ``nbgrader generate_assignment``,
release, collect, ``nbgrader autograde``, manual grading in formgrader, feedback, export.

Each cell carries nbgrader's metadata (``cell.metadata.nbgrader``, schema version 3):

- a code exercise's answer cell is a *solution* cell (nbgrader replaces ``### BEGIN SOLUTION`` … ``### END SOLUTION``
  with ``# YOUR CODE HERE`` / ``raise NotImplementedError()``, as the course's own student edition does);
- its check cell is an *autograded test* cell worth the check's points, calling ``check_x.assert_passes(…)``: a
  failed check raises, which is how nbgrader sees a failed test;
- a written exercise's question is a *manually graded task* worth its points, whose ``### BEGIN MARK SCHEME`` region
  holds the model answer and the rubric: nbgrader strips it from what students get and shows it in formgrader;
  below it, an empty answer cell (``YOUR ANSWER HERE``);
- every other cell (the lesson, the headings) is *read-only*: at autograding, nbgrader puts back the original of any
  read-only cell a student changed, so the lesson and the checks that grade run as written.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

from minilib.course.assignments.exercises import (
    ANSWER_STUB,
    RUBRIC,
    AssignmentError,
    check_calls,
    has_solution,
    region_text,
    replace_solutions,
    strict_checks,
)

MARK_SCHEME = ("### BEGIN MARK SCHEME", "### END MARK SCHEME")
SCHEMA_VERSION = 3
CONFIG = '''\
# nbgrader's configuration for this course folder, written by `python -m minilib assignments build --nbgrader`
# (it is never overwritten: edit it freely). https://nbgrader.readthedocs.io/en/stable/configuration/
c = get_config()  # noqa: F821 (nbgrader defines it)

c.CourseDirectory.course_id = "faster-smaller-transformers"
# Some lesson cells train a model for a minute or more: nbgrader's default limit of 30 s per cell would cut them.
c.Execute.timeout = 600
'''


def nbgrader_source(nb, exercises, notebook="notebook"):
    """nbgrader's source version of the teacher's notebook ``nb`` (left untouched), whose exercises, validated
    (:func:`~minilib.course.assignments.build.validate_assignment`), are ``exercises``."""
    source = copy.deepcopy(nb)
    owner = {index: exercise for exercise in exercises for index in exercise.cells}
    cells = []
    for index, cell in enumerate(source.cells):
        exercise = owner.get(index)
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if exercise is None:
            cells.append(_locked(cell))
        elif exercise.written:
            cells += _written(cell, index, exercise, nb)
        elif cell.cell_type == "code" and has_solution(cell.source):
            if check_calls(cell.source):
                raise AssignmentError(f"{notebook}, exercise {exercise.number}: its answer and its check share a "
                                      f"cell; nbgrader needs the check in a cell of its own")
            cells.append(_with_metadata(cell, _grade_id(exercise, "answer", cells), solution=True))
        elif cell.cell_type == "code" and check_calls(cell.source):
            points = sum(exercise.check_points[name] for name in dict.fromkeys(check_calls(cell.source)))
            cell.source = strict_checks(cell.source)
            cells.append(_with_metadata(cell, _grade_id(exercise, "check", cells), grade=True, locked=True,
                                        points=points))
        else:
            cells.append(_locked(cell))
    source.cells = cells
    source.metadata.pop("widgets", None)
    source.metadata["minilib"] = {"edition": "nbgrader", "source": Path(str(notebook)).name}
    return source


def _written(cell, index, exercise, nb) -> list:
    """A written exercise's cells: its heading becomes the graded task, its answer cell an empty one for students."""
    if index == exercise.cells[0]:
        answer = next(nb.cells[i].source for i in exercise.cells if has_solution(nb.cells[i].source))
        scheme = region_text(answer) + "\n\n" + region_text(answer, RUBRIC)
        cell.source = f"{cell.source.rstrip()}\n\n{MARK_SCHEME[0]}\n{scheme}\n{MARK_SCHEME[1]}"
        return [_with_metadata(cell, _grade_id(exercise, "task", []), task=True, locked=True, points=exercise.points)]
    if not (has_solution(cell.source) or has_solution(cell.source, RUBRIC)):
        return [_locked(cell)]
    rest = replace_solutions(replace_solutions(cell.source, (), "", markers=RUBRIC), (), "").strip()
    kept = [_locked(nbformat.v4.new_markdown_cell(rest, id=f"{cell.id}-text"))] if rest else []
    return kept + [nbformat.v4.new_markdown_cell("\n".join(ANSWER_STUB), id=f"{cell.id}-answer")]


def _grade_id(exercise, role: str, cells) -> str:
    """``ex2_1-answer``: readable in nbgrader's gradebook and formgrader; numbered if an exercise has two."""
    base = f"ex{exercise.number.replace('.', '_')}-{role}"
    taken = {cell.metadata.get("nbgrader", {}).get("grade_id") for cell in cells}
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}{n}"
    return name


def _locked(cell):
    return _with_metadata(cell, re.sub(r"[^A-Za-z0-9_-]", "-", cell.get("id") or "cell"), locked=True)


def _with_metadata(cell, grade_id: str, grade=False, solution=False, locked=False, task=False, points=None):
    meta = {"schema_version": SCHEMA_VERSION, "grade": grade, "solution": solution, "locked": locked, "task": task,
            "grade_id": grade_id}
    if points is not None:
        meta["points"] = points
    cell.metadata["nbgrader"] = meta
    return cell


def write_config(course_dir: Path) -> Path | None:
    """Write ``nbgrader_config.py`` into ``course_dir`` unless it has one; the path written, or None."""
    path = Path(course_dir) / "nbgrader_config.py"
    if path.exists():
        return None
    path.write_text(CONFIG, encoding="utf-8")
    return path

