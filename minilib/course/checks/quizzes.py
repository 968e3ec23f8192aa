"""Recap quizzes: about five questions that close a chapter, checked like any exercise.

In the teacher's edition a quiz is an exercise of the usual form: a heading ``### Exercise 2.7: Recap quiz
(2 points)``, a markdown cell with the questions (their text and choices live in the notebook, where a teacher edits
them and every viewer renders them), an answer function and its check::

    def recap_02():
        \"\"\"Your answers: {question number: a letter, letters or a number}.\"\"\"
        ### BEGIN SOLUTION
        return {1: "b", 2: "ac", 3: 12.6, 4: "d", 5: "a"}
        ### END SOLUTION

    check_recap_02(recap_02)

The student edition gets the stub; the check says which questions are not right yet and which section of the
chapter to reread, never the right answer. The library keeps no answer in plain text: each :class:`Question` holds
only a salted SHA-256 digest of its normalised answer (:func:`answer_digest`), so reading this file reveals nothing
that trying the choices would not. A number is right within ``slack`` units of its last decimal
(``decimals=1, slack=1``: 12.5, 12.6 and 12.7 for 12.6; ``slack=0`` for an exact count), compared through the digests
of the neighbouring values.

A chapter's quiz is one entry of :data:`QUIZZES`; importing this module registers ``check_recap_NN`` for each,
worth the quiz's points (all its questions right), under the chapter's name.

Writing a quiz: put the questions and the model answer in the teacher's edition, then print the digests to paste
here with ``python -m minilib.course.checks.quizzes 02 '{1: "b", 2: "ac", 3: 12.6}'``. The teacher's edition's
model answers pass their checks (``pytest notebooks/NN_*.ipynb``), which keeps the two in step.
"""
from __future__ import annotations

import ast
import hashlib
import math
import numbers
import sys
from dataclasses import dataclass

from minilib.course.checks.core import CheckFailed, exercise

LETTERS = "abcdefgh"


@dataclass(frozen=True)
class Question:
    """One question: ``choices`` (the letters a learner may answer, ``"abcd"``; empty for a number), the ``digest``
    of its answer, ``several`` (several letters together are the answer: all the right ones and no other),
    ``decimals`` (a number's precision), ``slack`` (how many units of its last decimal either side are accepted too:
    0 for an exact count) and ``section``: where the chapter teaches it, the hint of a wrong answer."""

    digest: str
    section: str
    choices: str = ""
    several: bool = False
    decimals: int = 0
    slack: int = 1

    @property
    def numeric(self) -> bool:
        return not self.choices

    def form(self) -> str:
        """What an answer looks like, for messages: ``a letter among a–d``, ``a number to 1 decimal``."""
        if self.numeric:
            return f"a number ({self.decimals} decimal{'s' if self.decimals != 1 else ''})"
        span = f"{self.choices[0]}–{self.choices[-1]}"
        return f"one or more letters among {span}, e.g. \"{self.choices[0]}{self.choices[-1]}\"" if self.several \
            else f"one letter among {span}"


@dataclass(frozen=True)
class Quiz:
    """A chapter's recap quiz: ``chapter`` ("02"), the ``module`` of its checks (``"ch02_self_attention"``), its
    ``points`` and questions, numbered from 1."""

    chapter: str
    module: str
    points: int
    questions: tuple[Question, ...]


def _salt(chapter: str, number: int) -> str:
    return f"minilib recap quiz {chapter}, question {number}: "


def answer_digest(chapter: str, number: int, normalised: str) -> str:
    """The digest stored for question ``number`` of chapter ``chapter``'s quiz whose normalised answer is given."""
    return hashlib.sha256((_salt(chapter, number) + normalised).encode()).hexdigest()[:24]


def _formatted(value: float, decimals: int) -> str:
    return f"{round(value, decimals):.{max(decimals, 0)}f}"


def normalised_answers(question: Question, answer) -> list[str]:
    """The normalised forms of ``answer`` to compare (a number: itself and its neighbours within ``slack``).

    Raises ValueError saying what is wrong with the answer's form (not with its value).
    """
    if question.numeric:
        value = _number(answer)
        unit = 10.0 ** -question.decimals
        return [_formatted(value + k * unit, question.decimals) for k in range(-question.slack, question.slack + 1)]
    return ["".join(sorted(set(_letters(answer, question))))]


def _number(answer) -> float:
    if isinstance(answer, str):
        try:
            return _finite(float(answer.strip().replace(",", "")))
        except ValueError:
            raise ValueError("a number is asked, not text: write the number alone, without its unit") from None
    if isinstance(answer, bool) or not (isinstance(answer, numbers.Real) or hasattr(answer, "item")):
        raise ValueError(f"a number is asked, not {type(answer).__name__}")
    return _finite(float(answer))


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("a finite number is asked")
    return value


