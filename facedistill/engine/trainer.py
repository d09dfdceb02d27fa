"""The training engine behind ``facedistill distill``: teacher training is the same loop, no teacher.

A run happens in the order of ``Trainer``'s sections, each one place to change:

* **building** the run: the run folder, the data, the teacher (+ its cache), the model (student,
  margin head, projector, objective) and the optimiser with its schedule;
* **resuming** from the last checkpoint;
* **the loop**: ``prepare_batch`` (``augment``: flips or the seeded views of ``data.augment``;
  ``teacher_targets``: the teacher's embedding of exactly that image, cached or online) and
  ``train_step`` (forward, backward, update: where a new precision goes);
* **evaluation** on the validation pairs, **checkpointing**, and **finishing** (precise BN, the
  saved student, the summary and its plot).

What it guarantees:

* **Exact resume.** The data order of epoch e is a permutation seeded by (seed, e); the flips of
  step k, and with ``data.augment`` the view each sample shows, are seeded by (seed, k); checkpoints hold model, head, projector, optimizer, schedule and
  the memory bank. A run killed at any point and resumed with ``--resume`` ends with the same
  weights as an uninterrupted run.
* **Nothing lost on a crash.** Checkpoints, ``student.pt`` and ``summary.json`` are written
  atomically; a NaN/inf loss stops the run before the bad step is applied and keeps the last good
  checkpoint.
* **No repeated work.** A frozen teacher's embeddings come from the teacher cache
  (``teacher_cache.py``) unless ``teacher.cache`` is false.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from facedistill import __version__
from facedistill.config.recipe import Recipe, student_preprocessing
from facedistill.data.packed import PackedDataset
from facedistill.engine import distributed as ddp
from facedistill.engine.batches import EpochBatches, flip_mask, view_choice
from facedistill.engine.checkpointing import (CHECKPOINT_FILE, METRICS_FILE, STUDENT_FILE, SUMMARY_FILE,
                                              load_checkpoint, read_metrics, save_checkpoint, save_student)
from facedistill.engine.monitor import Monitor
from facedistill.engine.optim import build_optimizer, lr_factor
from facedistill.engine.train_module import LOSS_TERMS, TrainModule
from facedistill.errors import FaceDistillError, RecipeError
from facedistill.utils.atomic import write_json_atomic, write_text_atomic

STUDENT_MEAN = 127.5
STUDENT_STD = 127.5

__all__ = ["train", "Trainer", "RunResult", "Monitor", "TrainingDiverged", "CHECKPOINT_FILE", "METRICS_FILE",
           "EpochBatches", "flip_mask", "lr_factor", "normalise", "resolve_device"]


class TrainingDiverged(FaceDistillError):
    """The loss became NaN or infinite."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RecipeError("`train.device` is cuda but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 RGB -> the arcface_torch input range, (x - 127.5) / 127.5 (the student's default input;
    ``Trainer.normalise`` applies ``student.mean/std/channel_order`` when a recipe sets them)."""
    return (x.float() - STUDENT_MEAN) / STUDENT_STD


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class Batch:
    """One step's inputs, ready for the model."""

    x: torch.Tensor  # normalised, on the device, in the model's memory format
    labels: torch.Tensor
    teacher_emb: torch.Tensor | None
    size: int  # images on this rank


def _plain(value: Any) -> Any:
    """Recipe values (dataclasses such as a TrainSource) as plain data for the data layer."""
    import dataclasses

    if isinstance(value, list):
        return [_plain(v) for v in value]
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def train(recipe: Recipe, resume: bool = False, monitor: Monitor | None = None) -> RunResult:
    """Train the recipe's student; returns the run folder and its summary."""
    return Trainer(recipe, monitor).run(resume=resume)


