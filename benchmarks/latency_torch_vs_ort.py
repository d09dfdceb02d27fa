"""PyTorch eager vs onnxruntime fp32 vs onnxruntime int8 for the MobileFaceNet student, side by side.

Claim: onnxruntime fp32 is >= 1.5x faster than PyTorch eager at batch 1, and int8 >= 2x faster than fp32.
Its figure (docs/deploy.md, "Where the time goes") comes from::

    python benchmarks/latency_torch_vs_ort.py --prelu-variant --grouped-variant

    python benchmarks/latency_torch_vs_ort.py                       # random-init student, batch 1 and 32
    python benchmarks/latency_torch_vs_ort.py --checkpoint runs/mbf --threads 1,4 --json lat.json

The ONNX files come from ``facedistill.export.export_model`` (fp32 + int8, synthetic-face calibration)
when that module is present, else from torch.onnx.export + onnxruntime static QDQ quantization here.
``--prelu-variant`` adds an fp32 graph whose PReLUs are rewritten exactly as ``s*x + (1-s)*Relu(x)``
(onnxruntime's fp32 PRelu kernel is slow; see the per-op profile with ``facedistill benchmark --profile``);
``--grouped-variant`` an int8 graph whose grouped, non-depthwise convs (MobileFaceNet's stem conv:
64 groups of 2 channels) stay in float, since onnxruntime's int8 kernel for them is very slow.

All engines are timed *interleaved* (one run of each in turn), so a burst of load from other
processes on a shared machine hits all of them alike; the ratios are the result, the absolute
milliseconds only describe this machine at this moment. Targets checked (``--check`` makes a miss
exit 1): onnxruntime fp32 >= 1.5x faster than PyTorch eager at batch 1; int8 >= 2x faster than fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facedistill.bench.latency import latency_stats, ort_session  # noqa: E402
from facedistill.bench.sysinfo import contention_warning, isa_summary, machine_info  # noqa: E402

TARGET_FP32_VS_TORCH_B1 = 1.5
TARGET_INT8_VS_FP32 = 2.0


def build_student(checkpoint: str | None):
    """(torch model, LoadedBackbone or None). Random init: BN statistics calibrated."""
    import torch

    if checkpoint:
        from facedistill.models.checkpoints import load_backbone

        loaded = load_backbone(checkpoint)
        return loaded.model.eval(), loaded
    from facedistill.models import create_backbone

    torch.manual_seed(0)
    model = create_backbone("mobilefacenet", embedding_size=512)
    # BatchNorm statistics from face-crop-like inputs, as training would set them: with the initial
    # statistics every input gives the same embedding, and agreement checks would mean nothing.
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(16, 3, 112, 112) * 2 - 1)
    return model.eval(), None


def onnx_models(model, loaded, out_dir: Path, source: str, calib_images: int) -> tuple[Path, Path, str]:
    """fp32 and int8 ONNX files and a line saying where they came from."""
    if source in ("auto", "export"):
        try:
            from facedistill.models.checkpoints import LoadedBackbone
            from facedistill.export import export_model
        except ImportError:
            if source == "export":
                raise
        else:
            if loaded is None:
                loaded = LoadedBackbone(model=model, arch="mobilefacenet", embedding_size=512,
                                        source=Path("random-init"))
            out = out_dir / "student.onnx"
            # Random weights cannot pass an accuracy gate; latency is what is measured here.
            gates = {} if loaded.source != Path("random-init") else {"int8_min_cosine": 0.0}
            report = export_model(None, out, loaded=loaded, int8=True, calib_images=calib_images,
                                  latency=False, **gates)
            paths = {a.precision: Path(a.path) for a in report.artifacts}
            prelu = (report.int8 or {}).get("prelu", "?")
            return paths["fp32"], paths["int8"], f"facedistill.export.export_model (int8 PReLU mode {prelu})"
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, pre, int8 = out_dir / "student.onnx", out_dir / "student_pre.onnx", out_dir / "student.int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 3, 112, 112), str(fp32), input_names=["input"],
                          output_names=["embedding"], dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
                          opset_version=17, dynamo=False)
    quant_pre_process(str(fp32), str(pre))
    rng = np.random.default_rng(0)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": rng.uniform(-1, 1, (8, 3, 112, 112)).astype(np.float32)}
                            for _ in range(max(1, calib_images // 8))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(pre), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return fp32, int8, "torch.onnx.export + quantize_static (QDQ, per-channel, float PReLU) in this script"


def prelu_variant(fp32: Path, out_dir: Path) -> Path | None:
    try:
        import onnx

        from facedistill.export.quantize import rewrite_prelu
    except ImportError:
        return None
    model = onnx.load(str(fp32))
    rewrite_prelu(model, "linear")
    path = out_dir / "student.prelu-linear.onnx"
    onnx.save(model, str(path))
    return path


def int8_grouped_float(fp32: Path, out_dir: Path, calib_images: int) -> Path | None:
    """int8 like the export's, but grouped convs that are not depthwise (MobileFaceNet's stem conv,
    64 groups of 2 channels) kept in float: onnxruntime has no fast int8 kernel for them."""
    try:
        import onnx

        from facedistill.export.quantize import KEEP_FLOAT_PARTS, Int8Options, quantize_int8
    except ImportError:
        return None
    model = onnx.load(str(fp32))
    inits = {t.name: t for t in model.graph.initializer}
    grouped = []
    for n in model.graph.node:
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        w = inits.get(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None
        if group > 1 and w is not None and len(w.dims) == 4 and w.dims[1] > 1:
            grouped.append(n.name)
    x = np.random.default_rng(0).uniform(-1, 1, (calib_images, 3, 112, 112)).astype(np.float32)
    path = out_dir / "student.int8-grouped-float.onnx"
    quantize_int8(model, path, x, Int8Options(keep_float=tuple(KEEP_FLOAT_PARTS) + tuple(grouped)).validate())
    return path


def interleaved(engines: dict, warmup: int, runs: int, min_time: float) -> dict[str, np.ndarray]:
    for fn in engines.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in engines}
    deadline = time.perf_counter() + min_time
    while min(len(v) for v in times.values()) < runs or time.perf_counter() < deadline:
        for name, fn in engines.items():
            t0 = time.perf_counter_ns()
            fn()
            times[name].append((time.perf_counter_ns() - t0) / 1e6)
    return {k: np.asarray(v) for k, v in times.items()}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="run folder or student.pt (default: random-init MobileFaceNet)")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", default="1", help="intra-op threads for all engines, comma-separated")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=0, help="min timed runs per engine (default 30 at batch 1, 6 above)")
    ap.add_argument("--min-time", type=float, default=0.0, help="min seconds per configuration")
    ap.add_argument("--int8-source", choices=("auto", "export", "script"), default="auto")
    ap.add_argument("--prelu-variant", action="store_true", help="also time fp32 with PReLU rewritten (exact)")
    ap.add_argument("--grouped-variant", action="store_true",
                    help="also time int8 with grouped (non-depthwise) convs kept in float")
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--out-dir", help="keep the ONNX files here (default: a temp folder)")
    ap.add_argument("--json", help="write the numbers as JSON")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()

    import torch

    batches = [int(b) for b in args.batches.split(",")]
    thread_list = [int(t) for t in args.threads.split(",")]
    machine = machine_info()
    print(f"machine: {machine['cpu_model']} · {machine['architecture']} · {machine['usable_cpus']} usable CPUs · "
          f"ISA {isa_summary(machine)} · onnxruntime {machine['onnxruntime']} · torch {torch.__version__}")
    if (w := contention_warning(machine)):
        print(f"warning: {w}")
    tmp = tempfile.TemporaryDirectory(prefix="facedistill-lat-")
    out_dir = Path(args.out_dir) if args.out_dir else Path(tmp.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, loaded = build_student(args.checkpoint)
    t0 = time.time()
    fp32, int8, how = onnx_models(model, loaded, out_dir, args.int8_source, args.calib_images)
    print(f"models: {how} ({time.time() - t0:.0f} s): fp32 {fp32.stat().st_size / 2**20:.1f} MB, "
          f"int8 {int8.stat().st_size / 2**20:.1f} MB")
    variant = prelu_variant(fp32, out_dir) if args.prelu_variant else None
    grouped = int8_grouped_float(fp32, out_dir, args.calib_images) if args.grouped_variant else None

    results = []
    for threads in thread_list:
        torch.set_num_threads(threads)
        sessions = {"ort_fp32": ort_session(fp32, threads), "ort_int8": ort_session(int8, threads)}
        if variant:
            sessions["ort_fp32_prelu_linear"] = ort_session(variant, threads)
        if grouped:
            sessions["ort_int8_grouped_float"] = ort_session(grouped, threads)
        for batch in batches:
            x = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (batch, 3, 112, 112)).astype(np.float32))
            xn = x.numpy()
            engines = {"torch_eager": lambda: model(x)}
            for name, s in sessions.items():
                engines[name] = (lambda s=s: s.run(None, {"input": xn}))
            with torch.inference_mode():
                ref = model(x).numpy()
                agree = {name: cosine(ref, s.run(None, {"input": xn})[0]) for name, s in sessions.items()}
                runs = args.runs or (30 if batch == 1 else 6)
                times = interleaved(engines, args.warmup, runs, args.min_time)
            stats = {k: latency_stats(v, batch) for k, v in times.items()}
            p50 = {k: s["p50_ms"] for k, s in stats.items()}
            row = {"batch": batch, "threads": threads, "stats": stats, "min_cosine_vs_torch": agree,
                   "fp32_vs_torch": p50["torch_eager"] / p50["ort_fp32"],
                   "int8_vs_fp32": p50["ort_fp32"] / p50["ort_int8"],
                   "int8_vs_torch": p50["torch_eager"] / p50["ort_int8"]}
            if variant:
                row["fp32_prelu_linear_vs_torch"] = p50["torch_eager"] / p50["ort_fp32_prelu_linear"]
                row["int8_vs_fp32_prelu_linear"] = p50["ort_fp32_prelu_linear"] / p50["ort_int8"]
            if grouped:
                row["int8_grouped_float_vs_fp32"] = p50["ort_fp32"] / p50["ort_int8_grouped_float"]
                if variant:
                    row["int8_grouped_float_vs_fp32_prelu_linear"] = (p50["ort_fp32_prelu_linear"]
                                                                      / p50["ort_int8_grouped_float"])
            results.append(row)

    names = (["torch_eager", "ort_fp32"] + (["ort_fp32_prelu_linear"] if variant else []) + ["ort_int8"]
             + (["ort_int8_grouped_float"] if grouped else []))
    print()
    head = f"{'batch':>5} {'thr':>3} " + " ".join(f"{n + ' p50 ms':>28}" for n in names)
    print(head + f" {'fp32/torch':>10} {'int8/fp32':>9} {'int8/torch':>10}")
    for r in results:
        cells = " ".join(f"{r['stats'][n]['p50_ms']:>11.2f} ±{r['stats'][n]['std_ms']:>7.2f} "
                         f"({r['stats'][n]['outliers']:>2} outl.)" for n in names)
        print(f"{r['batch']:>5} {r['threads']:>3} {cells} {r['fp32_vs_torch']:>9.2f}x {r['int8_vs_fp32']:>8.2f}x "
              f"{r['int8_vs_torch']:>9.2f}x")
        if variant:
            print(f"{'':>9} PReLU-rewritten fp32: {r['fp32_prelu_linear_vs_torch']:.2f}x vs torch; "
                  f"int8 vs it {r['int8_vs_fp32_prelu_linear']:.2f}x")
        if grouped:
            print(f"{'':>9} int8 with grouped convs in float: {r['int8_grouped_float_vs_fp32']:.2f}x vs fp32"
                  + (f", {r['int8_grouped_float_vs_fp32_prelu_linear']:.2f}x vs PReLU-rewritten fp32"
                     if variant else ""))
    print("ratios are speed-ups (p50 of the slower engine / p50 of the faster); min cosine vs torch: " +
          ", ".join(f"{k} {v:.6f}" for k, v in results[0]["min_cosine_vs_torch"].items()))

    missed = []
    for r in results:
        if r["batch"] == 1 and r["fp32_vs_torch"] < TARGET_FP32_VS_TORCH_B1:
            missed.append(f"batch 1, {r['threads']} thr: ORT fp32 {r['fp32_vs_torch']:.2f}x torch "
                          f"< {TARGET_FP32_VS_TORCH_B1}x")
        if r["int8_vs_fp32"] < TARGET_INT8_VS_FP32:
            missed.append(f"batch {r['batch']}, {r['threads']} thr: int8 {r['int8_vs_fp32']:.2f}x fp32 "
                          f"< {TARGET_INT8_VS_FP32}x")
    print("targets: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "models": how, "results": results,
                                               "missed": missed}, indent=2))
    return 1 if (missed and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
