"""Grading one submitted notebook against the teacher's edition, exercise by exercise, in a fresh kernel.

What the grade rests on comes from the teacher's edition, never from the submission: the exercises, their points and
the check cells that test them. :func:`grade_notebook`

1. starts a kernel in an empty folder (nothing a student submitted is touched, and the notebooks read no file
   beside them), imports the check machinery and takes a *fingerprint* of it: the identity of every function, class
   and method of ``minilib`` (every name of the checks' own modules, private ones included), of each registered
   check, of ``torch``'s and ``numpy``'s namespaces and ``torch.Tensor``'s methods, of the builtins (``print``…),
   ``sys.stdout`` and IPython's display and event hooks;
2. runs the submission's code cells in order, each exercise's cells and checks under that exercise's own time
   limit, the other cells under the lesson's. A cell that raises or runs out of time (it is interrupted) is
   reported and the grader goes on, so one exercise's typo or endless loop costs only that exercise; a kernel that
   dies is replaced, and the cells that had run are replayed into the new one;
3. after each exercise's cells, runs the *teacher's* check cells of that exercise. Their results are recorded by
   the check machinery (:func:`minilib.course.checks.core.recording`) and read from the kernel's reply to the
   grader's own request, never from what the student's code prints or writes;
4. fingerprints again before and after each check: a check that runs after the submission rebound any of that
   machinery, or while it does, gives no points, and the grade names what was rebound.

Running a student's code in the same Python as the checks cannot make cheating impossible for the determined; it
makes it deliberate work that leaves a trace. A submission runs with the grader's permissions: grade in a container
or an account with nothing to lose.
"""
from __future__ import annotations

import ast
import json
import os
import secrets
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from time import monotonic

from minilib.course.assignments.exercises import (
    ANSWER_STUB,
    Assignment,
    AssignmentError,
    check_calls,
    describe_cell,
    find_exercises,
    has_solution,
    read_notebook,
)
from minilib.course.notebook_runner import Kernel

EXERCISE_SECONDS = 300.0    # default limit for one exercise: its cells and its checks together
LESSON_SECONDS = 900.0      # default limit for all the cells outside the exercises together

SETUP = """\
import torch._dynamo          # it rebinds a few of torch's functions (torch.manual_seed…) when first imported: now
import minilib.course.checks  # every chapter's checks, registered
import matplotlib.pyplot      # the inline backend, before the first fingerprint
"""
# Event callbacks of these packages are the notebook machinery's own (pyplot registers one at its first figure,
# the inline backend another, widgets theirs…): a submission's callback counts as a rebinding.
KERNEL_PACKAGES = ("IPython", "ipykernel", "matplotlib", "ipywidgets", "comm", "tqdm", "jupyter")

FINGERPRINT = """\
def __minilib_fingerprint():
    import builtins, json, sys
    ids = {}
    def add(prefix, namespace, private):
        for name, value in list(namespace.items()):
            if private or not name.startswith("_") or name.endswith("__"):
                ids[prefix + "." + name] = id(value)
    add("builtins", {k: v for k, v in vars(builtins).items() if k not in ("input", "raw_input")}, True)  # the kernel
    for name in ("stdout", "stderr", "displayhook", "modules"):                    # rebinds those on every request
        ids["sys." + name] = id(getattr(sys, name))
    for name, module in list(sys.modules.items()):
        ours = name == "minilib" or name.startswith("minilib.")
        if module is None or not (ours or name in ("torch", "torch.nn.functional", "torch.testing", "numpy")):
            continue
        machinery = name.startswith("minilib.course.checks")
        ids["sys.modules[" + name + "]"] = id(module)
        add(name, vars(module), machinery or not ours)
        for attr, value in list(vars(module).items()):
            if isinstance(value, type) and str(getattr(value, "__module__", "")).startswith(("minilib", "torch")):
                add(name + "." + attr, vars(value), machinery)
    torch = sys.modules["torch"]
    add("torch.Tensor", vars(torch.Tensor), True)
    add("torch._C.TensorBase", vars(torch._C.TensorBase), True)
    for name, check in list(sys.modules["minilib.course.checks.core"].REGISTRY.items()):
        ids["REGISTRY[" + name + "]"] = id(check)
        ids["REGISTRY[" + name + "].fn.__code__"] = id(getattr(check.fn, "__code__", None))
        add("REGISTRY[" + name + "]", vars(check), True)
    shell = get_ipython()
    for part in ("display_pub", "displayhook", "display_formatter"):
        obj = getattr(shell, part)
        ids["IPython." + part] = id(obj)
        add("IPython." + part, vars(type(obj)), True)
        add("IPython." + part, {k: v for k, v in vars(obj).items() if callable(v)}, False)   # methods set on it
    def machinery(callback):      # a function of those packages, found under its own name in its own module
        function = getattr(callback, "__func__", callback)
        module, found = str(getattr(function, "__module__", "")), None
        if module.startswith(KERNEL_PACKAGES):
            found = sys.modules.get(module)
            for part in str(getattr(function, "__qualname__", "")).split("."):
                found = getattr(found, part, None)
        return found is function
    for event, callbacks in shell.events.callbacks.items():
        foreign = [c for c in callbacks if not machinery(c)]
        ids["IPython.events." + event] = hash(tuple(id(getattr(c, "__func__", c)) for c in foreign))
    return json.dumps(ids)
RESULT_NAME = __minilib_fingerprint()
del __minilib_fingerprint
"""

