"""What to do with a recipe's run folder: reuse a finished run, resume a killed one, or train.

One decision for every caller (the quickstart, the benchmark scripts, a user's own loop): a run
folder whose summary was written by the same recipe (same hash) is finished; one whose checkpoint
was written by it is resumed; anything else under that name was made by other settings and is
moved aside to ``<output_dir>/stale/<name>-<time>`` rather than overwritten or mixed in.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from facedistill.config.recipe import Recipe
from facedistill.engine.checkpointing import CHECKPOINT_FILE, SUMMARY_FILE, checkpoint_recipe_hash
from facedistill.engine.monitor import Monitor

Action = Literal["reuse", "resume", "train"]


@dataclass
class RunState:
    action: Action
    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)  # the finished run's, when action is reuse
    stale: bool = False  # the folder holds a run of another recipe


def run_state(recipe: Recipe) -> RunState:
    """Decide, without changing anything, what a run of ``recipe`` should do with its folder."""
    run_dir = recipe.run_dir
    summary_file = run_dir / SUMMARY_FILE
    if summary_file.is_file():
        try:
            summary = json.loads(summary_file.read_text())
        except json.JSONDecodeError:
            summary = {}
        if summary.get("recipe_hash") == recipe.hash():
            return RunState("reuse", run_dir, summary=summary)
    ckpt_hash = checkpoint_recipe_hash(run_dir / CHECKPOINT_FILE)
    if ckpt_hash is not None and ckpt_hash == recipe.hash():
        return RunState("resume", run_dir)
    stale = (run_dir / CHECKPOINT_FILE).is_file() or summary_file.is_file()
    return RunState("train", run_dir, stale=stale)


def move_aside(run_dir: Path) -> Path:
    """Move a stale run folder to ``<parent>/stale/<name>-<time>``; returns the new place."""
    target = run_dir.parent / "stale" / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    run_dir.rename(target)
    return target


def prepare_run(recipe: Recipe, log: Callable[[str], None] = lambda _: None) -> RunState:
    """``run_state`` plus its one side effect: a stale folder is moved aside (and logged)."""
    state = run_state(recipe)
    if state.stale:
        moved = move_aside(state.run_dir)
        log(f"{state.run_dir} was written by another recipe; moved it to {moved}")
    return state


def train_or_reuse(recipe: Recipe, monitor: Monitor | None = None, log: Callable[[str], None] = lambda _: None,
                   label: str | None = None) -> tuple[dict[str, Any], Action]:
    """The finished run's summary, resuming or training it first when needed."""
    from facedistill.engine.trainer import train

    label = label or recipe.name
    state = prepare_run(recipe, lambda msg: log(f"{label}: {msg}"))
    if state.action == "reuse":
        log(f"{label}: reusing {state.run_dir}")
        return state.summary, "reuse"
    log(f"{label}: {'resuming' if state.action == 'resume' else 'training'} {recipe.student.arch} "
        f"(distill: {recipe.loss.distill.type}, seed {recipe.train.seed})")
    return train(recipe, resume=state.action == "resume", monitor=monitor).summary, state.action
