"""The library's three wings, read from the imports: techniques never reach up into the experiments or the
course's tooling, the measurement kit sits at the bottom, and the import graph has no loops and few floors."""
import ast
import functools
from pathlib import Path

import pytest

MINILIB = Path(__file__).resolve().parents[1] / "minilib"
WINGS = ("minilib.experiments", "minilib.course")
MAX_FLOORS = 7


def module_name(path: Path) -> str:
    parts = path.relative_to(MINILIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


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


MODULES = {module_name(path): path for path in MINILIB.rglob("*.py") if path.name != "__main__.py"}
GRAPH = {name: {m for m in imported_modules(path) if m in MODULES and m != name} - {"minilib"}
         for name, path in MODULES.items()}
TECHNIQUES = sorted(name for name in MODULES if not name.startswith(WINGS) and name != "minilib")


def test_the_graph_is_read_from_real_files():
    assert {"minilib.attention", "minilib.support.bench", "minilib.quant.int8", "minilib.experiments.zoo",
            "minilib.course.checks.core"} <= set(MODULES)
    assert "minilib.attention" in GRAPH["minilib.transformer"]


@pytest.mark.parametrize("module", TECHNIQUES)
def test_techniques_never_import_experiments_or_course_tooling(module):
    upward = sorted(m for m in imported_modules(MODULES[module]) if m.startswith(WINGS))
    assert not upward, f"{module} imports {upward}: a technique may use only the core and other techniques"


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


def test_at_most_seven_floors():
    @functools.cache
    def floor(module: str) -> int:
        return 1 + max((floor(dependency) for dependency in GRAPH[module]), default=0)

    tallest = max(GRAPH, key=floor)
    assert floor(tallest) <= MAX_FLOORS, f"{tallest} stands on {floor(tallest)} floors"
