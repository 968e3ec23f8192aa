"""Classroom tools: the student edition of the course's notebooks, and a grader for what students hand in.

    python -m minilib.course.assignments build [--out student] [--force] [NOTEBOOK ...]
    python -m minilib.course.assignments grade SUBMISSION.ipynb ... [--timeout 300] [--json grades.json | --csv grades.csv]

The teacher's notebooks are the ones in ``notebooks/``; their exercises follow one form (see
:mod:`minilib.course.assignments.exercises`), which ``build`` checks before it writes anything.
"""
from minilib.course.assignments.build import BuildResult, StudentWorkError, build, student_edition, validate_assignment
from minilib.course.assignments.exercises import AssignmentError, Exercise, find_exercises, read_notebook
from minilib.course.assignments.grade import ExerciseScore, Grade, grade_notebook, report, write_csv, write_json

__all__ = ["AssignmentError", "BuildResult", "Exercise", "ExerciseScore", "Grade", "StudentWorkError", "build",
           "find_exercises", "grade_notebook", "read_notebook", "report", "student_edition", "validate_assignment",
           "write_csv", "write_json"]