RUN_CHECKS = """\
def __minilib_run_checks(sources):
    import json, sys
    crashed = []
    with sys.modules["minilib.course.checks.core"].recording() as results:
        for source in sources:
            try:
                exec(compile(source, "<the teacher's check cell>", "exec"), globals())
            except BaseException as error:
                crashed.append(type(error).__name__ + ": " + str(error)[:300])
    return json.dumps({"results": [dict(result) for result in results], "crashed": crashed})
RESULT_NAME = __minilib_run_checks(CHECK_SOURCES)
del __minilib_run_checks
"""


@dataclass
class ExerciseScore:
    """The score of one exercise. ``points`` is None for a written answer until a teacher grades it.

    ``status``: "passed", "failed", "not run", "timed out", "crashed", "flagged" (its check ran after the submission
    rebound the check machinery: no points) or "graded by hand"; ``detail``: why, in words a student can act on;
    ``answer``: a written exercise's answer, the text the student wrote in its markdown cells.
    """

    number: str
    title: str
    max_points: int
    points: float | None
    status: str
    detail: str = ""
    written: bool = False
    answer: str = ""


@dataclass
class Grade:
    """One submission's grade. ``status``: "completed", "flagged" (``flags`` says what the submission rebound, and
    when) or "invalid" (not a notebook; ``reason`` says why). ``cell_errors``: each of its cells that failed."""

    notebook: str
    chapter: str
    status: str
    student: str = ""
    reason: str = ""
    exercises: list[ExerciseScore] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    cell_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def score(self) -> float:
        """Points earned on the automatically checked exercises."""
        return sum(e.points for e in self.exercises if not e.written and e.points is not None)

    @property
    def max_score(self) -> int:
        """Points of the automatically checked exercises."""
        return sum(e.max_points for e in self.exercises if not e.written)

    @property
    def hand_graded_points(self) -> int:
        """Points of the written exercises, for the teacher to award."""
        return sum(e.max_points for e in self.exercises if e.written)

    def as_dict(self) -> dict:
        return {**asdict(self), "score": self.score, "max_score": self.max_score,
                "hand_graded_points": self.hand_graded_points}

    @classmethod
    def from_dict(cls, record: dict) -> "Grade":
        """The grade that :meth:`as_dict` wrote."""
        known = {name: value for name, value in record.items() if name in cls.__dataclass_fields__}
        known["exercises"] = [ExerciseScore(**exercise) for exercise in record.get("exercises", [])]
        return cls(**known)


def grade_notebook(path, teacher: Assignment, timeout: float = EXERCISE_SECONDS,
                   lesson_timeout: float = LESSON_SECONDS, student: str = "", env: dict | None = None) -> Grade:
    """Grade the submission at ``path`` against ``teacher``, a teacher's notebook as
    :func:`~minilib.course.assignments.build.read_assignment` reads it.

    ``timeout``: seconds for each exercise, its cells and its checks together; ``lesson_timeout``: seconds for all
    the other cells together; ``env``: the kernel's environment (default: this process's). A submission that is not
    a notebook gets an "invalid" grade.
    """
    if not (timeout > 0 and lesson_timeout > 0):
        raise ValueError(f"time limits must be positive numbers of seconds, got {timeout!r} and {lesson_timeout!r}")
    started = monotonic()
    chapter = teacher.chapter
    try:
        submission = read_notebook(path)
    except AssignmentError as error:
        return Grade(str(path), chapter, "invalid", student, str(error))
    run = _Run(submission, Path(path).name, teacher.notebook, teacher.exercises, timeout, lesson_timeout, env)
    scores = run.grade()
    return Grade(str(path), chapter, "flagged" if run.flags else "completed", student, "", scores, run.flags,
                 run.errors, round(monotonic() - started, 1))


