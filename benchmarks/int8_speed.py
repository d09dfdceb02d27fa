"""int8 speed of MobileFaceNet students, side by side in one run: PReLU (our students) vs ReLU6 (the

Claim: PReLU is what keeps an int8 MobileFaceNet slow on onnxruntime; the LeakyReLU and ReLU6 students run
every layer in int8, faster than their fp32.
Its figure (docs/results.md, "int8 speed") comes from::

    python benchmarks/int8_speed.py --calib data/lfw112/train --leaky-model RUN_OF_A_LEAKY_STUDENT --rounds 8 \
        --json int8_speed.json

public int8 MobileFaceNet design), each in fp32 and in several int8 layouts, batch 1 and batch 8,
1 thread, interleaved timing rounds; plus, per graph, the op types that take the time (onnxruntime
profile) so a slow int8 graph shows what keeps it slow.

Graphs (``--arch`` width, random weights with BatchNorm statistics set on real faces unless
``--model`` gives a trained PReLU student; timing does not depend on the weights' values):

* ``prelu fp32``      the PReLU student, PReLU rewritten as s*x+(1-s)*relu(x) (the fastest fp32 export)
* ``prelu int8 dflt`` ``facedistill export --int8`` defaults (depthwise + PReLU float)
* ``prelu int8 all lin`` every conv int8 (``--int8-keep-float stem,head``), PReLU as
                      s*x+(1-s)*relu(x) (``--int8-prelu linear``: a requantizing DQ->Q per PReLU)
* ``prelu int8 all``  the same with ``--int8-prelu fused``: s*x+relu((1-s)*x), no requantize hops
* ``leaky fp32``      the LeakyReLU(0.25) variant (``<arch>_leaky``), Conv+LeakyRelu fused
* ``leaky int8 all``  every node int8 (``auto`` on a network without PReLU): QLinearConv + QLinearLeakyRelu
* ``relu6 fp32``      the ReLU6 variant (``<arch>_relu6``), Conv+Clip fused
* ``relu6 int8 all``  every conv int8 (``--int8-keep-float stem,head``)
* ``relu6 int8 none`` every node int8 (``--int8-keep-float none``: anchors quantized too)
* ``early fp32`` / ``early int8 all``  ReLU6 at 56x56 and 28x28, LeakyReLU from 14x14 on
                      (``<arch>_relu6_early``, where registered)

Usage::

    python benchmarks/int8_speed.py --calib data/lfw112/train
    python benchmarks/int8_speed.py --calib data/lfw112/train --model runs/int8-student --json speed.json
    python benchmarks/int8_speed.py --calib data/lfw112/train --model runs/prelu --leaky-model runs/leaky \\
        --extra "leaky int8 mixed=runs/deploy/leaky.int8.onnx"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from facedistill.data.preprocessing import Preprocessing  # noqa: E402


def settle(net, images: np.ndarray):
    import torch

    x = torch.from_numpy(Preprocessing().apply(images))
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        for i in range(0, len(x), 32):
            net(x[i:i + 32])
    return net.eval()


def time_all(paths: dict[str, str], batch: int, rounds: int, runs: int) -> dict[str, float]:
    from facedistill.export.parity import ort_session

    sessions = {n: ort_session(p, threads=1) for n, p in paths.items()}
    x = np.random.default_rng(0).standard_normal((batch, 3, 112, 112)).astype(np.float32)
    for s in sessions.values():
        for _ in range(3):
            s.run(None, {s.get_inputs()[0].name: x})
    times: dict[str, list[float]] = {n: [] for n in sessions}
    names = list(sessions)
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            s = sessions[n]
            for _ in range(runs):
                t = time.perf_counter()
                s.run(None, {s.get_inputs()[0].name: x})
                times[n].append(time.perf_counter() - t)
    return {n: float(np.median(t) * 1e3) for n, t in times.items()}


def profile(path: str, out_dir: Path, runs: int = 10, limit: int = 6) -> list[dict]:
    import onnxruntime as ort

    from facedistill.bench.profiling import top_ops

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = str(out_dir / Path(path).stem)
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 112, 112)).astype(np.float32)
    for _ in range(runs):
        sess.run(None, {sess.get_inputs()[0].name: x})
    trace = sess.end_profiling()
    return top_ops(trace, limit=limit)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="mobilefacenet_s")
    ap.add_argument("--model", help="trained PReLU student (run folder or state dict) instead of random weights")
    ap.add_argument("--leaky-model", help="trained LeakyReLU student (run folder) instead of random weights")
    ap.add_argument("--calib", required=True, help="packed face set for calibration and BatchNorm statistics")
    ap.add_argument("--calib-images", type=int, default=128)
    ap.add_argument("--embedding-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=PATH",
                    help="also time an ONNX file exported elsewhere (e.g. a mixed-precision int8); repeatable")
    ap.add_argument("--out-dir")
    ap.add_argument("--json")
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args(argv)

    import onnx
    import torch

    from facedistill.data.packed import PackedDataset
    from facedistill.export.onnx_export import spread_over_identities, torch_to_onnx
    from facedistill.export.quantize import Int8Options, optimized_op_counts, quantize_int8, rewrite_prelu
    from facedistill.models.checkpoints import load_backbone
    from facedistill.models.registry import create_backbone, list_backbones

    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory(prefix="int8-speed-")
    out = Path(args.out_dir or tmp.name)
    out.mkdir(parents=True, exist_ok=True)
    ds = PackedDataset(args.calib)
    faces = ds.images(spread_over_identities(ds.labels, args.calib_images, np.random.default_rng(0)))
    x_calib = Preprocessing().apply(faces)

    torch.manual_seed(0)
    if args.model:
        loaded = load_backbone(args.model)
        prelu_net, emb = loaded.model.eval(), loaded.embedding_size
        arch = loaded.arch
    else:
        arch, emb = args.arch, args.embedding_size
        prelu_net = settle(create_backbone(arch, emb), faces)
    relu6_net = settle(create_backbone(f"{arch}_relu6", emb), faces)
    if args.leaky_model:
        leaky_net = load_backbone(args.leaky_model).model.eval()
    else:
        leaky_net = settle(create_backbone(f"{arch}_leaky", emb), faces)

    nets = [("prelu", prelu_net), ("leaky", leaky_net), ("relu6", relu6_net)]
    if f"{arch}_relu6_early" in list_backbones():  # ReLU6 at 56x56/28x28, LeakyReLU from 14x14 on
        nets.append(("early", settle(create_backbone(f"{arch}_relu6_early", emb), faces)))
    paths: dict[str, str] = {}
    for tag, net in nets:
        proto = torch_to_onnx(net, opset=17)
        src = out / f"{tag}.fp32.raw.onnx"
        onnx.save(proto, str(src))
        fast = onnx.ModelProto()
        fast.CopyFrom(proto)
        rewrite_prelu(fast, "linear")
        onnx.save(fast, str(out / f"{tag}.fp32.onnx"))
        paths[f"{tag} fp32"] = str(out / f"{tag}.fp32.onnx")
        variants = {"all": (("stem", "head"), "fused"), "none": ((), "fused")} if tag == "relu6" else \
            {"all": ((), "fused")} if tag in ("leaky", "early") else \
            {"dflt": (Int8Options().keep_float, "fused"), "all lin": (("stem", "head"), "linear"),
             "all": (("stem", "head"), "fused")}
        for name, (keep, mode) in variants.items():
            p = out / f"{tag}.int8.{name.replace(' ', '-')}.onnx"
            quantize_int8(str(src), p, x_calib, Int8Options(keep_float=keep, prelu=mode))
            paths[f"{tag} int8 {name}"] = str(p)
    for item in args.extra:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            ap.error(f"--extra {item!r}: expected NAME=PATH of an existing ONNX file")
        paths[name.strip()] = path
    b1 = time_all(paths, 1, args.rounds, args.runs)
    b8 = time_all(paths, 8, args.rounds, max(2, args.runs // 4))
    fp32_prelu_b1, fp32_prelu_b8 = b1["prelu fp32"], b8["prelu fp32"]
    print(f"\n{arch} ({'trained ' + str(args.model) if args.model else 'random weights'}), onnxruntime, 1 thread, "
          f"interleaved rounds; load {os.getloadavg()[0]:.1f}")
    print(f"{'graph':<17}{'MB':>6}{'b1 ms':>8}{'b8 ms':>8}{'x prelu fp32 b1':>17}{'b8':>6}  ops onnxruntime runs")
    rows = {}
    for name, p in paths.items():
        ops = optimized_op_counts(p)
        key = {k: ops[k] for k in ("QLinearConv", "Conv", "QLinearLeakyRelu", "QLinearMul", "QLinearAdd", "Mul", "Add",
                                   "Relu", "QuantizeLinear", "DequantizeLinear", "Transpose") if ops.get(k)}
        rows[name] = {"mb": os.path.getsize(p) / 1e6, "b1_ms": b1[name], "b8_ms": b8[name], "ops": key}
        print(f"{name:<17}{rows[name]['mb']:6.2f}{b1[name]:8.2f}{b8[name]:8.2f}{fp32_prelu_b1 / b1[name]:17.2f}"
              f"{fp32_prelu_b8 / b8[name]:6.2f}  {key}")
    if not args.no_profile:
        print("\nper-op profile, batch 1 (op: ms per run, share)")
        for name, p in paths.items():
            top = profile(p, out)
            rows[name]["profile"] = top
            print(f"{name:<17}" + "  ".join(f"{r['op']} {r['ms_per_run']:.2f} ({100 * r['share']:.0f}%)" for r in top))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
