"""The run folder's files: checkpoint, student weights, metrics log. Every write is atomic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facedistill.models.checkpoints import STUDENT_FILE, SUMMARY_FILE  # noqa: F401 - the run folder's names
from facedistill.utils.atomic import atomic_path

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def checkpoint_recipe_hash(path: Path) -> str | None:
    """The recipe hash a checkpoint was written by; None when it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        return load_checkpoint(path).get("recipe_hash")
    except Exception:  # noqa: BLE001 - a corrupt checkpoint is as good as none
        return None


def save_student(path: Path, student: nn.Module) -> None:
    """The backbone alone, as a plain state dict (what evaluate/export load)."""
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in student.state_dict().items()}, tmp)


def read_metrics(path: Path, max_step: int | None = None) -> list[dict[str, Any]]:
    """The metrics log's rows up to ``max_step``; a line cut by a crash is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if max_step is None or row.get("step", 0) <= max_step:
            rows.append(row)
    return rows
