"""The chapter registry: every chapter declared once, and a declared chapter seen by the command line, the zoo, the
checks and the README alike (a toy chapter is added with one entry and found everywhere)."""
import dataclasses
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from minilib import chapters, cli
from minilib.chapters import CHAPTERS, Chapter
from minilib.course import checks, editions, readme
from minilib.course.checks import core
from minilib.experiments import artefacts, headlines, zoo

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"runs": "minilib/experiments", "headlines": "minilib/experiments/headlines", "checks": "minilib/course/checks"}


def test_chapters_are_numbered_in_order_with_one_name_each():
    assert [c.number for c in CHAPTERS] == list(range(len(CHAPTERS)))
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", c.slug) for c in CHAPTERS)
    assert chapters.find("7") is chapters.find("07") is chapters.find("quantization") is chapters.find(
        "07_quantization") is chapters.find("notebooks/07_quantization.ipynb")
    with pytest.raises(ValueError, match="no chapter 'quantisation'.*07_quantization"):
        chapters.find("quantisation")


def test_every_notebook_is_a_chapter_and_every_chapter_has_its_notebook():
    notebooks = sorted(path.name for path in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert notebooks == [c.notebook for c in chapters.with_notebooks()]
    teachers = sorted(path.name for path in (ROOT / "notebooks" / "solutions").glob("[0-9][0-9]_*.ipynb"))
    unwritten = [c.notebook for c in CHAPTERS if not c.written]
    assert not set(unwritten) & set(teachers), "a chapter whose notebook is in the course: remove its written=False"


@pytest.mark.parametrize("kind", KINDS)
def test_each_chapter_module_is_declared_and_each_declared_module_exists(kind):
    files = {path.stem for path in (ROOT / KINDS[kind]).glob("ch[0-9][0-9]_*.py")}
    declared = {c.module for c in CHAPTERS if getattr(c, kind)}
    assert files == declared, (f"{KINDS[kind]}: not declared in minilib/chapters.py: {sorted(files - declared)}; "
                               f"declared but missing: {sorted(declared - files)}")


def test_the_techniques_a_chapter_teaches_exist():
    for chapter in CHAPTERS:
        for technique in chapter.techniques:
            path = ROOT / "minilib" / Path(*technique.split("."))
            assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), (chapter.name, technique)


def test_the_artefacts_a_chapter_declares_are_those_its_runs_module_ships():
    """Declared: defined by the runs module and shipped (in the manifest); one defined but not yet built is not."""
    shipped = zoo.shipped_artefacts()
    assert len({a.name for a in shipped}) == len(shipped) == sum(len(c.artefacts) for c in CHAPTERS)
    manifest = artefacts.read_manifest()
    assert sorted(a.name for a in shipped) == sorted(manifest)
    for chapter in CHAPTERS:
        if chapter.runs:
            module = sys.modules.get(chapter.module_path("runs")) or __import__(chapter.module_path("runs"),
                                                                                fromlist=["_"])
            defined = sorted(zoo._declared(module)) if hasattr(module, "ARTEFACTS") else []
            assert set(chapter.artefacts) <= set(defined), chapter.name
            assert sorted(chapter.artefacts) == sorted(name for name in defined if name in manifest), chapter.name
    assert [a.name for a in shipped].index("sentiment_teacher") < [a.name for a in shipped].index("capstone_student")


def test_every_check_of_every_chapter_is_registered_once():
    found = checks.chapter_checks()
    assert set(found) == {name for name in core.REGISTRY}
    assert {check.chapter for check in found.values()} == {c.module for c in CHAPTERS if c.checks}


# ---------------------------------------------------------------------------------------------- a toy chapter
TOY = Chapter(len(CHAPTERS), "toy_chapter", "Toy", "one entry in the registry", "seen everywhere",
              techniques=("attention",), runs=True, headlines=True, checks=True, artefacts=("toy_model",))

RUNS = """
import torch
from torch import nn
from minilib.experiments.artefacts import Artefact, load_model

def model():
    return load_model(ARTEFACTS[0], lambda: nn.Linear(2, 2), lambda m: nn.init.ones_(m.weight))

ARTEFACTS = (Artefact("toy_model", "the toy chapter's model", "model", run=model, depends=(model,)),)
"""
HEADLINES = """
from minilib.support.bench import Headline

def headlines():
    return [Headline.at_least("toy speed-up", 3.0, 2.0, "×")]
"""
CHECKS = """
from minilib.course.checks.core import exercise, expect_equal

@exercise(points=1)
def check_toy_answer(fn):
    expect_equal("fn(2)", fn(2), 4)
"""


