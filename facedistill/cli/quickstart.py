"""``facedistill quickstart``: the whole pipeline on built-in synthetic faces, in minutes, on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from facedistill.cli.common import console, user_errors, write_json_output
from facedistill.cli.main import app


def print_quickstart(summary: dict) -> None:
    models = Table(title="quickstart: verification accuracy on identity-disjoint synthetic pairs")
    for col in ("model", "arch", "params", "accuracy", "train time"):
        models.add_column(col)
    for row in summary["models"]:
        models.add_row(row["model"], row["arch"], f"{row['parameters'] / 1e6:.2f} M",
                       f"{100 * row['accuracy']:.2f}% ± {100 * row['accuracy_std']:.2f}", f"{row['train_s']:.0f} s")
    console.print(models)
    exports = Table(title=f"exported models (onnxruntime, batch 1, 1 thread, {summary['machine']})")
    for col in ("file", "precision", "size", "accuracy", "cosine to fp32", "latency p50"):
        exports.add_column(col)
    for row in summary["exports"]:
        acc = f"{100 * row['accuracy']:.2f}%" if row.get("accuracy") is not None else "-"
        lat = f"{row['p50_ms']:.2f} ms" if row.get("p50_ms") is not None else "-"
        if row.get("speedup_vs_fp32") and row["file"] != "student.onnx":
            lat += f" ({row['speedup_vs_fp32']:.2f}x fp32)"
        size = f"{row['size_mb']:.2f} MB" if row.get("size_mb") is not None else "-"
        cos = f"{row['cosine_mean']:.4f}" if row.get("cosine_mean") is not None and row["file"] != "student.onnx" \
            else "-"
        exports.add_row(row["file"], row["precision"], size, acc, cos, lat)
    console.print(exports)
    console.print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in summary["timings_s"].items()))
    console.print(f"outputs in {summary['workdir']}/")


@app.command("quickstart")
@user_errors
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", "-o", help="Working folder for data, runs and exports."),
    size: str = typer.Option("default", help="default (about 4 minutes on 2 idle CPU cores) or tiny (a smoke test)."),
    recipes: Optional[Path] = typer.Option(None, help="Folder of the quickstart recipes (default: recipes/quickstart)."),
    int8: bool = typer.Option(True, "--int8/--no-int8", help="Also export and check an int8 student."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a key of every recipe, e.g. train.threads=2."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the summary as JSON ('-' = stdout)."),
) -> None:
    """Run prepare -> distill (teacher, then students) -> evaluate -> export -> benchmark on synthetic faces.

    Trains a MobileFaceNet teacher from labels, then two original-width MobileFaceNet students: one
    with the margin loss alone and one with the unified distillation objective; prints their
    accuracies, exports the distilled student to ONNX fp32 + int8 and times it next to the teacher.
    Re-running reuses finished steps.

    Example: facedistill quickstart
    """
    from facedistill.cli.distill import RichMonitor
    from facedistill.engine.quickstart import run_quickstart

    summary = run_quickstart(out, size=size, recipes=recipes, int8=int8, overrides=list(set_ or []),
                             monitor=RichMonitor(enabled=not quiet))
    print_quickstart(summary)
    write_json_output(json_out, summary)
