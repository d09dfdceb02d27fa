"""Quantization-aware fine-tuning (QAT): the fp32 student teaches its own int8 simulation.

Post-training quantization rounds a briefly trained student's weights and activations wherever they
fall; when that costs too much accuracy (the export's gate refuses the int8 file, or mixed precision
has to keep most layers float) a short fine-tuning with the rounding *in the forward pass* lets the
weights move to where rounding hurts less. The simulation mirrors what the int8 export will do with
onnxruntime, layer by layer:

* weights of every conv that will run int8: symmetric per-output-channel fake quantization with the
  export's range (7-bit weights: ``[-64, 64]``, scale ``max|w| / 64``, as onnxruntime's
  ``reduce_range``; 8-bit: ``[-127, 127]``). BatchNorm stays in eval mode, so its frozen statistics
  fold into the conv exactly as onnxruntime folds them, and per-channel scales make quantizing the
  unfolded weight the same as quantizing the folded one;
* activations at the input and the output (after the folded BatchNorm) of those convs, and at the
  output of residual Adds (QLinearAdd): uint8 asymmetric fake quantization whose ranges are set
  MinMax-style on batches of training faces (the export's `--int8-calib-method minmax`; its default,
  percentile 99.999, clips a few more outliers), and held fixed in training;
* PReLU, when the export quantizes it (``--int8-keep-float none``/``stem,head``): the fused rewrite
  ``s*x + relu((1-s)*x)`` with its constants and its three intermediate tensors quantized;
* LeakyReLU (the ``*_leaky`` students): its output quantized (onnxruntime's QLinearLeakyRelu
  requantizes after the conv's int8 output);
* the Linear head: weight-only 8-bit when it stays float, a quantized-input QGemm otherwise;
* layers the export keeps float (``Int8Options.keep_float``: the stem, the head, depthwise convs
  and PReLU of a PReLU network by default) stay float here too.

The first version simulated only the convs (weights, input, output). On the LFW student's all-int8
graph it predicted a cosine of 0.988 where onnxruntime measured 0.982, and 100 steps that raised the
simulated cosine to 0.990 left onnxruntime's at 0.982: the damage it could not see (PReLU, residual
Adds, head) was most of it. Measurements: docs/results.md.

The loss is embedding distillation from the frozen fp32 copy of the same student (``1 - cosine`` of
the L2-normalised embeddings) on real faces from the calibration set, with random flips. No labels
are needed. After fine-tuning, the fake quantization is removed: what comes back is an ordinary fp32
backbone with the same parameter names, whose weights onnxruntime's static quantizer then rounds to
the grid they were trained on (:func:`facedistill.export.export_model` with ``qat=...``).

Fake quantization is written with ``torch.fake_quantize_per_*_affine`` (straight-through gradients)
rather than ``torch.ao.quantization``'s eager-mode QAT flow: the latter swaps modules for quantized
ones and exports its own quantized ops, while here the export path stays the one every int8 model
takes (onnxruntime QDQ), and the fine-tuned model is a plain state dict.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from facedistill.errors import ExportError

__all__ = ["QATOptions", "QATResult", "qat_finetune", "quantized_convs"]

QAT_PARTS = ("stem", "head", "depthwise", "prelu", "auto")


@dataclass
class QATOptions:
    """Settings of :func:`qat_finetune` (CLI: ``facedistill export --int8 --qat-steps N``)."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3  # SGD with momentum 0.9, cosine decay to 0
    weight_bits: int = 7  # 7 or 8, as the export's --int8-weight-bits
    calib_batches: int = 8  # batches of faces that set the activation ranges (MinMax), before and after
    flip: bool = True
    seed: int = 0
    threads: int | None = None

    def validate(self) -> "QATOptions":
        if self.steps < 1:
            raise ExportError(f"QAT steps must be >= 1, got {self.steps}")
        if self.batch_size < 2:
            raise ExportError(f"QAT batch size must be >= 2, got {self.batch_size}")
        if not self.lr > 0:
            raise ExportError(f"QAT learning rate must be > 0, got {self.lr}")
        if self.weight_bits not in (7, 8):
            raise ExportError(f"QAT weight bits must be 7 or 8, got {self.weight_bits}")
        return self


@dataclass
class QATResult:
    """What :func:`qat_finetune` did; ``cosine_*``: mean cosine of the int8 simulation to fp32 on
    held-out probe faces (not trained on), before and after fine-tuning."""

    steps: int
    images: int
    seconds: float
    quantized_convs: int
    float_convs: int
    cosine_before: float
    cosine_after: float
    loss_first: float
    loss_last: float
    source: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _weight_qmax(bits: int) -> int:
    return 64 if bits == 7 else 127  # onnxruntime: reduce_range int8 is [-64, 64], symmetric int8 [-127, 127]


