"""The student edition: solutions replaced by stubs, checks kept, outputs stripped, and a student's work never lost.

Two kinds of student edition come from the teacher's edition (:mod:`minilib.course.editions`):

- the **self-study** edition, committed as ``notebooks/NN_*.ipynb``, what a learner opens first: each written
  exercise keeps its rubric as criteria to check one's own answer against, and a note says where the model answers
  are (``python -m minilib assignments build --self-study`` regenerates it);
- the **class** edition (``build --out DIR``), the handout of a graded class: the rubrics are the teacher's.

In both, a stub that runs when its cell runs (a solution region at the top level of a cell) raises
NotImplementedError, so its cell is tagged ``raises-exception``: JupyterLab's "Run All" and nbval go on past it.

``build`` records what it wrote in a manifest (``.minilib-build.json`` in the output folder: a SHA-256 per
notebook). A notebook there whose bytes differ both from the recorded ones and from the version git has committed
(where the folder is in a git repository) has been edited since, most likely by a student: ``build`` refuses to
overwrite it unless ``force=True``, and then copies it to ``backups/`` first. The committed self-study edition is
protected by git alone (its record is ignored by git: two branches that rebuilt it would otherwise conflict there).
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

from minilib.course.assignments.exercises import (
    ANSWER_STUB,
    CODE_STUB,
    RUBRIC,
    Assignment,
    AssignmentError,
    Exercise,
    check_calls,
    describe_cell,
    find_exercises,
    has_solution,
    read_notebook,
    region_text,
    replace_solutions,
    rubric_points,
)
from minilib.course.assignments.nbgrader_course import nbgrader_source, write_config
from minilib.course.checks import REGISTRY  # every chapter's checks, by name
from minilib.course.editions import STUDENT_EDITION, TEACHER_EDITION, teacher_notebooks

MANIFEST = ".minilib-build.json"
BACKUPS = "backups"
SELF_STUDY, CLASS = "self-study", "class"
RAISES = "raises-exception"   # the cell tag with which JupyterLab's Run All and nbval go on past an error
RUBRIC_TITLE = re.compile(r"^\*\*Rubric\b(?P<rest>.*?)\.?\*\*[ \t]*$", re.MULTILINE)
SELF_ASSESSMENT = "**Check your answer against these criteria{rest}.**"
SELF_STUDY_NOTE = ("*Self-study edition.* Write your code where it says `# YOUR CODE HERE` and run the check below "
                   "it; each written exercise ends with the criteria to check your answer against. The model answers "
                   "are in the teacher's edition, [`solutions/{name}`](solutions/{name}): try first, then compare.")


class StudentWorkError(AssignmentError):
    """``build`` would overwrite notebooks that changed since it wrote them (``.notebooks`` lists them)."""

    def __init__(self, out: Path, notebooks: list[str]):
        self.notebooks = notebooks
        super().__init__(
            f"not overwriting {len(notebooks)} notebook(s) in {out} that changed since the last build "
            f"(a student's work?): {', '.join(notebooks)}. Nothing was written. "
            f"Build into another folder with --out, or rerun with --force to replace them "
            f"(the current files are then copied to {out / BACKUPS} first).")


@dataclass
class BuildResult:
    """What ``build`` did with one notebook: ``action`` is "new", "updated", "unchanged" or "replaced"
    (an edited notebook overwritten with ``force``, its old version kept at ``backup``)."""

    path: Path
    action: str
    exercises: list[Exercise]
    backup: Path | None = None


def student_edition(nb, notebook="notebook", edition=CLASS):
    """A student's copy of the teacher's notebook ``nb`` (left untouched); ``notebook`` names it in errors.

    ``edition``: ``"class"`` (the rubrics dropped) or ``"self-study"`` (the rubrics kept as self-assessment, and a
    note pointing at ``solutions/<notebook>``). Raises :class:`AssignmentError` when ``nb`` does not follow the
    exercise form.
    """
    if edition not in (CLASS, SELF_STUDY):
        raise ValueError(f"edition must be {CLASS!r} or {SELF_STUDY!r}, got {edition!r}")
    exercises = validate_assignment(nb, notebook)
    return _with_stubs(nb, notebook, exercises, edition)


def _with_stubs(nb, notebook, exercises, edition):
    student = copy.deepcopy(nb)
    name = Path(str(notebook)).name
    first_exercise = exercises[0].cells[0] if exercises else None
    kept = []
    for index, cell in enumerate(student.cells):
        if index == first_exercise and edition == SELF_STUDY:
            kept.append(_new_markdown(SELF_STUDY_NOTE.format(name=name), "self-study-note"))
        where = describe_cell(notebook, nb, index)
        rubric = None
        if has_solution(cell.source, RUBRIC):
            rubric = region_text(cell.source, RUBRIC)
            cell.source = replace_solutions(cell.source, (), where, markers=RUBRIC).strip()
        if cell.source:                           # a cell that held only a rubric: students get no empty cell
            kept.append(_stubbed(cell, where))
        if rubric and edition == SELF_STUDY:
            kept.append(_new_markdown(RUBRIC_TITLE.sub(lambda m: SELF_ASSESSMENT.format(rest=m["rest"]), rubric, 1),
                                      f"{cell.get('id', index)}"[:57] + "-rubric"))
    student.cells = kept
    student.metadata.pop("widgets", None)
    source = f"solutions/{name}" if edition == SELF_STUDY else name
    student.metadata["minilib"] = {"edition": "self-study" if edition == SELF_STUDY else "student", "source": source}
    return student


def _stubbed(cell, where):
    """``cell`` with its solution regions replaced by stubs, its outputs cleared, and tagged if its stub raises."""
    stub = CODE_STUB if cell.cell_type == "code" else ANSWER_STUB
    cell.source = replace_solutions(cell.source, stub, where)
    if cell.cell_type == "code":
        cell.outputs, cell.execution_count = [], None
        if stub[-1] in cell.source.splitlines():          # a stub at the top level raises when its cell runs
            tags = cell.metadata.setdefault("tags", [])
            if RAISES not in tags:
                tags.append(RAISES)
    cell.metadata.pop("execution", None)
    return cell


def _new_markdown(source: str, cell_id: str):
    cell = nbformat.v4.new_markdown_cell(source)
    cell["id"] = cell_id
    return cell


def read_assignment(path) -> Assignment:
    """The teacher's notebook at ``path``, validated (:class:`AssignmentError` names what is wrong)."""
    nb = read_notebook(path)
    return Assignment(Path(path), nb, validate_assignment(nb, Path(path).name))


