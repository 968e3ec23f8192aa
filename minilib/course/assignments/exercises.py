"""Reading a course notebook as an assignment: its exercises, their points and checks, its solution regions.

The form every chapter follows (the README, "For teachers", shows it to teachers):

- a markdown heading per exercise, ``### Exercise 2.1: Attention in one line (2 points)``, or
  ``(written, 3 points)`` for an answer graded by hand;
- the cells under it, up to the next heading of level 1–3, belong to that exercise;
- a code exercise's answer sits between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` and is
  followed by a visible check, ``check_<name>(answer)``, from :mod:`minilib.course.checks`;
- a written exercise has a markdown cell with its model answer between the same markers, and a rubric between
  ``### BEGIN RUBRIC`` and ``### END RUBRIC``: one line per criterion, ``- **1 point**: what earns it``, whose
  points add up to the exercise's. The student edition keeps neither.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
RUBRIC = ("### BEGIN RUBRIC", "### END RUBRIC")
MARKERS = (BEGIN, END, *RUBRIC)
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
ANSWER_STUB = ("YOUR ANSWER HERE",)

EXERCISE_HEADING = re.compile(
    r"^###\s+Exercise\s+(?P<number>\d+\.\d+)\s*:\s*(?P<title>.+?)\s*"
    r"\((?P<written>written,\s*)?(?P<points>\d+)\s+points?\)\s*$")
ANY_HEADING = re.compile(r"^#{1,3}\s")
CHECK_CALL = re.compile(r"\b(check_\w+)\s*\(")
RUBRIC_LINE = re.compile(r"^\s*[-*]\s+\*\*(\d+)\s+points?\*\*")


class AssignmentError(ValueError):
    """A notebook that cannot be used as an assignment; the message names the notebook and the cell."""


@dataclass
class Exercise:
    """One exercise: ``number`` "2.1", its ``title``, ``points``, whether it is ``written`` (graded by hand),
    the indices of its ``cells`` (heading included) and the ``checks`` its code cells call, in order;
    ``check_points``: each check's points, once the exercise is validated against the checks' registry."""

    number: str
    title: str
    points: int
    written: bool
    cells: list[int] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    check_points: dict[str, int] = field(default_factory=dict)


@dataclass
class Assignment:
    """A teacher's notebook as the grader and the nbgrader build use it: its ``path``, the ``notebook`` and its
    validated ``exercises`` (made by :func:`minilib.course.assignments.build.read_assignment`)."""

    path: Path
    notebook: nbformat.NotebookNode
    exercises: list[Exercise]

    @property
    def chapter(self) -> str:
        return self.path.stem


def read_notebook(path) -> nbformat.NotebookNode:
    """Read ``path`` as a version-4 notebook, or raise :class:`AssignmentError` saying why it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise AssignmentError(f"{path}: no such notebook")
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except (ValueError, nbformat.ValidationError, KeyError, AttributeError, TypeError) as error:
        # not JSON, not UTF-8, or JSON that is not a notebook
        reason = str(error).splitlines()[0][:200]
        raise AssignmentError(f"{path}: not a valid notebook ({type(error).__name__}: {reason})") from error
    return nb


def describe_cell(notebook, nb, index: int) -> str:
    """``'02_self_attention.ipynb, cell 41 ("def split_heads(x, n_heads):")'``: cells counted from 1, as a person counts."""
    first_line = next((line.strip() for line in nb.cells[index].source.splitlines() if line.strip()), "")
    return f'{notebook}, cell {index + 1} ("{first_line[:60]}")'


def find_exercises(nb, notebook="notebook", strict=True) -> list[Exercise]:
    """The exercises of ``nb`` in order. ``notebook`` (a name or path) only labels error messages.

    ``strict``: a heading that starts like an exercise's but does not follow the form raises :class:`AssignmentError`
    (in a teacher's notebook); with ``strict=False`` (a student's, who may have edited it) it ends the section before.
    """
    exercises, current = [], None
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            for line in _headings(cell.source):
                current = _exercise_from_heading(line, notebook, nb, index, strict)  # None: another section begins
                if current is not None:
                    exercises.append(current)
        if current is not None and index not in current.cells:
            current.cells.append(index)
            if cell.cell_type == "code":
                current.checks += check_calls(cell.source)
    return exercises


