"""The package's floors: a module imports only from its own floor or the floors below it.

cli on top, then engine, then evaluation/export/bench/config, then data/models/losses, then
utils/errors. A reader who knows the floor of a module knows what it may depend on. Two modules
never import each other (lazy imports inside functions included): what both need goes to a module
below them. And no function in facedistill/export/ is longer than a screen (about 80 lines), so an
export reads as its named stages.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "facedistill"
FLOORS = [
    {"cli"},
    {"engine"},
    {"evaluation", "export", "bench", "config"},
    {"data", "models", "losses"},
    {"utils", "errors", "__init__"},
]


def floor_of(part: str) -> int:
    for level, parts in enumerate(FLOORS):
        if part in parts:
            return level
    raise AssertionError(f"facedistill/{part} is on no floor: add it to FLOORS in {__file__}")


def imported_parts(path: Path) -> set[str]:
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            if name.startswith("facedistill."):
                parts.add(name.split(".")[1])
            elif name == "facedistill" and isinstance(node, ast.ImportFrom):
                parts.add("__init__")
    return parts


def test_no_module_imports_from_a_higher_floor():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) == 1:
            continue  # __init__, __main__ (starts the CLI), errors
        own = floor_of(rel.parts[0])
        for part in imported_parts(path):
            if floor_of(part) < own:
                upward.append(f"facedistill/{rel} imports facedistill.{part}")
    assert not upward, "imports from a higher floor:\n" + "\n".join(upward)


def test_the_checker_sees_an_upward_import(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("from facedistill.engine.trainer import train\n")
    assert floor_of(imported_parts(bad).pop()) < floor_of("models")


# ----------------------------------------------------------------------------------------------
# no two modules import each other, and export/ reads in screens
# ----------------------------------------------------------------------------------------------
MAX_EXPORT_FUNCTION_LINES = 80  # a function of a screen or less: an export reads as named stages


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The facedistill modules ``path`` imports (at any depth: lazy imports inside functions count),
    ``from pkg import name`` resolved to the submodule ``pkg.name`` when there is one."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in known:
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            found |= subs if subs else {node.module}
            if len(subs) < len(node.names):
                found.add(node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    known = set(paths)
    return {name: imported_modules(path, known) - {name} for name, path in paths.items()}


def mutual_imports(graph: dict[str, set[str]]) -> list[str]:
    """Pairs of modules that import each other, inside one package or across two (a package's
    __init__ re-exporting its modules is not a pair; a module importing that __init__ back would be)."""
    pairs = []
    for a, targets in graph.items():
        for b in targets:
            if a < b and a in graph.get(b, set()):
                pairs.append(f"{a} <-> {b}")
    return sorted(pairs)


def test_no_two_modules_import_each_other():
    pairs = mutual_imports(import_graph())
    assert not pairs, "modules that import each other (move what both need to a lower module):\n" + "\n".join(pairs)


def test_the_checker_sees_a_mutual_import(tmp_path):
    pkg = tmp_path / "facedistill" / "export"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("def f():\n    from facedistill.export.b import g\n")
    (pkg / "b.py").write_text("from facedistill.export import a\n")
    known = {"facedistill.export", "facedistill.export.a", "facedistill.export.b"}
    graph = {f"facedistill.export.{m}": imported_modules(pkg / f"{m}.py", known) for m in "ab"}
    assert mutual_imports(graph) == ["facedistill.export.a <-> facedistill.export.b"]


def long_functions(path: Path, limit: int) -> list[str]:
    """``file:line name: N lines`` for each function of ``path`` longer than ``limit`` lines."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit:
            out.append(f"{path.name}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    return out


def test_no_export_function_is_longer_than_a_screen():
    long = [f for p in sorted((PACKAGE / "export").rglob("*.py")) for f in long_functions(p, MAX_EXPORT_FUNCTION_LINES)]
    assert not long, (f"functions in facedistill/export/ longer than {MAX_EXPORT_FUNCTION_LINES} lines "
                      "(split them into named stages):\n" + "\n".join(long))


def test_the_length_check_counts_lines(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def short():\n    return 1\n\n\ndef long():\n" + "    x = 1\n" * 5 + "    return x\n")
    assert [s.split(" ")[1].rstrip(":") for s in long_functions(f, 3)] == ["long"]
