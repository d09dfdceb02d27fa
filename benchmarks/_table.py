"""One way for the benchmark scripts to print their row tables: plain text that stays aligned in a log,
a pipe or a container without a terminal (no box drawing, no colour, no width guessing).

    print_table(["objective", "acc %", "x fp32"], [["unified", 82.1, 1.0]], title="LFW folds 6-7")

Numbers are formatted by the caller (a script knows its own precision); anything else is ``str()``.
The first column is left-aligned, the others right-aligned; ``notes`` follow the table one per line.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Sequence, TextIO


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None,
                 notes: Iterable[str] = ()) -> str:
    """The table as text (what :func:`print_table` prints)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) if i < len(r) else 0 for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [(c.ljust(w) if i == 0 else c.rjust(w)) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(parts).rstrip()

    out = [title] if title else []
    out += [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    out += [str(n) for n in notes]
    return "\n".join(out)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None,
                notes: Iterable[str] = (), file: TextIO | None = None) -> None:
    """Print a row table (see the module docstring); ``file`` defaults to stdout."""
    print(format_table(headers, rows, title, notes), file=file or sys.stdout, flush=True)
