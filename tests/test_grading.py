"""The course's own grader: what it grades comes from the teacher's edition, its results cannot be written by the
student's code, each exercise is graded on its own, and a class's grades come out as a teacher needs them.

Each test grades small notebooks in real kernels (a few seconds each).
"""
import csv
import hashlib
import json

import nbformat
import pytest
from test_assignments import ATTENTION_SOLUTION, SPLIT_SOLUTION, save, toy_chapter

from minilib.cli import main
from minilib.course.assignments.build import build, read_assignment
from minilib.course.assignments.classroom import (
    feedback,
    find_submissions,
    grade_class,
    write_gradebook,
    write_outputs,
)
from minilib.course.assignments.exercises import read_notebook
from minilib.course.assignments.grade import grade_notebook

TIMEOUT = 60


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """The toy chapter's teacher's edition and its class edition (what students get)."""
    root = tmp_path_factory.mktemp("course")
    teacher = save(toy_chapter(), root / "teacher" / "02_toy.ipynb")
    build([teacher], root / "student")
    return {"teacher": read_assignment(teacher), "student": root / "student" / "02_toy.ipynb"}


def submission(course, path, answers=(), extra=()):
    """The student edition with ``answers`` ({cell index: source}) and ``extra`` cells ((after index, source))."""
    nb = read_notebook(course["student"])
    for index, source in dict(answers).items():
        nb.cells[index].source = source
    for after, source in sorted(extra, reverse=True):
        nb.cells.insert(after + 1, nbformat.v4.new_code_cell(source))
    return save(nb, path)


def scores(grade):
    return {e.number: (e.points, e.status) for e in grade.exercises}


SOLVED = {4: ATTENTION_SOLUTION, 7: SPLIT_SOLUTION}
FAKE_RESULTS = """\
import json, os
record = {"check": "check_split_heads", "passed": True, "points": 2, "message": "✔ check_split_heads: passed"}
with open(os.environ.get("MINILIB_GRADING_LOG", "grading.jsonl"), "a") as log:
    log.write(json.dumps(record) + "\\n")
print("✔ check_split_heads: passed (2/2 points)")
from IPython.display import display
display({"application/json": {"results": [record]}}, raw=True)
"""


def test_a_faked_log_printout_or_display_earns_nothing(course, tmp_path, monkeypatch):
    monkeypatch.setenv("MINILIB_GRADING_LOG", str(tmp_path / "log.jsonl"))
    path = submission(course, tmp_path / "02_toy.ipynb", {4: ATTENTION_SOLUTION}, [(7, FAKE_RESULTS)])
    grade = grade_notebook(path, course["teacher"], timeout=TIMEOUT)
    assert scores(grade) == {"2.1": (2, "passed"), "2.2": (0, "failed"), "2.3": (None, "graded by hand")}
    assert "not done yet" in grade.exercises[1].detail and grade.status == "completed"


@pytest.mark.parametrize("rebinding, named", [
    ("import minilib.course.checks.core as core\ncore.Exercise._report = lambda self, *a, **k: (True, '✔')",
     "minilib.course.checks.core.Exercise._report"),
    ("import minilib.course.checks as checks\nfor name in dir(checks):\n    if name.startswith('check_'):\n"
     "        setattr(checks, name, lambda answer: True)", "minilib.course.checks.check_split_heads"),  # every check
    ("import torch\ntorch.allclose = lambda *args, **kwargs: True", "torch.allclose"),
    ("import builtins\nbuiltins.print = lambda *args, **kwargs: None", "builtins.print"),
    ("get_ipython().events.register('post_run_cell', lambda result: None)", "IPython.events.post_run_cell"),
])
def test_rebinding_the_check_machinery_is_flagged_and_earns_nothing_after_it(course, tmp_path, rebinding, named):
    """2.1 is answered and checked before the rebinding: it keeps its points; every check after it gets none."""
    path = submission(course, tmp_path / "02_toy.ipynb", SOLVED, [(7, rebinding)])
    grade = grade_notebook(path, course["teacher"], timeout=TIMEOUT)
    assert scores(grade) == {"2.1": (2, "passed"), "2.2": (0, "flagged"), "2.3": (None, "graded by hand")}
    assert grade.status == "flagged" and any(named in flag for flag in grade.flags), grade.flags
    assert named in grade.exercises[1].detail
    changes = [flag.split(": ", 2)[2] for flag in grade.flags]                  # each change flagged once
    assert len(changes) == len(set(changes)), grade.flags
    assert len(feedback(grade).splitlines()) < 40                                # however many names were rebound


