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
* activations at the input and the output (after the folded BatchNorm) of those convs: uint8
  asymmetric fake quantization with running min/max ranges, like the export's MinMax calibration;
* layers the export keeps float (``Int8Options.keep_float``: the stem, the head, depthwise convs
  and PReLU of a PReLU network by default) stay float here too.

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
    act_momentum: float = 0.05  # running min/max of the activation ranges
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


class _WeightFakeQuant:
    """Parametrization: symmetric per-output-channel fake quantization of a conv weight."""

    def __init__(self, bits: int) -> None:
        self.qmax = 64 if bits == 7 else 127

    def module(self) -> Any:
        import torch
        from torch import nn

        qmax = self.qmax

        class WeightFakeQuant(nn.Module):
            def forward(self, w: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    amax = w.detach().abs().flatten(1).amax(dim=1).clamp_min(1e-12)
                    scale = (amax / qmax).float()
                    zero = torch.zeros_like(scale, dtype=torch.int32)
                return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -qmax, qmax)

        return WeightFakeQuant()


def _activation_fake_quant(momentum: float) -> Any:
    """A uint8 asymmetric fake quantizer with running min/max (the export's MinMax calibration)."""
    import torch
    from torch import nn

    class ActivationFakeQuant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("lo", torch.tensor(0.0))
            self.register_buffer("hi", torch.tensor(0.0))
            self.register_buffer("seen", torch.tensor(False))
            self.observe = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.observe:
                with torch.no_grad():
                    lo, hi = x.detach().min().clamp_max(0), x.detach().max().clamp_min(0)
                    if bool(self.seen):
                        self.lo.lerp_(lo, momentum)
                        self.hi.lerp_(hi, momentum)
                    else:
                        self.lo.copy_(lo)
                        self.hi.copy_(hi)
                        self.seen.fill_(True)
            scale = float((self.hi - self.lo).clamp_min(1e-8)) / 255.0
            zero = int(min(255, max(0, round(-float(self.lo) / scale))))
            return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)

    return ActivationFakeQuant()


def _resolve_parts(model: Any, keep_float: Sequence[str]) -> set[str]:
    """Int8Options.keep_float parts as the export resolves them (``auto``: the PReLU defaults)."""
    from torch import nn

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
    import torch
    from torch import nn

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


def _following_norm(model: Any, conv_name: str) -> Any:
    """The BatchNorm right after a conv in the same Sequential (its output is the conv's int8 output)."""
    from torch import nn

    parent_name, _, child = conv_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.Sequential):
        names = list(parent._modules)
        i = names.index(child)
        if i + 1 < len(names) and isinstance(parent[i + 1], nn.BatchNorm2d):
            return parent[i + 1]
    return None


def _mean_cosine(a: Any, b: Any) -> float:
    import torch.nn.functional as F

    return float(F.cosine_similarity(a, b, dim=1).mean())


def qat_finetune(model: Any, images: Any, preprocess: Callable[[np.ndarray], np.ndarray],
                 options: QATOptions | None = None, keep_float: Sequence[str] = ("auto",), input_size: int = 112,
                 source: str = "", progress: Callable[[int, int, float], None] | None = None) -> tuple[Any, QATResult]:
    """Fine-tune a copy of ``model`` against its int8 simulation; returns (fp32 model, result).

    ``images``: uint8 (N, H, W, 3) RGB faces, an array or anything with ``len()`` and ``images(idx)``
    (a :class:`facedistill.data.packed.PackedDataset`); 64 of them (or an eighth, if fewer) are held
    out as the probe. ``preprocess``: uint8 NHWC -> float NCHW model input (the model's
    :class:`Preprocessing.apply`). ``keep_float``: the export's ``Int8Options.keep_float``.
    ``progress(step, steps, loss)`` is called after every step. ``model`` itself is not changed.
    """
    import torch
    import torch.nn.functional as F
    from torch.nn.utils import parametrize

    opts = (options or QATOptions()).validate()
    fetch = images.images if hasattr(images, "images") else (lambda idx: np.asarray(images)[idx])
    n = len(images)
    n_probe = min(64, max(1, n // 8))
    if n - n_probe < opts.batch_size:
        raise ExportError(f"QAT needs at least {opts.batch_size + n_probe} calibration faces ({opts.batch_size} "
                          f"per batch and {n_probe} held out), the set has {n}: pass a training set as --calib")
    rng = np.random.default_rng(opts.seed)
    perm = rng.permutation(n)
    probe_idx, train_idx = np.sort(perm[:n_probe]), perm[n_probe:]

    old_threads = torch.get_num_threads()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    start = time.time()
    try:
        teacher = copy.deepcopy(model).eval()
        student = copy.deepcopy(model).eval()  # eval: BatchNorm statistics frozen, as onnxruntime folds them
        for p in teacher.parameters():
            p.requires_grad_(False)
        quantized, kept = quantized_convs(student, keep_float, input_size)
        if not quantized:
            raise ExportError("QAT: no conv of this model runs int8 with these --int8-keep-float parts; "
                              "nothing to fine-tune")
        observers = []
        hooks = []
        for name in quantized:
            conv = student.get_submodule(name)
            parametrize.register_parametrization(conv, "weight", _WeightFakeQuant(opts.weight_bits).module())
            fq_in = _activation_fake_quant(opts.act_momentum)
            observers.append(fq_in)
            hooks.append(conv.register_forward_pre_hook(lambda mod, args, fq=fq_in: (fq(args[0]),) + args[1:]))
            out_mod = _following_norm(student, name) or conv
            fq_out = _activation_fake_quant(opts.act_momentum)
            observers.append(fq_out)
            hooks.append(out_mod.register_forward_hook(lambda mod, args, out, fq=fq_out: fq(out)))

        def batch(idx: np.ndarray, flip: np.ndarray | None = None) -> torch.Tensor:
            x = np.asarray(fetch(np.sort(idx)))
            if flip is not None and flip.any():
                x = x.copy()
                x[flip] = x[flip, :, ::-1]
            return torch.from_numpy(preprocess(x))

        x_probe = batch(probe_idx)
        with torch.no_grad():
            ref_probe = teacher(x_probe)
            student(batch(train_idx[: opts.batch_size]))  # first ranges from training faces, not the probe
            for fq in observers:
                fq.observe = False
            cos_before = _mean_cosine(student(x_probe), ref_probe)
            for fq in observers:
                fq.observe = True

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

        with torch.no_grad():
            for fq in observers:
                fq.observe = False
            cos_after = _mean_cosine(student(x_probe), ref_probe)
        for h in hooks:
            h.remove()
        for name in quantized:  # keep the trained latent fp32 weights, drop the fake quantization
            parametrize.remove_parametrizations(student.get_submodule(name), "weight", leave_parametrized=False)
        student.eval()
    finally:
        torch.set_num_threads(old_threads)
    result = QATResult(steps=opts.steps, images=opts.steps * opts.batch_size, seconds=round(time.time() - start, 1),
                       quantized_convs=len(quantized), float_convs=len(kept), cosine_before=round(cos_before, 6),
                       cosine_after=round(cos_after, 6), loss_first=round(losses[0], 6),
                       loss_last=round(float(np.mean(losses[-10:])), 6), source=source, options=asdict(opts))
    return student, result
