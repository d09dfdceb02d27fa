"""Every command's --help reads as paragraphs: no line break from the docstring's source survives."""

from __future__ import annotations

import inspect
import re

import pytest
from typer.testing import CliRunner

from facedistill.cli.common import reflow_help
from facedistill.cli.main import app


def _commands():
    out = []
    for prefix, typer_app in [((), app)] + [((g.name,), g.typer_instance) for g in app.registered_groups]:
        for info in typer_app.registered_commands:
            out.append(prefix + (info.name or info.callback.__name__,))
    return out


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_help_paragraphs_are_single_lines(command, monkeypatch):
    res = CliRunner().invoke(app, list(command) + ["--help"], env={"COLUMNS": "2000", "TERMINAL_WIDTH": "2000"})
    assert res.exit_code == 0, res.output
    body = res.output.split("╭")[0]  # the description, before the option panels
    lines = [ln.strip() for ln in body.splitlines()]
    # a text line followed by another text line starting in lower case = a sentence broken mid-way
    for a, b in zip(lines, lines[1:]):
        assert not (a and b and re.match(r"[a-z(]", b) and not a.startswith("facedistill ")), (a, b)


def test_reflow_keeps_paragraphs_and_example_blocks():
    text = "First line\nof one paragraph.\n\nExamples:\n\n  facedistill a\n  facedistill b\n"
    assert reflow_help(inspect.cleandoc(text)) == "First line of one paragraph.\n\nExamples:\n\n  facedistill a\n  facedistill b"