def validate_assignment(nb, notebook="notebook") -> list[Exercise]:
    """The exercises of ``nb``, after checking the form the student edition and the grader rely on."""
    exercises = find_exercises(nb, notebook)
    in_exercise = {index for exercise in exercises for index in exercise.cells}
    for index, cell in enumerate(nb.cells):
        where = describe_cell(notebook, nb, index)
        replace_solutions(cell.source, (), where)  # raises on an unclosed, stray or nested marker
        replace_solutions(cell.source, (), where, markers=RUBRIC)
        if has_solution(cell.source) and index not in in_exercise:
            raise AssignmentError(f"{where}: a solution region outside the exercises; students would get a "
                                  f"stub in the lesson. Put it under an '### Exercise N.k: …' heading")
        if has_solution(cell.source, RUBRIC) and (index not in in_exercise or cell.cell_type != "markdown"):
            raise AssignmentError(f"{where}: a rubric belongs in a markdown cell of a written exercise, "
                                  f"next to its model answer")
        unknown = [name for name in check_calls(cell.source) if name not in REGISTRY] if cell.cell_type == "code" else []
        if unknown:
            close = difflib.get_close_matches(unknown[0], REGISTRY, n=3)
            raise AssignmentError(f"{where}: calls {unknown[0]}, which is not a check in minilib.course.checks"
                                  + (f" (did you mean {', '.join(close)}?)" if close else ""))
    numbers = [exercise.number for exercise in exercises]
    for exercise in exercises:
        _validate_exercise(exercise, REGISTRY, describe_cell(notebook, nb, exercise.cells[0]), nb)
        if numbers.count(exercise.number) > 1:
            raise AssignmentError(f"{describe_cell(notebook, nb, exercise.cells[0])}: "
                                  f"exercise {exercise.number} appears {numbers.count(exercise.number)} times")
    return exercises


