"""The package's floors: a module imports only from its own floor or the floors below it.

cli on top, then engine, then evaluation/export/bench/config, then data/models/losses, then
utils/errors. A reader who knows the floor of a module knows what it may depend on.
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
