"""CPU training and evaluation throughput of the MobileFaceNet student, settings side by side in one run.

Claim: which CPU settings train and evaluate the student fastest (channels_last, bf16, torch.compile, threads
vs processes, loader workers; evaluation paths), as ratios from one run.
Its figure (docs/results.md, "bf16 training" and "Evaluation throughput") comes from::

    python benchmarks/train_throughput.py --also-arch mobilefacenet_s_leaky --threads 1,2 --processes 2 \
        --no-compile --no-eval --workers "" --rounds 3 --steps 2
    python benchmarks/train_throughput.py --no-train --rounds 3 --eval-images 256

    python benchmarks/train_throughput.py                              # all variants, 1 and 2 threads
    python benchmarks/train_throughput.py --rounds 5 --json tp.json    # more rounds, JSON report
    python benchmarks/train_throughput.py --quick                      # a smoke run (numbers meaningless)

Training step (``--arch mobilefacenet_s``, 128-d, batch 64): student forward, a distillation loss
against fixed teacher embeddings (1 - cosine; the loss is negligible next to the backbone), backward,
SGD with momentum. Variants:

* ``contiguous``: NCHW fp32 eager; ``channels_last``: NHWC fp32 eager (the recipe default
  ``train.channels_last: true``);
* ``bf16``: channels_last + ``torch.autocast("cpu", bfloat16)``, with every convolution in bf16
  (``bf16 all``) and with the depthwise ones kept fp32 (``bf16 dw-fp32``: what ``train.precision:
  bf16`` runs, see ``facedistill/engine/precision.py``; for ``--also-arch`` students also the
  layout tried and not kept, where the depthwise conv hands bf16 on to BatchNorm and activation:
  docs/results.md, "bf16 after the depthwise convolution");
  run only where the CPU has AVX512-BF16 or AMX (read from /proc/cpuinfo and
  ``torch.backends.cpu.get_cpu_capability()``), otherwise reported as skipped (``--force-bf16`` runs it anyway, emulated and slow);
* ``compile``: channels_last + ``torch.compile`` (inductor; compile time reported apart);
* each at 1 and 2 intra-op threads (``--threads``);
* ``--processes 2``: 2 processes x 1 thread, each on half the batch, gradients all-reduced with DDP
  over gloo (``torchrun --nproc_per_node 2 -m facedistill distill ... --set train.threads=1``), in
  the precision ``train.precision: auto`` picks;
* loader: the full step including ``DataLoader`` over a packed set (``--data``, default
  data/lfw112/train; a synthetic pack when absent), random flips and normalisation, with 0 and 2
  workers, in the precision ``train.precision: auto`` picks on this CPU (bf16 dw-fp32 or fp32).

Evaluation (embedding ``--eval-images`` faces, 1 thread): the historical ``TorchEmbedder`` path
(numpy preprocessing, contiguous, ``no_grad``, batch 128), contiguous + ``inference_mode``,
channels_last, the traced/frozen oneDNN model (today's ``TorchEmbedder`` default on CPU) at several
batch sizes, and onnxruntime fp32 (the same weights exported).

All variants are timed *interleaved* (round-robin, ``--rounds`` rounds) and the median round is
reported, so load from other processes on a shared machine hits all of them alike: the ratios are
the result, absolute images/s only describe this machine at this moment.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facedistill.bench.sysinfo import contention_warning, cpu_bf16_support, machine_info  # noqa: E402


# -- model and step -------------------------------------------------------------------------------
def make_student(arch: str, dim: int):
    import torch

    from facedistill.models import create_backbone

    torch.manual_seed(0)
    return create_backbone(arch, embedding_size=dim)


def _bf16_after_depthwise(model) -> None:
    """The layout tried and not kept, for comparison: the fp32 depthwise conv hands its output back in
    bf16, so the BatchNorm and activation after it run in bf16 (faster, about a point less accurate)."""
    import torch

    from facedistill.engine.precision import Fp32DepthwiseConv2d

    class Bf16OutDepthwise(Fp32DepthwiseConv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(x.device.type, enabled=False):
                return torch.nn.Conv2d.forward(self, x.float()).to(x.dtype)

    for m in model.modules():
        if type(m) is Fp32DepthwiseConv2d:
            m.__class__ = Bf16OutDepthwise


class TrainVariant:
    """One training configuration: its own copy of the model and optimizer, stepped on demand."""

    def __init__(self, name: str, base, threads: int, channels_last: bool, bf16: bool = False,
                 compile_model: bool = False, depthwise_fp32: bool = False, bf16_after_depthwise: bool = False) -> None:
        import torch

        self.name, self.threads, self.channels_last, self.bf16 = name, threads, channels_last, bf16
        self.model = copy.deepcopy(base).train()
        if depthwise_fp32:   # what the trainer does under train.precision bf16
            from facedistill.engine.precision import keep_depthwise_fp32

            keep_depthwise_fp32(self.model)
            if bf16_after_depthwise:
                _bf16_after_depthwise(self.model)
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.fmt)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.forward = torch.compile(self.model) if compile_model else self.model
        self.compile_s: float | None = None
        self.losses: list[float] = []

    def with_threads(self, name: str, threads: int) -> "TrainVariant":
        """The same model, optimizer and compiled code at another thread count (compiles once)."""
        other = copy.copy(self)
        other.name, other.threads, other.compile_s = name, threads, None
        return other

    def step(self, x_uint8, target) -> None:
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(self.threads)
        x = ((x_uint8.float() - 127.5) / 127.5).contiguous(memory_format=self.fmt)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            emb = self.forward(x)
        loss = (1 - F.cosine_similarity(emb.float(), target, dim=1)).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.losses.append(float(loss.detach()))


class LoaderVariant:
    """The full step with a DataLoader over a packed set: channels_last, and bf16 with the depthwise
    convolutions in fp32 where the CPU has bf16 (what ``train.precision: auto`` trains with)."""

    def __init__(self, name: str, base, dataset, batch: int, threads: int, workers: int, bf16: bool = False) -> None:
        import torch

        self.name, self.threads, self.workers = name, threads, workers
        self.inner = TrainVariant(name, base, threads, channels_last=True, bf16=bf16, depthwise_fp32=bf16)
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(dataset), generator=g).tolist()
        batches = [perm[i:i + batch] for i in range(0, len(perm) - batch + 1, batch)] * 1000
        self.loader = iter(torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                                       persistent_workers=workers > 0, prefetch_factor=2 if workers
                                                       else None))
        self.rng = torch.Generator().manual_seed(1)

    def step(self, _x, target) -> None:
        import torch

        torch.set_num_threads(self.threads)
        images, _labels, _idx = next(self.loader)
        flips = torch.rand(len(images), generator=self.rng) < 0.5
        images = torch.where(flips[:, None, None, None], images.flip(3), images)
        self.inner.step(images, target[: len(images)])


def _ddp_worker(rank: int, world: int, port: int, arch: str, dim: int, batch: int, steps: int, warmup: int,
                bf16: bool, depthwise_fp32: bool, channels_last: bool, queue) -> None:
    """One rank of a ``torchrun``-style run: 1 thread, its share of the batch, DDP (gloo) gradients."""
    import os

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from facedistill.utils.memory import keep_freed_memory

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        keep_freed_memory()
        variant = TrainVariant(f"rank {rank}", make_student(arch, dim), 1, channels_last, bf16=bf16,
                               depthwise_fp32=depthwise_fp32)
        variant.model = torch.nn.parallel.DistributedDataParallel(variant.model)
        variant.forward = variant.model
        g = torch.Generator().manual_seed(100 + rank)
        x = torch.randint(0, 256, (batch, 3, 112, 112), dtype=torch.uint8, generator=g)
        target = F.normalize(torch.randn(batch, dim, generator=g), dim=1)
        for _ in range(warmup):
            variant.step(x, target)
        dist.barrier()
        tic = time.perf_counter()
        for _ in range(steps):
            variant.step(x, target)
        dist.barrier()
        if rank == 0:
            queue.put(world * batch * steps / (time.perf_counter() - tic))
    finally:
        dist.destroy_process_group()


class DDPVariant:
    """``processes`` ranks of 1 thread each (``torchrun --nproc_per_node N ... --set train.threads=1``),
    each on ``batch / processes`` images, gradients all-reduced over gloo; spawned fresh every round
    (start-up and warm-up outside the timed steps)."""

    def __init__(self, name: str, arch: str, dim: int, batch: int, processes: int, warmup: int, bf16: bool,
                 depthwise_fp32: bool, channels_last: bool = True) -> None:
        if batch % processes:
            raise SystemExit(f"--batch {batch} does not split over {processes} processes")
        self.name, self.threads, self.processes = name, processes, processes
        self.args = (arch, dim, batch // processes, warmup, bf16, depthwise_fp32, channels_last)

    def measure(self, steps: int) -> float:
        import socket

        import torch.multiprocessing as mp

        with socket.socket() as sock:   # a free port for this round's process group
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        ctx = mp.get_context("spawn")
        queue = ctx.SimpleQueue()
        arch, dim, batch, warmup, bf16, dw, cl = self.args
        mp.start_processes(_ddp_worker, args=(self.processes, port, arch, dim, batch, steps, warmup, bf16, dw, cl,
                                              queue), nprocs=self.processes, join=True, start_method="spawn")
        return float(queue.get())


def interleaved(variants: list[Any], run: Callable[[Any], float], rounds: int) -> dict[str, list[float]]:
    """Round-robin timing: ``run(variant)`` returns images/s; every variant once per round."""
    out: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(rounds):
        order = variants if r % 2 == 0 else variants[::-1]   # alternate order: no variant always goes first
        for v in order:
            out[v.name].append(run(v))
    return out


# -- evaluation embedders ---------------------------------------------------------------------------
def legacy_torch_embed(model, images: np.ndarray, batch: int = 128) -> np.ndarray:
    """The earlier TorchEmbedder: numpy preprocessing, contiguous NCHW, no_grad."""
    import torch

    from facedistill.data.preprocessing import Preprocessing

    pre = Preprocessing()
    outs = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            outs.append(model(torch.from_numpy(pre.apply(images[i:i + batch]))).float().numpy())
    return np.concatenate(outs)


def export_onnx(model) -> bytes:
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(copy.deepcopy(model).eval(), (torch.zeros(1, 3, 112, 112),), buf, dynamo=False,
                          input_names=["input"], output_names=["embedding"], opset_version=17,
                          dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}})
    return buf.getvalue()


def calibrated(model, images: np.ndarray):
    """Eval-mode copy whose BatchNorm statistics come from face images (as precise BN would set them)."""
    import torch

    m = copy.deepcopy(model)
    for bn in m.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            bn.reset_running_stats()
            bn.momentum = None
    m.train()
    with torch.no_grad():
        for i in range(0, min(len(images), 128), 32):
            m((torch.from_numpy(images[i:i + 32]).permute(0, 3, 1, 2).float() - 127.5) / 127.5)
    return m.eval()


# -- data -----------------------------------------------------------------------------------------
def open_data(path: str | None, tmp: Path):
    from facedistill.data.packed import PackedDataset, is_packed

    if path and is_packed(path):
        return PackedDataset(path), str(path)
    from facedistill.data.synthetic import write_synthetic

    out = tmp / "synthetic"
    write_synthetic(out, train_identities=16, images_per_identity=16, val_identities=20, val_images_per_identity=2,
                    val_pairs=100, seed=0)
    return PackedDataset(out / "train"), "synthetic (16 x 16 faces; pass --data for real faces)"


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="mobilefacenet_s")
    ap.add_argument("--embedding-size", type=int, default=128)
    ap.add_argument("--also-arch", default="", help="comma-separated students timed beside --arch in the same "
                                                    "rounds (e.g. mobilefacenet_s_relu6: no PReLU)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", default="1,2", help="intra-op thread counts for the training variants")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    ap.add_argument("--steps", type=int, default=2, help="training steps per variant per round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    ap.add_argument("--data", default=str(ROOT / "data" / "lfw112" / "train"), help="packed set for loader runs")
    ap.add_argument("--workers", default="0,2", help="DataLoader workers for the loader variants")
    ap.add_argument("--processes", default="", help="also time N processes x 1 thread with DDP over gloo, "
                                                    "batch split between them (torchrun's way to use N cores), "
                                                    "e.g. 2")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--force-bf16", action="store_true", help="run bf16 autocast even without native support")
    ap.add_argument("--eval-images", type=int, default=256)
    ap.add_argument("--eval-batches", default="32,64,128", help="batch sizes for the fast torch embedder")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--no-keep-memory", action="store_true",
                    help="leave glibc's malloc thresholds alone (facedistill.utils.memory.keep_freed_memory)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run: batch 8, 1 round, 1 step, 16 images")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.rounds, args.steps, args.warmup, args.eval_images = 8, 1, 1, 1, 16
        args.eval_batches, args.threads, args.workers = "8", "1", "0"

    import torch

    from facedistill.utils.memory import keep_freed_memory

    kept = False if args.no_keep_memory else keep_freed_memory()
    info = machine_info()
    busy = contention_warning(info)
    bf16_ok, bf16_why = cpu_bf16_support()
    threads = [int(t) for t in args.threads.split(",") if t]
    report: dict[str, Any] = {"machine": {k: info.get(k) for k in ("cpu_model", "usable_cpus", "load_average_1m")},
                              "torch": torch.__version__, "arch": args.arch, "embedding_size": args.embedding_size,
                              "batch": args.batch, "rounds": args.rounds, "steps_per_round": args.steps,
                              "bf16_native": bf16_ok, "bf16_reason": bf16_why, "keep_freed_memory": kept, "contention": busy, "train": {},
                              "eval": {}, "notes": []}
    print(f"{info.get('cpu_model')}, {info.get('usable_cpus')} usable CPUs, torch {torch.__version__}; "
          f"load average {info.get('load_average_1m')}")
    if busy:
        print(f"warning: {busy}")
    base = make_student(args.arch, args.embedding_size)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.batch, 3, 112, 112), dtype=torch.uint8, generator=g)
    target = torch.nn.functional.normalize(torch.randn(args.batch, args.embedding_size, generator=g), dim=1)

    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_train:
            variants: list[Any] = []
            for t in threads:
                variants.append(TrainVariant(f"contiguous t{t}", base, t, channels_last=False))
                variants.append(TrainVariant(f"channels_last t{t}", base, t, channels_last=True))
                if bf16_ok or args.force_bf16:
                    variants.append(TrainVariant(f"bf16 all channels_last t{t}", base, t, True, bf16=True))
                    variants.append(TrainVariant(f"bf16 dw-fp32 channels_last t{t}", base, t, True, bf16=True,
                                                 depthwise_fp32=True))
                for other in [a for a in args.also_arch.split(",") if a]:
                    other_base = make_student(other, args.embedding_size)
                    variants.append(TrainVariant(f"{other} contiguous t{t}", other_base, t, channels_last=False))
                    variants.append(TrainVariant(f"{other} channels_last t{t}", other_base, t, channels_last=True))
                    if bf16_ok or args.force_bf16:
                        variants.append(TrainVariant(f"{other} bf16 dw-fp32 channels_last t{t}", other_base, t, True,
                                                     bf16=True, depthwise_fp32=True))
                        variants.append(TrainVariant(f"{other} bf16 dw-fp32, bf16 after dw (tried) t{t}",
                                                     other_base, t, True, bf16=True, depthwise_fp32=True,
                                                     bf16_after_depthwise=True))
                if not args.no_compile:
                    first = next((v for v in variants if v.name.startswith("compile")), None)
                    variants.append(first.with_threads(f"compile channels_last t{t}", t) if first else
                                    TrainVariant(f"compile channels_last t{t}", base, t, True, compile_model=True))
            bf16 = bf16_ok or args.force_bf16
            for n in [int(v) for v in args.processes.split(",") if v]:
                for arch in [args.arch] + [a for a in args.also_arch.split(",") if a]:
                    variants.append(DDPVariant(f"{arch} {'bf16 dw-fp32' if bf16 else 'fp32'} channels_last "
                                               f"{n} processes x t1", arch, args.embedding_size, args.batch, n,
                                               max(1, args.warmup), bf16, bf16))
            if not (bf16_ok or args.force_bf16):
                msg = f"bf16 autocast skipped: {bf16_why} (--force-bf16 runs it emulated)"
                print(msg)
                report["notes"].append(msg)
            dataset, data_desc = open_data(args.data, Path(tmp))
            report["loader_data"] = data_desc
            for t in threads:
                for w in [int(v) for v in args.workers.split(",") if v]:
                    precision = "bf16 dw-fp32" if bf16_ok else "fp32"  # what train.precision auto picks here
                    variants.append(LoaderVariant(f"loader {precision} channels_last t{t} workers {w}", base, dataset,
                                                  args.batch, t, w, bf16=bf16_ok))
            for v in variants:   # warm-up (and compilation) outside the timed rounds
                if isinstance(v, DDPVariant):
                    continue       # fresh processes every round: they warm up inside
                tic = time.perf_counter()
                for _ in range(args.warmup):
                    v.step(x, target)
                if "compile" in v.name and v.compile_s is None and v is next(
                        u for u in variants if u.name.startswith("compile")):
                    v.compile_s = round(time.perf_counter() - tic, 1)
                    print(f"{v.name}: compiled and warmed up in {v.compile_s} s")

            def run_train(v) -> float:
                if isinstance(v, DDPVariant):
                    return v.measure(args.steps)
                tic = time.perf_counter()
                for _ in range(args.steps):
                    v.step(x, target)
                return args.steps * args.batch / (time.perf_counter() - tic)

            times = interleaved(variants, run_train, args.rounds)
            ref = float(np.median(times[f"contiguous t{threads[0]}"]))
            print(f"\ntraining step, {args.arch} {args.embedding_size}-d, batch {args.batch} "
                  f"(median of {args.rounds} interleaved rounds x {args.steps} steps)")
            print(f"{'variant':64s} {'images/s':>9s} {'vs contiguous t' + str(threads[0]):>18s}")
            for v in variants:
                med = float(np.median(times[v.name]))
                row = {"images_per_s": round(med, 2), "rounds": [round(t, 2) for t in times[v.name]],
                       "vs_contiguous": round(med / ref, 2)}
                if getattr(v, "compile_s", None) is not None:
                    row["compile_s"] = v.compile_s
                report["train"][v.name] = row
                print(f"{v.name:64s} {med:9.2f} {med / ref:17.2f}x")
            torch.set_num_threads(threads[0])

        if not args.no_eval:
            from facedistill.evaluation.embedders import OnnxEmbedder, TorchEmbedder

            torch.set_num_threads(1)
            dataset, _ = open_data(args.data, Path(tmp))
            images = dataset.images(np.arange(min(args.eval_images, len(dataset))))
            model = calibrated(base, images)
            onnx = OnnxEmbedder(export_onnx(model), threads=1, batch_size=64)

            class E:
                def __init__(self, name: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
                    self.name, self.fn = name, fn

            def contiguous_inference(imgs: np.ndarray) -> np.ndarray:
                from facedistill.data.preprocessing import Preprocessing

                pre, outs = Preprocessing(), []
                with torch.inference_mode():
                    for i in range(0, len(imgs), 128):
                        outs.append(model(torch.from_numpy(pre.apply(imgs[i:i + 128]))).numpy())
                return np.concatenate(outs)

            embedders = [E("legacy: contiguous no_grad b128", lambda a: legacy_torch_embed(model, a)),
                         E("contiguous inference_mode b128", contiguous_inference),
                         E("channels_last inference_mode b64",
                           TorchEmbedder(model, batch_size=64, optimize="channels_last"))]
            for b in [int(v) for v in args.eval_batches.split(",") if v]:
                embedders.append(E(f"jit frozen (default) b{b}", TorchEmbedder(model, batch_size=b, optimize="jit")))
            embedders.append(E("onnxruntime fp32 b64", onnx))
            ref_emb = legacy_torch_embed(model, images)
            parity = {}
            for e in embedders:   # warm-up, tracing, and agreement with the legacy path
                got = e.fn(images)
                cos = (got * ref_emb).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref_emb, axis=1)
                parity[e.name] = float(cos.min())

            cpu_time: dict[str, list[tuple[float, float]]] = {e.name: [] for e in embedders}

            def run_eval(e) -> float:
                import resource

                r0 = resource.getrusage(resource.RUSAGE_SELF)
                tic = time.perf_counter()
                e.fn(images)
                wall = time.perf_counter() - tic
                r1 = resource.getrusage(resource.RUSAGE_SELF)
                cpu_time[e.name].append((r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime))
                return len(images) / wall

            times = interleaved(embedders, run_eval, args.rounds)
            ref = float(np.median(times[embedders[0].name]))
            print(f"\nevaluation embedding, {len(images)} faces, 1 thread (median of {args.rounds} interleaved rounds)")
            print(f"{'embedder':40s} {'images/s':>9s} {'vs legacy':>10s} {'min cos vs legacy':>18s} "
                  f"{'sys/user CPU':>13s}")
            for e in embedders:
                med = float(np.median(times[e.name]))
                user = sum(u for u, _ in cpu_time[e.name])
                system = sum(s_ for _, s_ in cpu_time[e.name])
                report["eval"][e.name] = {"images_per_s": round(med, 2), "rounds": [round(t, 2) for t in times[e.name]],
                                          "vs_legacy": round(med / ref, 2), "min_cosine_vs_legacy": parity[e.name],
                                          "user_s": round(user, 2), "system_s": round(system, 2)}
                print(f"{e.name:40s} {med:9.2f} {med / ref:9.2f}x {parity[e.name]:18.6f} "
                      f"{system / max(user, 1e-9):13.2f}")

    info_after = machine_info()
    report["machine"]["load_average_1m_after"] = info_after.get("load_average_1m")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
