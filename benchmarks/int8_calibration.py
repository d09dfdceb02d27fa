"""int8 calibration methods side by side on one trained face model: minmax / entropy / percentile.

Claim: which calibration method gives the most accurate int8 file of a trained face model (percentile, the
export's default), at bounded calibration memory.
Its figure (docs/results.md, "int8 accuracy of the trained students") comes from::

    python benchmarks/int8_calibration.py --model models/sface_fp32.onnx --mean 0 --std 1 \
        --calib data/lfw112/train --val data/lfw112/val --methods minmax,percentile,entropy,minmax-8bit

For each method: the int8 model's verification accuracy on a packed pair set (LFW folds 6-7 here),
its mean and worst per-image cosine to fp32 on that set's images, file size, batch-1 and batch-8
latency (interleaved in one run with the fp32 model, 1 thread), and the calibration's peak memory
(each calibration runs in its own child process; its maxrss is what it needed). Calibration images
are drawn across identities (:func:`facedistill.export.onnx_export.spread_over_identities`) and fed
to onnxruntime's calibrator one batch at a time (bounded memory whatever ``--calib-images`` is).

The model is either an fp32 ONNX file (``--mean/--std/--bgr`` give its preprocessing; SFace: mean
0, std 1, RGB) or a run folder / state dict (exported first with ``export_model``).

Usage::

    python benchmarks/int8_calibration.py --model models/sface_fp32.onnx --mean 0 --std 1 \\
        --calib data/lfw112/train --val data/lfw112/val --json /tmp/sface-calib.json
    python benchmarks/int8_calibration.py --model runs/int8-student --calib data/lfw112/train \\
        --val data/lfw112/val
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from facedistill.data.preprocessing import Preprocessing  # noqa: E402


def _pre(args: argparse.Namespace) -> Preprocessing:
    return Preprocessing(mean=args.mean, std=args.std, channel_order="BGR" if args.bgr else "RGB")


def fp32_source(args: argparse.Namespace, out_dir: Path) -> tuple[Path, Preprocessing]:
    """The fp32 ONNX file to quantize (a run folder is exported first) and its preprocessing."""
    if str(args.model).endswith(".onnx"):
        import onnx

        from facedistill.export.onnx_source import load_onnx_source

        model, _ = load_onnx_source(args.model, [])  # opset <= 20, dynamic batch (as `export x.onnx --int8`)
        onnx.save(model, str(out_dir / "fp32.onnx"))
        return out_dir / "fp32.onnx", _pre(args)
    from facedistill.export import export_model

    out = out_dir / "fp32.onnx"
    rep = export_model(args.model, out, latency=False, parity_images=16)
    return out, Preprocessing(**{k: v for k, v in rep.preprocessing.items() if k in
                                 ("mean", "std", "channel_order", "input_size")})


def calibrate_one(args: argparse.Namespace) -> None:
    """Child process: quantize with one method, print JSON (seconds, peak RSS)."""
    from facedistill.data.packed import PackedDataset
    from facedistill.export.onnx_export import spread_over_identities
    from facedistill.export.quantize import PreprocessedImages, int8_options_from_cli, quantize_int8

    pre = Preprocessing(**json.loads(args.pre_json))
    ds = PackedDataset(args.calib)
    idx = spread_over_identities(ds.labels, args.calib_images, np.random.default_rng(0))
    method, _, variant = args.one.partition("-")
    opts = int8_options_from_cli(method, args.prelu, args.keep_float, percentile=args.percentile,
                                 calib_batch=args.calib_batch)
    opts.reduce_range = variant != "8bit"  # "minmax-8bit": full 8-bit weights (saturates on AVX2 x86)
    res = quantize_int8(args.fp32, args.out, PreprocessedImages(ds.images(idx), pre.apply), opts)
    print(json.dumps({"seconds": res.seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "images": res.calibration_images, "identities": int(len(np.unique(ds.labels[idx])))}))


def embed(path: str, images: np.ndarray, pre: Preprocessing) -> np.ndarray:
    from facedistill.evaluation.embedders import OnnxEmbedder, embed_images

    return embed_images(OnnxEmbedder(path, preprocess=pre, batch_size=64), images, flip=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="fp32 .onnx, run folder or state dict")
    ap.add_argument("--mean", type=float, default=127.5)
    ap.add_argument("--std", type=float, default=127.5)
    ap.add_argument("--bgr", action="store_true")
    ap.add_argument("--calib", required=True)
    ap.add_argument("--val", required=True, help="packed pair set")
    ap.add_argument("--calib-images", type=int, default=300)
    ap.add_argument("--calib-batch", type=int, default=16)
    ap.add_argument("--methods", default="minmax,entropy,percentile",
                    help="comma-separated; a '-8bit' suffix (minmax-8bit) quantizes weights to 8 bits instead of 7")
    ap.add_argument("--percentile", type=float, default=99.999)
    ap.add_argument("--prelu", default="fused")
    ap.add_argument("--keep-float", default="auto")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--out-dir")
    ap.add_argument("--json")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--fp32", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--pre-json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        calibrate_one(args)
        return 0

    from facedistill.data.packed import PackedDataset
    from facedistill.evaluation.protocol import pair_scores, verification_metrics
    from facedistill.export.quantize import rewrite_prelu
    from int8_export import interleaved_latency  # noqa: E402

    import onnx

    tmp = tempfile.TemporaryDirectory(prefix="int8-calib-")
    out_dir = Path(args.out_dir or tmp.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32, pre = fp32_source(args, out_dir)
    # the fastest fp32 graph is the PReLU-rewritten one: that is what int8 is compared with
    fast = out_dir / "fp32.linear.onnx"
    m = onnx.load(str(fp32))
    rewrite_prelu(m, "linear")
    onnx.save(m, str(fast))
    val = PackedDataset(args.val)
    pairs = np.asarray(val.pairs)
    used = np.unique(pairs[:, :2])
    images = val.images(used)
    pos = {int(i): k for k, i in enumerate(used)}
    a_idx = np.array([pos[int(i)] for i in pairs[:, 0]])
    b_idx = np.array([pos[int(i)] for i in pairs[:, 1]])

    def accuracy(emb: np.ndarray) -> float:
        res = verification_metrics(pair_scores(emb[a_idx], emb[b_idx]), pairs[:, 2].astype(bool), nfolds=10)
        return 100.0 * float(res.accuracy)

    ref = embed(str(fast), images, pre)
    rows: dict[str, dict[str, Any]] = {"fp32": {"accuracy": accuracy(ref), "cos_mean": 1.0, "cos_worst": 1.0,
                                               "size_mb": os.path.getsize(fast) / 1e6}}
    paths = {"fp32": str(fast)}
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        path = out_dir / f"int8.{method}.onnx"
        cmd = [sys.executable, __file__, "--one", method, "--fp32", str(fp32), "--out", str(path),
               "--pre-json", json.dumps({k: v for k, v in pre.to_dict().items()}), "--model", str(args.model),
               "--calib", args.calib, "--val", args.val, "--calib-images", str(args.calib_images),
               "--calib-batch", str(args.calib_batch), "--percentile", str(args.percentile),
               "--prelu", args.prelu, "--keep-float", args.keep_float]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            rows[method] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
            continue
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        emb = embed(str(path), images, pre)
        a = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        b = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        cos = np.sum(a * b, axis=1)
        rows[method] = {"accuracy": accuracy(emb), "cos_mean": float(cos.mean()), "cos_worst": float(cos.min()),
                        "size_mb": os.path.getsize(path) / 1e6, **info}
        paths[method] = str(path)
        print(f"{method}: {rows[method]}", flush=True)
    lat1 = interleaved_latency(paths, 1, args.rounds, args.runs)
    for name in paths:
        rows[name]["b1_ms"] = lat1[name]["median_ms"]
    lat8 = _latency_b8(paths, args.rounds, max(2, args.runs // 4))
    for name in paths:
        rows[name]["b8_ms"] = lat8[name]
    print(f"\nmodel {args.model}; calibration {args.calib_images} images from {args.calib} (batch "
          f"{args.calib_batch}); verification {args.val} ({len(pairs)} pairs, flip); 1 thread; load "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'method':<11}{'acc %':>8}{'drop':>7}{'cos mean':>10}{'cos worst':>10}{'MB':>7}{'b1 ms':>8}"
          f"{'b8 ms':>8}{'x fp32 b1':>10}{'calib s':>9}{'peak MB':>9}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:<11} FAILED: {r['error']}")
            continue
        print(f"{name:<11}{r['accuracy']:8.2f}{rows['fp32']['accuracy'] - r['accuracy']:7.2f}{r['cos_mean']:10.4f}"
              f"{r['cos_worst']:10.4f}{r['size_mb']:7.2f}{r['b1_ms']:8.2f}{r['b8_ms']:8.2f}"
              f"{rows['fp32']['b1_ms'] / r['b1_ms']:10.2f}{r.get('seconds', 0):9.1f}{r.get('peak_rss_mb', 0):9.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(args.model), "rows": rows}, indent=2))
    return 0


def _latency_b8(paths: dict[str, str], rounds: int, runs: int) -> dict[str, float]:
    """Batch-8 median latency (ms), interleaved rounds (int8_speed.py's timer)."""
    from int8_speed import time_all

    return time_all(paths, 8, rounds, runs)


if __name__ == "__main__":
    sys.exit(main())