class _Run:
    """One submission graded: its kernel, the machinery's first fingerprint, the cells to replay after a crash."""

    def __init__(self, submission, name, teacher, exercises, timeout, lesson_timeout, env):
        self.submission, self.name, self.teacher, self.exercises = submission, name, teacher, exercises
        self.timeout, self.lesson_timeout = timeout, lesson_timeout
        self.env = dict(os.environ if env is None else env)
        self.kernel, self.baseline, self.replay = None, {}, []
        self.flags, self.errors, self.noticed = [], [], set()

    def grade(self) -> list[ExerciseScore]:
        scores, lesson_left = {}, self.lesson_timeout
        with tempfile.TemporaryDirectory(prefix="minilib-grade-") as folder:
            self.folder = Path(folder)
            try:
                self._start()
                for exercise, cells in segments(self.submission, self.exercises, self.teacher):
                    if exercise is None:
                        lesson_left -= self._run_cells(cells, lesson_left, "the cells outside the exercises")[0]
                    else:
                        scores[exercise.number] = self._grade(exercise, cells)
                found = {exercise.number for exercise in find_exercises(self.submission, strict=False)}
                for exercise in self.exercises:        # no code cell of its own, or its heading was lost
                    if exercise.number not in scores:
                        lost = "" if exercise.number in found else ("its heading was not found in your notebook, "
                                                                    "so it was checked after the last cell")
                        scores[exercise.number] = self._grade(exercise, [], lost)
            finally:
                if self.kernel is not None:
                    self.kernel.close()
        return [scores[exercise.number] for exercise in self.exercises]

    def _start(self) -> None:
        """A fresh kernel with the check machinery imported and fingerprinted, and the cells that ran replayed."""
        if self.kernel is not None:
            self.kernel.close()
        self.kernel = Kernel(self.folder, self.env)
        setup = self.kernel.run(SETUP, 300, silent=True)
        if not setup.ok:
            raise AssignmentError(f"the grader's kernel cannot import the course's checks ({setup.ename}: "
                                  f"{setup.evalue}); grade with a Python that has the course installed")
        self.baseline = self._fingerprint()
        for source in self.replay:
            self.kernel.run(source, self.lesson_timeout)

    def _fingerprint(self) -> dict:
        name = f"__minilib_fingerprint_{secrets.token_hex(8)}"
        code = FINGERPRINT.replace("RESULT_NAME", name).replace("KERNEL_PACKAGES", repr(KERNEL_PACKAGES))
        result = self.kernel.run(code, 120, silent=True, user_expressions={"ids": name})
        return _json(result.user_expressions.get("ids"))

    def _run_cells(self, cells, budget, where):
        """Run the submission's ``cells`` within ``budget`` seconds: (seconds spent, the first failure or None)."""
        spent, first_failure = 0.0, None
        for index in cells:
            if not self.kernel.alive:
                self._start()
            cell, left = describe_cell(self.name, self.submission, index), budget - spent
            if left <= 0:
                failure = f"did not run: {where} had used {budget:.0f} s"
            else:
                result = self.kernel.run(self.submission.cells[index].source, left)
                spent += result.seconds
                if result.ok:
                    self.replay.append(self.submission.cells[index].source)
                    continue
                failure = {"timeout": f"was stopped: {where} had used {budget:.0f} s",
                           "dead": "killed Python (out of memory, or the code exited the kernel)"
                           }.get(result.status, f"raised {result.ename}: {result.evalue}")
            self.errors.append(f"{cell} {failure}")
            first_failure = first_failure or f"{cell} {failure}"
        return spent, first_failure

    def _grade(self, exercise, cells, note="") -> ExerciseScore:
        where = f"exercise {exercise.number}"
        spent, failure = self._run_cells(cells, self.timeout, where)
        if exercise.written:
            score = _score(exercise, "graded by hand", "a written answer: your teacher grades it")
            score.answer = written_answer(self.submission, exercise, self.teacher)
            return score
        if not self.kernel.alive:
            self._start()
        before = self._rebound()
        results = self._checks(exercise, max(self.timeout - spent, 10.0))
        during = [change for change in self._rebound() if change not in before]
        if before or during:
            self._flag(where, "before its check", before)
            self._flag(where, "while its check ran", during)
            ours = self._expected(exercise)      # this exercise's own checks first, then the rest
            changes = sorted(before + during, key=lambda change: not any(name in change for name in ours))
            more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
            return _score(exercise, "flagged", "no points: the check ran after your code had changed the course's "
                                               f"check machinery ({'; '.join(changes[:3])}{more})")
        score = _score_from_checks(exercise, self._expected(exercise), results, failure)
        if note and score.status != "passed":
            score.detail = f"{score.detail} ({note})"
        return score

    def _expected(self, exercise) -> list[str]:
        return list(dict.fromkeys(name for source in self._check_sources(exercise) for name in check_calls(source)))

    def _check_sources(self, exercise) -> list[str]:
        cells = [self.teacher.cells[index] for index in exercise.cells]
        return [cell.source for cell in cells if cell.cell_type == "code" and not has_solution(cell.source)]

    def _checks(self, exercise, budget) -> dict:
        """Run the teacher's check cells of ``exercise``: {"results": [...], "crashed": [...], "status": ...}."""
        name = f"__minilib_results_{secrets.token_hex(8)}"
        code = RUN_CHECKS.replace("RESULT_NAME", name).replace("CHECK_SOURCES", repr(self._check_sources(exercise)))
        result = self.kernel.run(code, budget, silent=True, user_expressions={"results": name})
        recorded = _json(result.user_expressions.get("results")) if result.ok else {}
        return {"results": recorded.get("results", []), "crashed": recorded.get("crashed", []),
                "status": result.status if not result.ok or recorded else "unreadable"}

    def _rebound(self) -> list[str]:
        """What changed since the kernel started: each fingerprinted name whose object was rebound or deleted."""
        if not self.kernel.alive:
            return []
        now = self._fingerprint()
        if not now:
            return ["the check machinery could not be inspected"]
        return [f"{name} was rebound" for name, ident in self.baseline.items() if now.get(name) != ident]

    def _flag(self, where: str, when: str, changes: list[str]) -> None:
        """Add to the grade's flags each change not flagged before, with the exercise where it was first seen."""
        fresh = [change for change in changes if change not in self.noticed]
        self.noticed.update(fresh)
        self.flags += [f"{where}: {when}: {change}" for change in fresh]


