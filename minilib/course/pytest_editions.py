"""The test command's run of the notebooks: each chapter's two editions in one kernel (a pytest plugin over nbval).

``pyproject.toml`` loads it (``-p minilib.course.pytest_editions``). For each chapter of the student edition,
``notebooks/NN_x.ipynb``, whose teacher's edition ``notebooks/solutions/NN_x.ipynb`` exists, nbval runs

1. the student edition top to bottom, as a learner's "Run All" does: stubs (``raise NotImplementedError``) and checks
   that print ✘ "not done yet" must not stop it;
2. then, in the same kernel, the teacher's edition's exercise cells in order, each ``check_x(…)`` made
   ``check_x.assert_passes(…)``: every model answer must pass its check, or the cell fails.

Every other cell of the teacher's edition is, byte for byte, a cell of the student edition (``tests/test_editions.py``
checks it), so this runs every cell of both editions while paying for the lesson once: the editions together
cost about what one did. The teacher's edition is not collected on its own; name it to run it top to bottom
with plain nbval while editing it: ``pytest notebooks/solutions/02_self_attention.ipynb``.

Each chapter stays one test file (its node ids start with ``notebooks/NN_x.ipynb``), so pytest-xdist's
``--dist loadfile`` sends each chapter, both editions, to one worker.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import nbformat
import pytest
from nbval.plugin import IPyNbCell, IPyNbFile

from minilib.course.assignments.exercises import find_exercises, strict_checks

TEACHER_FOLDER = "solutions"


def teacher_edition_of(path: Path) -> Path | None:
    """``notebooks/solutions/NN_x.ipynb`` for a student edition's ``notebooks/NN_x.ipynb``, None for other files."""
    teacher = path.parent / TEACHER_FOLDER / path.name
    return teacher if path.suffix == ".ipynb" and teacher.is_file() else None


class BothEditions(IPyNbFile):
    """nbval's collector for a student edition, followed by its teacher's exercise cells with strict checks."""

    def collect(self):
        yield from super().collect()                     # the student edition, cell by cell
        teacher = nbformat.read(teacher_edition_of(self.path), as_version=4)
        number = sum(cell.cell_type == "code" for cell in self.nb.cells)
        for exercise in find_exercises(teacher, self.path.name):
            for index in exercise.cells:
                cell = teacher.cells[index]
                if cell.cell_type != "code" or not cell.source.strip():
                    continue
                strict = nbformat.v4.new_code_cell(strict_checks(cell.source))
                yield IPyNbCell.from_parent(self, name=f"Solution {exercise.number} (teacher's cell {index + 1})",
                                            cell_num=number, cell=strict, options=LAX)
                number += 1


LAX = defaultdict(bool, check=False)   # as --nbval-lax: a cell must run without error; its outputs are not compared


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path, parent):
    """nbval's collector of a student edition becomes :class:`BothEditions`."""
    collected = yield
    if teacher_edition_of(file_path) is None:
        return collected
    return [BothEditions.from_parent(parent, path=file_path) if type(node) is IPyNbFile else node
            for node in collected]


def pytest_ignore_collect(collection_path, config):
    """A teacher's notebook runs with its student edition's file; alone only when it (or its folder) is named."""
    if collection_path.suffix != ".ipynb" or collection_path.parent.name != TEACHER_FOLDER:
        return None
    if not (collection_path.parent.parent / collection_path.name).is_file():
        return None                                   # no student edition beside it: an ordinary notebook
    named = {Path(config.invocation_params.dir, arg.split("::")[0]).resolve() for arg in config.args}
    return None if {collection_path.resolve(), collection_path.parent.resolve()} & named else True
