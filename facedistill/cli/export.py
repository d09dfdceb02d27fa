"""``facedistill export MODEL --out student.onnx``: parse, call :func:`facedistill.export.export_model`,
print the table, write ``--json``. All the work (and every gate) lives in the library."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from facedistill.cli.common import parse_channels, console, err_console, user_errors, write_json_output
from facedistill.cli.main import app


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def export_json(report) -> dict:
    """``report.to_dict()`` with accuracies as fractions, like every other ``--json`` of the CLI.

    The export library measures accuracy in percent (its gate speaks of points); keys that carry
    their unit in the name (``drop_points``, ``int8_max_accuracy_drop_points``) stay in points.
    """
    d = report.to_dict()
    for art in d.get("artifacts") or []:
        if art.get("accuracy") is not None:
            art["accuracy"] = art["accuracy"] / 100.0
    for value in (d.get("verification") or {}).values():
        if isinstance(value, dict):
            for key in ("accuracy", "accuracy_std"):
                if value.get(key) is not None:
                    value[key] = value[key] / 100.0
    return d


def _opset_text(report) -> str:
    src = getattr(report, "source_opset", None)
    return f"opset {src} -> {report.opset}" if src is not None and src != report.opset else f"opset {report.opset}"


def print_export_table(report) -> None:
    table = Table(title=f"export {report.arch} ({report.embedding_size}-d, {_opset_text(report)}, "
                        f"batch {report.batch})")
    for col in ("precision", "file", "size MB", "cosine worst / mean", "vs", "accuracy %",
                "latency b1 ms", "gate"):
        table.add_column(col, justify="right" if col not in ("precision", "file", "gate", "vs") else "left")
    for a in report.artifacts:
        cos = "-" if a.cosine_worst is None else f"{a.cosine_worst:.6f} / {a.cosine_mean:.6f}"
        status = "[green]pass[/]" if a.passed and a.written else "[red]FAIL[/]" if a.cosine_worst is not None \
            else "[yellow]not run[/]"
        table.add_row(a.precision, a.path if a.written else f"{a.path} (not written)",
                      _fmt(a.size_mb if a.written else None, ".2f"), cos, a.reference,
                      _fmt(a.accuracy, ".2f"), _fmt(a.latency_ms_b1, ".2f"), f"{status} {a.gate}")
    console.print(table)
    if report.verification and "drop_points" in report.verification:
        v = report.verification
        paired = v.get("paired")
        console.print(f"verification on {v['set']}: fp32 {v['fp32']['accuracy']:.2f}%  int8 "
                      f"{v['int8']['accuracy']:.2f}%  drop {v['drop_points']:.2f} points"
                      + (f" ({paired['lost']} pairs lost, {paired['gained']} gained, paired test "
                         f"p = {paired['p_value']:.3g})" if paired else ""))
    if report.artifacts and report.artifacts[0].latency_threads:
        console.print(f"[dim]latency: quick onnxruntime timing, batch 1, {report.artifacts[0].latency_threads} "
                      "thread(s); use `facedistill benchmark` for real numbers[/]")
    for note in report.notes:
        err_console.print(f"[yellow]note:[/] {note}")


@app.command("export")
@user_errors
def export(
    model: Path = typer.Argument(..., help="Run folder (runs/<name>/), backbone state dict (.pt), or an fp32 "
                                           "ONNX face model trained elsewhere (with --int8)."),
    out: Path = typer.Option(..., "--out", "-o", help="fp32 ONNX file to write; --fp16/--int8 add "
                                                      "<stem>.fp16.onnx / <stem>.int8.onnx beside it. For an "
                                                      ".onnx MODEL: the int8 file."),
    mean: Optional[str] = typer.Option(None, "--mean", help="ONNX MODEL without facedistill metadata: input "
                                                           "mean (one value or r,g,b), e.g. 127.5 (SFace: 0)."),
    std: Optional[str] = typer.Option(None, "--std", help="ONNX MODEL: input std (one value or r,g,b)."),
    channel_order: Optional[str] = typer.Option(None, "--channel-order", help="ONNX MODEL: RGB or BGR."),
    arch: Optional[str] = typer.Option(None, help="Architecture of a bare state dict (iresnet18/34/50/100, "
                                                  "mobilefacenet) when the keys cannot tell."),
    embedding_size: Optional[int] = typer.Option(None, help="Embedding size of a bare state dict."),
    int8: bool = typer.Option(False, "--int8", help="Also write a static int8 (QDQ) model, gated on accuracy."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Prepared set of face images for int8 "
                                                               "calibration (default: synthetic faces)."),
    calib_images: int = typer.Option(300, "--calib-images", help="Calibration images to draw from --calib."),
    calib_method: str = typer.Option("percentile", "--int8-calib-method",
                                     help="percentile (default: the best measured on trained students), minmax or entropy."),
    prelu: str = typer.Option("fused", "--int8-prelu",
                              help="How PReLU goes to int8: fused (s*x+relu((1-s)*x), int8 with no requantize "
                                   "hops; default), linear (s*x+(1-s)*relu(x)), relu, qdq, or float (left in fp32)."),
    keep_float: str = typer.Option("auto", "--int8-keep-float",
                                   help="Left in float (comma-separated): stem, head, depthwise (grouped convs), "
                                        "prelu, node names, none (all int8), or auto (default: "
                                        "stem,head,depthwise,prelu for a PReLU network, none otherwise)."),
    activations: str = typer.Option("uint8", "--int8-activations", help="uint8 (fastest on x86) or int8."),
    kept_weights: str = typer.Option("compact", "--int8-kept-weights",
                                     help="Weights of the layers kept in float: compact (Linear head as weight-only "
                                          "int8, convs as fp16; smaller file) or fp32."),
    per_channel: bool = typer.Option(True, "--int8-per-channel/--int8-per-tensor", help="Weight granularity."),
    weight_bits: int = typer.Option(7, "--int8-weight-bits",
                                    help="7 (default): int8 weights in 7 bits, same results on every CPU; 8: full "
                                         "range, saturates in onnxruntime's x86 kernels without VNNI (AVX2)."),
    min_cosine: float = typer.Option(0.99, "--int8-min-cosine", help="int8 gate: minimum mean per-image "
                                                                      "cosine to fp32."),
    max_drop: float = typer.Option(0.5, "--int8-max-drop", help="int8 gate with --verify: maximum accuracy "
                                                                 "drop in points..."),
    drop_alpha: float = typer.Option(0.05, "--int8-drop-alpha", min=0.0, max=1.0,
                                     help="... that refuses only when a paired test over the pairs says the drop "
                                          "is real (p < this); 1 refuses every drop over --int8-max-drop."),
    mixed: bool = typer.Option(True, "--int8-mixed/--no-int8-mixed",
                               help="When plain int8 fails its gate: measure each layer's int8 damage and keep "
                                    "the fewest layers float that pass, before refusing (default on)."),
    calib_batch: int = typer.Option(16, "--calib-batch", help="Images per calibration batch: the calibrator "
                                                              "holds one batch of activations at a time."),
    qat_steps: int = typer.Option(0, "--qat-steps", help="Quantization-aware fine-tuning before int8: this many "
                                                          "steps in which the fp32 student teaches its own int8 "
                                                          "simulation on --calib faces (0: off; try 300)."),
    qat_lr: float = typer.Option(1e-3, "--qat-lr", help="QAT learning rate (SGD, momentum 0.9, cosine decay)."),
    qat_batch: int = typer.Option(32, "--qat-batch", help="QAT faces per step."),
    keep_rejected: bool = typer.Option(False, "--keep-rejected", help="Keep an int8 model that fails its gate "
                                                                      "as <stem>.int8.rejected.onnx."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write a float16 model (float32 input and output)."),
    fp32_prelu: str = typer.Option("keep", "--fp32-prelu",
                                   help="keep: PRelu nodes as exported; linear: rewrite them as s*x+(1-s)*relu(x) "
                                        "with standard ops (equal within float rounding, checked by the parity "
                                        "gate; measured 2.35x faster fp32 MobileFaceNet on onnxruntime CPU, "
                                        "whose PRelu kernel is slow). Recommended for edge deployment."),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset of a torch export (default 17; 13..20 with --int8). An ONNX source outside 13..20 is converted to 17 for --int8."),
    batch: str = typer.Option("dynamic", "--batch", help="'dynamic' or a fixed batch size K."),
    simplify: bool = typer.Option(True, "--simplify/--no-simplify", help="Run onnxsim on the fp32 graph."),
    verify: Optional[Path] = typer.Option(None, "--verify", help="Prepared pair set: report (and gate int8 on) "
                                                                 "verification accuracy."),
    parity_images: int = typer.Option(64, "--parity-images", help="Images for the parity checks."),
    threads: int = typer.Option(1, "--latency-threads", help="onnxruntime threads for the quick batch-1 timing."),
    no_latency: bool = typer.Option(False, "--no-latency", help="Skip the quick latency timing."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON ('-' for stdout)."),
) -> None:
    """Export a trained backbone to ONNX and prove it: parity with PyTorch, metadata, dynamic batch,
    optional fp16 and int8 (with accuracy gates). Exits non-zero when a gate fails.

    Example: facedistill export runs/mbf --out student.onnx --int8 --calib data/synthetic/train --verify data/synthetic/val
    """
    from facedistill.export import ExportGateError, export_model
    from facedistill.export.quantize import int8_options_from_cli

    options = int8_options_from_cli(calib_method, prelu, keep_float, per_channel=per_channel,
                                    activations=activations, kept_weights=kept_weights,
                                    calib_batch=calib_batch, weight_bits=weight_bits) if int8 else None
    batch_arg: str | int = batch if batch == "dynamic" else _batch(batch)
    qat = None
    if qat_steps:
        from facedistill.export.qat import QATOptions

        qat = QATOptions(steps=qat_steps, lr=qat_lr, batch_size=qat_batch,
                         weight_bits=weight_bits).validate()

    def say(msg: str) -> None:
        err_console.print(f"[dim]{msg}...[/]")

    try:
        report = export_model(model, out, arch=arch, embedding_size=embedding_size, int8=int8, calib=calib,
                              calib_images=calib_images, int8_options=options, fp16=fp16, fp32_prelu=fp32_prelu,
                              opset=opset,
                              batch=batch_arg, simplify=simplify, verify=verify, parity_images=parity_images,
                              int8_min_cosine=min_cosine, int8_max_drop=max_drop, int8_drop_alpha=drop_alpha,
                              latency=not no_latency,
                              latency_threads=threads, keep_rejected=keep_rejected, int8_mixed=mixed,
                              mean=parse_channels(mean, "--mean"), std=parse_channels(std, "--std"),
                              channel_order=channel_order, qat=qat, progress=say)
    except ExportGateError as e:
        if e.report is not None:
            print_export_table(e.report)
            write_json_output(json_out, export_json(e.report))
        raise
    print_export_table(report)
    write_json_output(json_out, export_json(report))


def _batch(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise typer.BadParameter(f"--batch must be 'dynamic' or a positive integer, got {text!r}") from None
    if value < 1:
        raise typer.BadParameter(f"--batch must be 'dynamic' or a positive integer, got {value}")
    return value
