"""``facedistill evaluate``: models x pair sets -> insightface verification numbers, one table.

Thin layer: parse options, call :func:`facedistill.evaluation.evaluate.evaluate`, print, write JSON.
Nothing heavy is imported at module level (``facedistill.cli.main`` imports this at startup, and
the ONNX path must run without torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from facedistill.cli.common import parse_channels, console, err_console, progress_bar, user_errors, write_json_output
from facedistill.cli.main import app
from facedistill.errors import FaceDistillError

_HELP = """Evaluate face models on verification pair sets (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW, ...).

The numbers are insightface's: embedding = model(x) + model(flip(x)), L2-normalised; score = squared
L2 distance; accuracy = mean ± std over 10 contiguous folds, threshold chosen on the other 9 from
0..3.99 step 0.01. Contiguous folds need every block to hold the same share of same pairs (a full
.bin in its order does); when they demonstrably do not (a subset such as LFW folds 6-7, a sorted
list) the folds are stratified instead (--fold-scheme; the JSON names the scheme used). TAR@FAR is read off the ROC over all pairs (shown where the set has enough
different pairs to measure that FAR).

MODEL: a run folder, a backbone state dict (student.pt, arcface_torch model.pt; --arch when it
cannot be inferred) or an .onnx file (fp32/fp16/int8). ONNX preprocessing comes from the model's
metadata (facedistill exports), else from --mean/--std/--bgr (default RGB, mean 127.5, std 127.5).

