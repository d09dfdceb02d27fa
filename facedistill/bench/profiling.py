"""Summarise an onnxruntime profiling trace (Chrome trace JSON) into the ops that take the time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def top_ops(trace_path: str | Path, limit: int = 10) -> list[dict[str, Any]]:
    """Per op type: calls per run, total and mean kernel time, share of all kernel time.

    onnxruntime writes one ``Node`` event per kernel execution (``<node>_kernel_time``) with the op
    type in ``args.op_name`` and the duration in microseconds; ``model_run`` events count the runs.
    """
    events = json.loads(Path(trace_path).read_text())
    runs = sum(1 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run") or 1
    total_us: dict[str, float] = {}
    calls: dict[str, int] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        op = (e.get("args") or {}).get("op_name") or "?"
        total_us[op] = total_us.get(op, 0.0) + float(e.get("dur", 0))
        calls[op] = calls.get(op, 0) + 1
    grand = sum(total_us.values()) or 1.0
    rows = [{"op": op, "calls_per_run": calls[op] / runs, "ms_per_run": us / runs / 1000,
             "mean_us": us / calls[op], "share": us / grand}
            for op, us in total_us.items()]
    rows.sort(key=lambda r: r["ms_per_run"], reverse=True)
    return rows[:limit]
