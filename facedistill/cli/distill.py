"""``facedistill distill RECIPE``: train a student (or a teacher: same engine, no teacher)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn
from rich.table import Table

from facedistill.cli.common import PlainProgress, console, err_console, progress_bar, user_errors, write_json_output
from facedistill.cli.main import app


class RichMonitor:
    """Shows the trainer's progress: one bar with the loss terms and images/s."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task = None
        self._plain: PlainProgress | None = None

    @contextlib.contextmanager
    def phase(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        with progress_bar(description, total, self.enabled) as advance:
            yield advance

    def train_start(self, total_steps: int, start_step: int) -> None:
        if not self.enabled:
            return
        if not err_console.is_terminal:  # logs: a line every ~20 s with step/total, images/s and ETA
            self._plain = PlainProgress("training", total_steps, unit="steps", start_done=start_step)
            self._plain.write(f"training: steps {start_step}..{total_steps}")
            return
        self._progress = Progress(SpinnerColumn(), TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                  console=err_console, disable=not err_console.is_terminal)
        self._progress.start()
        self._task = self._progress.add_task("train", total=total_steps, completed=start_step, info="")

    def train_step(self, step: int, metrics: dict) -> None:
        terms = " ".join(f"{k.removeprefix('loss_')}={v:.3f}" for k, v in metrics.items()
                         if k.startswith("loss") and isinstance(v, float))
        info = f"{terms} {metrics.get('images_per_s') or 0:.0f} img/s"
        if isinstance(metrics.get("student_pair_cos"), float):  # rising towards 1: the student is collapsing
            info += f" pair_cos={metrics['student_pair_cos']:.2f}"
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info)
        if self._plain is not None:
            first = step == self._plain.start_done + 1
            self._plain.update(step, info, force=first or step == self._plain.total)

    def evaluated(self, step: int, metrics: dict) -> None:
        if self.enabled:
            impostor = metrics.get("val_impostor_cosine")
            err_console.print(f"step {step}: val accuracy {100 * metrics['val_accuracy']:.2f}% "
                              f"± {100 * metrics['val_accuracy_std']:.2f}"
                              + (f", impostor cosine {impostor:.3f}" if impostor is not None else ""))

    def message(self, text: str) -> None:
        if self.enabled:
            err_console.print(text)

    def train_end(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self._plain = None


def print_run_summary(summary: dict) -> None:
    table = Table(title=f"run {summary['name']}")
    table.add_column("key")
    table.add_column("value")
    rows = {
        "folder": summary["run_dir"],
        "student": f"{summary['student']['arch']} ({summary['student']['embedding_size']}-d, "
                   f"{summary['student']['parameters'] / 1e6:.2f} M params, {summary['student']['size_mb']} MB)",
        "teacher": summary["teacher"]["description"] if summary.get("teacher") else "none",
        "loss": f"margin={summary['loss']['margin']} distill={summary['loss']['distill']}",
        "steps / epochs": f"{summary['steps']} / {summary['epochs']}",
        "wall time": f"{summary['wall_time_s']:.1f} s ({summary['images_per_s']} img/s)",
    }
    if "val_accuracy" in summary:
        rows["val accuracy"] = f"{100 * summary['val_accuracy']:.2f}% ± {100 * summary['val_accuracy_std']:.2f}"
    if "val_impostor_cosine" in summary:  # near 1: the student collapsed onto one direction
        rows["val impostor cosine"] = f"{summary['val_impostor_cosine']:.3f}"
    for k, v in rows.items():
        table.add_row(k, str(v))
    console.print(table)


@app.command("distill")
@user_errors
def distill(
    recipe: Path = typer.Argument(..., help="Recipe YAML (see recipes/)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a recipe key: --set train.epochs=3 "
                                                                 "(repeatable)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name: outputs go to runs/<name>/."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from its last checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the run summary as JSON ('-' = stdout)."),
) -> None:
    """Train a student from a recipe (margin loss + distillation from a frozen teacher).

    Without a teacher (teacher.type: none) the same engine trains a teacher from labels.
    Outputs: runs/<name>/ with recipe.yaml, student.pt, checkpoint.pt, metrics.jsonl, plots/, summary.json.

    Example: facedistill distill recipes/quickstart/unified.yaml --set train.epochs=2
    """
    from facedistill.config import load_recipe
    from facedistill.engine.trainer import train

    overrides = list(set_ or [])
    if name:
        overrides.append(f"name={name}")
    cfg = load_recipe(recipe, overrides)
    result = train(cfg, resume=resume, monitor=RichMonitor(enabled=not quiet))
    if not quiet:
        print_run_summary(result.summary)
    write_json_output(json_out, result.summary)
