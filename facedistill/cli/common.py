"""Shared CLI plumbing: one console, user errors without tracebacks, progress bars, --json output."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from facedistill.errors import FaceDistillError
from facedistill.utils.atomic import write_json_atomic

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn FaceDistillError (bad input) into a one-paragraph message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FaceDistillError as e:
            err_console.print(f"[bold red]error:[/] {e}")
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows a rich progress bar on a terminal, stays quiet otherwise."""
    if not enabled:
        yield lambda n=1: None
        return
    if not err_console.is_terminal:
        # Logs (nohup, Docker, CI) get plain lines: the start, every quarter, the end.
        yield from _plain_progress(description, total)
        return
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err_console, transient=False,
                  disable=not err_console.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def _plain_progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    start = time.monotonic()
    done = 0
    next_quarter = 1
    err_console.print(f"{description}: started" + (f" ({total})" if total else ""))

    def advance(n: int = 1) -> None:
        nonlocal done, next_quarter
        done += n
        while total and next_quarter < 4 and done >= next_quarter * total / 4:
            err_console.print(f"{description}: {done}/{total} ({time.monotonic() - start:.0f} s)")
            next_quarter += 1

    yield advance
    err_console.print(f"{description}: done" + (f" {done}/{total}" if total else "")
                      + f" in {time.monotonic() - start:.1f} s")


def write_json_output(path: Path | None, payload: Any) -> None:
    """Write machine-readable output; ``-`` means stdout."""
    if path is None:
        return
    if str(path) == "-":
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        write_json_atomic(path, payload)
        err_console.print(f"wrote {path}")
