"""Does the exported model compute what the PyTorch model computes? Per-image cosine gates and,
when they fail, where the two first part ways.

:func:`compare_embeddings` gives the worst and mean per-image cosine of two embedding sets.
:func:`locate_divergence` runs one image through PyTorch (hooks on every module) and through a
debug copy of the ONNX graph in which every node output is also a graph output (onnxruntime with
graph optimisations off, so each tensor is the one in the file), then walks the ONNX nodes in order
and reports the first node whose output matches no PyTorch activation of the same shape while all of
its inputs still do: that node, its op type and the PyTorch module next to it are where to look.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

from facedistill.errors import ExportError

__all__ = [
    "Divergence",
    "ParityResult",
    "compare_embeddings",
    "cosine_rows",
    "locate_divergence",
    "ort_session",
    "run_onnx",
    "run_torch",
]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows (float64). Two zero rows count as equal (1.0)."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    if a.shape != b.shape:
        raise ExportError(f"cannot compare embeddings of shapes {a.shape} and {b.shape}")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    dot = np.einsum("ij,ij->i", a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (na * nb)
    both_zero = (na == 0) & (nb == 0)
    cos = np.where(both_zero, 1.0, cos)
    cos = np.where(np.isfinite(cos), cos, -1.0)  # NaN/inf outputs count as total disagreement
    return np.clip(cos, -1.0, 1.0)


@dataclass
class ParityResult:
    """Per-image cosine between a reference and a candidate embedding set."""

    worst: float
    mean: float
    images: int
    worst_index: int
    threshold: float
    statistic: str  # which number the gate looks at: "worst" or "mean"
    passed: bool
    max_abs_diff: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_embeddings(reference: np.ndarray, candidate: np.ndarray, threshold: float,
                       statistic: str = "worst") -> ParityResult:
    if statistic not in ("worst", "mean"):
        raise ValueError("statistic must be 'worst' or 'mean'")
    cos = cosine_rows(reference, candidate)
    worst_i = int(np.argmin(cos))
    value = float(cos[worst_i]) if statistic == "worst" else float(cos.mean())
    diff = np.abs(np.asarray(reference, np.float64) - np.asarray(candidate, np.float64))
    return ParityResult(worst=float(cos[worst_i]), mean=float(cos.mean()), images=int(len(cos)),
                        worst_index=worst_i, threshold=float(threshold), statistic=statistic,
                        passed=bool(value >= threshold),
                        max_abs_diff=float(np.nanmax(diff)) if diff.size else 0.0)


# ----------------------------------------------------------------------------------------------
# running models
# ----------------------------------------------------------------------------------------------
def ort_session(model: str | os.PathLike | bytes | Any, threads: int | None = None, optimize: bool = True):
    """An onnxruntime CPU session from a path, serialized bytes or an ``onnx.ModelProto``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif not isinstance(model, (bytes, bytearray)):
        model = str(model)
    try:
        return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types
        raise ExportError(f"onnxruntime {ort.__version__} cannot load the exported model: "
                          f"{str(e).strip().splitlines()[0]}") from e


def run_onnx(session: Any, x: np.ndarray, batch: int = 32) -> np.ndarray:
    """Raw outputs of a one-input model on float32 NCHW ``x``, in batches (any batch size works
    only with a dynamic batch axis; a fixed-batch model is fed exactly its size, zero-padded)."""
    inp = session.get_inputs()[0]
    dim0 = inp.shape[0]
    fixed = dim0 if isinstance(dim0, int) and dim0 > 0 else None
    step = fixed or batch
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    outs = []
    for i in range(0, len(x), step):
        chunk = np.ascontiguousarray(x[i:i + step], dtype=dtype)
        n = len(chunk)
        if fixed and n < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - n,) + chunk.shape[1:], dtype)])
        outs.append(np.asarray(session.run(None, {inp.name: chunk})[0], dtype=np.float32)[:n])
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def run_torch(model: Any, x: np.ndarray, batch: int = 32) -> np.ndarray:
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            y = model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch], dtype=np.float32)))
            if isinstance(y, (tuple, list)):
                y = y[0]
            outs.append(y.detach().float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


# ----------------------------------------------------------------------------------------------
# localisation
# ----------------------------------------------------------------------------------------------
@dataclass
class Divergence:
    """Where an ONNX graph first departs from the PyTorch model."""

    node: str
    op_type: str
    tensor: str
    cosine: float
    last_matching_module: str | None
    nearest_module: str | None
    debug_model: str | None
    checked_tensors: int

    def describe(self) -> str:
        where = f"node {self.node!r} (op {self.op_type}), output {self.tensor!r}"
        s = (f"The first tensor that diverges is {where}: cosine {self.cosine:.4f} to the closest PyTorch "
             f"activation of that shape, while the node's inputs still match PyTorch")
        if self.last_matching_module:
            s += (f"; the last PyTorch module that still matches is {self.last_matching_module!r}, so the "
                  f"difference arises in this node or in the PyTorch code that runs between that module and it")
        s += ". Look at that code's forward(): Python control flow on tensor values, .item()/.tolist() or " \
             "numpy calls are frozen into constants by the exporter, and custom ops may be translated differently"
        if self.debug_model:
            s += f". A debug copy with every node output exposed is at {self.debug_model}"
        return s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _record_torch_tensors(torch_model: Any, x: np.ndarray) -> dict[tuple[int, ...], list[tuple[str, np.ndarray]]]:
    """Every floating-point tensor the PyTorch forward produces (module outputs *and* functional ops
    such as ``x + y`` or ``torch.flatten``), keyed by shape, labelled ``module.path (op)``."""
    import torch
    from torch.overrides import TorchFunctionMode

    acts: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = {}
    stack: list[str] = []

    def keep(label: str, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.is_floating_point() and out.dim() >= 1 \
                and out.shape[0] == x.shape[0]:
            arr = out.detach().float().cpu().numpy()
            acts.setdefault(tuple(arr.shape), []).append(
                (label, arr.reshape(arr.shape[0], -1).astype(np.float64)))

    class _Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = getattr(func, "__name__", str(func))
            if not name.startswith("__get") and name not in ("size", "dim", "numel", "item"):
                keep(f"{stack[-1] if stack else '<model>'} ({name})", out)
            return out

    def enter(label: str):
        def pre_hook(_module: Any, _inputs: Any) -> None:
            stack.append(label)
        return pre_hook

    def leave(_module: Any, _inputs: Any, _output: Any) -> None:  # must return None (else replaces output)
        if stack:
            stack.pop()

    handles = []
    for name, module in torch_model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(name or "<model>")))
        handles.append(module.register_forward_hook(leave))
    try:
        torch_model.eval()
        with torch.no_grad(), _Recorder():
            torch_model(torch.from_numpy(x))
    finally:
        for h in handles:
            h.remove()
    return acts