class WeightFakeQuant(nn.Module):
    """Parametrization: symmetric fake quantization of a weight, per output channel (dim 0) or per tensor."""

    def __init__(self, bits: int, per_channel: bool = True) -> None:
        super().__init__()
        self.qmax = _weight_qmax(bits)
        self.per_channel = per_channel

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.per_channel:
            scale = float(w.detach().abs().max().clamp_min(1e-12)) / self.qmax
            return torch.fake_quantize_per_tensor_affine(w, scale, 0, -self.qmax, self.qmax)
        with torch.no_grad():  # the scale follows the weight; the gradient goes to the weight only
            amax = w.detach().abs().flatten(1).amax(dim=1).clamp_min(1e-12)
            scale = (amax / self.qmax).float()
            zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -self.qmax, self.qmax)


class ActivationFakeQuant(nn.Module):
    """uint8 asymmetric fake quantization with a min/max range, observed like the export's MinMax
    calibration: while ``observe`` is on, the range grows to cover every value seen."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.observe = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observe:
            with torch.no_grad():
                self.lo.copy_(torch.minimum(self.lo, x.detach().min()))
                self.hi.copy_(torch.maximum(self.hi, x.detach().max()))
        scale = float((self.hi - self.lo).clamp_min(1e-8)) / 255.0
        zero = int(min(255, max(0, round(-float(self.lo) / scale))))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


class FakeQuantPReLU(nn.Module):
    """A PReLU as the int8 export runs it (``--int8-prelu fused``): ``s*x + relu((1-s)*x)`` with the two
    constants quantized like weights and the two products and their sum quantized like activations.
    Holds the original module, whose slope is what trains."""

    def __init__(self, prelu: nn.PReLU, bits: int) -> None:
        super().__init__()
        self.prelu = prelu
        self.const = WeightFakeQuant(bits, per_channel=False)
        self.fq_sx, self.fq_ax, self.fq_out = ActivationFakeQuant(), ActivationFakeQuant(), ActivationFakeQuant()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.prelu.weight.view(1, -1, *([1] * (x.dim() - 2)))
        sx = self.fq_sx(x * self.const(s))
        ax = self.fq_ax(torch.relu(x * self.const(1.0 - s)))
        return self.fq_out(sx + ax)


def _resolve_parts(model: Any, keep_float: Sequence[str]) -> set[str]:
    """Int8Options.keep_float parts as the export resolves them (``auto``: the PReLU defaults)."""
    from facedistill.export.quantize import KEEP_FLOAT_PARTS

    parts = {p for p in keep_float if p in QAT_PARTS}
    if "auto" in parts:
        parts.discard("auto")
        if any(isinstance(m, nn.PReLU) for m in model.modules()):
            parts |= set(KEEP_FLOAT_PARTS)
    return parts


def quantized_convs(model: Any, keep_float: Sequence[str] = ("auto",), input_size: int = 112) -> tuple[list[str], list[str]]:
    """(convs the int8 export quantizes, convs it keeps float), by module name.

    ``stem``: the first conv run; ``head``: convs whose output is 1x1 (MobileFaceNet's global
    depthwise conv); ``depthwise``: grouped convs. Names of ONNX nodes in ``keep_float`` do not map
    to modules and are ignored here (the export still keeps them float).
    """

    parts = _resolve_parts(model, keep_float)
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    order: list[str] = []
    spatial: dict[str, int] = {}
    def record(name: str) -> Callable[..., None]:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            order.append(name)
            spatial[name] = int(output.shape[-1] * output.shape[-2])
        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in convs.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    quantized, kept = [], []
    for name in order:
        m = convs[name]
        is_float = (("stem" in parts and name == order[0])
                    or ("head" in parts and spatial[name] == 1)
                    or ("depthwise" in parts and m.groups > 1))
        (kept if is_float else quantized).append(name)
    return quantized, kept


def _modules_after(model: Any, conv_name: str) -> list[nn.Module]:
    """The siblings after a conv in its Sequential (empty when its parent is not a Sequential)."""
    parent_name, _, child = conv_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not isinstance(parent, nn.Sequential):
        return []
    names = list(parent._modules)
    return [parent._modules[n] for n in names[names.index(child) + 1:]]


def _following_norm(model: Any, conv_name: str) -> Any:
    """The BatchNorm right after a conv in the same Sequential (its output is the conv's int8 output)."""
    after = _modules_after(model, conv_name)
    return after[0] if after and isinstance(after[0], nn.BatchNorm2d) else None


def _following_activation(model: Any, conv_name: str) -> Any:
    """The activation after a conv (and its BatchNorm) in the same Sequential, or None."""
    for module in _modules_after(model, conv_name):
        if isinstance(module, (nn.LeakyReLU, nn.PReLU, nn.ReLU, nn.ReLU6)):
            return module
        if not isinstance(module, nn.BatchNorm2d):
            break
    return None


def _mean_cosine(a: Any, b: Any) -> float:
    import torch.nn.functional as F

    return float(F.cosine_similarity(a, b, dim=1).mean())


class _Simulation:
    """The int8 simulation installed on a model (hooks, parametrizations, swapped PReLUs) and its removal."""

    def __init__(self, model: nn.Module, quantized: list[str], parts: set[str], bits: int,
                 float_modules: Sequence[nn.Module] = ()) -> None:
        from torch.nn.utils import parametrize

        float_ids = {id(m) for m in float_modules}  # activations the export keeps float (the stem's)

        self.model, self.quantized = model, quantized
        self.observers: list[ActivationFakeQuant] = []
        self.hooks: list[Any] = []
        self.parametrized: list[nn.Module] = []
        self.swapped: list[tuple[nn.Module, str, nn.Module]] = []

        def observer() -> ActivationFakeQuant:
            fq = ActivationFakeQuant()
            self.observers.append(fq)
            return fq

        def quantize_input(module: nn.Module) -> None:
            fq = observer()
            self.hooks.append(module.register_forward_pre_hook(lambda mod, args, fq=fq: (fq(args[0]),) + args[1:]))

        def quantize_output(module: nn.Module) -> None:
            fq = observer()
            self.hooks.append(module.register_forward_hook(lambda mod, args, out, fq=fq: fq(out)))

        for name in quantized:  # int8 convs: weights, input, output (after the BatchNorm folded into them)
            conv = model.get_submodule(name)
            parametrize.register_parametrization(conv, "weight", WeightFakeQuant(bits))
            self.parametrized.append(conv)
            quantize_input(conv)
            quantize_output(_following_norm(model, name) or conv)
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.Linear):
                # the head: float with weight-only int8 (8-bit, per output channel) when kept float,
                # else a QGemm with the export's weight bits and quantized input
                parametrize.register_parametrization(module, "weight",
                                                     WeightFakeQuant(8 if "head" in parts else bits))
                self.parametrized.append(module)
                if "head" not in parts:
                    quantize_input(module)
            elif getattr(module, "residual", False) is True or type(module).__name__ == "IBasicBlock":
                quantize_output(module)  # the residual Add runs as QLinearAdd
            elif isinstance(module, nn.LeakyReLU) and id(module) not in float_ids:
                quantize_output(module)  # QLinearLeakyRelu: its own output range
            elif isinstance(module, nn.PReLU) and "prelu" not in parts:
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                wrapped = FakeQuantPReLU(module, bits)
                self.observers += [wrapped.fq_sx, wrapped.fq_ax, wrapped.fq_out]
                parent._modules[child] = wrapped
                self.swapped.append((parent, child, module))

    def calibrate(self, batches: Any) -> None:
        """Reset every activation range and set it from ``batches`` (MinMax, as ``--int8-calib-method minmax``)."""
        for fq in self.observers:
            fq.lo.zero_()
            fq.hi.zero_()
            fq.observe = True
        with torch.no_grad():
            for x in batches:
                self.model(x)
        for fq in self.observers:
            fq.observe = False

    def remove(self) -> None:
        """Back to a plain fp32 model with the trained (latent) weights and the original modules."""
        from torch.nn.utils import parametrize

        for h in self.hooks:
            h.remove()
        for module in self.parametrized:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        for parent, child, original in self.swapped:
            parent._modules[child] = original