def _letters(answer, question: Question) -> str:
    if isinstance(answer, (list, tuple, set, frozenset)) and all(isinstance(a, str) for a in answer):
        answer = "".join(answer)
    if not isinstance(answer, str):
        raise ValueError(f"letters are asked, as a string such as \"{question.choices[0]}\", not {type(answer).__name__}")
    letters = "".join(c for c in answer.lower() if not (c.isspace() or c in ",;()."))
    unknown = sorted(set(letters) - set(question.choices))
    if unknown:
        raise ValueError(f"{', '.join(map(repr, unknown))} {'is not a choice' if len(unknown) == 1 else 'are not choices'}")
    if not letters:
        raise ValueError("no letter")
    if len(set(letters)) > 1 and not question.several:
        raise ValueError("this question has one right choice: give one letter")
    return letters


def is_right(quiz: Quiz, number: int, answer) -> bool:
    """Whether ``answer`` is right for question ``number`` (from 1) of ``quiz``; ValueError for a malformed answer."""
    question = quiz.questions[number - 1]
    return any(answer_digest(quiz.chapter, number, form) == question.digest
               for form in normalised_answers(question, answer))


def _answers_by_number(quiz: Quiz, answers) -> dict[int, object]:
    count = len(quiz.questions)
    if isinstance(answers, (list, tuple)):
        answers = dict(enumerate(answers, start=1))
    if not isinstance(answers, dict):
        raise CheckFailed("your answers", f"a dict {{question number: answer}} for questions 1–{count}",
                          type(answers).__name__, "return a dict such as {1: \"a\", 2: \"bd\", 3: 0.5}")
    by_number = {}
    for key, value in answers.items():
        try:
            number = int(key)
        except (TypeError, ValueError):
            number = 0
        if not 1 <= number <= count:
            raise CheckFailed("your answers", f"the question numbers 1–{count} as keys", repr(key),
                              "number the answers as the questions are numbered")
        by_number[number] = value
    missing = [n for n in range(1, count + 1) if n not in by_number]
    if missing:
        raise CheckFailed("your answers", f"an answer to each of the {count} questions",
                          f"no answer to question{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}",
                          "answer every question; a guess is better than nothing: the check says which to reread")
    return by_number


def check_quiz(quiz: Quiz, answers) -> None:
    """Raise :class:`CheckFailed` unless every answer of ``answers`` (a dict by question number) is right.

    A malformed answer is named first (with the form asked); then the questions not right yet, with the sections
    to reread, never the right answers.
    """
    wrong = []
    for number, answer in sorted(_answers_by_number(quiz, answers).items()):
        question = quiz.questions[number - 1]
        try:
            right = is_right(quiz, number, answer)
        except ValueError as error:
            raise CheckFailed(f"question {number}'s answer", question.form(), f"{answer!r}: {error}",
                              "letters as strings (\"b\", or \"ac\" where several are right), numbers as numbers") from None
        if not right:
            wrong.append(number)
    if wrong:
        right = len(quiz.questions) - len(wrong)
        rereads = "; ".join(f"question {n}: {quiz.questions[n - 1].section}" for n in wrong)
        raise CheckFailed(f"{right} of {len(quiz.questions)} answers are right", "every answer right",
                          f"question{'s' if len(wrong) > 1 else ''} {', '.join(map(str, wrong))} not right yet",
                          f"reread {rereads}")


def _register(quiz: Quiz):
    """Register ``check_recap_NN`` for ``quiz``: it calls the learner's answer function and checks every answer."""
    def check(answer_function):
        check_quiz(quiz, answer_function() if callable(answer_function) else answer_function)

    check.__name__ = check.__qualname__ = f"check_recap_{quiz.chapter}"
    check.__module__ = f"minilib.course.checks.{quiz.module}"
    check.__doc__ = f"Chapter {quiz.chapter}'s recap quiz: {len(quiz.questions)} questions, all right to pass."
    return exercise(points=quiz.points)(check)


def _quiz(chapter: str, module: str, *questions: Question, points: int = 2) -> Quiz:
    return Quiz(chapter, module, points, questions)


