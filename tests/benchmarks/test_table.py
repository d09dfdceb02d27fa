"""benchmarks/_table.py: the one table printer of the benchmark scripts."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from _table import format_table  # noqa: E402


def test_columns_line_up_first_left_others_right():
    text = format_table(["model", "acc %"], [["teacher", "99.25"], ["unified student", "82.1"]], title="LFW",
                        notes=["± over seeds"])
    lines = text.splitlines()
    assert lines[0] == "LFW" and lines[-1] == "± over seeds"
    header, rule, first, second = lines[1:5]
    assert header.startswith("model ") and rule.split() == ["-" * len("unified student"), "-" * len("acc %")]
    assert first.startswith("teacher ") and first.endswith("99.25") and second.endswith(" 82.1")
    assert len(first) == len(second) == len(header)  # right-aligned last column: every row as wide


def test_cells_are_strings_of_anything():
    assert format_table(["a", "b"], [[1, None]]).splitlines()[-1].split() == ["1", "None"]