def qat_finetune(model: Any, images: Any, preprocess: Callable[[np.ndarray], np.ndarray],
                 options: QATOptions | None = None, keep_float: Sequence[str] = ("auto",), input_size: int = 112,
                 source: str = "", progress: Callable[[int, int, float], None] | None = None) -> tuple[Any, QATResult]:
    """Fine-tune a copy of ``model`` against its int8 simulation; returns (fp32 model, result).

    ``images``: uint8 (N, H, W, 3) RGB faces, an array or anything with ``len()`` and ``images(idx)``
    (a :class:`facedistill.data.packed.PackedDataset`); 64 of them (or an eighth, if fewer) are held
    out as the probe. ``preprocess``: uint8 NHWC -> float NCHW model input (the model's
    :class:`Preprocessing.apply`). ``keep_float``: the export's ``Int8Options.keep_float``.
    ``progress(step, steps, loss)`` is called after every step. ``model`` itself is not changed.
    The activation ranges are set MinMax-style on ``calib_batches`` batches of training faces before
    training (and held fixed while it runs) and again at the end.
    """
    opts = (options or QATOptions()).validate()
    rng = np.random.default_rng(opts.seed)
    batch, probe_idx, train_idx = _split_faces(images, preprocess, opts, rng)
    calib_idx = train_idx[: opts.calib_batches * opts.batch_size]
    calib_batches = [calib_idx[i:i + opts.batch_size] for i in range(0, len(calib_idx), opts.batch_size)]

    old_threads = torch.get_num_threads()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    start = time.time()
    try:
        teacher, student, sim, quantized, kept = _simulated_student(model, keep_float, input_size, opts)
        x_probe = batch(probe_idx)
        with torch.no_grad():
            ref_probe = teacher(x_probe)
        sim.calibrate(batch(idx) for idx in calib_batches)
        with torch.no_grad():
            cos_before = _mean_cosine(student(x_probe), ref_probe)
        losses = _train(student, teacher, batch, train_idx, rng, opts, progress)
        sim.calibrate(batch(idx) for idx in calib_batches)  # the export recalibrates the tuned weights
        with torch.no_grad():
            cos_after = _mean_cosine(student(x_probe), ref_probe)
        sim.remove()
        student.eval()
    finally:
        torch.set_num_threads(old_threads)
    result = QATResult(steps=opts.steps, images=opts.steps * opts.batch_size, seconds=round(time.time() - start, 1),
                       quantized_convs=len(quantized), float_convs=len(kept), cosine_before=round(cos_before, 6),
                       cosine_after=round(cos_after, 6), loss_first=round(losses[0], 6),
                       loss_last=round(float(np.mean(losses[-10:])), 6), source=source, options=asdict(opts))
    return student, result


