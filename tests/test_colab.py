"""Colab: chapter 00's first code cell installs the course next to Colab's own PyTorch, and does nothing elsewhere."""
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]


def colab_cell():
    notebook = nbformat.read(REPO / "notebooks" / "00_welcome.ipynb", as_version=4)   # the student edition: what Colab opens
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code[0].get("id") == "ch00-colab", "the Colab cell must be chapter 00's first code cell"
    return code[0].source


@pytest.fixture
def recorded(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: calls.append((command, kwargs.get("cwd"))))
    monkeypatch.setattr(os, "chdir", lambda path: calls.append(("chdir", path)))
    monkeypatch.setattr(os.path, "isdir", lambda path: False)   # a fresh Colab runtime: no clone yet
    monkeypatch.setattr(sys, "path", list(sys.path))
    return calls


def test_on_colab_the_cell_clones_and_installs_without_touching_torch(recorded, monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(colab_cell(), {})
    clone, install = recorded            # no chdir: the notebooks read no file relative to their folder
    assert clone[0][:2] == ["git", "clone"] and clone[0][-1] == "/content/course"
    assert install == ([sys.executable, "-m", "pip", "install", "-q", "-r", "requirements-colab.txt"], "/content/course")
    assert sys.path[0] == "/content/course"


def test_elsewhere_the_cell_does_nothing(recorded, monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(colab_cell(), {})
    assert recorded == []


def test_the_colab_requirements_keep_the_services_torch():
    colab = (REPO / "requirements-colab.txt").read_text().splitlines()
    assert not any(re.match(r"torch\s*([=<>~!]|$)", line) for line in colab), "a torch line would replace Colab's CUDA build"
    assert "-e .[notebooks,references]" in colab
    full = (REPO / "requirements.txt").read_text().splitlines()
    assert "-r requirements-colab.txt" in full and "torch==2.13.0" in full   # one list of packages, not two
