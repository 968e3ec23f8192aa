"""The library's floors, read from every module's imports: nothing imports upward, and nothing imports itself.

The rule, for every module of ``minilib`` (``__main__`` modules and imports inside functions included, no exceptions):
a module may import only modules of its own floor or of the floors below it.

    0  minilib.chapters        the course's table of contents: data, imports nothing
    1  minilib.support         the measurement kit, device, data, cache, training loop, optional packages, plots
    2  the techniques          minilib.attention, minilib.quant, minilib.prune ...: what the lessons teach
    3  minilib.deploy          the Hugging Face bridge, ONNX export, serving
    4  minilib.experiments     each chapter's runs, shipped artefacts and headline rows
    5  minilib.course          exercise checks, assignments, notebook runner and budgets, the README's tables
    6  the command line        minilib.cli and minilib.__main__: ``python -m minilib <command>``

The modules a chapter declares in :mod:`minilib.chapters` are imported by name (``importlib``) by the floor that
uses them: the zoo (floor 4) imports the runs modules, the headline runner (4) the headline modules, the checks (5)
the check modules. Those imports are edges of the graph too, so the same rule covers them.
"""
import ast
import functools
from pathlib import Path

import pytest

from minilib.chapters import CHAPTERS

MINILIB = Path(__file__).resolve().parents[1] / "minilib"
FLOORS = {"chapters": 0, "support": 1, "deploy": 3, "experiments": 4, "course": 5, "cli": 6, "__main__": 6}
TECHNIQUES = 2
NAMES = ["the table of contents", "support", "the techniques", "deployment", "the experiments", "the course's tooling",
         "the command line"]


def module_name(path: Path) -> str:
    parts = path.relative_to(MINILIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(module: str) -> int:
    """The floor of a ``minilib`` module: by its first name under ``minilib``, techniques otherwise."""
    return FLOORS.get(module.split(".")[1], TECHNIQUES)


def imported_modules(path: Path) -> set[str]:
    """Every minilib module ``path`` imports, wherever the import statement is (top level or in a function)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {module for module in found if module.startswith("minilib")}


def declared_imports() -> dict[str, set[str]]:
    """The imports made by name from the chapters' declarations: who imports which declared module."""
    edges = {"minilib.experiments.zoo": set(), "minilib.experiments.headlines": set(), "minilib.course.checks": set()}
    for chapter in CHAPTERS:
        if chapter.artefacts:
            edges["minilib.experiments.zoo"].add(chapter.module_path("runs"))
        if chapter.headlines:
            edges["minilib.experiments.headlines"].add(chapter.module_path("headlines"))
        if chapter.checks:
            edges["minilib.course.checks"].add(chapter.module_path("checks"))
    return edges


MODULES = {module_name(path): path for path in MINILIB.rglob("*.py")}
GRAPH = {name: {m for m in imported_modules(path) if m in MODULES and m != name} - {"minilib"}
         for name, path in MODULES.items()}
for _importer, _declared in declared_imports().items():
    GRAPH[_importer] |= _declared


def test_the_graph_is_read_from_real_files():
    assert {"minilib.attention", "minilib.support.bench", "minilib.quant.int8", "minilib.experiments.zoo",
            "minilib.course.checks.core", "minilib.__main__", "minilib.cli", "minilib.chapters"} <= set(MODULES)
    assert "minilib.attention" in GRAPH["minilib.transformer"]
    assert "minilib.cli" in GRAPH["minilib.__main__"]
    assert "minilib.course.checks.ch02_self_attention" in GRAPH["minilib.course.checks"]
    assert {floor("minilib.chapters"), floor("minilib.support.cache"), floor("minilib.sparse"),
            floor("minilib.deploy.hf"), floor("minilib.experiments.headlines.ch04_sparse_attention"),
            floor("minilib.course.assignments.cli"), floor("minilib.cli")} == set(range(7))


def test_every_declared_module_is_a_file_of_the_library():
    declared = set().union(*declared_imports().values())
    assert declared and declared <= set(MODULES), sorted(declared - set(MODULES))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_nothing_imports_upward(module):
    upward = sorted(m for m in GRAPH[module] if floor(m) > floor(module))
    assert not upward, (f"{module} ({NAMES[floor(module)]}) imports {upward} from a floor above it: move the code it "
                        "needs down, or the importing code up")


def test_the_table_of_contents_imports_nothing_from_the_library():
    assert not GRAPH["minilib.chapters"]


def test_nothing_imports_the_command_line():
    importers = sorted(m for m, imported in GRAPH.items() if "minilib.cli" in imported and m != "minilib.__main__")
    assert not importers, f"{importers} import the command line: it is the top floor, imported by nothing"


def test_the_measurement_kit_sits_at_the_bottom():
    """bench is imported by every wing; it needs only where to compute (device), which imports nothing
    that measures (FLOPs are counted by PyTorch's FlopCounterMode, not from a model's parts)."""
    assert GRAPH["minilib.support.bench"] <= {"minilib.support.device"}
    assert not any("minilib.support.bench" in reachable(dependency) for dependency in GRAPH["minilib.support.bench"])


@functools.cache
def reachable(module: str) -> frozenset:
    seen, todo = set(), [module]
    while todo:
        for dependency in GRAPH[todo.pop()] - seen:
            seen.add(dependency)
            todo.append(dependency)
    return frozenset(seen)


def test_no_import_loops():
    loops = sorted(module for module in GRAPH if module in reachable(module))
    assert not loops, f"modules that import themselves through others: {loops}"
