"""The teacher pass of the embedding cache: one call per image against one call per batch, and a
torch teacher on PyTorch against the same network on onnxruntime.

    python benchmarks/teacher_pass.py models/sface_fp32.onnx data/lfw112/train --mean 0 --std 1
    python benchmarks/teacher_pass.py T.onnx SET --images 64 --batch-sizes 16 --rounds 1   # smoke
    python benchmarks/teacher_pass.py runs/quickstart/quickstart-teacher runs/quickstart/data/train --threads 1

A run folder or checkpoint (not ``.onnx``) compares ``teacher.runtime: torch`` (PyTorch eager, the
reference) with what ``runtime: auto`` picks for a large cache on a CPU: the same network exported to
ONNX and run by onnxruntime (``engine/teachers.on_onnxruntime``), both at each batch size.

Claim: an ONNX teacher whose batch axis is fixed at 1 (OpenCV Zoo's SFace) used to be called once
per image; ``OnnxTeacher`` now makes the axis dynamic when every image keeps its embedding that way,
and the cache embeds ``teacher.batch_size`` images (and their flips) per call. Each variant embeds
the same ``--images`` faces and their flips, as the cache build does, with the same onnxruntime
threads; the variants alternate for ``--rounds`` rounds and the best round counts. Printed: faces
per second (an image with its flip counts once), the ratio to the per-image path in the same run,
and the worst cosine of each variant's embeddings to the per-image ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from facedistill.bench.sysinfo import cpu_description
from facedistill.data.packed import PackedDataset
from facedistill.data.preprocessing import Preprocessing
from facedistill.engine.teachers import OnnxTeacher, TorchTeacher, on_onnxruntime


def embed_all(teacher: OnnxTeacher | TorchTeacher, images: torch.Tensor, batch: int) -> np.ndarray:
    """(2N, D): every image's embedding, then its flip's, as the cache stores them."""
    out = []
    for a in range(0, len(images), batch):
        x = images[a:a + batch]
        emb = teacher(torch.cat([x, x.flip(3)])).numpy()
        out.append(np.stack([emb[:len(x)], emb[len(x):]], axis=1).reshape(2 * len(x), -1))
    return np.concatenate(out)


def torch_variants(args: argparse.Namespace, sizes: list[int], images: torch.Tensor):
    """A torch teacher on PyTorch (the reference) and on onnxruntime, at each batch size."""
    from facedistill.config.teachers import TeacherConfig
    from facedistill.engine.teachers import build_teacher

    torch.set_num_threads(args.threads)
    cfg = TeacherConfig(type="torch", checkpoint=str(args.teacher), mean=args.mean, std=args.std,
                        channel_order=args.channel_order, runtime="torch")
    eager = build_teacher(cfg, "cpu", threads=args.threads)
    fast = on_onnxruntime(eager, threads=args.threads)
    if fast is None:
        raise SystemExit(f"{args.teacher}: the ONNX export does not keep the embeddings; nothing to compare")
    variants = {}
    for b in sizes:
        variants[f"torch batch {b}"] = (eager, b)
        variants[f"onnxruntime batch {b}"] = (fast, b)
    return variants, f"torch batch {sizes[0]}", embed_all(eager, images, sizes[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("teacher", type=Path)
    ap.add_argument("data", type=Path, help="a packed set (facedistill prepare)")
    ap.add_argument("--mean", type=float, default=127.5)
    ap.add_argument("--std", type=float, default=127.5)
    ap.add_argument("--channel-order", default="RGB")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-sizes", default="16,64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    ds = PackedDataset(args.data)
    n = min(args.images, len(ds))
    images = torch.from_numpy(ds.images(np.arange(n))).permute(0, 3, 1, 2).contiguous()
    pre = Preprocessing(args.mean, args.std, args.channel_order)
    sizes = [int(v) for v in args.batch_sizes.split(",")]
    if args.teacher.suffix != ".onnx":
        variants, base, reference = torch_variants(args, sizes, images)
        batched_graph = True
    else:
        per_image = OnnxTeacher(args.teacher, pre, threads=args.threads, dynamic_batch=False)
        batched = OnnxTeacher(args.teacher, pre, threads=args.threads)
        variants = {"per image": (per_image, 1)}
        batched_graph = batched.batched or batched.fixed_batch is None
        for b in sizes:
            variants[f"batch {b}"] = (batched if batched_graph else per_image, b)
        base, reference = "per image", embed_all(per_image, images, 1)
    best: dict[str, float] = {}
    cosine: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, (teacher, b) in variants.items():
            start = time.perf_counter()
            emb = embed_all(teacher, images, b)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
            num = (emb * reference).sum(1)
            cosine[name] = float((num / np.linalg.norm(emb, axis=1) / np.linalg.norm(reference, axis=1)).min())
    cpu = cpu_description()
    print(f"{args.teacher.name}: {n} faces + flips, {args.threads} threads, best of {args.rounds} "
          f"rounds; batched graph: {batched_graph}; cpu: {cpu.get('model')}")
    rows = []
    print(f"{'variant':<20} {'faces/s':>9} {'x ' + base:>20} {'worst cosine':>13}")
    for name in variants:
        rate = n / best[name]
        ratio = best[base] / best[name]
        rows.append({"variant": name, "faces_per_s": round(rate, 2), "ratio": round(ratio, 3),
                     "worst_cosine": round(cosine[name], 7)})
        print(f"{name:<20} {rate:>9.1f} {ratio:>20.2f} {cosine[name]:>13.7f}")
    if args.json:
        args.json.write_text(json.dumps({"teacher": str(args.teacher), "images": n, "threads": args.threads,
                                         "cpu": cpu, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
