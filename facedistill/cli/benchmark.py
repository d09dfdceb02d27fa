"""``facedistill benchmark`` (latency / memory on this machine, cross-target comparison, CI gate) and
``facedistill verify-arm`` (emulated-ARM parity). Imports neither torch nor onnxruntime at module
level: every subcommand module is imported by ``facedistill --help``, also in the torch-less image.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.table import Table

from facedistill.cli.common import console, err_console, progress_bar, user_errors, write_json_output
from facedistill.cli.main import app

GATE_FAILED_EXIT = 1


def _f(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


def _machine_line(m: dict[str, Any]) -> str:
    from facedistill.bench.sysinfo import isa_summary

    cpus = f"{m.get('usable_cpus')} usable CPU(s)"
    if m.get("cpu_quota"):
        cpus += f", quota {m['cpu_quota']:g}"
    board = f"{m['board']} · " if m.get("board") else ""
    providers = ", ".join(p for p in m.get("onnxruntime_providers") or [] if p != "AzureExecutionProvider")
    return (f"{board}{m.get('cpu_model')} · {m.get('architecture')} · {cpus} · ISA: {isa_summary(m)} · "
            f"onnxruntime {m.get('onnxruntime')} ({providers or 'none'}) · {m.get('os')} · "
            f"Python {m.get('python')}" + (" · in a container" if m.get("in_container") else ""))


def print_report(report: Any) -> None:
    """The Ultralytics-style table: one row per model x batch x threads."""
    from facedistill.bench.latency import speedups

    console.print(f"[bold]Target[/] {report.label}: {_machine_line(report.machine)}")
    rel = speedups(report)
    table = Table(title="facedistill benchmark", title_justify="left", show_lines=False)
    for col, justify in [("Model", "left"), ("Engine", "left"), ("Precision", "left"), ("Size MB", "right"),
                         ("Batch", "right"), ("Thr", "right"), ("mean ± std ms", "right"), ("p50", "right"),
                         ("p90", "right"), ("p99", "right"), ("img/s", "right"), ("Peak RSS MB", "right"),
                         ("Outliers", "right"), ("Speed", "right")]:
        table.add_column(col, justify=justify, no_wrap=col in ("Model",))
    for i, r in enumerate(report.rows):
        engine = "ORT" if r.engine == "onnxruntime" else "torch"
        if r.status != "ok":
            table.add_row(r.model, engine, r.precision, _f(r.size_mb, 1), str(r.batch), str(r.threads),
                          f"[yellow]{r.status}: {r.note}[/]", *["-"] * 7)
            continue
        rss = _f(r.peak_rss_mb, 0) + ("" if r.peak_rss_scope == "configuration" else "*")
        outl = f"{r.outliers}/{r.runs} (max {r.max_ms:.1f})" if r.outliers else f"0/{r.runs}"
        if r.outliers:
            outl = f"[yellow]{outl}[/]"
        speed = f"{rel[i]:.2f}x" if i in rel else "-"
        table.add_row(r.model, engine, r.precision, _f(r.size_mb, 1), str(r.batch), str(r.threads),
                      f"{r.mean_ms:.2f} ± {r.std_ms:.2f}", _f(r.p50_ms), _f(r.p90_ms), _f(r.p99_ms),
                      _f(r.images_per_s, 1), rss, outl, speed)
    console.print(table)
    notes = ["Latency is per batch (ms); img/s = batch / mean. Outliers: runs > 1.5 x p50. "
             "Speed: p50 of the first model / this row's, same batch and threads."]
    if any(r.peak_rss_scope != "configuration" for r in report.ok_rows()):
        notes.append("* peak RSS of the whole process so far (this OS cannot reset the peak per run).")
    for r in report.rows:
        if r.note and r.status == "ok":
            notes.append(f"{r.model} b{r.batch} t{r.threads}: {r.note}")
    for n in notes:
        console.print(f"[dim]{n}[/]")
    for w in report.warnings:
        err_console.print(f"[yellow]warning:[/] {w}")


def print_profiles(report: Any, limit: int = 8) -> None:
    for r in report.rows:
        if not r.top_ops:
            continue
        t = Table(title=f"Top ops: {r.model} batch {r.batch} threads {r.threads}  ({r.profile})",
                  title_justify="left")
        for col in ("Op", "calls/run", "ms/run", "share", "mean µs"):
            t.add_column(col, justify="left" if col == "Op" else "right")
        for op in r.top_ops[:limit]:
            t.add_row(op["op"], f"{op['calls_per_run']:.0f}", f"{op['ms_per_run']:.2f}",
                      f"{100 * op['share']:.1f}%", f"{op['mean_us']:.0f}")
        console.print(t)


def print_merged(paths: List[Path]) -> list[dict[str, Any]]:
    from facedistill.bench.merge import merge_reports, merged_targets

    targets = merged_targets(paths)
    rows = merge_reports(paths)
    for t in targets:
        board = f"{t['board']} · " if t.get("board") else ""
        console.print(f"[bold]{t['label']}[/]: {board}{t['cpu_model']} · {t['architecture']} · "
                      f"{t['usable_cpus']} CPU(s) · ISA: {', '.join(t['isa']) or 'unknown'} · "
                      f"onnxruntime {t['onnxruntime']} · {t['os']}  [dim]({t['path']})[/]")
        for w in t.get("warnings") or []:
            console.print(f"  [yellow]{t['label']}: {w}[/]")
    labels = [t["label"] for t in targets]
    table = Table(title="facedistill benchmark: targets compared (p50 ms per batch · img/s · vs first target)",
                  title_justify="left")
    for col in ("Model", "Precision", "Batch", "Thr"):
        table.add_column(col, justify="left" if col in ("Model", "Precision") else "right")
    for label in labels:
        table.add_column(label, justify="right")
    for row in rows:
        cells = []
        for label in labels:
            t = row["targets"].get(label)
            if t is None:
                cells.append("-")
            elif t["p50_ms"] is None:
                cells.append(f"[yellow]{t['status']}[/]")
            else:
                rel = "" if label == labels[0] or t["relative"] is None else f" · {t['relative']:.2f}x"
                cells.append(f"{t['p50_ms']:.2f} · {t['images_per_s']:.1f}/s{rel}")
        engine = "" if row["engine"] == "onnxruntime" else " (torch)"
        table.add_row(row["model"] + engine, row["precision"], str(row["batch"]), str(row["threads"]), *cells)
    console.print(table)
    console.print("[dim]x: p50 on that target / p50 on the first target (2.00x = twice as slow).[/]")
    return rows


@app.command("benchmark")
@user_errors
def benchmark(
    models: List[Path] = typer.Argument(..., help="ONNX files to time (checkpoints / run folders with "
                                                   "--torch; benchmark JSON reports with --merge)."),
    batch: str = typer.Option("1,8,32", "--batch", "-b", help="Batch sizes, comma-separated."),
    threads: Optional[str] = typer.Option(None, "--threads", "-t",
                                          help="Intra-op thread counts, comma-separated (inter-op is 1). "
                                               "Default: 1 and all usable CPUs."),
    warmup: int = typer.Option(5, "--warmup", help="Untimed runs before timing each configuration."),
    runs: Optional[int] = typer.Option(None, "--runs", "-n", help="Timed runs per configuration."),
    min_time: Optional[float] = typer.Option(None, "--min-time",
                                             help="Seconds of timed runs per configuration (at least 10 "
                                                  "runs). Default 1 s when --runs is not given."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON ('-' = stdout); "
                                                                 "compare targets later with --merge."),
    profile: bool = typer.Option(False, "--profile", help="Also run each configuration under the "
                                 "onnxruntime profiler: write the trace JSON and print the slowest ops."),
    profile_dir: Path = typer.Option(Path("benchmark-profiles"), "--profile-dir",
                                     help="Where --profile writes traces."),
    torch_baseline: bool = typer.Option(False, "--torch", help="Time checkpoints / run folders in PyTorch "
                                        "eager as a baseline (needs torch: not in the runtime image)."),
    merge: bool = typer.Option(False, "--merge", help="MODELS are JSON reports from several targets: print "
                               "one comparison table instead of benchmarking."),
    max_latency: Optional[List[str]] = typer.Option(None, "--max-latency", help="CI gate: fail (exit 1) "
                                                    "when a p50 exceeds MS at batch 1, or BATCH=MS at that "
                                                    "batch (every model and thread count; repeatable)."),
    label: Optional[str] = typer.Option(None, "--label", help="Name of this target in --merge tables "
                                        "(default: architecture and CPU)."),
) -> None:
    """Latency (mean ± std, p50/p90/p99), images/s, peak memory and precision of ONNX models.

    Every model x batch x threads configuration runs in a fresh onnxruntime session on the CPU.
    The machine (CPU, instruction sets, onnxruntime version and providers, OS) is part of the result.
    Run it on the target device: on an emulated CPU latency means nothing (use `verify-arm` there to
    prove an export runs and agrees on ARM).

    Examples:

      facedistill benchmark student.onnx student_int8.onnx --batch 1,32 --threads 1,4 --json x86.json

      facedistill benchmark --merge x86.json arm.json

      facedistill benchmark student_int8.onnx --batch 1 --threads 4 --max-latency 15
    """
    if merge:
        if max_latency or profile or torch_baseline:
            err_console.print("[yellow]warning:[/] --merge only compares reports; --max-latency, --profile "
                              "and --torch are ignored")
        rows = print_merged(models)
        write_json_output(json_out, {"schema": "facedistill.benchmark-merge/1",
                                     "reports": [str(p) for p in models], "rows": rows})
        return

    from facedistill.bench.latency import (benchmark_models, check_latency_gates, parse_int_list,
                                           parse_latency_gates)
    from facedistill.bench.sysinfo import usable_cpus

    gates = parse_latency_gates(max_latency or [])
    batches = parse_int_list(batch, "batch")
    thread_list = parse_int_list(threads if threads is not None else f"1,{usable_cpus()}", "threads")
    missing = [b for b in gates if b not in batches]
    if missing:
        from facedistill.errors import FaceDistillError

        raise FaceDistillError(f"--max-latency gates batch {missing} but --batch is {batch}: add it to --batch")
    n_models = len(models)
    total = n_models * len(batches) * len(thread_list)
    with progress_bar("benchmark", total=total, enabled=json_out is None or str(json_out) != "-") as advance:
        report = benchmark_models([str(m) for m in models], batches, thread_list, warmup, runs, min_time,
                                  profile_dir=profile_dir if profile else None, torch_baseline=torch_baseline,
                                  progress=lambda done, tot, what: advance(1), label=label)
    if json_out is not None and str(json_out) == "-":
        write_json_output(json_out, report.to_dict())
    else:
        print_report(report)
        if profile:
            print_profiles(report)
        write_json_output(json_out, report.to_dict())
    if gates:
        failures = check_latency_gates(report, gates)
        limits = ", ".join(f"batch {b}: p50 <= {ms:g} ms" for b, ms in sorted(gates.items()))
        if failures:
            err_console.print(f"[bold red]latency gate failed[/] ({limits}):")
            for f in failures:
                err_console.print(f"  {f}")
            raise typer.Exit(code=GATE_FAILED_EXIT)
        err_console.print(f"[green]latency gate passed[/] ({limits})")


@app.command("verify-arm")
@user_errors
def verify_arm_cmd(
    models: List[Path] = typer.Argument(..., help="ONNX exports to check (fp32, int8, ...)."),
    cpu: str = typer.Option("cortex-a72", "--cpu", help="Emulated CPU (QEMU_CPU): cortex-a53, cortex-a72, "
                            "cortex-a76, neoverse-n1, a64fx, ..."),
    arm_python: Optional[Path] = typer.Option(None, "--arm-python", help="The emulated aarch64 python "
                                              "[env FACEDISTILL_ARM_PYTHON; default /tmp/armemu/py-aarch64]."),
    batch: int = typer.Option(4, "--batch", "-b", help="Inputs per model (random face-crop-like tensors)."),
    threads: int = typer.Option(1, "--threads", "-t", help="Intra-op threads on the emulated CPU."),
    timeout: float = typer.Option(900.0, "--timeout", help="Seconds before the emulated run is abandoned."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the result as JSON ('-' = stdout)."),
) -> None:
    """Prove ONNX exports run on aarch64 and agree with this machine, on an emulated ARM CPU.

    Each model runs here and in an emulated aarch64 python (qemu user mode + onnxruntime); the
    embeddings must agree (per-embedding cosine >= 0.99999 for fp32, >= 0.999 for int8), else exit 1.
    Emulated timings mean nothing: measure latency with `facedistill benchmark` on the board.
    """
    from facedistill.bench.arm import LATENCY_DISCLAIMER, verify_arm

    err_console.print(f"[dim]emulating {cpu}: this takes a while (emulation is 35-80x slower)[/]")
    report = verify_arm([str(m) for m in models], cpu=cpu, arm_python=arm_python, batch=batch,
                        threads=threads, timeout=timeout,
                        progress=lambda msg: err_console.print(f"[dim]{msg}[/]"))
    if json_out is not None and str(json_out) == "-":
        write_json_output(json_out, report.to_dict())
    else:
        t = report.target
        console.print(f"[bold]Target[/]: emulated {t.get('machine')} ({cpu}) · python {t.get('python')} · "
                      f"onnxruntime {t.get('onnxruntime')} · numpy {t.get('numpy')}   [bold]Host[/]: "
                      f"{report.host['architecture']} · onnxruntime {report.host['onnxruntime']}")
        table = Table(title="facedistill verify-arm: host vs emulated ARM embeddings", title_justify="left")
        for col in ("Model", "Precision", "Batch", "min cosine", "needs", "max |Δ|", "Result"):
            table.add_column(col, justify="left" if col in ("Model", "Precision", "Result") else "right")
        for r in report.results:
            result = "[green]PASS[/]" if r.passed else f"[red]FAIL[/] {r.error}"
            table.add_row(Path(r.model).name, r.precision, str(r.batch), _f(r.min_cosine, 7),
                          f"{r.threshold:g}", f"{r.max_abs_diff:.1e}" if r.max_abs_diff is not None else "-",
                          result)
        console.print(table)
        console.print(f"[bold yellow]{LATENCY_DISCLAIMER}[/]")
        write_json_output(json_out, report.to_dict())
    for w in report.warnings:
        err_console.print(f"[yellow]warning:[/] {w}")
    if not report.passed:
        err_console.print("[bold red]ARM parity failed[/]")
        raise typer.Exit(code=GATE_FAILED_EXIT)
