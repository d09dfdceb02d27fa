"""Tiny recipes for the trainer tests: a base dict, overridden by dotted key, written as YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def write_recipe(folder: Path, name: str, recipe: dict[str, Any], over: dict[str, Any]) -> Path:
    """``recipe`` with each ``over`` item set by dotted key (``loss.distill.type``), as ``<folder>/<name>.yaml``."""
    for key, value in over.items():
        node = recipe
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path