def _validate_exercise(exercise, registry, where, nb):
    if exercise.written:
        if exercise.checks:
            raise AssignmentError(f"{where}: exercise {exercise.number} is marked 'written' (graded by hand) but calls "
                                  f"{', '.join(exercise.checks)}; drop 'written,' from the heading or the check")
        _validate_teachers_answer(exercise, where, [nb.cells[index] for index in exercise.cells])
        return
    if not exercise.checks:
        raise AssignmentError(f"{where}: exercise {exercise.number} has no check_…(…) call; add its check, "
                              f"or mark it '(written, {exercise.points} points)'")
    if not any(has_solution(nb.cells[index].source) for index in exercise.cells):
        raise AssignmentError(f"{where}: exercise {exercise.number} has no '### BEGIN SOLUTION' region, so the "
                              f"student edition would contain the answer")
    worth = {name: registry[name].points for name in dict.fromkeys(exercise.checks)}
    exercise.check_points = worth
    if sum(worth.values()) != exercise.points:
        detail = ", ".join(f"{name}: {points}" for name, points in worth.items())
        raise AssignmentError(f"{where}: the heading gives exercise {exercise.number} {exercise.points} points, "
                              f"but its checks are worth {sum(worth.values())} ({detail})")


def _validate_teachers_answer(exercise, where, cells):
    """A written exercise needs a model answer (a solution region) and a rubric whose points add up to its own."""
    answers = sum(has_solution(cell.source) for cell in cells if cell.cell_type == "markdown")
    rubrics = [cell for cell in cells if has_solution(cell.source, RUBRIC)]
    if answers != 1 or len(rubrics) != 1:
        raise AssignmentError(f"{where}: written exercise {exercise.number} needs one model answer between "
                              f"'### BEGIN SOLUTION' and '### END SOLUTION' and one rubric between '{RUBRIC[0]}' and "
                              f"'{RUBRIC[1]}' in its markdown cells; found {answers} and {len(rubrics)}")
    points = rubric_points(rubrics[0].source)
    if sum(points) != exercise.points:
        criteria = " + ".join(map(str, points)) or "no '- **p points**: …' lines"
        raise AssignmentError(f"{where}: the rubric of exercise {exercise.number} gives {sum(points)} points "
                              f"({criteria}), the heading {exercise.points}")


def build(notebooks=None, out="student", force=False, edition=CLASS) -> list[BuildResult]:
    """Write the student edition of ``notebooks`` (default: the course's teacher's edition) into ``out``.

    ``edition``: ``"class"`` (a handout: no rubrics) or ``"self-study"`` (see :func:`student_edition`).
    All notebooks are converted before anything is written, so an error leaves ``out`` as it was.
    Raises :class:`StudentWorkError` (nothing written) when a notebook in ``out`` changed since the last build,
    unless ``force``.
    """
    return _write_editions(Path(out), notebooks, lambda nb, path, exercises: (
        path.name, _with_stubs(nb, path, exercises, edition)), force)


def build_nbgrader(notebooks=None, course_dir="course", force=False) -> list[BuildResult]:
    """Write an nbgrader course folder: ``course_dir/source/<chapter>/<chapter>.ipynb`` for each of ``notebooks``
    (default: every chapter of the teacher's edition), with nbgrader's cell metadata
    (:mod:`minilib.course.assignments.nbgrader_course`), and ``nbgrader_config.py`` unless one is there."""
    course_dir = Path(course_dir)
    results = _write_editions(course_dir, notebooks, lambda nb, path, exercises: (
        f"source/{path.stem}/{path.name}", nbgrader_source(nb, exercises, path.name)), force)
    write_config(course_dir)
    return results