def test_a_lesson_that_draws_a_figure_is_not_flagged(course, tmp_path):
    """pyplot registers a callback of its own at a notebook's first figure: the notebook's machinery, no rebinding."""
    figure = "import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0])\nplt.show()"
    grade = grade_notebook(submission(course, tmp_path / "02_toy.ipynb", SOLVED, [(1, figure)]), course["teacher"],
                           timeout=TIMEOUT)
    assert grade.status == "completed" and grade.flags == []
    assert scores(grade) == {"2.1": (2, "passed"), "2.2": (2, "passed"), "2.3": (None, "graded by hand")}


def test_an_answer_that_rebinds_the_machinery_while_it_is_checked_is_flagged(course, tmp_path):
    cheat = SPLIT_SOLUTION.replace("    ### BEGIN SOLUTION", "    import torch\n    torch.allclose = lambda *a, **k: True\n"
                                                               "    ### BEGIN SOLUTION")
    grade = grade_notebook(submission(course, tmp_path / "02_toy.ipynb", {4: ATTENTION_SOLUTION, 7: cheat}),
                           course["teacher"], timeout=TIMEOUT)
    assert scores(grade)["2.2"] == (0, "flagged")
    assert any("while its check ran: torch.allclose was rebound" in flag for flag in grade.flags), grade.flags


def test_exercises_points_and_checks_come_from_the_teachers_edition(course, tmp_path):
    """A submission that changes its headings' points, its check cells or adds an exercise changes nothing."""
    nb = read_notebook(submission(course, tmp_path / "02_toy.ipynb", SOLVED))
    nb.cells[3].source = "### Exercise 2.1: Attention in one line (50 points)"
    nb.cells[8].source = "print('✔ check_split_heads: passed (2/2 points)')"         # the check cell, replaced
    nb.cells.append(nbformat.v4.new_markdown_cell("### Exercise 2.9: Free points (100 points)"))
    nb.cells[7].source = "def split_heads(x, n_heads):\n    return x"                   # a wrong answer
    grade = grade_notebook(save(nb, tmp_path / "02_toy.ipynb"), course["teacher"], timeout=TIMEOUT)
    assert scores(grade) == {"2.1": (2, "passed"), "2.2": (0, "failed"), "2.3": (None, "graded by hand")}
    assert (grade.score, grade.max_score) == (2, 4)


def test_a_crashing_cell_costs_only_its_exercise(course, tmp_path):
    typo = "x = undefined_name\n" + ATTENTION_SOLUTION                        # a top-level typo before the answer
    grade = grade_notebook(submission(course, tmp_path / "02_toy.ipynb", {4: typo, 7: SPLIT_SOLUTION}),
                           course["teacher"], timeout=TIMEOUT)
    assert scores(grade) == {"2.1": (0, "failed"), "2.2": (2, "passed"), "2.3": (None, "graded by hand")}
    assert "NameError: name 'undefined_name' is not defined" in grade.exercises[0].detail
    assert any("cell 5" in error and "NameError" in error for error in grade.cell_errors)


def test_an_endless_loop_is_stopped_at_its_exercises_limit_and_the_next_exercise_still_graded(course, tmp_path):
    grade = grade_notebook(submission(course, tmp_path / "02_toy.ipynb", {4: "while True:\n    pass", 7: SPLIT_SOLUTION}),
                           course["teacher"], timeout=8)
    assert scores(grade) == {"2.1": (0, "failed"), "2.2": (2, "passed"), "2.3": (None, "graded by hand")}
    assert "was stopped" in grade.exercises[0].detail


def test_a_kernel_that_dies_is_replaced_and_the_next_exercise_still_graded(course, tmp_path):
    grade = grade_notebook(submission(course, tmp_path / "02_toy.ipynb", {4: "import os\nos._exit(1)", 7: SPLIT_SOLUTION}),
                           course["teacher"], timeout=TIMEOUT)
    assert scores(grade) == {"2.1": (0, "failed"), "2.2": (2, "passed"), "2.3": (None, "graded by hand")}
    assert "killed Python" in grade.exercises[0].detail


def test_a_file_that_is_not_a_notebook_is_reported(course, tmp_path):
    path = tmp_path / "02_toy.ipynb"
    path.write_text("{ this is not JSON", encoding="utf-8")
    grade = grade_notebook(path, course["teacher"])
    assert grade.status == "invalid" and "not a valid notebook" in grade.reason and grade.exercises == []