class Trainer:
    """One training run. ``run()`` calls the sections below in order."""

    def __init__(self, recipe: Recipe, monitor: Monitor | None = None) -> None:
        self.cfg = recipe
        self.monitor = monitor or Monitor()
        self.device = resolve_device(recipe.train.device)
        self.dist = ddp.init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        if self.device.type == "cpu":
            from facedistill.utils.memory import keep_freed_memory

            keep_freed_memory()  # activation buffers stay mapped between steps (measured ~1.7x, no page faults)
            if recipe.train.threads:
                torch.set_num_threads(recipe.train.threads)
        self.run_dir = recipe.run_dir
        self.ckpt_path = self.run_dir / CHECKPOINT_FILE
        self.metrics_path = self.run_dir / METRICS_FILE
        self.step = 0
        self.start_step = 0
        self.resumed = False
        self.wall_before = 0.0  # wall time of earlier sessions of this run (up to their last checkpoint)
        self.start_time = time.time()
        self.images_seen = 0
        self.last_val: dict[str, float] = {}

    def run(self, resume: bool = False) -> RunResult:
        self.build(resume)
        if resume:
            self.resume()
        self.open_metrics_log()
        self.build_forward()
        self.loop()
        summary = self.finish() if self.dist.is_main else {}
        ddp.barrier()
        return RunResult(run_dir=self.run_dir, summary=summary)

    # ---------------------------------------------------------------------------------------------
    # Building the run
    # ---------------------------------------------------------------------------------------------
    def build(self, resume: bool) -> None:
        self.prepare_run_dir(resume)
        self.build_data()
        self.build_teacher()
        self.build_model()
        self.build_optimizer()

    def prepare_run_dir(self, resume: bool) -> None:
        if self.dist.is_main:
            if self.run_dir.exists() and not resume and self.ckpt_path.exists():
                raise FaceDistillError(f"{self.run_dir} already holds a run; pass --resume to continue it, "
                                       "or choose another name (--name / --set name=...)")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run_dir / "recipe.yaml", self.cfg.to_yaml())
        ddp.barrier()

    def build_data(self) -> None:
        """The training set (one packed set, or several sources mixed) and the validation pairs."""
        from facedistill.data.multisource import open_train_set

        cfg = self.cfg
        self.train_set = open_train_set(_plain(cfg.data.train))
        if len(self.train_set) < cfg.data.batch_size * self.dist.world_size:
            raise RecipeError(f"{cfg.source}: `data.batch_size` {cfg.data.batch_size} is larger than the "
                              f"training set ({len(self.train_set)} images in {cfg.data.train})")
        self.val_set = PackedDataset(cfg.data.val) if cfg.data.val else None
        if self.val_set is not None and self.val_set.pairs is None:
            raise RecipeError(f"{cfg.source}: `data.val` {cfg.data.val} is not a pair set")
        self.steps_per_epoch = EpochBatches.batches_per_epoch(len(self.train_set), cfg.data.batch_size,
                                                              self.dist.world_size)
        self.total_steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * self.steps_per_epoch))

    def build_teacher(self) -> None:
        """The frozen teacher and its cached embeddings (per (image, flip), or K augmented views per image),
        unless ``teacher.cache`` is false or ``teacher.online`` is true: then it embeds every batch.

        A ``teachers`` list becomes one ``JointTeacher`` (engine/joint_teacher.py): each member builds or
        reuses its own cache, exactly as a lone teacher would, and ``JointRows`` joins them on read.
        """
        from facedistill.engine.joint_teacher import JointRows, JointTeacher
        from facedistill.engine.teachers import build_teacher

        cfg = self.cfg
        self.teacher = self.teacher_cache = None
        self.members: list[Any] = []
        if cfg.loss.distill.type == "none" or not cfg.teacher_sections:
            return
        self.members = [build_teacher(t, self.device, threads=cfg.train.threads, key=k, images=self._teacher_work())
                        for k, t in cfg.keyed_teachers]
        weights = [t.weight for t in cfg.teachers]
        self.teacher = JointTeacher(self.members, weights) if cfg.teachers else self.members[0]
        settings = cfg.teacher_settings
        if not settings.cache or settings.online:
            return
        caches = [self.cache_of_teacher(m, t, named=len(self.members) > 1)
                  for m, t in zip(self.members, cfg.teacher_sections)]
        self.teacher_cache = JointRows(caches, weights) if cfg.teachers else caches[0]

    def cache_of_teacher(self, teacher: Any, section: Any, named: bool = False) -> Any:
        """One teacher's cache over the training set: built (main rank) or reused, one per source."""
        from facedistill.engine.teacher_cache import load_or_build, load_or_build_views
        from facedistill.engine.teachers import build_teacher

        cfg, how_used = self.cfg, self.cfg.teacher_settings
        workers = how_used.cache_workers
        how = dict(dtype=how_used.cache_dtype, workers=workers,
                   teacher_factory=functools.partial(build_teacher, section, "cpu",
                                                     max(1, (cfg.train.threads or os.cpu_count() or 1) // workers),
                                                     images=self._teacher_work()))

        def cache_of(source: PackedDataset, advance=None) -> np.ndarray:
            if cfg.data.augment.enabled:
                cache, cache_file, built = load_or_build_views(source, teacher, cfg.data.augment,
                                                               how_used.views, cfg.data.flip,
                                                               how_used.batch_size, advance, **how)
            else:
                cache, cache_file, built = load_or_build(source, teacher, how_used.batch_size, advance, **how)
            if advance is not None:
                self.monitor.message(f"teacher cache {'built' if built else 'reused'}: {cache_file}")
            return cache

        def build_all(advance=None) -> Any:
            # one cache per source, beside its data: every mix of that source reuses it
            if isinstance(self.train_set, PackedDataset):
                return cache_of(self.train_set, advance)
            return self.train_set.combine_per_source(lambda source: cache_of(source, advance))

        cache = None
        if self.dist.is_main:
            what = f"{how_used.views} views per image" if cfg.data.augment.enabled else "cached once"
            title = f"teacher embeddings ({what})" + (f": {teacher.description}" if named else "")
            with self.monitor.phase(title, self._cache_work()) as advance:
                cache = build_all(advance)
        ddp.barrier()
        return cache if self.dist.is_main else build_all()

    def _teacher_work(self) -> int:
        """Images each teacher will embed: every cached view of the training images (flips or K views),
        or every training image shown when it runs online."""
        settings = self.cfg.teacher_settings
        if settings.online or not settings.cache:
            return self.total_steps * self.cfg.data.batch_size
        return self._cache_work() * (settings.views if self.cfg.data.augment.enabled else 2)

    def _cache_work(self) -> int:
        """Images the teacher cache covers (a mixed set caches whole sources, filtered rows too)."""
        sources = getattr(self.train_set, "sources", None)
        return sum(len(s) for s in sources) if sources else len(self.train_set)

    def build_model(self) -> None:
        """Student, margin head, projector and objective, created in a seeded order."""
        from facedistill.losses import DistillationObjective
        from facedistill.models import create_backbone, create_margin_head

        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        self.student = create_backbone(cfg.student.arch, embedding_size=cfg.student.embedding_size)
        # the input normalisation the student (and its start) expects: recipe, else checkpoint, else arcface's
        self.student_pre = student_preprocessing(cfg.student)
        if cfg.student.checkpoint:
            from facedistill.models.checkpoints import load_backbone

            init = load_backbone(cfg.student.checkpoint, arch=cfg.student.arch,
                                 embedding_size=cfg.student.embedding_size)
            self.student.load_state_dict(init.model.state_dict())
            if init.info.get("imported_from_onnx") or init.info.get("imported_from"):  # ONNX, or `prepare student`
                self.calibrate_start()
        self.frozen_norms = []
        if cfg.student.freeze:
            from facedistill.engine.freeze import freeze_modules

            self.frozen_norms = freeze_modules(self.student, cfg.student.freeze, cfg.source)
        self.anneal = None
        if cfg.student.leaky_anneal_from is not None:  # leaky first, plain ReLU/ReLU6 at the end
            from facedistill.models.activations import LeakyAnneal

            self.anneal = LeakyAnneal.install(self.student, cfg.student.leaky_anneal_from)
        head = None
        if cfg.loss.margin.type != "none":
            if not bool((self.train_set.labels >= 0).any()):
                raise RecipeError(f"{cfg.source}: `loss.margin.type` is {cfg.loss.margin.type} but "
                                  f"{cfg.data.train} has no identity labels; use `loss.margin.type: none`")
            head = create_margin_head(cfg.loss.margin.type, self.train_set.num_classes, cfg.student.embedding_size,
                                      cfg.loss.margin.scale, cfg.loss.margin.margin)
        projector = objective = None
        if self.teacher is not None:
            projector = self._projector(self.teacher)
            objective = DistillationObjective(cfg.loss.distill, self.teacher.embedding_size,
                                              gather_fn=ddp.all_gather_cat if self.dist.enabled else None)
        self.module = TrainModule(self.student, head, projector, objective, cfg.loss.margin.weight).to(self.device)
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        self.student.to(memory_format=self.memory_format)

    def calibrate_start(self) -> None:
        """An ONNX start's BatchNorms carry unit statistics; give them the training images' (eval function
        unchanged) so train-mode steps start from what the public model computes (precise_bn.py)."""
        from facedistill.engine.precise_bn import calibrate_imported_bn

        cfg = self.cfg
        n = calibrate_imported_bn(self.student, self.train_set, cfg.train.precise_bn_images, cfg.data.batch_size,
                                  self.normalise, torch.device("cpu"), seed=cfg.train.seed)
        self.monitor.message(f"imported start: {n} BatchNorms calibrated on training images "
                             f"(eval-mode output unchanged)")

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 RGB (N, 3, H, W) -> the student's input: arcface_torch's (x - 127.5) / 127.5 unless the
        recipe or an imported start says otherwise (``student.mean``/``std``/``channel_order``)."""
        return self.student_pre.apply_torch(x)

    def _projector(self, teacher: Any) -> nn.Module | None:
        """Student -> teacher dim: none when they match, else linear; ``per_teacher``: one head per block."""
        cfg, teacher_dim = self.cfg, teacher.embedding_size
        if cfg.loss.projector == "per_teacher":
            from facedistill.models.projectors import BlockProjector

            return BlockProjector(cfg.student.embedding_size, teacher.dims, teacher.weights)
        if teacher_dim == cfg.student.embedding_size and cfg.loss.projector != "linear":
            return None
        if cfg.loss.projector == "none":
            raise RecipeError(f"{cfg.source}: the teacher's embedding is {teacher_dim}-d and the "
                              f"student's {cfg.student.embedding_size}-d; set `loss.projector: auto` "
                              f"or `student.embedding_size: {teacher_dim}`")
        return nn.Linear(cfg.student.embedding_size, teacher_dim, bias=False)

    def build_optimizer(self) -> None:
        cfg = self.cfg
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = build_optimizer(self.params, cfg.optim, self.total_steps,
                                                         self.steps_per_epoch)
        self.use_amp = cfg.train.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        # the student's forward runs under autocast to this dtype (TrainModule; heads and losses stay fp32)
        self.module.autocast_dtype = torch.float16 if self.use_amp else None
        if self.device.type == "cpu":
            from facedistill.bench.sysinfo import resolve_precision

            self.precision = resolve_precision(cfg.train.precision, "cpu")
            self.module.autocast_dtype = torch.bfloat16 if self.precision == "bf16" else None
            if self.module.autocast_dtype is not None:
                from facedistill.engine.precision import keep_depthwise_fp32

                keep_depthwise_fp32(self.student)  # oneDNN's bf16 depthwise backward is the slow path
        else:
            self.precision = "fp16-amp" if self.use_amp else "fp32"

    def build_forward(self) -> None:
        """What the loop calls: the module, wrapped for DDP and compiled when the recipe asks."""
        model: nn.Module = self.module
        if self.dist.enabled:
            model = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False)
        self.forward = torch.compile(model) if self.cfg.train.compile else model

    # ---------------------------------------------------------------------------------------------
    # Resuming
    # ---------------------------------------------------------------------------------------------
    def resume(self) -> None:
        if not self.ckpt_path.is_file():
            raise FaceDistillError(f"--resume: {self.ckpt_path} does not exist; start the run without --resume")
        state = load_checkpoint(self.ckpt_path, map_location=self.device)
        if state.get("recipe_hash") != self.cfg.hash():
            raise FaceDistillError(f"--resume: {self.ckpt_path} was written by a different recipe "
                                   f"({state.get('recipe_hash')} vs {self.cfg.hash()}); resume with the same recipe")
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = self.start_step = int(state["step"])
        self.wall_before = float(state.get("wall_time_s", 0.0))
        self.resumed = True
        self.monitor.message(f"resumed from {self.ckpt_path} at step {self.step}/{self.total_steps}")

    def open_metrics_log(self) -> None:
        """Keep the log's rows up to the resumed step (a killed run may have logged past it)."""
        if self.dist.is_main:
            kept = read_metrics(self.metrics_path, max_step=self.step) if self.resumed else []
            write_text_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    # ---------------------------------------------------------------------------------------------
    # The loop
    # ---------------------------------------------------------------------------------------------
    def loop(self) -> None:
        self.module.train()
        if self.frozen_norms:
            from facedistill.engine.freeze import hold_statistics

            hold_statistics(self.frozen_norms)
        for member in self.members:
            if isinstance(getattr(member, "model", None), nn.Module):
                member.model.eval()
        self.monitor.train_start(self.total_steps, self.step)
        self.start_time = time.time()
        metrics_file = open(self.metrics_path, "a") if self.dist.is_main else None
        try:
            for images, labels, index in self.batches():
                tic = time.time()
                row = self.train_step(self.prepare_batch(images, labels, index))
                row["images_per_s"] = round(len(index) * self.dist.world_size / max(time.time() - tic, 1e-9), 2)
                # wall clock since the run began (earlier sessions included): accuracy against time budgets
                row["wall_s"] = round(self.wall_before + time.time() - self.start_time, 1)
                self.after_step(row, metrics_file)
        finally:
            if metrics_file:
                metrics_file.close()
            self.monitor.train_end()
        self.session_wall = time.time() - self.start_time

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(uint8 images, labels, dataset indices) from the current step to the last, epoch by epoch."""
        cfg = self.cfg
        from facedistill.data.multisource import MultiSourceDataset, SourceMixBatches

        while self.step < self.total_steps:
            epoch, start_batch = divmod(self.step, self.steps_per_epoch)
            if isinstance(self.train_set, MultiSourceDataset):  # each source drawn at its weight
                sampler = SourceMixBatches(self.train_set, cfg.data.batch_size, cfg.train.seed, epoch, start_batch,
                                           self.dist.rank, self.dist.world_size)
            else:
                sampler = EpochBatches(len(self.train_set), cfg.data.batch_size, cfg.train.seed, epoch, start_batch,
                                       self.dist.rank, self.dist.world_size)
            loader = torch.utils.data.DataLoader(self.train_set, batch_sampler=sampler, num_workers=cfg.data.workers,
                                                 pin_memory=self.device.type == "cuda")
            for batch in loader:
                if self.step >= self.total_steps:
                    return
                yield batch

    def prepare_batch(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> Batch:
        """What the student sees (``augment``), the teacher's embedding of exactly that, normalised, on the device."""
        images, views = self.augment(images, index)
        teacher_emb = self.teacher_targets(images, index, views)
        x = self.normalise(images.to(self.device, non_blocking=True)).contiguous(memory_format=self.memory_format)
        return Batch(x=x, labels=labels.to(self.device), teacher_emb=teacher_emb, size=len(index))

    def augment(self, images: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, np.ndarray | None]:
        """The step's images as the student sees them, and the teacher-cache view of each (None: no cache view).

        Without ``data.augment``: a seeded flip, view 0/1 of the (image, flip) cache. With it and a
        view cache: each sample shows view ``v`` drawn by (seed, step, position), the very image the
        cache embedded. Otherwise (online teacher, or no teacher): a fresh view per step, keyed by
        (seed, image, step + 1), so a resumed run still draws the same.
        """
        cfg = self.cfg
        aug = cfg.data.augment
        if not aug.enabled:
            flips = flip_mask(cfg.train.seed, self.step, len(index), self.dist.rank) if cfg.data.flip else \
                torch.zeros(len(index), dtype=torch.bool)
            return torch.where(flips[:, None, None, None], images.flip(3), images), flips.long().numpy()
        from facedistill.data.augment import augment_batch

        local = self.train_set.local_indices(index.numpy()) if hasattr(self.train_set, "local_indices") \
            else index.numpy()
        if self.teacher_cache is not None:
            views = view_choice(cfg.train.seed, self.step, len(index), cfg.teacher_settings.views, self.dist.rank)
            seed = aug.seed
        else:
            views, seed = np.full(len(index), self.step + 1, dtype=np.int64), cfg.train.seed
        shown = augment_batch(np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy()), aug, seed, local, views, cfg.data.flip)
        return torch.from_numpy(shown).permute(0, 3, 1, 2), (views if self.teacher_cache is not None else None)

    def teacher_targets(self, images: torch.Tensor, index: torch.Tensor, views: np.ndarray | None
                        ) -> torch.Tensor | None:
        """The teacher's embedding of each shown image: a cache row (image, view), or the teacher run on the batch."""
        if self.teacher is None:
            return None
        if self.teacher_cache is not None:
            assert views is not None
            emb = torch.from_numpy(np.asarray(self.teacher_cache[index.numpy(), views], dtype=np.float32))
        else:
            emb = self.teacher(images)
        return emb.to(self.device, non_blocking=True)

    def train_step(self, batch: Batch) -> dict[str, Any]:
        """Forward, check, backward, update; returns the step's metrics row."""
        slope = self.anneal.set_step(self.step, self.total_steps) if self.anneal is not None else None
        out = self.forward(batch.x, batch.labels, batch.teacher_emb, self.step)  # autocast inside: TrainModule
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise self._diverged(out)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        grad_norm = None
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        self.images_seen += batch.size * self.dist.world_size
        row = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4),
               "lr": self.scheduler.get_last_lr()[0], "loss": float(loss.detach()), "images_per_s": None}
        for key, value in out.items():
            if key != "loss":
                row[f"loss_{key}" if key in LOSS_TERMS else key] = float(value.detach())
        if grad_norm is not None:
            row["grad_norm"] = grad_norm
        if slope is not None:
            row["leaky_slope"] = round(slope, 5)
        return row

    def _diverged(self, out: dict[str, torch.Tensor]) -> TrainingDiverged:
        terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in out.items() if v.numel() == 1)
        last = f"{self.ckpt_path} (step {load_checkpoint(self.ckpt_path)['step']})" \
            if self.ckpt_path.is_file() else "none yet"
        return TrainingDiverged(
            f"step {self.step}: the loss is {float(out['loss'])} ({terms}). The step was not applied; "
            f"last good checkpoint: {last}. Lower `optim.lr`, set `optim.grad_clip`, or "
            "check the teacher's preprocessing (teacher.mean/std/channel_order).")

    def after_step(self, row: dict[str, Any], metrics_file: Any) -> None:
        """Report, evaluate when due, log the row, checkpoint when due."""
        cfg, step = self.cfg, self.step
        self.monitor.train_step(step, row)
        at_epoch_end = step % self.steps_per_epoch == 0
        do_eval = self.val_set is not None and self.dist.is_main and (
            (cfg.train.eval_every > 0 and step % cfg.train.eval_every == 0)
            or (cfg.train.eval_every == 0 and at_epoch_end) or step == self.total_steps)
        if do_eval:
            self.last_val = self.evaluate()
            row.update(self.last_val)
            self.monitor.evaluated(step, self.last_val)
        if metrics_file and (step % cfg.train.log_every == 0 or do_eval or step == self.total_steps):
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
        if self.dist.is_main and step % cfg.train.checkpoint_every == 0 and step < self.total_steps:
            self.save_checkpoint()

    # ---------------------------------------------------------------------------------------------
    # Evaluation
    # ---------------------------------------------------------------------------------------------
    def recalibrate(self, model: nn.Module) -> None:
        """Precise BatchNorm statistics for ``model``'s current weights (see precise_bn.py)."""
        from facedistill.engine.precise_bn import recompute_bn_stats

        recompute_bn_stats(model, self.train_set, self.cfg.train.precise_bn_images, self.cfg.data.batch_size,
                           self.normalise, self.device, seed=self.cfg.train.seed, memory_format=self.memory_format)

    def evaluate(self) -> dict[str, float]:
        """Verification on the validation pairs, on a copy with precise BN (training keeps its statistics).

        Besides accuracy it reports the mean cosine of impostor pairs (different people): a student
        collapsing towards one direction shows as this value climbing towards 1.
        """
        from facedistill.evaluation.embedders import TorchEmbedder, embed_images
        from facedistill.evaluation.protocol import pair_scores, verification_metrics

        val_set = self.val_set
        assert val_set is not None and val_set.pairs is not None
        pairs = val_set.pairs if not self.cfg.data.val_max_pairs else val_set.pairs[: self.cfg.data.val_max_pairs]
        used = np.unique(pairs[:, :2])
        model = copy.deepcopy(self.student)
        self.recalibrate(model)
        model.eval()
        emb = embed_images(TorchEmbedder(model, self.student_pre, device=str(self.device)), val_set.images(used))
        where = {int(i): k for k, i in enumerate(used)}
        a = emb[[where[int(i)] for i in pairs[:, 0]]]
        b = emb[[where[int(i)] for i in pairs[:, 1]]]
        result = verification_metrics(pair_scores(a, b), pairs[:, 2].astype(bool))
        return {"val_accuracy": result.accuracy, "val_accuracy_std": result.accuracy_std,
                "val_impostor_cosine": round(result.impostor_cosine, 4)}

    # ---------------------------------------------------------------------------------------------
    # Checkpointing
    # ---------------------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        return {"step": self.step, "module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "recipe_hash": self.cfg.hash(), "facedistill_version": __version__,
                "wall_time_s": self.wall_before + time.time() - self.start_time}

    def save_checkpoint(self) -> None:
        save_checkpoint(self.ckpt_path, self.checkpoint_state())
        save_student(self.run_dir / STUDENT_FILE, self.student)

    # ---------------------------------------------------------------------------------------------
    # Finishing
    # ---------------------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Precise BN on the final weights, the last checkpoint and student, the summary and its plot."""
        if self.anneal is not None:  # slope 0: the ReLU/ReLU6 network the run was annealed into
            self.anneal.set_step(self.total_steps, self.total_steps)
        self.recalibrate(self.student)  # the saved student carries BatchNorm stats of its final weights
        self.save_checkpoint()
        summary = self.summary()
        write_json_atomic(self.run_dir / SUMMARY_FILE, summary)
        try:
            from facedistill.evaluation.plots import plot_training_curves

            plot_training_curves(read_metrics(self.metrics_path), self.run_dir / "plots" / "training.png",
                                 title=self.cfg.name)
        except Exception as e:  # noqa: BLE001 - a plot must never fail a finished run
            self.monitor.message(f"could not draw the training plot: {e}")
        return summary

    def summary(self) -> dict[str, Any]:
        from facedistill.models import count_parameters

        cfg, wall, teacher = self.cfg, self.session_wall, self.teacher
        summary = {
            "name": cfg.name,
            "run_dir": str(self.run_dir),
            "student": {"arch": cfg.student.arch, "embedding_size": cfg.student.embedding_size,
                        "parameters": count_parameters(self.student),
                        "size_mb": round((self.run_dir / STUDENT_FILE).stat().st_size / 1e6, 3)},
            "teacher": None if teacher is None else {"description": teacher.description,
                                                     "embedding_size": teacher.embedding_size,
                                                     "fingerprint": teacher.fingerprint,
                                                     "cached": self.teacher_cache is not None},
            "teachers": self._teachers_summary(),
            "loss": {"margin": cfg.loss.margin.type, "distill": cfg.loss.distill.type},
            "augment": self._augment_summary(),
            "preprocessing": self.student_pre.to_dict(),
            "recipe_hash": cfg.hash(),
            "steps": self.step,
            "epochs": round(self.step / self.steps_per_epoch, 3),
            "train_images": len(self.train_set),
            "train_sources": self.train_set.describe() if hasattr(self.train_set, "describe") else None,
            "precision": self.precision,
            # Across sessions when resumed (time lost after a crash's last checkpoint is not counted).
            "wall_time_s": round(self.wall_before + wall, 2),
            "session_wall_time_s": round(wall, 2),
            "resumed_from_step": self.start_step if self.resumed else None,
            "images_per_s": round(self.images_seen / wall, 2) if wall > 0 else None,
            "device": str(self.device),
            "peak_gpu_memory_mb": (round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
                                   if self.device.type == "cuda" else None),
            "world_size": self.dist.world_size,
            "facedistill_version": __version__,
        }
        summary.update(self.last_val)
        return summary

    def _teachers_summary(self) -> list[dict[str, Any]] | None:
        """Each teacher of the run (one for a lone ``teacher``) with its share of the joint target."""
        if self.teacher is None:
            return None
        weights = getattr(self.teacher, "weights", [1.0])
        return [{"description": m.description, "embedding_size": m.embedding_size, "weight": w,
                 "fingerprint": m.fingerprint, "cached": self.teacher_cache is not None}
                for m, w in zip(self.members, weights)]

    def _augment_summary(self) -> dict[str, Any] | None:
        """data.augment as trained, and how the teacher saw it (cached views or online); None when off."""
        from facedistill.data.augment import describe

        cfg = self.cfg
        if not cfg.data.augment.enabled:
            return None
        teacher = None if self.teacher is None else (
            f"cache of {cfg.teacher_settings.views} views" if self.teacher_cache is not None else "online")
        return {**describe(cfg.data.augment, cfg.data.flip), "teacher": teacher}
