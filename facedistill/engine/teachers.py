"""Frozen teachers: a torch backbone with a checkpoint, or any ONNX face model through onnxruntime.

A teacher maps a uint8 RGB batch (N, 3, H, W) to raw float32 embeddings (N, D). It carries its own
preprocessing (mean, std, channel order, input size) and a ``fingerprint`` (hash of its weights and
preprocessing) that keys the teacher-embedding cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from facedistill.data.preprocessing import Preprocessing
from facedistill.errors import CheckpointError, FaceDistillError
from facedistill.utils.hashing import sha256_file


class Teacher(Protocol):
    embedding_size: int
    fingerprint: str
    description: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def _fingerprint(weights_hash: str, pre: Preprocessing, extra: dict[str, Any]) -> str:
    """Cache key of a teacher. Frozen format: the dict below is what the old ``pre.__dict__`` was
    (same keys, the values as given), so existing teacher-embedding caches stay valid."""
    pre_fields = {"mean": pre.mean, "std": pre.std, "channel_order": pre.channel_order,
                  "input_size": pre.input_size}
    blob = json.dumps({"weights": weights_hash, "pre": pre_fields, **extra}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class TorchTeacher:
    """A frozen torch backbone (eval mode, no gradients)."""

    def __init__(self, model: torch.nn.Module, preprocessing: Preprocessing, fingerprint: str,
                 description: str, device: torch.device | str = "cpu") -> None:
        self.model = model.eval().to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.pre = preprocessing
        self.device = torch.device(device)
        self.fingerprint = fingerprint
        self.description = description
        with torch.no_grad():
            dummy = torch.zeros(1, 3, preprocessing.input_size, preprocessing.input_size, dtype=torch.uint8)
            self.embedding_size = int(self(dummy).shape[1])

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.pre.apply_torch(images.to(self.device))).float()


class OnnxTeacher:
    """Any ONNX face model as a frozen teacher, run with onnxruntime on the CPU.

    Real files are messy: models whose graph still lists stale weight names as inputs, or whose
    weights are block-quantized ``DequantizeLinear`` constants (OpenCV Zoo's SFace), are repaired in
    memory (constants folded to fp32, stale inputs removed) before the session is created. A batch
    axis fixed at 1 (SFace) is made dynamic when each image keeps its embedding that way
    (``dynamic_batch=False`` keeps it: one call per image, as ``benchmarks/teacher_pass.py`` compares).
    """

    def __init__(self, path: str | Path, preprocessing: Preprocessing, threads: int | None = None,
                 dynamic_batch: bool = True) -> None:
        import onnx
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FaceDistillError(f"{self.path}: ONNX teacher not found")
        try:
            model = onnx.load(str(self.path))
        except Exception as e:  # noqa: BLE001 - onnx raises several types for corrupt files
            raise FaceDistillError(f"{self.path}: not a readable ONNX model ({e})") from e
        initializers = {i.name for i in model.graph.initializer}
        real_inputs = [i for i in model.graph.input if i.name not in initializers]
        needs_repair = (len(model.graph.input) != len(real_inputs)
                        or any(n.op_type == "DequantizeLinear" for n in model.graph.node)
                        or len(real_inputs) != 1)
        self.repaired = False
        if needs_repair:
            from facedistill.utils.onnx_repair import repair_model

            repair_model(model)
            self.repaired = True
        if len(model.graph.input) != 1:
            names = [i.name for i in model.graph.input]
            raise FaceDistillError(f"{self.path}: a face teacher must have one image input, this one has {names}")
        self.batched = False
        dim0 = next(i for i in model.graph.input).type.tensor_type.shape.dim
        if dynamic_batch and dim0 and dim0[0].HasField("dim_value") and dim0[0].dim_value == 1:
            from facedistill.utils.onnx_repair import with_dynamic_batch

            size = dim0[2].dim_value if len(dim0) > 2 and dim0[2].HasField("dim_value") else preprocessing.input_size
            dynamic = with_dynamic_batch(model, int(size), threads, rtol=1e-4, atol=1e-5)
            if dynamic is not None:  # same embedding per image, one call per batch
                model, self.batched = dynamic, True
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = inp.shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        if isinstance(shape[2], int) and shape[2] != preprocessing.input_size:
            preprocessing = dataclasses.replace(preprocessing, input_size=int(shape[2]))
        self.pre = preprocessing
        self.fingerprint = _fingerprint(sha256_file(self.path), preprocessing, {"kind": "onnx"})
        self.description = f"onnx:{self.path.name}"
        dummy = torch.zeros(1, 3, self.pre.input_size, self.pre.input_size, dtype=torch.uint8)
        out = self(dummy)
        self.embedding_size = int(out.shape[1])

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: x})[0]
        return out.reshape(out.shape[0], -1)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pre.apply_torch(images.cpu()).numpy()
        if self.fixed_batch and self.fixed_batch != x.shape[0]:
            outs = [self._run(x[i:i + 1]) for i in range(x.shape[0])] if self.fixed_batch == 1 else None
            if outs is None:
                raise FaceDistillError(f"{self.path}: fixed batch {self.fixed_batch} is not supported; "
                                       "export the teacher with a dynamic batch or batch 1")
            out = np.concatenate(outs)
        else:
            out = self._run(x)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


PARITY_COSINE = 0.9999  # a torch teacher moves to onnxruntime only when every probe embedding agrees
PARITY_PROBES = 8
AUTO_MIN_IMAGES = 1024


def on_onnxruntime(teacher: TorchTeacher, threads: int | None = None) -> OnnxTeacher | None:
    """The frozen torch teacher exported to ONNX and run by onnxruntime, or None when the export fails
    or a probe image's embedding moves (worst cosine < ``PARITY_COSINE``).

    Why: a frozen teacher only runs forward, and onnxruntime's fused convolution + activation
    kernels run a MobileFaceNet or IResNet several times faster than PyTorch's eager CPU path
    (``benchmarks/teacher_pass.py RUN_FOLDER SET``). The teacher keeps its fingerprint, so its cache is the
    same cache either way.
    """
    import tempfile

    from facedistill.export.torch_graph import torch_to_onnx

    size = teacher.pre.input_size
    try:
        proto = torch_to_onnx(teacher.model.cpu(), input_size=size, simplify=False)
        with tempfile.TemporaryDirectory(prefix="facedistill-teacher-") as tmp:
            path = Path(tmp) / "teacher.onnx"
            path.write_bytes(proto.SerializeToString())
            fast = OnnxTeacher(path, teacher.pre, threads=threads)
    except Exception:  # noqa: BLE001 - any exporter or onnxruntime failure keeps the PyTorch path
        return None
    rng = np.random.default_rng(0)
    probe = torch.from_numpy(rng.integers(0, 256, (PARITY_PROBES, 3, size, size), dtype=np.uint8))
    worst = float(torch.nn.functional.cosine_similarity(teacher(probe), fast(probe)).min())
    if not worst >= PARITY_COSINE:
        return None
    fast.fingerprint = teacher.fingerprint
    fast.description = f"{teacher.description} (onnxruntime, probe cosine {worst:.6f})"
    return fast


def build_teacher(cfg: Any, device: torch.device | str = "cpu", threads: int | None = None,
                  key: str = "teacher", images: int | None = None) -> TorchTeacher | OnnxTeacher | None:
    """Create the teacher described by a recipe's ``teacher`` section (None when type is none).

    ``threads``: onnxruntime intra-op threads of an ONNX teacher (a torch teacher shares torch's), so an
    online teacher keeps to ``train.threads`` like the student; None: onnxruntime's default (all cores).
    ``key``: where the section is written (``teacher`` or ``teachers[i]``), for the errors.
    ``images``: how many images the teacher will embed, when known: ``runtime: auto`` moves a CPU
    torch teacher to onnxruntime (:func:`on_onnxruntime`) only when that is at least
    ``AUTO_MIN_IMAGES`` (the few-second export then pays for itself).
    """
    pre = Preprocessing(cfg.mean, cfg.std, cfg.channel_order, cfg.input_size)
    if cfg.type == "none":
        return None
    if cfg.type == "onnx":
        teacher = OnnxTeacher(cfg.onnx, pre, threads=threads)
    else:
        from facedistill.models.checkpoints import load_backbone

        try:
            loaded = load_backbone(cfg.checkpoint, arch=cfg.arch, embedding_size=cfg.embedding_size)
        except CheckpointError as e:
            raise CheckpointError(f"{key}.checkpoint: {e}") from None
        fp = _fingerprint(sha256_file(loaded.source), pre, {"kind": "torch", "arch": loaded.arch})
        teacher = TorchTeacher(loaded.model, pre, fp, f"{loaded.arch}:{loaded.source}", device)
        runtime = getattr(cfg, "runtime", "auto")
        worth_it = runtime == "onnxruntime" or images is None or images >= AUTO_MIN_IMAGES
        if runtime != "torch" and teacher.device.type == "cpu" and worth_it:
            fast = on_onnxruntime(teacher, threads)
            if fast is None and runtime == "onnxruntime":
                raise FaceDistillError(f"{key}.runtime is onnxruntime but {teacher.description} does not export "
                                       f"to an ONNX graph that keeps its embeddings (worst probe cosine < "
                                       f"{PARITY_COSINE}); use `{key}.runtime: torch` or auto")
            if fast is not None:
                fast.path = Path(loaded.source)  # what messages name, not the deleted temporary export
            teacher = fast or teacher
    if cfg.embedding_size is not None and teacher.embedding_size != cfg.embedding_size:
        raise FaceDistillError(f"{key}.embedding_size is {cfg.embedding_size} but the teacher outputs "
                               f"{teacher.embedding_size}-d embeddings; fix or remove the key")
    return teacher