@pytest.fixture
def toy_chapter(monkeypatch, tmp_path):
    """The toy chapter: its three modules (made in memory) and one entry added to the registry."""
    registry = dict(core.REGISTRY)
    for kind, source in (("runs", RUNS), ("headlines", HEADLINES), ("checks", CHECKS)):
        module = types.ModuleType(TOY.module_path(kind))
        path = tmp_path / f"{kind}.py"
        path.write_text(source)
        module.__file__ = str(path)
        monkeypatch.setitem(sys.modules, module.__name__, module)
        exec(compile(source, str(path), "exec"), module.__dict__)
    monkeypatch.setenv("MINILIB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MINILIB_CACHE", str(tmp_path / "cache"))
    CHAPTERS.append(TOY)   # the one entry
    try:
        yield TOY
    finally:
        CHAPTERS.remove(TOY)
        core.REGISTRY.clear()
        core.REGISTRY.update(registry)


def test_a_toy_chapter_needs_one_entry_to_be_seen_everywhere(toy_chapter, capsys, tmp_path):
    assert chapters.find("toy_chapter") is toy_chapter and chapters.find(str(toy_chapter.number)) is toy_chapter
    # the command line: its chapter list and its headline rows
    assert cli.main(["chapters"]) == 0 and "Toy: notebooks/" in capsys.readouterr().out
    assert cli.main(["bench", "toy_chapter"]) == 0
    assert "toy speed-up" in capsys.readouterr().out
    assert toy_chapter in headlines.with_headlines()
    # the zoo: its artefact, which rebuild ships and verify accepts
    assert [a.name for a in zoo.shipped_artefacts()][-1] == "toy_model"
    assert zoo.rebuild_artefacts(zoo.select(["toy_model"], zoo.shipped_artefacts())) == 0
    assert artefacts.check(zoo.shipped_artefacts()[-1]) is None
    # the checks: importable from the package like every chapter's
    from minilib.course.checks import check_toy_answer

    assert check_toy_answer(lambda x: 2 * x) and "check_toy_answer" in core.REGISTRY
    # the README's table of chapters
    assert "[%02d Toy](notebooks/%s)" % (toy_chapter.number, toy_chapter.notebook) in readme.sections()["chapters"]


def test_a_chapter_whose_notebook_is_being_written_has_its_modules_found_and_no_notebook_listed(toy_chapter, capsys):
    index = CHAPTERS.index(toy_chapter)
    CHAPTERS[index] = dataclasses.replace(toy_chapter, written=False)
    try:
        from minilib.course.checks import check_toy_answer  # its checks, artefacts and headlines, as any chapter's

        assert check_toy_answer(lambda x: 2 * x) and [a.name for a in zoo.shipped_artefacts()][-1] == "toy_model"
        assert headlines.with_headlines()[-1].name == toy_chapter.name
        assert toy_chapter.notebook not in [path.name for path in editions.teacher_notebooks()]
        assert toy_chapter.notebook not in [path.name for path in editions.student_notebooks()]
        assert "Toy" not in chapters.markdown_table()
        assert cli.main(["chapters"]) == 0 and "(being written)" in capsys.readouterr().out
    finally:
        CHAPTERS[index] = toy_chapter


def test_toy_artefact_model_loads_what_rebuild_shipped(toy_chapter):
    zoo.rebuild_artefacts(zoo.select(["toy_model"], zoo.shipped_artefacts()))
    model = sys.modules[toy_chapter.module_path("runs")].model()
    assert isinstance(model, nn.Linear) and torch.equal(model.weight, torch.ones(2, 2))


def test_chapter_00_shows_the_table_of_chapters_from_the_registry():
    """Its table cannot stop at an old chapter: a code cell renders chapters.markdown_table(), in both editions."""
    import nbformat

    for edition in ("notebooks", "notebooks/solutions"):
        cells = nbformat.read(ROOT / edition / CHAPTERS[0].notebook, as_version=4).cells
        assert any(c.cell_type == "code" and "chapters.markdown_table()" in c.source for c in cells), edition
        assert not any(c.cell_type == "markdown" and "\n| 01 " in c.source for c in cells), "a hand-kept table"
    assert all(f"[{c.number:02d} {c.title}]({c.notebook})" in chapters.markdown_table() for c in chapters.with_notebooks())
