"""The training engine behind ``facedistill distill``: teacher training is the same loop, no teacher.

What it guarantees:

* **Exact resume.** The data order of epoch e is a permutation seeded by (seed, e); the flips of
  step k are seeded by (seed, k); checkpoints hold model, head, projector, optimizer, schedule and
  the memory bank. A run killed at any point and resumed with ``--resume`` ends with the same
  weights as an uninterrupted run.
* **Nothing lost on a crash.** Checkpoints, ``student.pt`` and ``summary.json`` are written
  atomically; a NaN/inf loss stops the run before the bad step is applied and keeps the last good
  checkpoint.
* **No repeated work.** A frozen teacher's embeddings come from the teacher cache
  (``teacher_cache.py``) unless ``teacher.cache`` is false.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from facedistill import __version__
from facedistill.config.recipe import Recipe
from facedistill.data.packed import PackedDataset
from facedistill.engine import distributed as ddp
from facedistill.models.checkpoints import STUDENT_FILE, SUMMARY_FILE
from facedistill.errors import FaceDistillError, RecipeError
from facedistill.utils.atomic import atomic_path, write_json_atomic, write_text_atomic

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"
STUDENT_MEAN = 127.5
STUDENT_STD = 127.5


class TrainingDiverged(FaceDistillError):
    """The loss became NaN or infinite."""


# --------------------------------------------------------------------------------------------
# Monitoring (the CLI plugs a rich implementation in; the library default is silent)
# --------------------------------------------------------------------------------------------
class Monitor:
    """Receives progress events from the trainer. Subclass to display them."""

    @contextlib.contextmanager
    def phase(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        yield lambda n=1: None

    def train_start(self, total_steps: int, start_step: int) -> None: ...

    def train_step(self, step: int, metrics: dict[str, float]) -> None: ...

    def evaluated(self, step: int, metrics: dict[str, float]) -> None: ...

    def message(self, text: str) -> None: ...

    def train_end(self) -> None: ...


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RecipeError("`train.device` is cuda but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 RGB -> the arcface_torch input range, (x - 127.5) / 127.5."""
    return (x.float() - STUDENT_MEAN) / STUDENT_STD