def _headings(markdown: str):
    """The heading lines (levels 1–3) of a markdown cell, skipping fenced code blocks and solution and rubric markers."""
    in_code = False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_code = not in_code
        elif not in_code and ANY_HEADING.match(line) and line.strip() not in MARKERS:
            yield line


def _exercise_from_heading(line, notebook, nb, index, strict=True):
    match = EXERCISE_HEADING.match(line.strip())
    if match:
        return Exercise(match["number"], match["title"], int(match["points"]), bool(match["written"]), cells=[index])
    if strict and re.match(r"^###\s+Exercise\b", line.strip()):
        raise AssignmentError(
            f"{describe_cell(notebook, nb, index)}: exercise heading {line.strip()!r} does not follow the form "
            f"'### Exercise N.k: title (p points)' or '### Exercise N.k: title (written, p points)'")
    return None  # another heading: the exercise section before it ends here


def check_calls(source: str) -> list[str]:
    """Names of the ``check_*`` functions called in a code cell, in order (functions it defines itself excluded)."""
    defined = set(re.findall(r"\bdef\s+(check_\w+)", source))
    return [name for name in CHECK_CALL.findall(source) if name not in defined]


def strict_checks(source: str) -> str:
    """A check cell's code with each ``check_x(…)`` call made ``check_x.assert_passes(…)``: a check that fails then
    raises (AssertionError) instead of only printing ✘, as autograders and the teacher's edition's tests need."""
    called = set(check_calls(source))
    return CHECK_CALL.sub(lambda m: f"{m[1]}.assert_passes(" if m[1] in called else m[0], source)


def replace_solutions(source: str, stub: tuple[str, ...], where: str, markers: tuple[str, str] = (BEGIN, END)) -> str:
    """``source`` with each solution region replaced by ``stub``, indented like the region's BEGIN marker.

    ``markers``: the region's opening and closing lines (``RUBRIC`` for rubrics, which the student edition drops
    with ``stub=()``). ``where`` names the cell in errors: an unclosed region, an END without a BEGIN, or a region
    opened inside another.
    """
    begin, end = markers
    kind = "rubric" if markers == RUBRIC else "solution"
    kept, region_indent, opened_at = [], None, 0
    for number, line in enumerate(source.splitlines(), start=1):
        marker = line.strip()
        if marker == begin:
            if region_indent is not None:
                raise AssignmentError(f"{where}: line {number} opens a {kind} region inside the one opened "
                                      f"at line {opened_at}; close it first with '{end}'")
            region_indent, opened_at = line[:len(line) - len(line.lstrip())], number
            kept += [region_indent + stub_line for stub_line in stub]
        elif marker == end:
            if region_indent is None:
                raise AssignmentError(f"{where}: line {number} has '{end}' without a '{begin}' before it")
            region_indent = None
        elif region_indent is None:
            kept.append(line)
    if region_indent is not None:
        raise AssignmentError(f"{where}: the {kind} region opened at line {opened_at} is never closed; "
                              f"add '{end}' after the {kind}")
    return "\n".join(kept) + ("\n" if source.endswith("\n") else "")


def region_text(source: str, markers: tuple[str, str] = (BEGIN, END)) -> str:
    """The text inside the ``markers`` regions of ``source`` (a model answer, or with ``RUBRIC`` a rubric), markers
    left out."""
    inside, kept = False, []
    for line in source.splitlines():
        if line.strip() in markers:
            inside = line.strip() == markers[0]
        elif inside:
            kept.append(line)
    return "\n".join(kept).strip()


def has_solution(source: str, markers: tuple[str, str] = (BEGIN, END)) -> bool:
    """Whether a cell holds a solution region (or, with ``markers=RUBRIC``, a rubric)."""
    return any(line.strip() == markers[0] for line in source.splitlines())


def rubric_points(source: str) -> list[int]:
    """The points of each criterion (``- **2 points**: …``) inside the rubric regions of a markdown cell."""
    points, inside = [], False
    for line in source.splitlines():
        if line.strip() in RUBRIC:
            inside = line.strip() == RUBRIC[0]
        elif inside and RUBRIC_LINE.match(line):
            points.append(int(RUBRIC_LINE.match(line)[1]))
    return points
