"""Colab: chapter 00's first code cell installs the course next to Colab's own PyTorch, and does nothing elsewhere."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]


def colab_cell():
    notebook = nbformat.read(REPO / "notebooks" / "00_welcome.ipynb", as_version=4)   # the student edition: what Colab opens
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code[0].get("id") == "ch00-colab", "the Colab cell must be chapter 00's first code cell"
    return code[0].source


def run_cell(tmp_path, colab: bool) -> tuple[subprocess.CompletedProcess, Path]:
    """Run the cell itself in a fresh Python, as on Colab (a ``google.colab`` module) or elsewhere.

    Its commands really run: git clones this repository's last commit in place of GitHub (git's ``insteadOf``: the
    tests run offline), and pip resolves requirements-colab.txt in the clone against the packages installed here
    (a dry run that writes its report, so this environment is left as it is). Only the clone's folder moves from
    /content/course into ``tmp_path``.
    """
    target = tmp_path / "course"
    source = colab_cell().replace("/content/course", str(target))
    url = re.search(r'COURSE = "([^"]+)"', source)[1]
    fake_colab = "sys.modules['google.colab'] = types.ModuleType('google.colab')" if colab else ""
    program = f"import sys, types\n{fake_colab}\n{source}\nprint(sys.path[0])"
    env = os.environ | {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"url.{REPO.as_uri()}.insteadOf",
                        "GIT_CONFIG_VALUE_0": url, "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0",
                        "PIP_DRY_RUN": "1", "PIP_REPORT": str(tmp_path / "pip-report.json")}
    return subprocess.run([sys.executable, "-c", program], env=env, cwd=tmp_path, capture_output=True, text=True), target


needs_git = pytest.mark.skipif(not (REPO / ".git").exists() or shutil.which("git") is None,
                               reason="the cell's clone needs this course as a git repository and git")


@needs_git
def test_on_colab_the_cell_clones_and_installs_without_touching_torch(tmp_path):
    run, target = run_cell(tmp_path, colab=True)
    assert run.returncode == 0, run.stderr
    assert (target / "requirements-colab.txt").exists() and (target / "minilib" / "__init__.py").exists()
    assert run.stdout.split()[-1] == str(target)            # the clone is importable without a restart
    report = json.loads((tmp_path / "pip-report.json").read_text())
    installed = {item["metadata"]["name"].lower() for item in report["install"]}
    assert "minilib" in installed and "torch" not in installed, installed   # Colab's own torch is kept


def test_elsewhere_the_cell_does_nothing(tmp_path):
    run, target = run_cell(tmp_path, colab=False)
    assert run.returncode == 0, run.stderr
    assert not target.exists() and not (tmp_path / "pip-report.json").exists()
    assert str(target) not in run.stdout                     # sys.path is left as it was


def test_the_colab_requirements_keep_the_services_torch():
    colab = (REPO / "requirements-colab.txt").read_text().splitlines()
    assert not any(re.match(r"torch\s*([=<>~!]|$)", line) for line in colab), "a torch line would replace Colab's CUDA build"
    assert "-e .[notebooks,references]" in colab
    full = (REPO / "requirements.txt").read_text().splitlines()
    assert "-r requirements-colab.txt" in full and "torch==2.13.0" in full   # one list of packages, not two