def _debug_copy(model: Any) -> Any:
    import onnx

    dbg = onnx.ModelProto()
    dbg.CopyFrom(model)
    existing = {o.name for o in dbg.graph.output}
    for node in dbg.graph.node:
        for name in node.output:
            if name and name not in existing:
                dbg.graph.output.append(onnx.ValueInfoProto(name=name))
                existing.add(name)
    return dbg


def locate_divergence(torch_model: Any, onnx_model: Any, x: np.ndarray, threshold: float = 0.999,
                      debug_path: str | os.PathLike | None = None,
                      progress: Callable[[str], None] | None = None) -> Divergence | None:
    """Find the first ONNX node whose output diverges from every same-shape PyTorch activation.

    ``x``: one or a few preprocessed images (float32 NCHW); use the worst image of the parity check.
    ``debug_path``: where to keep the debug copy (every node output exposed); not kept when None.
    Returns None when every comparable tensor matches (the difference is then only in the output).
    """
    import onnx

    x = np.ascontiguousarray(x[:2], dtype=np.float32)
    if isinstance(onnx_model, (str, os.PathLike)):
        onnx_model = onnx.load(str(onnx_model))
    acts = _record_torch_tensors(torch_model, x)
    if progress:
        progress("running the ONNX debug copy")
    dbg = _debug_copy(onnx_model)
    debug_file = None
    if debug_path is not None:
        try:
            onnx.save(dbg, str(debug_path))
            debug_file = str(debug_path)
        except OSError:
            debug_file = None
    sess = ort_session(dbg, optimize=False)
    input_name = sess.get_inputs()[0].name
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(None, {input_name: x})))

    status: dict[str, bool | None] = {}  # True = matches, False = diverges, None = no counterpart
    best_module: dict[str, str | None] = {}
    stacked: dict[tuple[int, ...], tuple[list[str], np.ndarray]] = {}
    last_good_module: str | None = None
    checked = 0
    for node in onnx_model.graph.node:
        for out_name in node.output:
            val = values.get(out_name)
            if val is None or not np.issubdtype(np.asarray(val).dtype, np.floating):
                status[out_name] = None
                continue
            arr = np.asarray(val, dtype=np.float64)
            cands = acts.get(tuple(arr.shape), [])
            if not cands or arr.ndim == 0 or arr.shape[0] != x.shape[0]:
                status[out_name] = None
                continue
            if tuple(arr.shape) not in stacked:
                stacked[tuple(arr.shape)] = ([c[0] for c in cands], _unit(np.stack([c[1] for c in cands])))
            labels, refs = stacked[tuple(arr.shape)]
            flat = _unit(arr.reshape(arr.shape[0], -1))
            cos = np.einsum("knd,nd->kn", refs, flat).min(axis=1)  # worst image, per candidate
            k = int(np.argmax(cos))
            best, best_name = float(cos[k]), labels[k]
            checked += 1
            status[out_name] = best >= threshold
            best_module[out_name] = best_name
            if status[out_name]:
                last_good_module = best_name
                continue
            inputs_ok = all(status.get(i) is not False for i in node.input if i)
            if inputs_ok:
                return Divergence(node=node.name or out_name, op_type=node.op_type, tensor=out_name,
                                  cosine=best, last_matching_module=last_good_module,
                                  nearest_module=best_name, debug_model=debug_file, checked_tensors=checked)
    return None


def _unit(a: np.ndarray) -> np.ndarray:
    """Rows (last axis) scaled to unit length; zero rows stay zero."""
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    return np.where(n > 0, a / np.where(n > 0, n, 1.0), 0.0)


def worst_images(cos: Sequence[float], k: int = 1) -> list[int]:
    return [int(i) for i in np.argsort(np.asarray(cos))[:k]]


__all__ += ["worst_images"]
