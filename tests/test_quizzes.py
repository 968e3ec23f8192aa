"""Recap quizzes: right answers pass however they are written, wrong and malformed ones fail with a message that
names the question and the section to reread (never the answer), and every chapter's model answer passes its check
while the student edition's stub does not."""
import ast
import re

import pytest

from minilib.course.assignments.exercises import BEGIN, END, read_notebook
from minilib.course.checks import REGISTRY
from minilib.course.checks.core import CheckFailed
from minilib.course.checks.quizzes import QUIZZES, Question, Quiz, check_quiz, digests
from minilib.course.editions import STUDENT_EDITION, TEACHER_EDITION

MODEL = {1: "b", 2: "ac", 3: 12.6, 4: "d", 5: 3}


@pytest.fixture(scope="module")
def quiz():
    """A quiz of every kind of question, whose model answer is MODEL."""
    stored = digests("99", MODEL)
    kinds = [dict(choices="abcd"), dict(choices="abcd", several=True), dict(decimals=1), dict(choices="abcde"),
             dict(decimals=0)]
    return Quiz("99", "ch99_test", 2, tuple(Question(stored[n], f"section {n}", **kinds[n - 1]) for n in MODEL))


@pytest.mark.parametrize("answers", [
    MODEL,
    {1: "B", 2: "ca", 3: 12.64, 4: " d ", 5: 3.0},
    {"1": "(b)", "2": ["a", "c"], "3": "12.6", "4": "D", "5": 2.6},
    ["b", "a, c", 12.5, "d", 4],                 # a list in question order; 12.5 and 4: one unit of the last decimal
])
def test_right_answers_pass_however_they_are_written(quiz, answers):
    check_quiz(quiz, answers)


@pytest.mark.parametrize("change, wrong", [
    ({1: "a"}, "question 1 "), ({2: "a"}, "question 2 "), ({2: "abc"}, "question 2 "), ({3: 12.8}, "question 3 "),
    ({3: 126}, "question 3 "), ({5: 5}, "question 5 "), ({1: "c", 4: "e"}, "questions 1, 4 "),
])
def test_wrong_answers_fail_naming_the_questions_and_sections_to_reread_not_the_answers(quiz, change, wrong):
    with pytest.raises(CheckFailed) as failure:
        check_quiz(quiz, {**MODEL, **change})
    message = f"{failure.value.what} {failure.value.expected} {failure.value.got} {failure.value.hint}"
    assert wrong + "not right yet" in message
    for number in change:
        assert f"question {number}: section {number}" in failure.value.hint
    assert "12.6" not in message and "'b'" not in message


@pytest.mark.parametrize("change, words", [
    ({1: "z"}, ["question 1", "one letter among a–d", "'z' is not a choice"]),
    ({1: "ab"}, ["question 1", "one right choice"]),
    ({2: 2}, ["question 2", "letters are asked", "not int"]),
    ({3: "12.6 MB"}, ["question 3", "without its unit"]),
    ({3: True}, ["question 3", "a number is asked"]),
    ({3: float("nan")}, ["question 3", "finite"]),
    ({4: ""}, ["question 4", "no letter"]),
])
def test_malformed_answers_are_named_with_the_form_asked(quiz, change, words):
    with pytest.raises(CheckFailed) as failure:
        check_quiz(quiz, {**MODEL, **change})
    message = f"{failure.value.what} {failure.value.expected} {failure.value.got}"
    assert all(word in message for word in words), message


@pytest.mark.parametrize("answers, words", [
    ("b", ["a dict", "str"]),
    ({1: "b", 2: "ac"}, ["no answer to questions 3, 4, 5"]),
    ({**MODEL, 6: "a"}, ["numbers 1–5", "6"]),
    ({**MODEL, "first": "a"}, ["numbers 1–5", "'first'"]),
])
def test_answers_of_the_wrong_shape_are_named(quiz, answers, words):
    with pytest.raises(CheckFailed) as failure:
        check_quiz(quiz, answers)
    message = f"{failure.value.what} {failure.value.expected} {failure.value.got}"
    assert all(word in message for word in words), message


def test_the_library_stores_digests_not_answers():
    for quiz in QUIZZES.values():
        for question in quiz.questions:
            assert re.fullmatch(r"[0-9a-f]{24}", question.digest)


def answer_function(path, chapter: str):
    """The recap answer function ``recap_NN`` defined in a notebook, executed: (function, its cell's source)."""
    for cell in read_notebook(path).cells:
        if cell.cell_type == "code" and re.search(rf"^def recap_{chapter}\(", cell.source, re.M):
            namespace = {}
            exec(compile(cell.source, f"recap_{chapter}", "exec"), namespace)
            return namespace[f"recap_{chapter}"], cell.source
    raise AssertionError(f"no `def recap_{chapter}():` cell in {path}")


def notebook_of(chapter: str, edition) -> str:
    return next(str(path) for path in sorted(edition.glob(f"{chapter}_*.ipynb")))


@pytest.mark.parametrize("chapter", sorted(QUIZZES))
def test_each_chapters_model_answer_passes_and_its_stub_does_not(chapter, capsys):
    check = REGISTRY[f"check_recap_{chapter}"]
    model, source = answer_function(notebook_of(chapter, TEACHER_EDITION), chapter)
    assert BEGIN in source and END in source
    assert check(model), capsys.readouterr().out
    stub, _ = answer_function(notebook_of(chapter, STUDENT_EDITION), chapter)
    assert not check(stub)
    assert "not done yet" in capsys.readouterr().out
    answers = model()
    assert len(answers) == len(QUIZZES[chapter].questions)
    wrong = {n: ("z" if isinstance(a, str) else a * 3 + 1) for n, a in answers.items()}
    assert not check(lambda: {**answers, 1: wrong[1]})


@pytest.mark.parametrize("chapter", sorted(QUIZZES))
def test_each_quiz_is_an_exercise_of_its_chapter_with_its_points(chapter):
    check = REGISTRY[f"check_recap_{chapter}"]
    assert check.points == QUIZZES[chapter].points and check.chapter == QUIZZES[chapter].module
    heading = next(line for cell in read_notebook(notebook_of(chapter, TEACHER_EDITION)).cells
                   for line in cell.source.splitlines() if "Recap quiz" in line and line.startswith("###"))
    assert heading.endswith(f"({check.points} points)"), heading
    assert ast.literal_eval(repr(check.points)) >= 1