def test_one_students_folder_named_on_the_command_line_is_theirs(course, tmp_path):
    subs = tmp_path / "submissions"
    submission(course, subs / "dave" / "02_toy.ipynb", {4: ATTENTION_SOLUTION})
    (subs / "dave" / "notes.txt").write_text("my notes")                              # handed in by mistake
    submission(course, subs / "loose" / "frank_02_toy.ipynb", {})
    submission(course, subs / "loose" / "02_toy.ipynb", {})                           # beside a named one: whose?
    teachers = [course["teacher"]]
    found = {s.path.name: s for s in find_submissions([subs / "dave"], teachers)}
    assert found["02_toy.ipynb"].student == found["notes.txt"].student == "dave"
    assert found["02_toy.ipynb"].problem == "" and "not a notebook" in found["notes.txt"].problem
    loose = {s.path.name: s for s in find_submissions([subs / "loose"], teachers)}
    assert loose["frank_02_toy.ipynb"].student == "frank" and loose["frank_02_toy.ipynb"].problem == ""
    assert "cannot tell whose it is" in loose["02_toy.ipynb"].problem
    assert [s.student for s in find_submissions([subs], teachers) if s.path.parent.name == "dave"] == ["dave"] * 2


def test_a_class_graded_in_parallel_into_a_gradebook_feedback_and_hand_grades(course, tmp_path, capsys):
    subs = tmp_path / "submissions"
    submission(course, subs / "alice" / "work" / "02_toy.ipynb", {**SOLVED, 10: "The softmax saturates."})
    submission(course, subs / "bob" / "02_toy.ipynb", {4: ATTENTION_SOLUTION})
    submission(course, subs / "carol_02_toy.ipynb", {7: SPLIT_SOLUTION})                # the name in the file name
    (subs / "dave").mkdir()
    (subs / "dave" / "02_toy.pdf").write_bytes(b"%PDF-1.4")                            # the wrong file
    (subs / "erin").mkdir()
    (subs / "erin" / "02_toy.ipynb").write_text("{", encoding="utf-8")                 # a corrupt notebook
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in subs.rglob("*") if p.is_file()}

    teachers = [course["teacher"]]
    found = find_submissions([subs], teachers)
    assert sorted((s.student, s.chapter) for s in found) == [("alice", "02_toy"), ("bob", "02_toy"),
                                                             ("carol", "02_toy"), ("dave", "02_toy"), ("erin", "02_toy")]
    grades = grade_class(found, jobs=2, timeout=TIMEOUT)
    out = tmp_path / "grades"
    assert write_outputs(grades, teachers, out) == []
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in subs.rglob("*") if p.is_file()} == before

    with open(out / "gradebook.csv", newline="", encoding="utf-8") as file:
        rows = {row["student"]: row for row in csv.DictReader(file)}
    assert rows["alice"]["02 total (5)"] == "4" and rows["bob"]["02 total (5)"] == "2"
    assert rows["carol"]["2.2 Heads (2)"] == "2" and rows["carol"]["2.1 Attention in one line (2)"] == "0"
    assert rows["dave"]["02 status"] == rows["erin"]["02 status"] == "invalid" and rows["alice"]["out of"] == "5"
    assert rows["alice"]["2.3 Why divide by √d? (written, 1)"] == ""                    # not graded by hand yet
    assert "2.2 Heads | 0 / 2 | failed" in (out / "feedback" / "bob" / "02_toy.md").read_text()
    assert "not a notebook" in (out / "feedback" / "dave" / "02_toy.md").read_text()

    with open(out / "hand_grades.csv", newline="", encoding="utf-8") as file:
        template = list(csv.DictReader(file))
    assert [(r["student"], r["exercise"], r["max_points"], r["points"], r["answer"]) for r in template] == [
        ("alice", "2.3", "1", "", "The softmax saturates."), ("bob", "2.3", "1", "", ""), ("carol", "2.3", "1", "", "")]
    template[0].update(points="1", comment="saturation, well explained")
    template[1].update(points="3")                                                      # more than it is worth
    with open(out / "hand_grades.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(template[0]))
        writer.writeheader()
        writer.writerows(template)
    assert write_gradebook(out, teachers) == ["hand_grades.csv, line 3: exercise 2.3 is worth 0 to 1 points, got 3"]
    with open(out / "gradebook.csv", newline="", encoding="utf-8") as file:
        rows = {row["student"]: row for row in csv.DictReader(file)}
    assert rows["alice"]["2.3 Why divide by √d? (written, 1)"] == "1" and rows["alice"]["total"] == "5"
    assert "saturation, well explained" in (out / "feedback" / "alice" / "02_toy.md").read_text()

    # the command line, as a teacher types it (and a second run keeps the teacher's hand grades)
    assert main(["assignments", "gradebook", "--out", str(out), "--teacher", str(course["teacher"].path)]) == 1   # the bad line again
    assert "line 3" in capsys.readouterr().err
    records = json.loads((out / "grades.json").read_text())
    assert {r["student"]: r["score"] for r in records} == {"alice": 4, "bob": 2, "carol": 2, "dave": 0, "erin": 0}
