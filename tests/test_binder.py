"""Binder's environment: a fresh virtual environment from binder/requirements.txt imports everything
the notebooks import.

The CPU-wheel index line is removed first (this machine reaches PyPI only; the pinned CPU build of
torch is found without it), and `-r ../requirements.txt` is pointed at the repository's file.
"""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BINDER = REPO / "binder"


def notebook_imports():
    """Top-level module names imported by any code cell of any chapter, in either edition."""
    modules = set()
    for path in sorted((REPO / "notebooks").glob("**/*.ipynb")):   # both editions: the answers may import more
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            source = "\n".join(line for line in "".join(cell["source"]).splitlines()
                               if not line.lstrip().startswith(("%", "!")))   # IPython magics are not Python
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.Import):
                    modules.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    modules.add(node.module.split(".")[0])
    return sorted(modules)


def test_binder_files_are_what_repo2docker_expects():
    lines = (BINDER / "requirements.txt").read_text().splitlines()
    assert any(line.startswith("--extra-index-url") and "cpu" in line for line in lines)
    assert "torch==2.13.0+cpu" in lines and "-r ../requirements.txt" in lines
    # binder/ disables repo2docker's own install: `-e .` comes through requirements.txt -> requirements-colab.txt
    assert "-r requirements-colab.txt" in (REPO / "requirements.txt").read_text().splitlines()
    assert "-e .[notebooks,references]" in (REPO / "requirements-colab.txt").read_text().splitlines()
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"


@pytest.mark.skipif(os.environ.get("CI", "").lower() != "true",
                    reason="builds a whole virtual environment (minutes, about 1 GB): runs in CI (CI=true) only")
def test_fresh_binder_environment_imports_every_notebook_module(tmp_path):
    requirements = tmp_path / "requirements.txt"
    kept = [line.replace("-r ../requirements.txt", f"-r {REPO / 'requirements.txt'}")
            for line in (BINDER / "requirements.txt").read_text().splitlines()
            if not line.startswith(("--extra-index-url", "--index-url"))]
    requirements.write_text("\n".join(kept) + "\n")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)],
                             cwd=REPO, capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    modules = notebook_imports()
    assert {"minilib", "torch"} <= set(modules)
    imported = subprocess.run([str(python), "-c", f"import {', '.join(modules)}; import torch; print(torch.__version__)"],
                              capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert imported.stdout.strip().endswith("+cpu"), f"Binder must get the CPU build of torch, got {imported.stdout}"
