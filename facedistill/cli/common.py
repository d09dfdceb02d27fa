"""Shared CLI plumbing: one console, user errors without tracebacks, progress bars, --json output."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import typer
from rich.console import Console, ConsoleDimensions
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from facedistill.errors import FaceDistillError
from facedistill.utils.atomic import write_json_atomic

# Width of tables and lines when the output is not a terminal (docker run without -t, CI, nohup):
# rich would fall back to 80 columns and squeeze a wide table into one-character columns. Tables
# take only their natural width, so a generous width costs nothing. COLUMNS still wins when set.
PLAIN_WIDTH = 240
# Progress lines when the output is not a terminal: one at each stage change and one every this
# many seconds, with done/total, rate and ETA (a log that stays silent for minutes looks hung).
PLAIN_PROGRESS_EVERY_S = 20.0


class AppConsole(Console):
    """A rich console that stays readable when its output is a pipe or a file."""

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)  # type: ignore[attr-defined]
        if self._width is None and not self.is_terminal and "COLUMNS" not in os.environ:
            return ConsoleDimensions(max(size.width, PLAIN_WIDTH), size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


console = AppConsole(stderr=False, highlight=False)
err_console = AppConsole(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])

# Python warnings raised while a command runs (e.g. a recipe that RPSD warns about): each reaches the
# user once, as one ``warning:`` line naming what to change, and lands in the command's --json.
collected_warnings: list[str] = []


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    text = str(message)
    if text in collected_warnings:
        return
    collected_warnings.append(text)
    err_console.print(f"[yellow]warning:[/] {text}", highlight=False)


def route_warnings() -> None:
    """Send Python warnings through :func:`_show_warning` (no source file and line in the terminal)."""
    collected_warnings.clear()
    warnings.showwarning = _show_warning


def reflow_help(text: str | None) -> str | None:
    """Help as paragraphs: the docstring's source line breaks go, so the terminal wraps each paragraph once.

    Blank lines stay paragraph breaks; a paragraph with an indented line or a list item (an example
    block, a list) keeps its lines as written.
    """
    if not text:
        return text
    import inspect

    paragraphs = []
    for para in inspect.cleandoc(text).split("\n\n"):
        lines = para.split("\n")
        literal = any(ln[:1].isspace() or ln.lstrip().startswith(("- ", "* ")) for ln in lines)
        paragraphs.append(para if literal else " ".join(ln.strip() for ln in lines))
    return "\n\n".join(paragraphs)


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


def format_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class PlainProgress:
    """Progress as plain lines for logs: done/total, rate and ETA, at most every ``every_s`` seconds.

    ``update(done, info)`` prints when the interval has passed (or ``force``); the clock is the
    caller's (``time.monotonic`` by default) so tests can drive it.
    """

    def __init__(self, description: str, total: int | None, unit: str = "", every_s: float = PLAIN_PROGRESS_EVERY_S,
                 start_done: int = 0, clock: Callable[[], float] = time.monotonic,
                 write: Callable[[str], None] | None = None) -> None:
        self.description, self.total, self.unit, self.every_s = description, total, unit, every_s
        self.clock = clock
        self.write = write or (lambda line: err_console.print(line, highlight=False, markup=False))
        self.start = self.last = clock()
        self.start_done = self.done = start_done

    def line(self, info: str = "") -> str:
        elapsed = self.clock() - self.start
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.description}: {self.done}" + (f"/{self.total}" if self.total else "") +
                 (f" {self.unit}" if self.unit else "")]
        if self.total:
            parts.append(f"{100 * self.done / self.total:.0f}%")
        parts.append(f"{format_eta(elapsed)} elapsed")
        if rate > 0:
            parts.append(f"{rate:.2f} {self.unit or 'items'}/s")
            if self.total:
                parts.append(f"ETA {format_eta((self.total - self.done) / rate)}")
        return ", ".join(parts) + (f" | {info}" if info else "")

    def update(self, done: int, info: str = "", force: bool = False) -> None:
        self.done = done
        now = self.clock()
        if force or now - self.last >= self.every_s:
            self.write(self.line(info))
            self.last = now


def _plain_progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    err_console.print(f"{description}: started" + (f" ({total})" if total else ""), markup=False)
    progress = PlainProgress(description, total)

    def advance(n: int = 1) -> None:
        progress.update(progress.done + n)

    yield advance
    err_console.print(f"{description}: done" + (f" {progress.done}/{total}" if total else "")
                      + f" in {time.monotonic() - progress.start:.1f} s", markup=False)


def write_json_output(path: Path | None, payload: Any) -> None:
    """Write machine-readable output; ``-`` means stdout."""
    if path is None:
        return
    if isinstance(payload, dict) and collected_warnings:
        payload = dict(payload)
        payload["warnings"] = list(payload.get("warnings") or []) + [
            w for w in collected_warnings if w not in (payload.get("warnings") or [])]
    if str(path) == "-":
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        write_json_atomic(path, payload)
        err_console.print(f"wrote {path}")


def parse_channels(text: str | None, flag: str) -> float | tuple[float, ...] | None:
    """'127.5' -> 127.5; '123.675,116.28,103.53' -> a 3-tuple (per channel)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 3):
        raise typer.BadParameter(f"{flag} must be a number or three comma-separated numbers, got {text!r}")
    return values[0] if len(values) == 1 else tuple(values)
