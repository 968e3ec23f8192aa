"""The course's two editions: the committed student edition is what the build makes of the teacher's edition, the
lessons are the same cells in both, and no notebook reads a file beside it (so each runs from any folder)."""
import ast
import re

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

from minilib.course.assignments.build import SELF_STUDY, student_edition
from minilib.course.assignments.exercises import find_exercises
from minilib.course.editions import COURSE, STUDENT_EDITION, TEACHER_EDITION, student_notebooks, teacher_notebooks

REBUILD = "python -m minilib assignments build --self-study"
CHAPTERS = [path.name for path in teacher_notebooks()]
MARKDOWN_TARGET = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)")      # the target of a markdown link or image


def test_every_chapter_has_both_editions():
    assert len(CHAPTERS) >= 14
    assert [path.name for path in student_notebooks()] == CHAPTERS, f"the student edition is stale: run `{REBUILD}`"


@pytest.mark.parametrize("name", CHAPTERS)
def test_the_committed_student_edition_is_what_the_build_makes(name):
    teacher = nbformat.read(TEACHER_EDITION / name, as_version=4)
    expected = nbformat.writes(student_edition(teacher, name, edition=SELF_STUDY)) + "\n"
    committed = (STUDENT_EDITION / name).read_text(encoding="utf-8")
    assert committed == expected, f"notebooks/{name} differs from the teacher's edition's build: run `{REBUILD}`"


@pytest.mark.parametrize("name", CHAPTERS)
def test_the_lessons_are_the_same_cells_in_both_editions(name):
    """Only the exercises differ, so the test command's one run of each chapter covers both editions' lessons
    (minilib/course/pytest_editions.py)."""
    teacher = nbformat.read(TEACHER_EDITION / name, as_version=4)
    student = nbformat.read(STUDENT_EDITION / name, as_version=4)
    in_exercises = {index for exercise in find_exercises(teacher) for index in exercise.cells}
    lesson = [cell for index, cell in enumerate(teacher.cells) if index not in in_exercises]
    student_by_id = {cell.id: cell for cell in student.cells}
    assert [student_by_id.get(cell.id) for cell in lesson] == lesson
    student_exercises = {index for exercise in find_exercises(student) for index in exercise.cells}
    assert len(student.cells) - len(student_exercises) == len(lesson) + 1       # + the self-study note


def relative_targets(path):
    """(cell number, target) for every file a notebook's markdown links to, or its code names by a relative path
    with a folder in it (``"model_repository/minilm/config.pbtxt"``) that exists in the course."""
    found = []
    for number, cell in enumerate(nbformat.read(path, as_version=4).cells, start=1):
        if cell.cell_type == "markdown":
            targets = [t for t in MARKDOWN_TARGET.findall(cell.source)
                       if not t.startswith(("http://", "https://", "attachment:", "#", "mailto:"))]
        else:
            tree = ast.parse(TransformerManager().transform_cell(cell.source))
            strings = [node.value for node in ast.walk(tree)
                       if isinstance(node, ast.Constant) and isinstance(node.value, str)]
            targets = [s for s in strings if re.fullmatch(r"[\w.-]+(/[\w.-]+)+/?", s) and _a_course_file(s)]
        found += [(number, target) for target in targets]
    return found


def _a_course_file(name: str) -> bool:
    """Whether ``name`` is a file or folder of the course, relative to one of the places a notebook is opened from."""
    return any((folder / name).exists() for folder in (COURSE, STUDENT_EDITION, TEACHER_EDITION))


@pytest.mark.parametrize("name", CHAPTERS)
def test_no_notebook_reads_a_file_by_a_path_relative_to_its_folder(name):
    """A class handout in any folder, a download from Binder, Colab, a submission being graded: a notebook finds
    its pictures as attachments and its files through minilib (e.g. ``serving.MINILM_CONFIG``), never beside it.
    The one relative link allowed: the student edition's note pointing at its own teacher's edition."""
    assert relative_targets(TEACHER_EDITION / name) == []
    assert [target for _, target in relative_targets(STUDENT_EDITION / name)] == [f"solutions/{name}"]


def test_the_path_check_finds_what_a_notebook_would_read_beside_it(tmp_path):
    """The check above can fail: a linked diagram and a configuration file read from the notebook's folder."""
    path = tmp_path / "99_x.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("![tiles](notebooks/figures/02_self_attention.png) [a book](https://d2l.ai)"),
        nbformat.v4.new_code_cell('text = open("minilib/deploy/model_repository/minilm/config.pbtxt").read()\n'
                                  '%time x = 1\nrecord = "data/manifest.json"\nlabel = "not/a/course/file"')]), path)
    assert sorted(relative_targets(path)) == [(1, "notebooks/figures/02_self_attention.png"), (2, "data/manifest.json"),
                                              (2, "minilib/deploy/model_repository/minilm/config.pbtxt")]
