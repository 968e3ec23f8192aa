"""The classroom's student editions (build), on hand-made notebooks and on the course's own.

The tests over the course's notebooks run only their exercise cells, in this process, with each notebook's imports;
the grader's tests are in test_grading.py, nbgrader's in test_nbgrader.py.
"""
import ast
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from minilib.course.assignments.build import SELF_STUDY, StudentWorkError, build, student_edition
from minilib.course.assignments.exercises import (
    BEGIN,
    END,
    RUBRIC,
    AssignmentError,
    find_exercises,
    read_notebook,
    replace_solutions,
)
from minilib.course.checks.core import recording
from minilib.course.editions import TEACHER_EDITION, teacher_notebooks

REPO = Path(__file__).resolve().parents[1]
COURSE_NOTEBOOKS = teacher_notebooks()


@pytest.fixture(params=COURSE_NOTEBOOKS, ids=lambda p: p.name)
def course_editions(request):
    """Each chapter of the teacher's edition in turn: (path, teacher's edition, a class's student edition)."""
    teacher = read_notebook(request.param)
    return request.param, teacher, student_edition(teacher, request.param.name)


ATTENTION_SOLUTION = """\
def softmax_attention(q, k, v):
    \"\"\"softmax(QKᵀ/√d)V. q (seq_q, d), k (seq_k, d), v (seq_k, d_v) -> (seq_q, d_v).\"\"\"
    ### BEGIN SOLUTION
    weights = torch.softmax(q @ k.T / q.shape[-1] ** 0.5, dim=-1)
    return weights @ v
    ### END SOLUTION"""
SPLIT_SOLUTION = """\
def split_heads(x, n_heads):
    \"\"\"(batch, seq, d_model) -> (batch, heads, seq, head_dim).\"\"\"
    batch, seq, d_model = x.shape
    ### BEGIN SOLUTION
    return x.view(batch, seq, n_heads, d_model // n_heads).transpose(1, 2)
    ### END SOLUTION"""
WRITTEN_ANSWER = (f"{BEGIN}\nWithout 1/√d the scores grow with d and the softmax saturates.\n{END}\n\n"
                  f"{RUBRIC[0]}\n**Rubric.**\n- **1 point**: the scores' variance grows with d; softmax saturates.\n{RUBRIC[1]}")


def toy_chapter(*extra_after_first_check):
    """A small teacher's notebook in the course's form: two code exercises (2 + 2 points) and a written one."""
    cells = [new_markdown_cell("# A toy chapter"), new_code_cell("import torch"), new_markdown_cell("## Exercises"),
             new_markdown_cell("### Exercise 2.1: Attention in one line (2 points)\nWrite softmax(QKᵀ/√d)V."),
             new_code_cell(ATTENTION_SOLUTION),
             new_code_cell("from minilib.course.checks import check_softmax_attention\n"
                           "check_softmax_attention(softmax_attention)"),
             *[new_code_cell(source) for source in extra_after_first_check],
             new_markdown_cell("### Exercise 2.2: Heads (2 points)"), new_code_cell(SPLIT_SOLUTION),
             new_code_cell("from minilib.course.checks import check_split_heads\ncheck_split_heads(split_heads)"),
             new_markdown_cell("### Exercise 2.3: Why divide by √d? (written, 1 point)"),
             new_markdown_cell(WRITTEN_ANSWER), new_markdown_cell("## References\nVaswani et al. 2017.")]
    return new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                              "language": "python"}})


