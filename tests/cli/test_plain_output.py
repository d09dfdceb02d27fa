"""Output when it is not a terminal (docker run without -t, CI, nohup): timed lines, wide tables."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from facedistill.cli.common import AppConsole, PlainProgress, format_eta


def test_plain_progress_prints_by_time_with_rate_and_eta():
    now = [0.0]
    lines: list[str] = []
    p = PlainProgress("training", 100, unit="steps", every_s=20, clock=lambda: now[0], write=lines.append)
    for step in range(1, 101):
        now[0] += 1.0  # one step a second
        p.update(step, info="loss=1.0")
    # one line every 20 s of 100 s, not one per step and not one per 50 steps
    assert len(lines) == 5, lines
    assert lines[0] == "training: 20/100 steps, 20%, 0:20 elapsed, 1.00 steps/s, ETA 1:20 | loss=1.0"
    assert lines[-1].startswith("training: 100/100 steps, 100%, 1:40 elapsed")


def test_plain_progress_rate_counts_from_a_resumed_step():
    now = [0.0]
    p = PlainProgress("training", 1000, unit="steps", clock=lambda: now[0], write=lambda _: None, start_done=900)
    now[0] = 10.0
    p.update(910)
    assert "1.00 steps/s" in p.line() and "ETA 1:30" in p.line()


def test_format_eta():
    assert format_eta(59.6) == "1:00" and format_eta(3725) == "1:02:05" and format_eta(-3) == "0:00"


def _wide_table() -> Table:
    table = Table(title="benchmark")
    for name in ("model", "precision", "batch", "threads", "p50 ms", "p90 ms", "p99 ms", "img/s", "size MB",
                 "peak RSS MB", "vs first"):
        table.add_column(name)
    for model in ("teacher_sface_fp32", "student_unified_fp32", "student_unified_int8"):
        table.add_row(model, "int8", "1", "1", "12.345", "13.456", "14.567", "81.0", "1.234", "123.4", "2.50x")
    return table


def test_tables_keep_their_width_in_a_pipe(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    squeezed, ours = io.StringIO(), io.StringIO()
    Console(file=squeezed, highlight=False).print(_wide_table())
    AppConsole(file=ours, highlight=False).print(_wide_table())
    # rich alone falls back to 80 columns and breaks the names; ours prints each row on one line
    assert not any("student_unified_int8" in line for line in squeezed.getvalue().splitlines())
    rows = [line for line in ours.getvalue().splitlines() if "student_unified_int8" in line]
    assert len(rows) == 1 and "2.50x" in rows[0] and "peak RSS MB" in ours.getvalue()


def test_columns_still_wins(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert AppConsole(file=io.StringIO()).width == 100
