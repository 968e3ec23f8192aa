"""Classroom tools: the student edition of the course's notebooks, and a grader for what students hand in.

    python -m minilib assignments build [--out student] [--force] [NOTEBOOK ...]
    python -m minilib assignments grade SUBMISSION.ipynb ... [--timeout 300] [--json grades.json | --csv grades.csv]

The teacher's notebooks are the ones in ``notebooks/``; their exercises follow one form (see
:mod:`minilib.course.assignments.exercises`), which ``build`` checks before it writes anything.
From Python: ``build.build`` and ``build.student_edition`` make the student edition, ``grade.grade_notebook``
grades one submission, ``exercises.find_exercises`` reads a notebook's exercises.
"""