def save(nb, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def region_lines(nb, begin: str, end: str, with_markers: bool = False) -> set[str]:
    """Every non-blank line (stripped) inside a ``begin`` … ``end`` region of ``nb``, the markers too if with_markers."""
    lines = set()
    for cell in nb.cells:
        inside = False
        for line in map(str.strip, cell.source.splitlines()):
            if line in (begin, end):
                inside = line == begin
                if with_markers:
                    lines.add(line)
            elif inside and line:
                lines.add(line)
    return lines


def assert_no_solution_leaks(teacher, student):
    """No line of a solution appears in the student edition, unless the teacher's notebook also has it outside one."""
    outside = {line.strip() for cell in cells_without_solutions(teacher) for line in cell.splitlines()}
    student_text = {line.strip() for cell in student.cells for line in cell.source.splitlines()}
    leaked = (region_lines(teacher, BEGIN, END) - outside) & student_text
    assert not leaked, f"solution text in the student edition: {sorted(leaked)}"


def cells_without_solutions(nb):
    """The teacher's cells with solution regions removed (to know which lines exist outside solutions)."""
    return [replace_solutions(cell.source, (), "test") for cell in nb.cells]


# --- the student edition -------------------------------------------------------------------------------------

def test_replace_solutions_keeps_indentation_and_the_rest():
    got = replace_solutions(SPLIT_SOLUTION, ("# YOUR CODE HERE", "raise NotImplementedError()"), "cell")
    assert got.splitlines() == SPLIT_SOLUTION.splitlines()[:3] + ["    # YOUR CODE HERE",
                                                                   "    raise NotImplementedError()"]


def test_student_edition_stubs_solutions_keeps_checks_and_strips_outputs():
    teacher = toy_chapter()
    teacher.cells[5].outputs = [nbformat.v4.new_output("stream", text="✔ check_softmax_attention: passed")]
    teacher.cells[5].execution_count = 3
    student = student_edition(teacher, "toy.ipynb")
    assert "raise NotImplementedError()" in student.cells[4].source
    assert "    # YOUR CODE HERE" in student.cells[4].source.splitlines()
    assert student.cells[5].source == teacher.cells[5].source                    # the check is kept
    assert student.cells[5].outputs == [] and student.cells[5].execution_count is None
    assert student.cells[10].source == "YOUR ANSWER HERE"                        # the written answer too
    assert teacher.cells[4].source == ATTENTION_SOLUTION                         # the teacher's copy is untouched
    assert_no_solution_leaks(teacher, student)
    compile(student.cells[4].source, "stub", "exec")


def test_student_edition_drops_rubrics_and_cells_that_held_only_a_rubric():
    teacher = toy_chapter()
    answer, rubric = WRITTEN_ANSWER.split("\n\n")
    teacher.cells[10].source = answer
    teacher.cells.insert(11, new_markdown_cell(rubric))                   # the rubric in a cell of its own
    student = student_edition(teacher, "toy.ipynb")
    assert len(student.cells) == len(teacher.cells) - 1
    assert student.cells[10].source == "YOUR ANSWER HERE"
    text = "\n".join(cell.source for cell in student.cells)
    assert "RUBRIC" not in text and "point**" not in text and "saturates" not in text


def test_self_study_edition_keeps_the_rubric_as_self_assessment_and_points_at_the_solutions():
    teacher = toy_chapter()
    student = student_edition(teacher, "02_toy.ipynb", edition=SELF_STUDY)
    sources = [cell.source for cell in student.cells]
    note = sources.index(next(s for s in sources if s.startswith("*Self-study edition.*")))
    assert sources[note + 1].startswith("### Exercise 2.1") and "[`solutions/02_toy.ipynb`](solutions/02_toy.ipynb)" in sources[note]
    answer = sources.index("YOUR ANSWER HERE")
    assert sources[answer + 1] == ("**Check your answer against these criteria.**\n"
                                   "- **1 point**: the scores' variance grows with d; softmax saturates.")
    assert not any(BEGIN in s or RUBRIC[0] in s or "Without 1/√d" in s for s in sources)
    assert_no_solution_leaks(teacher, student)
    assert student.metadata["minilib"] == {"edition": "self-study", "source": "solutions/02_toy.ipynb"}
    assert len({cell.id for cell in student.cells}) == len(student.cells)          # every cell keeps a unique id
    nbformat.validate(student)
    assert [e.number for e in find_exercises(student)] == ["2.1", "2.2", "2.3"]    # a teacher can still grade it


def test_a_stub_that_runs_when_its_cell_runs_is_tagged_so_run_all_goes_on():
    teacher = toy_chapter()
    teacher.cells[4].source = f"{BEGIN}\nanswer = 42\n{END}"                      # a top-level solution region
    student = student_edition(teacher, "02_toy.ipynb")
    assert student.cells[4].source == "# YOUR CODE HERE\nraise NotImplementedError()"
    assert student.cells[4].metadata["tags"] == ["raises-exception"]
    assert "tags" not in student.cells[7].metadata                                 # a stub inside a function: no tag


def test_find_exercises_reads_headings_points_and_checks():
    exercises = find_exercises(toy_chapter(), "toy.ipynb")
    assert [(e.number, e.points, e.written, e.checks) for e in exercises] == [
        ("2.1", 2, False, ["check_softmax_attention"]), ("2.2", 2, False, ["check_split_heads"]), ("2.3", 1, True, [])]
    assert exercises[0].cells == [3, 4, 5] and exercises[2].cells == [9, 10]    # "## References" ends the last one


def test_an_exercise_heading_may_share_its_cell_with_the_section_heading():
    nb = toy_chapter()
    nb.cells[2:4] = [new_markdown_cell("## Exercises\n\n" + nb.cells[3].source)]
    nb.cells[2].source += "\n```python\n# a comment in an example, not a heading\n```"
    exercises = find_exercises(nb, "toy.ipynb")
    assert [(e.number, e.cells) for e in exercises] == [("2.1", [2, 3, 4]), ("2.2", [5, 6, 7]), ("2.3", [8, 9])]


@pytest.mark.parametrize("change, message", [
    (lambda nb: setattr(nb.cells[4], "source", ATTENTION_SOLUTION.replace("    ### END SOLUTION", "")),
     "cell 5 (\"def softmax_attention(q, k, v):\"): the solution region opened at line 3 is never closed"),
    (lambda nb: setattr(nb.cells[4], "source", ATTENTION_SOLUTION.replace("    ### BEGIN SOLUTION", "")),
     "without a '### BEGIN SOLUTION'"),
    (lambda nb: setattr(nb.cells[5], "source", "check_softmax_atention(softmax_attention)"),
     "cell 6 (\"check_softmax_atention(softmax_attention)\"): calls check_softmax_atention, which is not a check "
     "in minilib.course.checks (did you mean check_softmax_attention"),
    (lambda nb: setattr(nb.cells[3], "source", "### Exercise 2.1: Attention in one line (3 points)"),
     "the heading gives exercise 2.1 3 points, but its checks are worth 2 (check_softmax_attention: 2)"),
    (lambda nb: setattr(nb.cells[3], "source", "### Exercise 2.1: Attention in one line (2 pts)"),
     "does not follow the form"),
    (lambda nb: setattr(nb.cells[1], "source", "import torch\n" + BEGIN + "\nx = 1\n" + END),
     "cell 2 (\"import torch\"): a solution region outside the exercises"),
    (lambda nb: setattr(nb.cells[4], "source", ATTENTION_SOLUTION.replace(BEGIN, "").replace(END, "")),
     "exercise 2.1 has no '### BEGIN SOLUTION' region"),
    (lambda nb: setattr(nb.cells[10], "source", WRITTEN_ANSWER.split("\n\n")[0]),
     "written exercise 2.3 needs one model answer between '### BEGIN SOLUTION' and '### END SOLUTION' and one "
     "rubric between '### BEGIN RUBRIC' and '### END RUBRIC' in its markdown cells; found 1 and 0"),
    (lambda nb: setattr(nb.cells[10], "source", WRITTEN_ANSWER.split(BEGIN + "\n")[0] + RUBRIC[0] + "\n- **1 point**: x\n" + RUBRIC[1]),
     "found 0 and 1"),
    (lambda nb: setattr(nb.cells[10], "source", WRITTEN_ANSWER.replace("**1 point**", "**2 points**")),
     "the rubric of exercise 2.3 gives 2 points (2), the heading 1"),
    (lambda nb: setattr(nb.cells[10], "source", WRITTEN_ANSWER.replace(RUBRIC[1], "")),
     "the rubric region opened at line 5 is never closed; add '### END RUBRIC' after the rubric"),
    (lambda nb: setattr(nb.cells[2], "source", f"## Exercises\n{RUBRIC[0]}\n- **1 point**: x\n{RUBRIC[1]}"),
     "cell 3 (\"## Exercises\"): a rubric belongs in a markdown cell of a written exercise"),
])
def test_bad_teacher_notebooks_get_errors_naming_notebook_and_cell(change, message):
    nb = toy_chapter()
    change(nb)
    with pytest.raises(AssignmentError) as error:
        student_edition(nb, "toy.ipynb")
    assert "toy.ipynb" in str(error.value) and message in str(error.value)


def test_build_errors_on_a_missing_or_broken_notebook_and_writes_nothing(tmp_path):
    good = save(toy_chapter(), tmp_path / "teacher" / "01_good.ipynb")
    broken = tmp_path / "teacher" / "02_broken.ipynb"
    broken.write_text('{"cells": [', encoding="utf-8")
    with pytest.raises(AssignmentError, match="no such notebook"):
        build([good, tmp_path / "teacher" / "nope.ipynb"], tmp_path / "student")
    with pytest.raises(AssignmentError, match="02_broken.ipynb: not a valid notebook"):
        build([good, broken], tmp_path / "student")
    assert not (tmp_path / "student").exists()


def test_build_never_overwrites_a_students_work_without_force_then_keeps_a_backup(tmp_path):
    teacher = save(toy_chapter(), tmp_path / "teacher" / "02_toy.ipynb")
    out = tmp_path / "student"
    assert [r.action for r in build([teacher], out)] == ["new"]
    assert [r.action for r in build([teacher], out)] == ["unchanged"]
    manifest = json.loads((out / ".minilib-build.json").read_text())
    assert set(manifest["notebooks"]) == {"02_toy.ipynb"}

    changed = toy_chapter()                                          # the teacher fixes a typo: safe to update
    changed.cells[0].source = "# A toy chapter, revised"
    save(changed, teacher)
    assert [r.action for r in build([teacher], out)] == ["updated"]

    work = read_notebook(out / "02_toy.ipynb")                       # a student answers exercise 2.1
    work.cells[4].source = ATTENTION_SOLUTION
    save(work, out / "02_toy.ipynb")
    students_bytes = (out / "02_toy.ipynb").read_bytes()
    with pytest.raises(StudentWorkError, match="02_toy.ipynb") as refusal:
        build([teacher], out)
    assert "--force" in str(refusal.value)
    assert (out / "02_toy.ipynb").read_bytes() == students_bytes

    [result] = build([teacher], out, force=True)
    assert result.action == "replaced" and result.backup.read_bytes() == students_bytes
    assert "raise NotImplementedError()" in read_notebook(out / "02_toy.ipynb").cells[4].source


def test_a_committed_edition_needs_no_build_record_git_keeps_it(tmp_path):
    """As the course's self-study edition: committed to git, its build record ignored (two branches that rebuilt it
    would conflict there). A notebook as committed may be rebuilt; one with uncommitted edits is refused."""
    teacher = save(toy_chapter(), tmp_path / "teacher" / "02_toy.ipynb")
    out = tmp_path / "repo" / "notebooks"
    build([teacher], out, edition=SELF_STUDY)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q"], cwd=out.parent, check=True)
    subprocess.run([*git, "add", "notebooks/02_toy.ipynb"], cwd=out.parent, check=True)
    subprocess.run([*git, "commit", "-qm", "the student edition"], cwd=out.parent, check=True)
    (out / ".minilib-build.json").unlink()                          # a fresh clone: no record

    changed = toy_chapter()
    changed.cells[0].source = "# A toy chapter, revised"
    save(changed, teacher)
    assert [r.action for r in build([teacher], out, edition=SELF_STUDY)] == ["updated"]   # as committed: safe
    work = read_notebook(out / "02_toy.ipynb")                       # edits git has not seen
    work.cells[4].source = ATTENTION_SOLUTION
    save(work, out / "02_toy.ipynb")
    with pytest.raises(StudentWorkError, match="02_toy.ipynb"):
        build([teacher], out, edition=SELF_STUDY)


def test_build_refuses_a_notebook_it_did_not_write(tmp_path):
    teacher = save(toy_chapter(), tmp_path / "teacher" / "02_toy.ipynb")
    save(toy_chapter(), tmp_path / "student" / "02_toy.ipynb")
    with pytest.raises(StudentWorkError):
        build([teacher], tmp_path / "student")


# --- the test command's run of both editions ----------------------------------------------------------------

def test_the_test_command_runs_the_student_edition_then_requires_each_model_answer_to_pass(tmp_path):
    """minilib.course.pytest_editions on a course of two chapters: one whose model answers pass, one with a wrong
    model answer, which fails at that exercise's check; the stubs of the student edition fail nothing."""
    wrong = toy_chapter()
    wrong.cells[4].source = ATTENTION_SOLUTION.replace(" / q.shape[-1] ** 0.5", "")     # forgot the 1/√d
    teachers = [save(toy_chapter(), tmp_path / "notebooks" / "solutions" / "02_toy.ipynb"),
                save(wrong, tmp_path / "notebooks" / "solutions" / "03_wrong.ipynb")]
    build(teachers, tmp_path / "notebooks", edition=SELF_STUDY)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf", "--rootdir", str(tmp_path), "-p", "no:cacheprovider",
                          "-p", "minilib.course.pytest_editions", "--nbval-lax", "--nbval-current-env", "notebooks"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert "1 failed" in run.stdout and "passed" in run.stdout, run.stdout[-3000:]
    failed = [line for line in run.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and failed[0].startswith("FAILED notebooks/03_wrong.ipynb::Solution 2.1 (teacher's cell 6)")
    assert "✘ check_softmax_attention" in run.stdout
    ran = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "--rootdir", str(tmp_path), "-p",
                          "no:cacheprovider", "-p", "minilib.course.pytest_editions", "--nbval-lax", "notebooks",
                          "notebooks/solutions/02_toy.ipynb"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    collected = [line.split("::")[0] for line in ran.stdout.splitlines() if "::" in line]
    assert sorted(set(collected)) == ["notebooks/02_toy.ipynb", "notebooks/03_wrong.ipynb",   # named: run on its own
                                      "notebooks/solutions/02_toy.ipynb"], ran.stdout[-2000:]


# --- the course's own notebooks ------------------------------------------------------------------------------

def notebook_imports(nb) -> str:
    """The import statements of every code cell: what an exercise cell may use besides its own code."""
    imports = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            tree = ast.parse(TransformerManager().transform_cell(cell.source))
            imports += [ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    return "\n".join(dict.fromkeys(imports))


def run_exercise_cells(nb, exercise) -> dict[str, bool]:
    """Execute one exercise's code cells here (after the notebook's imports); {check: passed}, as recorded."""
    namespace = {}
    exec(notebook_imports(nb), namespace)
    with recording() as results:
        for index in exercise.cells:
            if nb.cells[index].cell_type == "code":
                exec(TransformerManager().transform_cell(nb.cells[index].source), namespace)
    return {result["check"]: result["passed"] for result in results}


def test_course_notebook_builds_without_leaking_solutions(course_editions):
    path, teacher, student = course_editions
    exercises = find_exercises(teacher, path.name)
    assert len(exercises) >= 3, f"{path.name} has {len(exercises)} exercises; every chapter needs at least three"
    assert_no_solution_leaks(teacher, student)
    student_text = {line.strip() for cell in student.cells for line in cell.source.splitlines()}
    rubric = region_lines(teacher, *RUBRIC, with_markers=True)
    assert not rubric & student_text, f"{path.name}: rubric text in the student edition"


def test_teachers_edition_has_a_model_answer_and_a_rubric_for_every_written_exercise(course_editions):
    path, teacher, student = course_editions
    written = [e for e in find_exercises(teacher, path.name) if e.written]
    for exercise in written:
        cells = [teacher.cells[i].source for i in exercise.cells]
        answer = [c for c in cells if BEGIN in c.splitlines()]
        assert len(answer) == 1 and len(replace_solutions(answer[0], (), "t", RUBRIC).split(BEGIN)[1]) > 200, (
            f"exercise {exercise.number}: no substantial model answer")
        assert sum(RUBRIC[0] in c.splitlines() for c in cells) == 1, f"exercise {exercise.number}: no rubric"
    # in the student edition each written exercise keeps its question and gets an empty answer cell instead
    student_written = [e for e in find_exercises(student, path.name) if e.written]
    assert [e.number for e in student_written] == [e.number for e in written]
    for exercise in student_written:
        sources = [student.cells[i].source for i in exercise.cells]
        assert "YOUR ANSWER HERE" in sources and not any(RUBRIC[0] in s or BEGIN in s for s in sources)


def test_build_defaults_to_every_chapter_of_the_teachers_edition(tmp_path):
    assert TEACHER_EDITION == REPO / "notebooks" / "solutions" and len(COURSE_NOTEBOOKS) >= 14
    results = build(out=tmp_path / "class")
    assert [r.path.name for r in results] == [p.name for p in COURSE_NOTEBOOKS]
    assert sorted(p.name for p in (tmp_path / "class").iterdir()) == sorted([".minilib-build.json",
                                                                               *(p.name for p in COURSE_NOTEBOOKS)])


def test_course_exercise_stubs_fail_every_check_of_their_exercise(course_editions, tmp_path, monkeypatch):
    """Each exercise of the student edition, not done yet, fails each of its checks, and calls exactly the checks its
    heading declares. That each model answer passes them is the test command's: it runs every teacher's exercise
    cell with its checks made strict (minilib.course.pytest_editions, tested above on a toy course), so the
    answers, some of which train or export a model, are not run twice."""
    path, teacher, student = course_editions
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)            # as in a student's folder: the notebooks read no file beside them
    for exercise in (e for e in find_exercises(teacher, path.name) if not e.written):
        stubbed = run_exercise_cells(student, exercise)
        assert stubbed == dict.fromkeys(exercise.checks, False), f"exercise {exercise.number}: a stub passes {stubbed}"