QUIZZES: dict[str, Quiz] = {quiz.chapter: quiz for quiz in [
    _quiz("00", "ch00_welcome",
          Question("6b4a314232e35dc4ee1bc0c0", "section 2, counting work: the FLOPs of a matrix product", slack=0),
          Question("39d6351961453c709b6c3f30", "section 2: the median and the spread", "abcd"),
          Question("c83d7cf76627191273dc9266", "the second roof: arithmetic intensity, FLOPs per byte moved"),
          Question("2f4dd0b01cb6410a06217614", "the second roof: memory bandwidth", "abcd"),
          Question("b67c88aff85ed3bd0f4b526e", "section 4, comparing fairly", "abcd")),
    _quiz("01", "ch01_why_fast_and_small",
          Question("8285c3d31bd7e3319843c954", "section 1, where the parameters are", "abcd"),
          Question("71c43056d522f74b86d464f9", "section 2's rule of thumb, FLOPs per parameter per token", slack=0),
          Question("e09ca4c3549cb18e52cfb5b8", "section 6, attention against the FFN", slack=0),
          Question("44451970195e6a5d940f21c3", "section 7, time per generated token", "abcd"),
          Question("3b9a38b9a05abf22eecef8ce", "section 7, the KV cache", decimals=1)),
    _quiz("02", "ch02_self_attention",
          Question("bedf3484905290cc52da7df5", "step 2, why divide by √d_k", "abcd"),
          Question("e8dd1275b449b4a929fca4e5", "part 3, masks", "abcd"),
          Question("aaee8f05608e9d5775d4a147", "part 4, the n × n problem", decimals=1),
          Question("84c115e7de5a70a16470e2fc", "part 4, online softmax", "abcd"),
          Question("a215141448c00627c44926f9", "part 4: what memory-efficient attention saves, and what it does not",
                   "abcd")),
    _quiz("03", "ch03_transformer",
          Question("f0d192f16612f3718aa493ab", "part 1, the residual path in post-norm and pre-norm", "abcd"),
          Question("517bbe1e090911fb62f6f59f", "part 1, where a layer's parameters are", slack=0),
          Question("beadf47fb6b5c286dcb1d374", "part 3, the causal mask", "abcd"),
          Question("3a986cee3f1239cd18507146", "part 5, teacher forcing", "abcd"),
          Question("72e2fc120f113d8fec6fe0c1", "part 6.3, gradient clipping", decimals=2)),
    _quiz("04", "ch04_sparse_attention",
          Question("0bf1a4ba43cfaa2ebfaf2a11", "part 2, a mask saves nothing", "abcd"),
          Question("fb76dc69705d9eb9ac86ad9b", "part 2 and the FlexAttention reading: the tiles a window computes",
                   decimals=1),
          Question("525a43b6b5287d03852946ae", "part 4, what a window cannot reach", "abcd"),
          Question("00f3328998a02091f4bec128", "FlexAttention: eager against compiled", "abcd"),
          Question("678b7ef7169406ba956da8a8", "part 3, time against n", slack=0)),
    _quiz("05", "ch05_linear_attention",
          Question("a2e8386227a1517774578ee0", "part 1, the kernel trick", "abcd"),
          Question("ea65f6a03b0bd5aa0d7e7344", "part 4, causal linear attention is an RNN", "abcd"),
          Question("47865675e12fbf8d88287a25", "part 3, Performer's error against the feature count", slack=0),
          Question("9e8ea6b5d42a7ffb9a02b8a5", "part 6, associative recall", "abcd"),
          Question("6075636393062ba49a54f30f", "part 6, the delta rule", "abcd")),
    _quiz("06", "ch06_distillation",
          Question("42739f388de246cd7cf2b5ee", "section 1, soft targets and temperature", "abcd"),
          Question("866d1a9423e347d157ba8418", "section 2, the T² factor", "abcd"),
          Question("dab7a41a68ad11e4597c239c", "section 4, building a student: the word-embedding table", decimals=1),
          Question("71c79bb215c032b355af6310", "section 7, when distillation helps most", "abcd"),
          Question("32b0c4244be0e554eb55c093", "section 6, the methods' table", "abcd")),
    _quiz("07", "ch07_quantization",
          Question("eac349732138afc03860f9d8", "section 2, how much each bit buys", slack=0),
          Question("2082e3a3a5f9f305218ea104", "section 4, the scales outside the integer sum (and the picture of "
                   "the scale layouts)", "abcd"),
          Question("d8d2e19699d92f2a16c83155", "section 4, which kernel runs the integer sum", "abcd"),
          Question("60fa6b7157172a222e660534", "section 3, outlier features and their standard fixes", "abcd"),
          Question("81d9e424a4492e654222aca5", "section 5, reading the table: weight-only rows", "abcd")),
    _quiz("08", "ch08_pruning",
          Question("49d4ff9890a6647327e44749", "section 4, 90% zeros and no faster", "abcd"),
          Question("c75c4f1e79ba5d0a09066d98", "section 4, N:M sparsity", slack=0),
          Question("39745c7a4600655e06522e3b", "section 4, sparse storage (CSR)", "abcd"),
          Question("6f3ab60c0f47fe81d2f84a44", "section 5, removing heads", "abcd"),
          Question("ab7dd00b59d8db4517feed7e", "sections 4 and 6: which pruning is faster everywhere", "abcd")),
    _quiz("09", "ch09_architecture",
          Question("696b7a8089b2679346a4f298", "section 2, grouped linear layers", slack=0),
          Question("50679b7e0e7dd7c0f10376e4", "section 1, the weights nobody reads", decimals=1),
          Question("87f80c40c543b93eed0f96bb", "section 2, the ALBERT row of the table", "abcd"),
          Question("ee1015480958b362a90bfeb4", "why the grouped FFN keeps less than its FLOPs promise", "abcd"),
          Question("03f34dba38403590829c5434", "section 3, LayerDrop at inference", "abcd")),
    _quiz("10", "ch10_huggingface",
          Question("28bbdb7ac6d03b43c3a57f85", "section 1, the load report", "abcd"),
          Question("34e3dfef74fa14b150450d01", "section 6, reading the table: memory", decimals=1),
          Question("9424af5c4571f0dbcaba68be", "section 7, the Triton configuration", "abcd"),
          Question("0300b949d27ce5f53a0d0cca", "section 7, which server for which model", "abcd"),
          Question("4664168ac51afd016dfb6c18", "section 6, the libraries a deployment would choose from", "abcd")),
    _quiz("11", "ch11_evaluation",
          Question("8296663abdcbc97ca77fb64f", "section 1, perplexity of a uniform model", slack=0),
          Question("509bd1c9ac9a5ecc8bcfddda", "section 2, BLEU's clip", "abcd"),
          Question("80953b656609d74e16d98686", "section 3, ROUGE-L", "abcd"),
          Question("2530139627085ead8e7189d9", "section 5, beyond accuracy: flips and KL divergence", "abcd"),
          Question("2fd5562c328a98e512e327e2", "section 5, the Pareto front", "abcd")),
    _quiz("12", "ch12_capstone",
          Question("c0adb8ac15822ca6b23bf1de", "section 1 and the waterfall: trimming the vocabulary", "abcd"),
          Question("952d763b493a0b94fb5f2bd0", "section 1, step 1: how much of MiniLM is its embedding table"),
          Question("b26c599e9fcfe0930d2f6ec5", "reading the waterfall: pruning", "abcd"),
          Question("89ecc33c76050afa871065ac", "section 4, fairness", "abcd"),
          Question("54086fed98b851c0c8aad6f1", "section 6, trends: disaggregated prefill and decoding", "abcd")),
    _quiz("13", "ch13_fast_generation",
          Question("cca51009f59bbfbf48597a72", "section 2, the cache's memory: 2 · L · H_kv · d_head · bytes", slack=0),
          Question("267fa3eb271993b7642400f9", "section 1, why generation is slow: bytes per FLOP", "abcd"),
          Question("1c85a2c97a1d22816a2f84e0", "section 4, q4_0's formula and its clamp", "abcd"),
          Question("91a9811667023934fde55231", "section 6, sampling: the acceptance rule min(1, p/q)", decimals=1,
                   slack=0),
          Question("d447ca0fdac6651649293298", "section 3, converting a trained model: the fair comparison", "abcd")),
    _quiz("14", "ch14_modern_decoders",
          Question("ddd47355c5d79621f9ae2ec2", "section 2, RMSNorm", "abcd"),
          Question("c8bcaf6c7b1ea34b5d1aabb1", "section 3, why rotations", "abcd"),
          Question("f07933425fc57f007bd2c1c9", "section 6, the KV cache", slack=0),
          Question("d64fc815d71401800d528228", "section 11, GPTQ", "abcd"),
          Question("9aa471c6213e7349fafd794b", "section 14, Wanda and SparseGPT", "abcd")),
]}