def segments(submission, exercises, teacher) -> list[tuple]:
    """The submission's code cells in order, cut into runs that belong to one exercise (or to none):
    ``[(Exercise or None, [cell index, ...]), ...]``. Exercises are matched to the teacher's by number; the
    submission's unchanged copies of the teacher's check cells are left out (the teacher's run anyway)."""
    teachers = {exercise.number: exercise for exercise in exercises}
    owner = {index: teachers[e.number] for e in find_exercises(submission, strict=False) if e.number in teachers
             for index in e.cells}
    check_cells = {teacher.cells[index].source for exercise in exercises for index in exercise.cells
                   if teacher.cells[index].cell_type == "code" and not has_solution(teacher.cells[index].source)}
    runs = []
    for index, cell in enumerate(submission.cells):
        if cell.cell_type != "code" or not cell.source.strip() or cell.source in check_cells:
            continue
        exercise = owner.get(index)
        if runs and runs[-1][0] is exercise:
            runs[-1][1].append(index)
        else:
            runs.append((exercise, [index]))
    return runs


def written_answer(submission, exercise, teacher) -> str:
    """What the student wrote for the written ``exercise``: its markdown cells in the submission that are neither the
    teacher's (the question), the empty answer stub nor the self-study edition's criteria, joined; "" if none."""
    given = {teacher.cells[index].source.strip() for index in exercise.cells} | set(ANSWER_STUB)
    theirs = next((e for e in find_exercises(submission, strict=False) if e.number == exercise.number), None)
    cells = [submission.cells[index] for index in theirs.cells[1:]] if theirs else []
    return "\n\n".join(cell.source.strip() for cell in cells
                        if cell.cell_type == "markdown" and cell.source.strip() not in given
                        and not str(cell.get("id", "")).endswith("-rubric"))


def _score(exercise, status, detail="") -> ExerciseScore:
    return ExerciseScore(exercise.number, exercise.title, exercise.points, None if exercise.written else 0, status,
                         detail, exercise.written)


def _score_from_checks(exercise, expected, checks, failure) -> ExerciseScore:
    """The points of the checks that passed, and, when some did not, the reason a student can act on."""
    results = {record.get("check"): record for record in checks["results"]}
    if set(results) - set(expected):
        return _score(exercise, "flagged", "no points: results came from checks that the teacher's cell does not "
                                           f"call ({', '.join(sorted(map(str, set(results) - set(expected))))})")
    score = _score(exercise, "passed")
    score.points = min(exercise.points, sum(exercise.check_points[name] for name in expected
                                            if results.get(name, {}).get("passed") is True))
    failed = [results[name] for name in expected if name in results and results[name].get("passed") is not True]
    if failed:
        score.status, score.detail = "failed", str(failed[0].get("message", ""))
    elif checks["status"] == "timeout":
        score.status, score.detail = "timed out", "its check was stopped at the exercise's time limit"
    elif checks["status"] == "dead":
        score.status, score.detail = "crashed", "its check killed Python (out of memory, or the code exited the kernel)"
    elif len(results) < len(expected):
        score.status = "failed"
        score.detail = failure or ("its check did not run" + (f": {checks['crashed'][0]}" if checks["crashed"] else ""))
    return score


def _json(text) -> dict:
    """The JSON object inside a user expression's text (the repr of a string), or {} if there is none."""
    try:
        value = json.loads(ast.literal_eval(text or ""))
    except (ValueError, SyntaxError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}
