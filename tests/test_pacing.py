"""Chapter 00's pacing: its study-time table lists every chapter, and the totals its prose states (the whole course,
lessons, exercises, the fast track) are the table's sums."""
import re

from minilib.course.assignments.exercises import read_notebook
from minilib.course.editions import TEACHER_EDITION, teacher_notebooks


def pacing_text() -> str:
    cells = read_notebook(TEACHER_EDITION / "00_welcome.ipynb").cells
    return next(cell.source for cell in cells if cell.get("id") == "ch00-pacing")


def study_minutes() -> dict[int, tuple[int, int]]:
    """{chapter: (lesson minutes, exercise minutes)} from the table's rows (two chapters to a row)."""
    rows = re.findall(r"\|\s*ch\. (\d\d) [^|]+\|\s*(\d+) min\s*\|\s*(\d+) min\s*\|", pacing_text())
    return {int(chapter): (int(lesson), int(exercises)) for chapter, lesson, exercises in rows}


def test_the_study_table_lists_every_chapter_once():
    minutes = study_minutes()
    chapters = {int(path.name[:2]) for path in teacher_notebooks()}
    assert chapters <= set(minutes), f"chapters missing from chapter 00's study times: {sorted(chapters - set(minutes))}"
    assert sorted(minutes) == list(range(len(minutes))), sorted(minutes)


def test_the_stated_totals_are_the_tables_sums():
    minutes, text = study_minutes(), pacing_text()
    lessons, exercises = (sum(m[k] for m in minutes.values()) / 60 for k in (0, 1))
    total = re.search(r"In all, about (\d+) hours \((\d+) of lessons, (\d+) of exercises\)", text)
    assert total, "the pacing cell must state the total, lessons and exercises in hours"
    assert [int(x) for x in total.groups()] == [round(lessons + exercises), round(lessons), round(exercises)]
    track = re.search(r"The \*fast track\*, about (\d+) hours", text)
    route = re.search(r"\| fast track \| ([\d →]+) \|", text)
    chapters = [int(c) for c in route[1].split("→")]
    assert chapters[0] == 0 and chapters == sorted(chapters)
    assert int(track[1]) == round(sum(sum(minutes[c]) for c in chapters) / 60)
