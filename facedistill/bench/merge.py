"""Put benchmark reports from several targets (x86 laptop, ARM box, ...) side by side."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from facedistill.bench.latency import BenchmarkError, BenchmarkReport


def load_report(path: str | os.PathLike) -> BenchmarkReport:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise BenchmarkError(f"{p}: no such report") from None
    except (OSError, ValueError) as e:
        raise BenchmarkError(f"{p}: not a JSON benchmark report ({e})") from None
    if not isinstance(data, dict):
        raise BenchmarkError(f"{p}: not a facedistill benchmark report")
    try:
        return BenchmarkReport.from_dict(data)
    except BenchmarkError as e:
        raise BenchmarkError(f"{p}: {e}") from None


def target_labels(reports: Sequence[BenchmarkReport], paths: Sequence[str | os.PathLike]) -> list[str]:
    """One unique label per report: its own label, else the file stem; repeats get ' #2'."""
    labels: list[str] = []
    for rep, p in zip(reports, paths):
        base = rep.label or Path(p).stem
        label, n = base, 2
        while label in labels:
            label, n = f"{base} #{n}", n + 1
        labels.append(label)
    return labels


def merge_reports(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """One row per (model, precision, engine, batch, threads) with each target's numbers.

    Each row: ``model, precision, engine, batch, threads`` and ``targets``: {label: {p50_ms, p90_ms,
    images_per_s, peak_rss_mb, status, note, relative}} where ``relative`` is this target's p50 over
    the first target's (2.0 = twice as slow as the first report given). A target that did not run
    a configuration has no entry for it.
    """
    if len(paths) < 1:
        raise BenchmarkError("--merge needs at least one report (usually two or more)")
    reports = [load_report(p) for p in paths]
    labels = target_labels(reports, paths)
    rows: dict[tuple, dict[str, Any]] = {}
    for rep, label in zip(reports, labels):
        for r in rep.rows:
            key = (r.model, r.precision, r.engine, r.batch, r.threads)
            row = rows.setdefault(key, {"model": r.model, "precision": r.precision, "engine": r.engine,
                                        "batch": r.batch, "threads": r.threads, "targets": {}})
            row["targets"][label] = {"p50_ms": r.p50_ms if r.status == "ok" else None,
                                     "p90_ms": r.p90_ms if r.status == "ok" else None,
                                     "images_per_s": r.images_per_s if r.status == "ok" else None,
                                     "peak_rss_mb": r.peak_rss_mb, "status": r.status, "note": r.note}
    first = labels[0]
    for row in rows.values():
        ref = row["targets"].get(first, {}).get("p50_ms")
        for t in row["targets"].values():
            t["relative"] = (t["p50_ms"] / ref) if (ref and t["p50_ms"]) else None
    return list(rows.values())


def merged_targets(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """The machine behind each report, for the header of a comparison table."""
    reports = [load_report(p) for p in paths]
    out = []
    for rep, label, path in zip(reports, target_labels(reports, paths), paths):
        m = rep.machine
        out.append({"label": label, "path": str(path),
                    "cpu_model": m.get("cpu_model"), "board": m.get("board"),
                    "architecture": m.get("architecture"), "usable_cpus": m.get("usable_cpus"),
                    "isa": [k for k, v in (m.get("isa") or {}).items() if v],
                    "onnxruntime": m.get("onnxruntime"), "os": m.get("os"), "created": rep.created,
                    "warnings": rep.warnings})
    return out
