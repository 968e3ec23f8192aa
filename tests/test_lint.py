"""ruff, with the course's small rule set (pyproject.toml, [tool.ruff.lint]), over the library, the tests and the
notebooks: unused or undefined names, syntax errors, import order, likely bugs and shadowed builtins."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    found = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if found is None:
        pytest.fail("ruff is not installed: pip install -r requirements.txt")
    return [found]


def test_the_library_tests_and_notebooks_pass_ruff():
    done = subprocess.run([*_ruff(), "check", "--no-cache", "minilib", "tests", "notebooks"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:] + "\n(ruff check --fix . fixes most)"


def test_ruff_checks_notebooks_and_the_stated_rules(tmp_path):
    """The configuration is the one used: a notebook cell with an unused import and a shadowed builtin fails."""
    import nbformat

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os\nlist = [1, 2]\n")])
    nbformat.write(notebook, tmp_path / "bad.ipynb")
    done = subprocess.run([*_ruff(), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"),
                           str(tmp_path / "bad.ipynb")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "F401" in done.stdout and "A001" in done.stdout, done.stdout