class EpochBatches(torch.utils.data.Sampler):
    """Batches of epoch ``epoch``: a permutation seeded by (seed, epoch), sharded over ranks.

    Starting at ``start_batch`` skips what a resumed run has already done in this epoch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.start_batch, self.rank, self.world_size = start_batch, rank, world_size

    @staticmethod
    def batches_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
        return n // (batch_size * world_size)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        per_step = self.batch_size * self.world_size
        for b in range(self.start_batch, self.batches_per_epoch(self.n, self.batch_size, self.world_size)):
            lo = b * per_step + self.rank * self.batch_size
            yield perm[lo: lo + self.batch_size].tolist()

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch(self.n, self.batch_size, self.world_size) - self.start_batch)


def flip_mask(seed: int, step: int, batch_size: int, rank: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 7_919 + step * 131 + rank)
    return torch.rand(batch_size, generator=g) < 0.5


def lr_factor(step: int, total: int, warmup: int, schedule: str, milestones: list[int], gamma: float) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        span = max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))
    if schedule == "step":
        return gamma ** sum(step >= m for m in milestones)
    return 1.0


class TrainModule(nn.Module):
    """Student + margin head + projector + distillation objective: one module, one forward.

    One forward keeps DDP's gradient hooks simple; the projector (student -> teacher dim) serves
    the distillation terms only and is dropped at export.
    """

    def __init__(self, student: nn.Module, head: nn.Module | None, projector: nn.Module | None,
                 objective: nn.Module | None, margin_weight: float) -> None:
        super().__init__()
        self.student = student
        self.head = head
        self.projector = projector
        self.objective = objective
        self.margin_weight = margin_weight

    def forward(self, x: torch.Tensor, labels: torch.Tensor, teacher_emb: torch.Tensor | None,
                step: int) -> dict[str, torch.Tensor]:
        emb = self.student(x)
        out: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=emb.device)
        if self.head is not None:
            out["margin"] = self.head(emb.float(), labels)
            total = total + self.margin_weight * out["margin"]
        if self.objective is not None and teacher_emb is not None:
            proj = self.projector(emb.float()) if self.projector is not None else emb.float()
            terms = self.objective(proj, teacher_emb.float(), labels, step)
            total = total + terms.pop("distill")
            out.update(terms)
        out["loss"] = total
        return out


LOSS_TERMS = ("margin", "iled", "rpsd", "l2", "cosine", "rkd", "rkd_distance", "rkd_angle", "sp")


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _save_student(path: Path, student: nn.Module) -> None:
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in student.state_dict().items()}, tmp)


def _read_metrics(path: Path, max_step: int | None = None) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if max_step is None or row.get("step", 0) <= max_step:
            rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def train(recipe: Recipe, resume: bool = False, monitor: Monitor | None = None) -> RunResult:
    """Train the recipe's student; returns the run folder and its summary."""
    monitor = monitor or Monitor()
    cfg = recipe
    device = resolve_device(cfg.train.device)
    dist = ddp.init_distributed(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if cfg.train.threads and device.type == "cpu":
        torch.set_num_threads(cfg.train.threads)
    run_dir = cfg.run_dir
    ckpt_path = run_dir / CHECKPOINT_FILE
    if dist.is_main:
        if run_dir.exists() and not resume and (run_dir / CHECKPOINT_FILE).exists():
            raise FaceDistillError(f"{run_dir} already holds a run; pass --resume to continue it, "
                                   "or choose another name (--name / --set name=...)")
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "recipe.yaml", cfg.to_yaml())
    ddp.barrier()

    # ---- data -------------------------------------------------------------------------------
    train_set = PackedDataset(cfg.data.train)
    if len(train_set) < cfg.data.batch_size * dist.world_size:
        raise RecipeError(f"{cfg.source}: `data.batch_size` {cfg.data.batch_size} is larger than the "
                          f"training set ({len(train_set)} images in {cfg.data.train})")
    val_set = PackedDataset(cfg.data.val) if cfg.data.val else None
    if val_set is not None and val_set.pairs is None:
        raise RecipeError(f"{cfg.source}: `data.val` {cfg.data.val} is not a pair set")

    # ---- teacher ----------------------------------------------------------------------------
    from facedistill.engine.teachers import build_teacher

    teacher = build_teacher(cfg.teacher, device) if cfg.loss.distill.type != "none" else None
    teacher_cache = None
    if teacher is not None and cfg.teacher.cache:
        from facedistill.engine.teacher_cache import load_or_build

        if dist.is_main:
            with monitor.phase("teacher embeddings (cached once)", len(train_set)) as advance:
                teacher_cache, cache_file, built = load_or_build(train_set, teacher, cfg.teacher.batch_size, advance)
            monitor.message(f"teacher cache {'built' if built else 'reused'}: {cache_file}")
        ddp.barrier()
        if not dist.is_main:
            teacher_cache, _, _ = load_or_build(train_set, teacher, cfg.teacher.batch_size)

    # ---- model, head, projector, objective --------------------------------------------------
    from facedistill.losses import DistillationObjective
    from facedistill.models import create_backbone, create_margin_head

    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    student = create_backbone(cfg.student.arch, embedding_size=cfg.student.embedding_size)
    if cfg.student.checkpoint:
        from facedistill.models.checkpoints import load_backbone

        init = load_backbone(cfg.student.checkpoint, arch=cfg.student.arch,
                             embedding_size=cfg.student.embedding_size)
        student.load_state_dict(init.model.state_dict())
    has_labels = bool((train_set.labels >= 0).any())
    head = None
    if cfg.loss.margin.type != "none":
        if not has_labels:
            raise RecipeError(f"{cfg.source}: `loss.margin.type` is {cfg.loss.margin.type} but "
                              f"{cfg.data.train} has no identity labels; use `loss.margin.type: none`")
        head = create_margin_head(cfg.loss.margin.type, train_set.num_classes, cfg.student.embedding_size,
                                  cfg.loss.margin.scale, cfg.loss.margin.margin)
    projector = objective = None
    teacher_dim = teacher.embedding_size if teacher is not None else None
    if teacher is not None:
        if teacher_dim != cfg.student.embedding_size or cfg.loss.projector == "linear":
            if cfg.loss.projector == "none":
                raise RecipeError(f"{cfg.source}: the teacher's embedding is {teacher_dim}-d and the "
                                  f"student's {cfg.student.embedding_size}-d; set `loss.projector: auto` "
                                  f"or `student.embedding_size: {teacher_dim}`")
            projector = nn.Linear(cfg.student.embedding_size, teacher_dim, bias=False)
        objective = DistillationObjective(cfg.loss.distill, teacher_dim,
                                          gather_fn=ddp.all_gather_cat if dist.enabled else None)
    module = TrainModule(student, head, projector, objective, cfg.loss.margin.weight).to(device)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    student.to(memory_format=memory_format)

    steps_per_epoch = EpochBatches.batches_per_epoch(len(train_set), cfg.data.batch_size, dist.world_size)
    total_steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    warmup = int(round(cfg.optim.warmup_epochs * steps_per_epoch))
    milestones = [int(round(m * steps_per_epoch)) for m in cfg.optim.milestones]
    params = [p for p in module.parameters() if p.requires_grad]
    if cfg.optim.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                    weight_decay=cfg.optim.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, cfg.optim.schedule, milestones, cfg.optim.gamma))
    use_amp = cfg.train.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    step = 0
    wall_before = 0.0  # wall time of earlier sessions of this run (up to their last checkpoint)
    if resume:
        if not ckpt_path.is_file():
            raise FaceDistillError(f"--resume: {ckpt_path} does not exist; start the run without --resume")
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        if state.get("recipe_hash") != cfg.hash():
            raise FaceDistillError(f"--resume: {ckpt_path} was written by a different recipe "
                                   f"({state.get('recipe_hash')} vs {cfg.hash()}); resume with the same recipe")
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        wall_before = float(state.get("wall_time_s", 0.0))
        monitor.message(f"resumed from {ckpt_path} at step {step}/{total_steps}")
    start_step = step
    metrics_path = run_dir / METRICS_FILE
    if dist.is_main:
        kept = _read_metrics(metrics_path, max_step=step) if resume else []
        write_text_atomic(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    train_module: nn.Module = module
    if dist.enabled:
        train_module = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    forward = torch.compile(train_module) if cfg.train.compile else train_module

    def checkpoint_state() -> dict[str, Any]:
        return {"step": step, "module": module.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "recipe_hash": cfg.hash(), "facedistill_version": __version__,
                "wall_time_s": wall_before + time.time() - start_time}

    def recalibrate(model: nn.Module) -> None:
        from facedistill.engine.precise_bn import recompute_bn_stats

        recompute_bn_stats(model, train_set, cfg.train.precise_bn_images, cfg.data.batch_size, normalise,
                           device, seed=cfg.train.seed, memory_format=memory_format)

    def evaluate_now() -> dict[str, float]:
        from facedistill.data.preprocessing import Preprocessing
        from facedistill.evaluation.embedders import TorchEmbedder, embed_images
        from facedistill.evaluation.protocol import pair_scores, verification_metrics

        assert val_set is not None and val_set.pairs is not None
        pairs = val_set.pairs if not cfg.data.val_max_pairs else val_set.pairs[: cfg.data.val_max_pairs]
        used = np.unique(pairs[:, :2])
        model = copy.deepcopy(student)  # precise BN on a copy: training keeps its own statistics
        recalibrate(model)
        model.eval()
        emb = embed_images(TorchEmbedder(model, Preprocessing(), device=str(device)), val_set.images(used))
        where = {int(i): k for k, i in enumerate(used)}
        a = emb[[where[int(i)] for i in pairs[:, 0]]]
        b = emb[[where[int(i)] for i in pairs[:, 1]]]
        result = verification_metrics(pair_scores(a, b), pairs[:, 2].astype(bool))
        return {"val_accuracy": result.accuracy, "val_accuracy_std": result.accuracy_std}

    # ---- loop ----------------------------------------------------------------------------------
    module.train()
    if teacher is not None and isinstance(getattr(teacher, "model", None), nn.Module):
        teacher.model.eval()
    monitor.train_start(total_steps, step)
    start_time = time.time()
    images_seen = 0
    last_val: dict[str, float] = {}
    metrics_file = open(metrics_path, "a") if dist.is_main else None
    try:
        while step < total_steps:
            epoch, start_batch = divmod(step, steps_per_epoch)
            sampler = EpochBatches(len(train_set), cfg.data.batch_size, cfg.train.seed, epoch, start_batch,
                                   dist.rank, dist.world_size)
            loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.data.workers,
                                                 pin_memory=device.type == "cuda")
            for images, labels, index in loader:
                if step >= total_steps:
                    break
                tic = time.time()
                flips = flip_mask(cfg.train.seed, step, len(index), dist.rank) if cfg.data.flip else \
                    torch.zeros(len(index), dtype=torch.bool)
                images = torch.where(flips[:, None, None, None], images.flip(3), images)
                teacher_emb = None
                if teacher is not None:
                    if teacher_cache is not None:
                        teacher_emb = torch.from_numpy(np.asarray(teacher_cache[index.numpy(), flips.long().numpy()]))
                    else:
                        teacher_emb = teacher(images)
                    teacher_emb = teacher_emb.to(device, non_blocking=True)
                x = normalise(images.to(device, non_blocking=True)).contiguous(memory_format=memory_format)
                labels = labels.to(device)
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    out = forward(x, labels, teacher_emb, step)
                loss = out["loss"]
                if not torch.isfinite(loss):
                    terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in out.items() if v.numel() == 1)
                    last = f"{ckpt_path} (step {torch.load(ckpt_path, weights_only=True)['step']})" \
                        if ckpt_path.is_file() else "none yet"
                    raise TrainingDiverged(
                        f"step {step}: the loss is {float(loss)} ({terms}). The step was not applied; "
                        f"last good checkpoint: {last}. Lower `optim.lr`, set `optim.grad_clip`, or "
                        "check the teacher's preprocessing (teacher.mean/std/channel_order).")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                grad_norm = None
                if cfg.optim.grad_clip:
                    scaler.unscale_(optimizer)
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip))
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                images_seen += len(index) * dist.world_size
                dt = time.time() - tic
                row = {"step": step, "epoch": round(step / steps_per_epoch, 4), "lr": scheduler.get_last_lr()[0],
                       "loss": float(loss.detach()), "images_per_s": round(len(index) * dist.world_size / max(dt, 1e-9), 2)}
                for key, value in out.items():
                    if key == "loss":
                        continue
                    name = f"loss_{key}" if key in LOSS_TERMS else key
                    row[name] = float(value.detach())
                if grad_norm is not None:
                    row["grad_norm"] = grad_norm
                monitor.train_step(step, row)
                at_epoch_end = step % steps_per_epoch == 0
                do_eval = val_set is not None and dist.is_main and (
                    (cfg.train.eval_every > 0 and step % cfg.train.eval_every == 0)
                    or (cfg.train.eval_every == 0 and at_epoch_end) or step == total_steps)
                if do_eval:
                    last_val = evaluate_now()
                    row.update(last_val)
                    monitor.evaluated(step, last_val)
                if metrics_file and (step % cfg.train.log_every == 0 or do_eval or step == total_steps):
                    metrics_file.write(json.dumps(row) + "\n")
                    metrics_file.flush()
                if dist.is_main and step % cfg.train.checkpoint_every == 0 and step < total_steps:
                    _save_checkpoint(ckpt_path, checkpoint_state())
                    _save_student(run_dir / STUDENT_FILE, student)
    finally:
        if metrics_file:
            metrics_file.close()
        monitor.train_end()
    wall = time.time() - start_time

    summary: dict[str, Any] = {}
    if dist.is_main:
        from facedistill.models import count_parameters

        recalibrate(student)  # the saved student carries BatchNorm stats of its final weights
        _save_checkpoint(ckpt_path, checkpoint_state())
        _save_student(run_dir / STUDENT_FILE, student)
        summary = {
            "name": cfg.name,
            "run_dir": str(run_dir),
            "student": {"arch": cfg.student.arch, "embedding_size": cfg.student.embedding_size,
                        "parameters": count_parameters(student),
                        "size_mb": round((run_dir / STUDENT_FILE).stat().st_size / 1e6, 3)},
            "teacher": None if teacher is None else {"description": teacher.description,
                                                     "embedding_size": teacher.embedding_size,
                                                     "fingerprint": teacher.fingerprint,
                                                     "cached": teacher_cache is not None},
            "loss": {"margin": cfg.loss.margin.type, "distill": cfg.loss.distill.type},
            "preprocessing": {"mean": STUDENT_MEAN, "std": STUDENT_STD, "channel_order": "RGB", "input_size": 112},
            "recipe_hash": cfg.hash(),
            "steps": step,
            "epochs": round(step / steps_per_epoch, 3),
            "train_images": len(train_set),
            # Across sessions when resumed (time lost after a crash's last checkpoint is not counted).
            "wall_time_s": round(wall_before + wall, 2),
            "session_wall_time_s": round(wall, 2),
            "resumed_from_step": start_step if resume else None,
            "images_per_s": round(images_seen / wall, 2) if wall > 0 else None,
            "device": str(device),
            "world_size": dist.world_size,
            "facedistill_version": __version__,
        }
        summary.update(last_val)
        write_json_atomic(run_dir / SUMMARY_FILE, summary)
        try:
            from facedistill.evaluation.plots import plot_training_curves

            plot_training_curves(_read_metrics(metrics_path), run_dir / "plots" / "training.png",
                                 title=cfg.name)
        except Exception as e:  # noqa: BLE001 - a plot must never fail a finished run
            monitor.message(f"could not draw the training plot: {e}")
    ddp.barrier()
    return RunResult(run_dir=run_dir, summary=summary)
