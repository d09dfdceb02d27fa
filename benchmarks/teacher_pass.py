"""The teacher pass of the embedding cache: one call per image against one call per batch.

    python benchmarks/teacher_pass.py models/sface_fp32.onnx data/lfw112/train --mean 0 --std 1
    python benchmarks/teacher_pass.py T.onnx SET --images 64 --batch-sizes 16 --rounds 1   # smoke

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
from facedistill.engine.teachers import OnnxTeacher


def embed_all(teacher: OnnxTeacher, images: torch.Tensor, batch: int) -> np.ndarray:
    """(2N, D): every image's embedding, then its flip's, as the cache stores them."""
    out = []
    for a in range(0, len(images), batch):
        x = images[a:a + batch]
        emb = teacher(torch.cat([x, x.flip(3)])).numpy()
        out.append(np.stack([emb[:len(x)], emb[len(x):]], axis=1).reshape(2 * len(x), -1))
    return np.concatenate(out)


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
    per_image = OnnxTeacher(args.teacher, pre, threads=args.threads, dynamic_batch=False)
    batched = OnnxTeacher(args.teacher, pre, threads=args.threads)
    variants = {"per image": (per_image, 1)}
    for b in (int(v) for v in args.batch_sizes.split(",")):
        variants[f"batch {b}"] = (batched if batched.batched or batched.fixed_batch is None else per_image, b)
    reference = embed_all(per_image, images, 1)
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
    print(f"{args.teacher.name}: {n} faces + flips, {args.threads} onnxruntime threads, best of {args.rounds} "
          f"rounds; batched graph: {batched.batched or batched.fixed_batch is None}; cpu: {cpu.get('model')}")
    rows = []
    print(f"{'variant':<12} {'faces/s':>9} {'x per image':>12} {'worst cosine':>13}")
    for name in variants:
        rate = n / best[name]
        ratio = best["per image"] / best[name]
        rows.append({"variant": name, "faces_per_s": round(rate, 2), "ratio": round(ratio, 3),
                     "worst_cosine": round(cosine[name], 7)})
        print(f"{name:<12} {rate:>9.1f} {ratio:>12.2f} {cosine[name]:>13.7f}")
    if args.json:
        args.json.write_text(json.dumps({"teacher": str(args.teacher), "images": n, "threads": args.threads,
                                         "cpu": cpu, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