def _split_faces(images: Any, preprocess: Callable[[np.ndarray], np.ndarray], opts: QATOptions,
                 rng: np.random.Generator) -> tuple[Callable[..., torch.Tensor], np.ndarray, np.ndarray]:
    """(batch(idx, flip) -> model input, probe indices, training indices): 64 faces (or an eighth) held out."""
    fetch = images.images if hasattr(images, "images") else (lambda idx: np.asarray(images)[idx])
    n = len(images)
    n_probe = min(64, max(1, n // 8))
    if n - n_probe < opts.batch_size:
        raise ExportError(f"QAT needs at least {opts.batch_size + n_probe} calibration faces ({opts.batch_size} "
                          f"per batch and {n_probe} held out), the set has {n}: pass a training set as --calib")
    perm = rng.permutation(n)
    probe_idx, train_idx = np.sort(perm[:n_probe]), perm[n_probe:]

    def batch(idx: np.ndarray, flip: np.ndarray | None = None) -> torch.Tensor:
        x = np.asarray(fetch(np.sort(idx)))
        if flip is not None and flip.any():
            x = x.copy()
            x[flip] = x[flip, :, ::-1]
        return torch.from_numpy(preprocess(x))

    return batch, probe_idx, train_idx


def _simulated_student(model: Any, keep_float: Sequence[str], input_size: int,
                       opts: QATOptions) -> tuple[Any, Any, "_Simulation", list[str], list[str]]:
    """A frozen copy of ``model`` (the teacher) and a copy running its int8 simulation (the student)."""
    teacher = copy.deepcopy(model).eval()
    student = copy.deepcopy(model).eval()  # eval: BatchNorm statistics frozen, as onnxruntime folds them
    for p in teacher.parameters():
        p.requires_grad_(False)
    parts = _resolve_parts(student, keep_float)
    quantized, kept = quantized_convs(student, keep_float, input_size)
    if not quantized:
        raise ExportError("QAT: no conv of this model runs int8 with these --int8-keep-float parts; "
                          "nothing to fine-tune")
    # a float stem keeps its activation float too (find_stem_nodes in the export)
    stem_act = _following_activation(student, kept[0]) if "stem" in parts and kept else None
    sim = _Simulation(student, quantized, parts, opts.weight_bits,
                      float_modules=[stem_act] if stem_act is not None else [])
    return teacher, student, sim, quantized, kept


def _train(student: Any, teacher: Any, batch: Callable[..., torch.Tensor], train_idx: np.ndarray,
           rng: np.random.Generator, opts: QATOptions,
           progress: Callable[[int, int, float], None] | None) -> list[float]:
    """``opts.steps`` SGD steps on 1 - cosine to the fp32 teacher; the loss of each step."""
    import torch.nn.functional as F

    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=opts.lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, opts.steps)
    losses = []
    order = rng.permutation(train_idx)
    pos = 0
    for step in range(opts.steps):
        if pos + opts.batch_size > len(order):
            order, pos = rng.permutation(train_idx), 0
        idx = order[pos:pos + opts.batch_size]
        pos += opts.batch_size
        flip = rng.random(len(idx)) < 0.5 if opts.flip else None
        x = batch(idx, flip)
        with torch.no_grad():
            target = F.normalize(teacher(x), dim=1)
        loss = (1.0 - (F.normalize(student(x), dim=1) * target).sum(dim=1)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if progress:
            progress(step + 1, opts.steps, losses[-1])
    return losses
