"""The package: pyproject.toml declares what minilib imports, and `pip install .` gives an environment where every
module imports and the command line runs, without the repository beside it."""
import ast
import importlib.metadata
import os
import re
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports() -> dict[str, bool]:
    """{distribution: imported at a module's top level} for every package outside the standard library that a
    minilib module imports (a function's own import counts as not top level, and so does any import of a pytest
    plugin: it is loaded by the test command, whose packages are the ``test`` extra)."""
    distributions = importlib.metadata.packages_distributions()
    found: dict[str, bool] = {}
    for path in (ROOT / "minilib").rglob("*.py"):
        plugin = re.search(r"^import pytest$", path.read_text(encoding="utf-8"), re.MULTILINE) is not None
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "minilib":
                    continue
                assert top in distributions, f"{path.name} imports {top}, which no installed distribution provides"
                for distribution in distributions[top]:
                    key = _normal(distribution)
                    found[key] = found.get(key, False) or (id(node) in top_level and not plugin)
    return found


def _declared(requirements) -> set[str]:
    return {_normal(Requirement(line).name) for line in requirements}


def test_pyproject_declares_every_package_minilib_imports_and_nothing_else():
    required = _declared(PROJECT["dependencies"])
    extras = {group: _declared(lines) for group, lines in PROJECT["optional-dependencies"].items()}
    imported = third_party_imports()
    at_top = sorted(name for name, top in imported.items() if top and name not in required)
    assert not at_top, f"imported when a module is imported, so required: add {at_top} to [project] dependencies"
    anywhere = required.union(*extras.values())
    undeclared = sorted(set(imported) - anywhere)
    assert not undeclared, f"imported inside functions: declare {undeclared} in dependencies or an optional group"
    # used through other packages (torch.onnx.export needs onnx and onnxscript, transformers' tokenizers), by the
    # tests that check the course against them (gguf, rouge-score, llmcompressor) or by the test command's options
    # (pytest-xdist: -n 2)
    indirect = {"tokenizers", "onnx", "onnxscript", "gguf", "rouge-score", "llmcompressor", "pytest-xdist"}
    unused = sorted(anywhere - set(imported) - indirect)
    assert not unused, f"declared but imported nowhere in minilib: {unused}"


def test_the_colab_and_full_requirements_install_the_declared_groups():
    colab = (ROOT / "requirements-colab.txt").read_text().splitlines()
    assert "-e .[notebooks,references]" in colab
    assert not any(re.match(r"[A-Za-z]", line) for line in colab), "packages are declared in pyproject.toml, once"


def test_pip_install_gives_a_package_whose_every_module_imports(tmp_path):
    """A fresh environment that reuses this one's packages (no torch download), minilib installed in it from a copy
    of the source (not editable), run from a folder without the repository."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "minilib", source / "minilib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    (own,) = subprocess.run([python, "-c", "import site; print(*site.getsitepackages())"], capture_output=True,
                            text=True, check=True).stdout.split()
    # this environment's packages, seen by path: their .pth hooks (an editable minilib among them) do not run
    Path(own, "reuse.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(source)],
                             env=env, capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    script = ("import importlib, pkgutil, minilib\n"
              "names = [m.name for m in pkgutil.walk_packages(minilib.__path__, 'minilib.') "
              "if not m.name.endswith('__main__')]\n"
              "for name in names:\n    importlib.import_module(name)\n"
              "print(minilib.__file__, *names)\n")
    run = subprocess.run([python, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    where, *imported = run.stdout.split()
    modules = {".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
               for path in (ROOT / "minilib").rglob("*.py")}
    assert Path(where).is_relative_to(venv)
    assert set(imported) == modules - {"minilib", "minilib.__main__"}, "modules missing from the installed package"
    chapters = subprocess.run([python, "-m", "minilib", "chapters"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
    assert chapters.returncode == 0 and "07 Quantization" in chapters.stdout, chapters.stderr
    data = subprocess.run([python, "-c", "from minilib.deploy.serving import MINILM_CONFIG; "
                                         "print(MINILM_CONFIG.is_relative_to(__import__('sys').prefix), "
                                         "'max_batch_size' in MINILM_CONFIG.read_text())"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert data.stdout.split() == ["True", "True"], data.stderr   # the package's data files come with it