def _write_editions(out: Path, notebooks, convert, force) -> list[BuildResult]:
    """Convert each teacher's notebook with ``convert(nb, path, exercises) -> (path in out, notebook)`` and write the
    results into ``out``; none is written if any notebook fails to convert, or if one to be replaced was edited
    since the last build (unless ``force``: it is then backed up first)."""
    paths = [Path(p) for p in notebooks] if notebooks else _teacher_notebooks()
    editions, exercises = {}, {}
    for path in paths:
        nb = read_notebook(path)
        found = validate_assignment(nb, path)
        name, edition = convert(nb, path, found)
        if name in editions:
            raise AssignmentError(f"two notebooks would be written to {out / name}: {editions[name][0]} and {path}")
        editions[name], exercises[name] = (path, (nbformat.writes(edition) + "\n").encode("utf-8")), found
    manifest = _read_manifest(out)
    actions = {name: _action(out / name, text, manifest.get(name)) for name, (_, text) in editions.items()}
    edited = [name for name, action in actions.items() if action == "edited"]
    if edited and not force:
        raise StudentWorkError(out, edited)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name, (path, text) in editions.items():
        target, backup = out / name, None
        if actions[name] == "edited":
            backup = _back_up(out, name)
        if actions[name] != "unchanged":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(text)
        manifest[name] = {"sha256": _sha256(text), "source": Path(os.path.relpath(path, out)).as_posix()}
        action = {"edited": "replaced"}.get(actions[name], actions[name])
        results.append(BuildResult(target, action, exercises[name], backup))
    _write_manifest(out, manifest)
    return results


def build_self_study(force=False) -> list[BuildResult]:
    """Regenerate the committed self-study edition, ``notebooks/NN_*.ipynb``, from the teacher's edition."""
    return build(None, STUDENT_EDITION, force=force, edition=SELF_STUDY)


def _teacher_notebooks() -> list[Path]:
    found = teacher_notebooks()
    if not found:
        raise AssignmentError(f"no notebooks found in {TEACHER_EDITION}; name the teacher's notebooks to build")
    return found


def _action(target: Path, text: bytes, recorded) -> str:
    """"new", "unchanged", "updated" (still exactly what build wrote last time, or what git has committed) or
    "edited" (changed since)."""
    if not target.exists():
        return "new"
    current = _sha256(target.read_bytes())
    if current == _sha256(text):
        return "unchanged"
    if (recorded is not None and current == recorded["sha256"]) or current == _committed_sha256(target):
        return "updated"
    return "edited"


def _committed_sha256(target: Path) -> str | None:
    """SHA-256 of ``target`` as git's last commit holds it, or None (not in a git repository, or not committed)."""
    try:
        shown = subprocess.run(["git", "show", f"HEAD:./{target.name}"], cwd=target.parent, capture_output=True,
                               timeout=30)
    except (OSError, subprocess.SubprocessError):      # no git on this machine
        return None
    return _sha256(shown.stdout) if shown.returncode == 0 else None


def _back_up(out: Path, name: str) -> Path:
    """Copy ``out/name`` to ``out/backups/`` (kept out of the folders that are handed out or released)."""
    target = out / name
    folder = (out / BACKUPS / name).parent
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup, n = folder / f"{target.stem}.{stamp}{target.suffix}", 1
    while backup.exists():
        n += 1
        backup = folder / f"{target.stem}.{stamp}-{n}{target.suffix}"
    shutil.copy2(target, backup)
    return backup


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_manifest(out: Path) -> dict:
    path = out / MANIFEST
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))["notebooks"]
    except (ValueError, KeyError, TypeError) as error:
        raise AssignmentError(f"{path}: unreadable build record ({error}); delete it and rebuild with --force "
                              f"(existing notebooks are then backed up first)") from error


def _write_manifest(out: Path, notebooks: dict) -> None:
    record = {"written_by": "python -m minilib assignments build",
              "about": "SHA-256 of each student notebook as last written here; a notebook that no longer "
                       "matches was edited and is never overwritten without --force",
              "notebooks": notebooks}
    (out / MANIFEST).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