SET (--data, repeatable): a packed pair set folder (`facedistill prepare`), an insightface .bin
file (lfw.bin, cfp_fp.bin, agedb_30.bin, ...), or an LFW pairs.txt (or pairs .csv) with its folder
of aligned 112x112 images as PAIRS.txt:IMAGES_DIR (IMAGES_DIR defaults to --images, else images/
beside the pairs file, else the pairs file's folder). A folder holding pairs.txt works too.

With two rows or more, each set gets a column comparing every row with the reference row (--reference;
default the first model) on the same pairs: pairs won / lost (judged right where the reference is
wrong, and the reverse) and a two-sided exact McNemar p; "a tie" where p > 0.05.

When the same model is given as a checkpoint and as ONNX (ONNX metadata naming the checkpoint,
same folder and base name, or --compare), the worst torch-vs-ONNX embedding cosine is shown.

Examples:

  facedistill evaluate runs/mbf-kd --data data/lfw.bin --data data/cfp_fp.bin --data data/agedb_30.bin

  facedistill evaluate runs/mbf-kd/student.pt runs/mbf-kd/student.onnx runs/mbf-kd/student.int8.onnx --data data/synthetic/val --json eval.json --plot plots/

  facedistill evaluate sface.onnx --mean 0 --std 1 --data lfw112-dev/pairs.txt:lfw112-dev/images

  facedistill evaluate paddlex.onnx foamliu.onnx sface.onnx --ensemble --reference best --data data/lfw112/val --data data/celeba112/dev
"""


def _parse_compare(items: List[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        if "=" not in item:
            raise FaceDistillError(f"--compare {item!r}: expected TORCH_MODEL=ONNX_MODEL")
        a, b = item.split("=", 1)
        out.append((a, b))
    return out


def _weights(text: Optional[str]) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"--weights must be comma-separated numbers, got {text!r}") from None


def _fmt_int(n: Optional[int]) -> str:
    if n is None:
        return "-"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


def _fmt_tar(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def format_vs_reference(result: Any) -> str:
    """``won/lost, p, verdict`` against the reference row (``reference`` for the row itself)."""
    if result.is_reference:
        return "reference"
    v = result.vs_reference
    if v is None:
        return "-"
    return f"+{v['won']}/-{v['lost']}, p {v['p_value']:.2g}, {v['verdict']}"


def build_table(report: Any) -> Any:
    """The rich table: rows models, columns sets (accuracy ± std, TAR@FAR where measurable)."""
    from rich.table import Table

    from facedistill.evaluation.evaluate import TABLE_FARS, format_accuracy
    from facedistill.evaluation.protocol import far_key

    flip = report.settings.get("flip", True)
    table = Table(title=f"Verification accuracy % (10-fold{', flip' if flip else ', no flip'}) and TAR % @ FAR",
                  title_justify="left")
    table.add_column("model", no_wrap=True)
    table.add_column("prec", no_wrap=True)
    table.add_column("params", justify="right")
    table.add_column("MB", justify="right")
    set_names = [s["name"] for s in report.sets]
    shown_fars: dict[str, list[str]] = {}
    paired_column: dict[str, bool] = {}
    for name in set_names:
        rows = [r for r in report.results if r.data == name]
        fars = [far_key(f) for f in TABLE_FARS
                if any(r.metrics.tar_at_far.get(far_key(f)) is not None for r in rows)]
        shown_fars[name] = fars
        pairs = rows[0].metrics.num_pairs if rows else 0
        table.add_column(f"{name}\n({pairs} pairs)", justify="right", no_wrap=True)
        for fk in fars:
            table.add_column(f"{name}\nTAR@{fk}", justify="right", no_wrap=True)
        if len(rows) > 1:
            ref = next((r.model for r in rows if r.is_reference), "?")
            against = "best" if report.settings.get("reference") == "best" else ref
            table.add_column(f"{name}\nvs {against}\nwon/lost, p", justify="right", no_wrap=True)
        paired_column[name] = len(rows) > 1
    has_parity = bool(report.parity)
    if has_parity:
        table.add_column("torch vs ONNX\nmin cos", justify="right")
    for info in report.models:
        cells = [info.name, info.precision, _fmt_int(info.params),
                 "-" if info.size_mb is None else f"{info.size_mb:.1f}"]
        for name in set_names:
            try:
                r = report.result(info.name, name)
            except KeyError:
                cells.extend(["-"] * (1 + len(shown_fars[name]) + paired_column[name]))
                continue
            cells.append(format_accuracy(r.metrics.accuracy, r.metrics.accuracy_std))
            for fk in shown_fars[name]:
                cells.append(_fmt_tar(r.metrics.tar_at_far.get(fk)))
            if paired_column[name]:
                cells.append(format_vs_reference(r))
        if has_parity:
            p = report.worst_parity(info.name)
            if p is None:
                cells.append("-")
            else:
                cells.append(f"{p.min_cosine:.6f}")
        table.add_row(*cells)
    return table


@app.command("evaluate", help=_HELP)
@user_errors
def evaluate_cmd(
    models: List[str] = typer.Argument(..., metavar="MODEL...", help="Run folders, state dicts or .onnx files."),
    data: List[str] = typer.Option(..., "--data", "-d", metavar="SET",
                                   help="Pair set: packed folder, .bin file, or PAIRS.txt[:IMAGES_DIR]. Repeatable."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON ('-' for stdout)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Folder for ROC and score-histogram PNGs."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Backbone of state dicts whose architecture cannot be "
                                       "inferred (iresnet18/34/50/100, mobilefacenet)."),
    mean: Optional[str] = typer.Option(None, "--mean", help="ONNX without metadata: subtract this, one value or three "
                                       "in the model's channel order, pixel scale 0..255 (default 127.5; ImageNet: "
                                       "123.675,116.28,103.53)."),
    std: Optional[str] = typer.Option(None, "--std", help="ONNX without metadata: divide by this, one value or three "
                                      "(default 127.5; ImageNet: 58.395,57.12,57.375)."),
    bgr: Optional[bool] = typer.Option(None, "--bgr/--rgb", help="ONNX without metadata: channel order (default RGB)."),
    images: Optional[Path] = typer.Option(None, "--images",
                                          help="Image folder of pairs files given without :IMAGES_DIR."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Add the horizontally flipped image's embedding."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Images per inference batch."),
    folds: int = typer.Option(10, "--folds", help="Cross-validation folds (insightface: 10)."),
    fold_scheme: str = typer.Option("auto", "--fold-scheme",
                                    help="auto (contiguous unless its folds are unbalanced, then balanced), "
                                         "contiguous (insightface), balanced (stratified), source (the set's "
                                         "own folds, e.g. LFW pairs.txt sets)."),
    compare: List[str] = typer.Option([], "--compare", metavar="TORCH=ONNX",
                                      help="Also compare these two models' embeddings (repeatable)."),
    allow_missing: bool = typer.Option(False, "--allow-missing",
                                       help="Drop (and list) pairs whose images are missing instead of failing."),
    device: str = typer.Option("cpu", "--device", help="Torch device for checkpoints (cpu, cuda)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for inference (default: all cores)."),
    ensemble: bool = typer.Option(False, "--ensemble", help="Also score all MODELs together: concatenated "
                                  "L2-normalised embeddings (what the teachers are worth jointly)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="--ensemble: one weight per MODEL, e.g. 1,1,0.5: its share of the joint cosine (as in a recipe's `teachers`)."),
    reference: Optional[str] = typer.Option(None, "--reference", metavar="NAME_OR_INDEX",
                                            help="Row the others are compared with pair by pair (won / lost, "
                                                 "two-sided McNemar p, 'a tie' where p > 0.05): a MODEL as given or "
                                                 "as named in the table, its position (1 = first), 'ensemble', or "
                                                 "'best' (the most accurate on each set). Default: the first MODEL."),
) -> None:
    from facedistill.evaluation.evaluate import evaluate

    to_stdout = json_out is not None and str(json_out) == "-"
    out = err_console if to_stdout else console

    def log(msg: str) -> None:
        err_console.print(f"[yellow]note:[/] {msg}", soft_wrap=True)

    report = evaluate(
        models, data, arch=arch, mean=parse_channels(mean, "--mean"), std=parse_channels(std, "--std"), bgr=bgr, images_dir=images, flip=flip, batch_size=batch_size,
        nfolds=folds, fold_scheme=fold_scheme, plot_dir=plot, compare=_parse_compare(compare), allow_missing=allow_missing, device=device,
        threads=threads, ensemble=ensemble, weights=_weights(weights), reference=reference,
        progress=lambda desc, total: progress_bar(desc, total), log=log,
    )
    out.print(build_table(report))
    for p in report.parity:
        out.print(f"torch vs ONNX on {p.data}: {p.torch_model} / {p.onnx_model}: min cosine {p.min_cosine:.6f}, "
                  f"mean {p.mean_cosine:.6f} over {p.images} images ({p.matched_by}); accuracy "
                  f"{100 * p.accuracy_torch:.2f}% vs {100 * p.accuracy_onnx:.2f}%")
    if report.plots:
        out.print(f"plots: {len(report.plots)} PNG(s) in {plot}")
    out.print(f"evaluated {len(report.models)} model(s) x {len(report.sets)} set(s) in {report.seconds:.1f} s")
    write_json_output(json_out, report.to_dict())
