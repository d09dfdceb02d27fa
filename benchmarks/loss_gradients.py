"""Gradient norms of every distillation term at initialisation, relative to ArcFace and ILED.

Claim: with a recipe's weights, every distillation term gets a share of the gradient comparable to ILED's
(lambda_rpsd 6 gives RPSD about ILED's norm).
Its figure (docs/method.md, "Gradient norms at initialisation") comes from::

    python benchmarks/loss_gradients.py --batches 2

Why: the terms are added with weights (lambda_iled, lambda_rpsd, weight); a weight picked by hand
can leave a term with a negligible share of the gradient (at lambda_rpsd 1, RPSD measured
0.14x ILED's gradient in the unified SFace recipe). This measures, on real batches of the recipe's
training set, with its cached teacher embeddings and a freshly initialised student (seed 0, train
mode), the L2 norm of d(term)/d(student parameters) for each term UNWEIGHTED, averaged over
``--batches`` batches, and prints each as a ratio to ArcFace (scale 32, margin 0.3, as
recipes/sface_lfw/none.yaml) and to ILED. RPSD's bank is pre-filled from the teacher cache (other
images than the batch's) and, for the centred rows, the teacher centre is the mean of the whole
cache (``DistillationObjective.set_teacher_mean``), i.e. the steady state of the running mean.

    python benchmarks/loss_gradients.py --recipe recipes/sface_lfw/base.yaml --batches 4 --json grads.json

Needs the recipe's teacher cache (built by the first `facedistill distill` of that recipe, or here).
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facedistill.config.recipe import load_recipe  # noqa: E402
from facedistill.data.packed import PackedDataset  # noqa: E402
from facedistill.losses import DistillConfig, DistillationObjective, mean_of_unit_rows  # noqa: E402
from facedistill.losses.config import ILEDConfig, RPSDConfig  # noqa: E402
from facedistill.models import create_backbone, create_margin_head  # noqa: E402

# name -> (type, DistillConfig overrides, rpsd overrides); unweighted terms
TERMS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "l2": ("l2", {}, {}),
    "cosine": ("cosine", {}, {}),
    "cosine centred": ("cosine", {"center_teacher": True}, {}),
    "iled": ("iled", {}, {}),
    "iled centred": ("iled", {"center_teacher": True}, {}),
    "rkd": ("rkd", {}, {}),
    "sp": ("sp", {}, {}),
    "rpsd (old: hn 32)": ("rpsd", {}, {}),
    "rpsd kl": ("rpsd", {}, {"variant": "kl"}),
    "rpsd centred": ("rpsd", {"center_teacher": True}, {}),
    "rpsd centred k_bank 128 k_batch 16": ("rpsd", {"center_teacher": True}, {"k_bank": 128, "k_batch": 16}),
    "rpsd centred k 128/16 + student_neg 16": ("rpsd", {"center_teacher": True},
                                               {"k_bank": 128, "k_batch": 16, "student_negatives": 16}),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "sface_lfw" / "base.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override KEY=VALUE")
    p.add_argument("--batches", type=int, default=4, help="batches to average over")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def teacher_cache(cfg, train_set: PackedDataset) -> np.ndarray:
    from facedistill.engine.teacher_cache import load_or_build
    from facedistill.engine.teachers import build_teacher

    teacher = build_teacher(cfg.teacher, "cpu")
    cache, path, built = load_or_build(train_set, teacher, cfg.teacher.batch_size)
    print(f"teacher cache {'built' if built else 'reused'}: {path}", file=sys.stderr)
    return np.asarray(cache)


def grad_norm(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    cfg = load_recipe(args.recipe, args.overrides)
    train_set = PackedDataset(cfg.data.train)
    cache = teacher_cache(cfg, train_set)  # (N, 2, D): unflipped, flipped
    dim = cache.shape[-1]
    if cfg.student.embedding_size != dim:
        raise SystemExit(f"the student is {cfg.student.embedding_size}-d and the teacher {dim}-d: this script "
                         "measures recipes without a projector")
    torch.manual_seed(0)
    student = create_backbone(cfg.student.arch, embedding_size=cfg.student.embedding_size).train()
    head = create_margin_head("arcface", train_set.num_classes, cfg.student.embedding_size, 32.0, 0.3)
    params = [p for p in student.parameters() if p.requires_grad]
    centre = mean_of_unit_rows(torch.from_numpy(cache[:, 0]))
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train_set))
    bs = cfg.data.batch_size
    base = cfg.loss.distill.rpsd
    sums: dict[str, list[float]] = {"arcface": []}
    for name in TERMS:
        sums[name] = []
    for k in range(args.batches):
        idx = np.sort(order[k * bs:(k + 1) * bs])
        images = torch.from_numpy(train_set.images(idx)).permute(0, 3, 1, 2).float()
        x = (images - 127.5) / 127.5
        labels = torch.from_numpy(np.asarray(train_set.labels)[idx]).long()
        t = torch.from_numpy(cache[idx, 0].astype(np.float32))
        emb = student(x)
        sums["arcface"].append(grad_norm(head(emb, labels), params))
        others = np.setdiff1d(order, idx)[: base.bank_size]  # bank: other images of the set
        for name, (kind, over, rover) in TERMS.items():
            rp = RPSDConfig(**{**base.__dict__, "warmup_entries": 0, **rover})
            dc = DistillConfig(type=kind, iled=ILEDConfig(**cfg.loss.distill.iled.__dict__), rpsd=rp, **over)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                obj = DistillationObjective(dc, dim).eval()  # eval: no bank/mean updates
            if obj.rpsd is not None:
                q = torch.from_numpy(cache[others, 0].astype(np.float32))
                obj.rpsd.bank.enqueue(torch.nn.functional.normalize(q, dim=1),
                                      torch.from_numpy(np.asarray(train_set.labels)[others]).long())
            if obj.teacher_mean is not None:
                obj.set_teacher_mean(centre)
            out = obj(emb, t, labels)
            sums[name].append(grad_norm(out[kind], params))
    mean = {k: float(np.mean(v)) for k, v in sums.items()}
    rows = [{"term": k, "grad_norm": v, "vs_arcface": v / mean["arcface"], "vs_iled": v / mean["iled"],
             "vs_iled_centred": v / mean["iled centred"]} for k, v in mean.items()]
    return {"recipe": args.recipe, "overrides": args.overrides, "batches": args.batches, "batch_size": bs,
            "student": cfg.student.arch, "teacher_dim": dim, "centre_norm": float(centre.norm()), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args)
    print(f"gradient norm of each unweighted term at initialisation ({result['student']}, {args.batches} batches "
          f"of {result['batch_size']}; teacher centre norm {result['centre_norm']:.3f})")
    print(f"{'term':42s} {'|grad|':>10s} {'/arcface':>9s} {'/iled':>7s} {'/iled centred':>14s}")
    for r in result["rows"]:
        print(f"{r['term']:42s} {r['grad_norm']:10.4g} {r['vs_arcface']:9.3f} {r['vs_iled']:7.3f} "
              f"{r['vs_iled_centred']:14.3f}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
