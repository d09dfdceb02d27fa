"""fp32 vs int8 export of a MobileFaceNet student, side by side in one run.

Claim: the default int8 export is >= 2x faster than fp32 at batch 1 and >= 3.5x smaller, within 0.3 points of
its accuracy; ``--prelu-sweep`` measures the PReLU default.
Its figure (README.md, the sample latency table (the MobileFaceNet ``mbf`` rows)) comes from::

    python benchmarks/int8_export.py

Reports, for the fp32 and the int8 file written by ``facedistill export`` (``export_model``):
file size, batch-1 onnxruntime latency (interleaved timing rounds so that both models see the same
machine load; median and best of all runs), the per-image cosine of int8 to fp32, and the
verification accuracy of both on the synthetic pair set (rendered here, the same recipe as
``facedistill prepare synthetic``'s val split) and, when given, on a packed LFW pair set.

Targets: int8 >= 2x faster than fp32 at batch 1, file >= 3.5x smaller, accuracy drop <= 0.3
points.

``--prelu-sweep`` also quantizes the same model with every PReLU strategy of
``facedistill.export.quantize`` (float, qdq, relu, linear; and linear with nothing kept in float) and
reports the latency, the ops onnxruntime actually runs (QLinearConv, float PRelu, Q/DQ pairs) and the
accuracy of each: this is the measurement behind the default (see that module's docstring).

Usage::

    python benchmarks/int8_export.py                               # random MobileFaceNet (loud note)
    python benchmarks/int8_export.py --model runs/mbf --prelu-sweep
    facedistill prepare pairs /work/shared/data/lfw112-dev/pairs.txt --out /tmp/lfw112 # pack LFW once
    python benchmarks/int8_export.py --model runs/mbf --lfw /tmp/lfw112 --json int8.json

Last run here (random-init MobileFaceNet, onnxruntime 1.32, 1 thread, shared 2-core AVX512-VNNI Xeon
at load ~4, so +-15%): fp32 8.21 MB / 33.7 ms, int8 2.33 MB / 12.5 ms: 3.53x smaller, 2.68x faster.
The sweep's table and a trained-model (SFace) check are in ``facedistill/export/quantize.py``.

Without ``--model`` (or when the run folder does not exist yet) the student is a randomly initialised
MobileFaceNet whose BatchNorm statistics are set from synthetic faces; its accuracies are near chance
and say little about a trained student's int8 accuracy, only about speed and size. Timings on a
shared machine are noisy: the script prints the machine's load average next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from facedistill.errors import FaceDistillError  # noqa: E402
from facedistill.export import ExportGateError, Int8Options, export_model  # noqa: E402
from facedistill.export.onnx_export import verification_accuracy  # noqa: E402
from facedistill.export.parity import compare_embeddings, ort_session, run_onnx  # noqa: E402
from facedistill.export.quantize import PRELU_MODES, optimized_op_counts, quantize_int8  # noqa: E402


def banner(text: str) -> None:
    line = "!" * min(100, len(text) + 8)
    print(f"\n{line}\n!!! {text} !!!\n{line}\n", flush=True)


def load_student(model: str | None, arch: str, seed: int, settle_images: np.ndarray):
    """(LoadedBackbone, is_random)."""
    import torch

    from facedistill.models.checkpoints import LoadedBackbone, load_backbone
    from facedistill.models import create_backbone

    if model and Path(model).exists():
        return load_backbone(model, arch=None if Path(model).is_dir() else arch), False
    if model:
        banner(f"{model} does not exist: falling back to a RANDOMLY INITIALISED {arch}")
    else:
        banner(f"no --model given: using a RANDOMLY INITIALISED {arch} (accuracies are meaningless)")
    torch.manual_seed(seed)
    net = create_backbone(arch, 512)
    # BatchNorm statistics from real-looking faces, as training would leave them, so activation ranges
    # (what int8 calibration sees) are not those of an untouched init.
    from int8_speed import settle

    net = settle(net, settle_images)
    return LoadedBackbone(model=net, arch=arch, embedding_size=512, source=Path(f"<random {arch}>")), True


def write_synthetic_sets(root: Path, calib_images: int, seed: int) -> tuple[Path, Path]:
    """A calibration set (train identities) and the synthetic pair set (identity-disjoint)."""
    from facedistill.data.packed import PackedWriter
    from facedistill.data.synthetic import make_pairs, render_identities

    calib_dir, pairs_dir = root / "calib", root / "pairs"
    per = 4
    ids = range(0, -(-calib_images // per))
    images, labels = render_identities(ids, per, seed=seed)
    with PackedWriter(calib_dir, kind="train", source=f"synthetic(seed={seed})") as w:
        w.add_batch(images[:calib_images], labels[:calib_images])
    # the val split of `facedistill prepare synthetic` (defaults): identities 200..299, 6 images, 1200 pairs
    val_ids, val_per, val_pairs = 100, 6, 1200
    images, labels = render_identities(range(200, 200 + val_ids), val_per, seed=seed)
    with PackedWriter(pairs_dir, kind="pairs", source=f"synthetic(seed={seed})") as w:
        w.add_batch(images, labels - 200)
        w.set_pairs(make_pairs(val_ids, val_per, val_pairs, seed=seed))
    return calib_dir, pairs_dir


def interleaved_latency(paths: dict[str, str], threads: int, rounds: int, runs: int) -> dict[str, dict[str, float]]:
    """Batch-1 latency of several models, timed in interleaved rounds (rotating order) on one input."""
    sessions = {name: ort_session(p, threads=threads) for name, p in paths.items()}
    x = np.random.default_rng(0).standard_normal((1, 3, 112, 112)).astype(np.float32)
    feeds = {name: {s.get_inputs()[0].name: x.astype(np.float16 if s.get_inputs()[0].type == "tensor(float16)"
                                                   else np.float32)} for name, s in sessions.items()}
    for name, s in sessions.items():
        for _ in range(5):
            s.run(None, feeds[name])
    times: dict[str, list[float]] = {name: [] for name in sessions}
    names = list(sessions)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            s, feed = sessions[name], feeds[name]
            for _ in range(runs):
                t = time.perf_counter()
                s.run(None, feed)
                times[name].append(time.perf_counter() - t)
    return {name: {"median_ms": float(np.median(t) * 1e3), "p10_ms": float(np.percentile(t, 10) * 1e3),
                   "min_ms": float(np.min(t) * 1e3), "runs": len(t)} for name, t in times.items()}


def op_summary(path: str) -> dict[str, int]:
    ops = optimized_op_counts(path)
    keys = ("QLinearConv", "Conv", "PRelu", "QLinearMul", "QLinearAdd", "QuantizeLinear", "DequantizeLinear",
            "Transpose")
    return {k: int(ops.get(k, 0)) for k in keys}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="run folder or state dict of the student (default: random MobileFaceNet)")
    ap.add_argument("--arch", default="mobilefacenet")
    ap.add_argument("--pairs", help="packed pair set to verify on (default: rendered synthetic pair set)")
    ap.add_argument("--lfw", help="packed LFW pair set (facedistill prepare pairs .../lfw112-dev/pairs.txt)")
    ap.add_argument("--calib", help="packed set for calibration (default: rendered synthetic faces)")
    ap.add_argument("--calib-images", type=int, default=300)
    ap.add_argument("--method", default="minmax", choices=["minmax", "entropy", "percentile"])
    ap.add_argument("--prelu", default=None, choices=list(PRELU_MODES), help="PReLU mode of the main int8 row")
    ap.add_argument("--prelu-sweep", action="store_true", help="also compare every PReLU strategy")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads for timing")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=20, help="runs per model per round")
    ap.add_argument("--out-dir", help="keep the ONNX files here (default: a temporary folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results as JSON")
    args = ap.parse_args(argv)

    from facedistill.data.packed import PackedDataset
    from facedistill.data.synthetic import render_identities

    tmp = tempfile.TemporaryDirectory(prefix="facedistill-int8-bench-")
    work = Path(args.out_dir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    settle, _ = render_identities(range(5000, 5032), 4, seed=args.seed)
    loaded, is_random = load_student(args.model, args.arch, args.seed, settle)
    calib_dir, pairs_dir = write_synthetic_sets(work / "data", args.calib_images, args.seed)
    calib = Path(args.calib) if args.calib else calib_dir
    pairs = Path(args.pairs) if args.pairs else pairs_dir
    print(f"student: {loaded.arch} from {loaded.source}; calibration: {calib}; pairs: {pairs} "
          f"({time.time() - t0:.0f}s)", flush=True)

    opts = Int8Options(method=args.method, prelu=args.prelu or Int8Options().prelu)
    out = work / "student.onnx"
    gate_failure = None
    try:
        report = export_model(None, out, loaded=loaded, int8=True, calib=calib, calib_images=args.calib_images,
                              int8_options=opts, verify=pairs, latency=False, keep_rejected=True,
                              progress=lambda m: print(f"[{time.time() - t0:6.0f}s] {m}", flush=True))
    except ExportGateError as e:
        if e.report is None or not e.report.artifact("fp32").written:
            raise
        report, gate_failure = e.report, str(e)
        print(f"\nint8 GATE FAILED: {e}\n(continuing to measure the rejected int8 model)", flush=True)
    int8_path = report.artifact("int8").path

    fp32_path = str(out)
    variants: dict[str, str] = {"fp32": fp32_path, f"int8 default ({opts.prelu})": int8_path}
    sweep_results: dict[str, Any] = {}
    if args.prelu_sweep:
        import onnx

        from facedistill.export.quantize import rewrite_prelu

        fast32, _, _ = rewrite_prelu(onnx.load(fp32_path), "linear")
        onnx.save(fast32, str(work / "fp32_prelu_linear.onnx"))
        variants["fp32 (PReLU linear)"] = str(work / "fp32_prelu_linear.onnx")
        x_cal = _calib_inputs(calib, args.calib_images, loaded)
        sh = ("stem", "head")
        combos = [("float", sh, "PReLU float, stem+head float"), ("qdq", sh, "PReLU qdq, stem+head float"),
                  ("relu", sh, "PReLU relu, stem+head float"), ("linear", sh, "PReLU linear, stem+head float"),
                  ("linear", (), "PReLU linear, all int8"),
                  ("linear", sh + ("depthwise",), "linear, +depthwise float")]
        for mode, keep, name in combos:
            path = str(work / f"sweep_{mode}_{'_'.join(keep) or 'none'}.onnx")
            t = time.time()
            quantize_int8(fp32_path, path, x_cal, Int8Options(method=args.method, prelu=mode, keep_float=keep))
            print(f"[{time.time() - t0:6.0f}s] quantized {name} in {time.time() - t:.0f}s", flush=True)
            variants[name] = path

    load_before = os.getloadavg()
    print(f"[{time.time() - t0:6.0f}s] timing {len(variants)} models, batch 1, {args.threads} thread(s), "
          f"{args.rounds} interleaved rounds x {args.runs} runs (load average {load_before[0]:.1f})", flush=True)
    lat = interleaved_latency(variants, args.threads, args.rounds, args.runs)
    load_after = os.getloadavg()

    # accuracy and agreement of every variant
    pairs_ds = PackedDataset(pairs)
    lfw_ds = PackedDataset(args.lfw) if args.lfw else None
    pre = loaded.preprocessing
    probe = pairs_ds.images(np.arange(min(256, len(pairs_ds))))
    x_probe = pre.apply(probe)
    ref = run_onnx(ort_session(fp32_path), x_probe)
    rows = []
    for name, path in variants.items():
        row: dict[str, Any] = {"model": name, "path": path, "size_mb": os.path.getsize(path) / 1e6, **lat[name]}
        if name != "fp32":
            par = compare_embeddings(ref, run_onnx(ort_session(path), x_probe), 0.99, "mean")
            row.update(cosine_worst=par.worst, cosine_mean=par.mean)
        print(f"[{time.time() - t0:6.0f}s] verifying {name}", flush=True)
        row["synthetic_accuracy"] = verification_accuracy(path, pairs_ds, pre)["accuracy"]
        if lfw_ds is not None and (name == "fp32" or name.startswith("int8 default")):  # LFW: the main rows
            row["lfw_accuracy"] = verification_accuracy(path, lfw_ds, pre)["accuracy"]
        row["ops"] = op_summary(path)
        rows.append(row)
        sweep_results[name] = row

    fp32 = rows[0]
    print()
    print(f"student: {loaded.arch} ({'RANDOM INIT' if is_random else loaded.source}); calibration "
          f"{args.method} on {args.calib_images} images of {calib}; pairs {pairs}"
          + (f"; LFW {args.lfw}" if args.lfw else ""))
    print(f"load average {load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} CPUs: "
          f"{'timings are NOISY (shared machine)' if max(load_before[0], load_after[0]) > 1.0 else 'quiet machine'}")
    hdr = (f"{'model':32s} {'MB':>6s} {'x smaller':>9s} {'b1 med ms':>9s} {'b1 p10':>7s} {'speedup':>7s} "
           f"{'cos mean':>8s} {'cos worst':>9s} {'synth %':>7s} {'drop':>6s}" + (f" {'LFW %':>6s} {'drop':>6s}"
                                                                               if lfw_ds is not None else "")
           + "  QLinearConv/Conv/PRelu/Q/DQ")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        line = (f"{r['model']:32s} {r['size_mb']:6.2f} {fp32['size_mb'] / r['size_mb']:9.2f} {r['median_ms']:9.2f} "
                f"{r['p10_ms']:7.2f} {fp32['median_ms'] / r['median_ms']:7.2f} "
                f"{r.get('cosine_mean', 1.0):8.4f} {r.get('cosine_worst', 1.0):9.4f} "
                f"{r['synthetic_accuracy']:7.2f} {fp32['synthetic_accuracy'] - r['synthetic_accuracy']:6.2f}")
        if lfw_ds is not None and "lfw_accuracy" in r:
            line += f" {r['lfw_accuracy']:6.2f} {fp32['lfw_accuracy'] - r['lfw_accuracy']:6.2f}"
        elif lfw_ds is not None:
            line += f" {'-':>6s} {'-':>6s}"
        o = r["ops"]
        line += f"  {o['QLinearConv']}/{o['Conv']}/{o['PRelu']}/{o['QuantizeLinear']}/{o['DequantizeLinear']}"
        print(line)
    main_int8 = rows[1]
    targets = {
        "speedup_b1 >= 2": fp32["median_ms"] / main_int8["median_ms"],
        "size_ratio >= 3.5": fp32["size_mb"] / main_int8["size_mb"],
        "synthetic_drop_points <= 0.3": fp32["synthetic_accuracy"] - main_int8["synthetic_accuracy"],
    }
    if lfw_ds is not None:
        targets["lfw_drop_points <= 0.3"] = fp32["lfw_accuracy"] - main_int8["lfw_accuracy"]
    print("\ntargets:", ", ".join(f"{k}: {v:.2f}" for k, v in targets.items()))
    if is_random:
        banner("RANDOM-INIT student: the accuracy columns say nothing about a trained student")
    if gate_failure:
        print(f"note: the export's int8 gate failed: {gate_failure}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "student": {"arch": loaded.arch, "source": str(loaded.source), "random_init": is_random},
            "calibration": {"set": str(calib), "images": args.calib_images, "method": args.method},
            "pairs": str(pairs), "lfw": args.lfw, "threads": args.threads,
            "load_average": [load_before[0], load_after[0]], "rows": rows, "targets": targets,
            "export_report": report.to_dict(), "gate_failure": gate_failure,
        }, indent=2, default=str))
        print(f"wrote {args.json}")
    tmp.cleanup() if not args.out_dir else None
    return 0


def _calib_inputs(calib: Path, n: int, loaded) -> np.ndarray:
    from facedistill.data.packed import PackedDataset

    ds = PackedDataset(calib)
    idx = np.sort(np.random.default_rng(0).choice(len(ds), size=min(n, len(ds)), replace=False))
    return loaded.preprocessing.apply(ds.images(idx))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FaceDistillError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