# Run as a command (python -m …), this file is executed a second time as __main__ after the package has imported and
# registered it: only the first run registers the checks.
CHECKS = {} if __name__ == "__main__" else {f"check_recap_{chapter}": _register(quiz) for chapter, quiz in QUIZZES.items()}
globals().update(CHECKS)


def digests(chapter: str, answers: dict, quiz: Quiz | None = None) -> dict[int, str]:
    """The digests of a model answer, to write a quiz: numbers as given (their decimals as written), letters sorted.

    ``quiz``: an existing quiz whose questions say how to normalise (otherwise a float keeps the decimals it is
    written with, and a string is letters).
    """
    result = {}
    for number, answer in answers.items():
        if quiz is not None:
            form = normalised_answers(quiz.questions[number - 1], answer)[0]
        elif isinstance(answer, str):
            form = "".join(sorted(set(answer.lower())))
        else:
            text = repr(answer)
            decimals = len(text.split(".")[1]) if "." in text else 0
            form = _formatted(float(answer), decimals)
        result[number] = answer_digest(chapter, number, form)
    return result


def main(argv=None) -> int:
    """``python -m minilib.course.checks.quizzes 02 '{1: "b", 3: 12.6}'``: print the digests to paste in QUIZZES."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(main.__doc__)
        return 2
    for number, digest in digests(argv[0], ast.literal_eval(argv[1])).items():
        print(f"question {number}: {digest!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
