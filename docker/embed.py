"""Embeddings from inside an image, to prove two images (e.g. linux/amd64 and linux/arm64) agree.

docker/parity.sh runs this script with each image's own python (it is mounted, not installed):

    python embed.py embed --data /data --faces 64 --out /results/parity/amd64 /models/*.onnx
    python embed.py compare /results/parity/amd64 /results/parity/arm64 --json /results/parity.json

``embed`` takes the first ``--faces`` images that the pair set's pairs use, embeds them with every
ONNX model through facedistill's own ONNX embedder (preprocessing from the model's metadata, one
thread, no flip) and writes ``<model stem>.npy`` (float32, one row per face) and ``info.json`` (the
machine, Python, numpy and onnxruntime that produced them, and each model's precision).

``compare`` computes, per model, the cosine of each face's embedding in the two folders and checks
the worst one against facedistill's cross-target threshold for the model's precision (fp32 0.99999,
fp16/int8 0.999, as ``facedistill verify-arm``). Exit 0 all pass, 1 one fails, 2 bad input.
Timings are deliberately not recorded: under emulation they say nothing about a device.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path


def embed(models: list[str], data: str, faces: int, out: Path) -> dict:
    import numpy as np
    import onnxruntime as ort

    from facedistill.bench.onnxinfo import model_precision, summarize_onnx
    from facedistill.evaluation.embedders import OnnxEmbedder
    from facedistill.evaluation.pair_sets import open_pair_set

    ps = open_pair_set(data)
    idx = ps.used_images()[:faces]
    images = ps.images(idx)
    out.mkdir(parents=True, exist_ok=True)
    info = {"machine": platform.machine(), "python": platform.python_version(), "numpy": np.__version__,
            "onnxruntime": ort.__version__, "data": data, "faces": int(len(idx)), "models": {}}
    for model in models:
        stem = Path(model).name.removesuffix(".onnx")
        emb = np.asarray(OnnxEmbedder(model, batch_size=16, threads=1)(images), dtype=np.float32)
        tmp = out / f".{stem}.npy.tmp"
        with open(tmp, "wb") as f:
            np.save(f, emb)
        tmp.replace(out / f"{stem}.npy")
        info["models"][stem] = {"model": model, "precision": model_precision(summarize_onnx(model))[0],
                                "shape": list(emb.shape)}
    (out / "info.json").write_text(json.dumps(info, indent=2))
    return info


def compare(ref: Path, other: Path) -> dict:
    import numpy as np

    from facedistill.bench.arm import MIN_COSINE

    a_info = json.loads((ref / "info.json").read_text())
    b_info = json.loads((other / "info.json").read_text())
    rows = []
    for stem, meta in a_info["models"].items():
        if stem not in b_info["models"]:
            rows.append({"model": stem, "passed": False, "error": f"no embeddings of {stem} in {other}"})
            continue
        a, b = np.load(ref / f"{stem}.npy"), np.load(other / f"{stem}.npy")
        if a.shape != b.shape:
            rows.append({"model": stem, "passed": False, "error": f"shapes differ: {a.shape} vs {b.shape}"})
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        cos = (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))
        threshold = MIN_COSINE.get(meta["precision"], MIN_COSINE["fp32"])
        rows.append({"model": stem, "precision": meta["precision"], "faces": int(len(cos)),
                     "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
                     "max_abs_diff": float(np.abs(a64 - b64).max()), "identical": bool(np.array_equal(a, b)),
                     "threshold": threshold, "passed": bool(cos.min() >= threshold)})
    keys = ("machine", "python", "numpy", "onnxruntime")
    return {"schema": "facedistill.image-parity/1", "reference": {k: a_info[k] for k in keys},
            "target": {k: b_info[k] for k in keys}, "data": a_info["data"],
            "passed": bool(rows) and all(r["passed"] for r in rows), "results": rows}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("embed", help="embed the first N faces of a pair set with each model")
    e.add_argument("models", nargs="+")
    e.add_argument("--data", required=True)
    e.add_argument("--faces", type=int, default=64)
    e.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare", help="per-model worst cosine between two embed folders")
    c.add_argument("ref", type=Path)
    c.add_argument("other", type=Path)
    c.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "embed":
        if args.faces < 1:
            parser.error("--faces must be >= 1")
        info = embed(args.models, args.data, args.faces, args.out)
        print(f"{info['machine']}: {len(info['models'])} model(s) x {info['faces']} faces -> {args.out}")
        return 0
    for d in (args.ref, args.other):
        if not (d / "info.json").is_file():
            print(f"embed.py: {d}/info.json missing; run `embed.py embed ... --out {d}` first", file=sys.stderr)
            return 2
    rep = compare(args.ref, args.other)
    if args.json:
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(rep, indent=2))
        tmp.replace(args.json)
    print(f"{rep['reference']['machine']} vs {rep['target']['machine']} (onnxruntime "
          f"{rep['reference']['onnxruntime']} / {rep['target']['onnxruntime']}, numpy "
          f"{rep['reference']['numpy']} / {rep['target']['numpy']}), {rep['data']}")
    for r in rep["results"]:
        if "error" in r:
            print(f"  {r['model']}: FAIL {r['error']}")
        else:
            print(f"  {r['model']} ({r['precision']}, {r['faces']} faces): worst cosine {r['min_cosine']:.7f}, "
                  f"mean {r['mean_cosine']:.7f}, max |diff| {r['max_abs_diff']:.2e}"
                  f"{', bit-identical' if r['identical'] else ''} (>= {r['threshold']}) "
                  f"{'ok' if r['passed'] else 'FAIL'}")
    print("parity passed" if rep["passed"] else "parity FAILED")
    return 0 if rep["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
