"""What an exported model says about itself, and a loader that refuses damaged exports.

Every ONNX file written by ``facedistill export`` carries these ``metadata_props`` (all strings):

==================== ===============================================================
key                  value
==================== ===============================================================
architecture         ``iresnet50``, ``mobilefacenet``, ...
embedding_size       ``512``
input_size           ``112`` (square; the graph input is ``N x 3 x 112 x 112``)
mean / std           ``127.5`` (or three comma-separated values, in the model's channel order)
channel_order        ``RGB`` or ``BGR``
facedistill_version  the version that wrote the file
recipe_hash          the training recipe's hash (empty when the checkpoint had none)
precision            ``fp32``, ``fp16`` or ``int8``
content_sha256       sha256 over the graph's ops and every weight (see :func:`content_digest`)
==================== ===============================================================

plus informative keys (``source``, ``opset``, ``int8_*`` settings, parity numbers).

``evaluate`` and ``benchmark`` read them with :func:`read_metadata`; :func:`check_onnx` is the
loader that every consumer should use: it refuses a truncated or garbled file with a clear message
instead of a protobuf traceback (or, worse, a model that loads and computes garbage).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from facedistill.errors import ExportError

__all__ = [
    "REQUIRED_KEYS",
    "PRECISIONS",
    "CheckedModel",
    "build_metadata",
    "check_onnx",
    "content_digest",
    "read_metadata",
    "set_metadata",
]

REQUIRED_KEYS: tuple[str, ...] = (
    "architecture", "embedding_size", "input_size", "mean", "std", "channel_order",
    "facedistill_version", "recipe_hash", "precision",
)
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
DIGEST_KEY = "content_sha256"
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"


def _number_text(value: Any) -> str:
    """127.5 -> '127.5'; (0.5, 0.5, 0.5) -> '0.5' ; (1, 2, 3) -> '1.0,2.0,3.0'."""
    if isinstance(value, (list, tuple)):
        vals = [float(v) for v in value]
        if len(vals) == 3 and vals[0] == vals[1] == vals[2]:
            return repr(vals[0])
        if len(vals) != 3:
            raise ExportError(f"mean/std must be one number or three, got {value!r}")
        return ",".join(repr(v) for v in vals)
    return repr(float(value))


def build_metadata(arch: str, embedding_size: int, preprocessing: Any, recipe_hash: str = "",
                   precision: str = "fp32", extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The metadata dict for one export. ``preprocessing`` has mean, std, channel_order, input_size."""
    from facedistill import __version__

    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    order = str(getattr(preprocessing, "channel_order", "RGB")).upper()
    if order not in ("RGB", "BGR"):
        raise ExportError(f"channel_order must be RGB or BGR, got {order!r}")
    meta = {
        "architecture": str(arch),
        "embedding_size": str(int(embedding_size)),
        "input_size": str(int(getattr(preprocessing, "input_size", 112))),
        "mean": _number_text(getattr(preprocessing, "mean", 127.5)),
        "std": _number_text(getattr(preprocessing, "std", 127.5)),
        "channel_order": order,
        "facedistill_version": __version__,
        "recipe_hash": str(recipe_hash or ""),
        "precision": precision,
    }
    for key, value in (extra or {}).items():
        meta[str(key)] = value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
    return meta


def content_digest(model: Any) -> str:
    """sha256 over every node (op, domain, inputs, outputs) and every initializer's values.

    Computed from the decoded tensors rather than from serialized bytes, so it does not depend on
    how a protobuf library lays the message out; any flipped weight byte or dropped node changes it.
    """
    from onnx import numpy_helper

    h = hashlib.sha256()
    g = model.graph
    for node in g.node:
        h.update(f"{node.domain}|{node.op_type}|{','.join(node.input)}|{','.join(node.output)}\n".encode())
        for attr in node.attribute:
            h.update(attr.SerializeToString(deterministic=True))
    for init in sorted(g.initializer, key=lambda t: t.name):
        arr = numpy_helper.to_array(init)
        h.update(f"{init.name}|{arr.dtype.str}|{arr.shape}\n".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def set_metadata(model: Any, meta: Mapping[str, str], digest: bool = True) -> Any:
    """Replace ``model.metadata_props`` with ``meta`` (plus ``content_sha256`` when ``digest``)."""
    values = dict(meta)
    values.pop(DIGEST_KEY, None)
    if digest:
        values[DIGEST_KEY] = content_digest(model)
    del model.metadata_props[:]
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key = str(key)
        entry.value = str(value)
    return model


def _load(path: Path, what: str) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    if not path.exists():
        raise ExportError(f"{path}: no such file")
    if path.is_dir():
        raise ExportError(f"{path}: is a folder, expected an .onnx file")
    size = path.stat().st_size
    if size == 0:
        raise ExportError(f"{path}: the file is empty (an interrupted write?); export the model again")
    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError, UnicodeDecodeError) as e:
        raise ExportError(f"{path}: not a readable ONNX model ({what}: {type(e).__name__}: {e}). The file is "
                          "truncated or garbled; export the model again with `facedistill export`.") from e


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (empty when it has none)."""
    model = _load(Path(path), "reading its metadata")
    return {p.key: p.value for p in model.metadata_props}


@dataclass
class CheckedModel:
    """What :func:`check_onnx` found: the metadata and the I/O signature of a sound export."""

    path: Path
    metadata: dict[str, str]
    opset: int
    input_name: str
    input_shape: list[Any]
    output_name: str
    output_shape: list[Any]
    size_bytes: int
    digest_checked: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def precision(self) -> str:
        return self.metadata.get("precision", "fp32")

    @property
    def dynamic_batch(self) -> bool:
        return not isinstance(self.input_shape[0], int)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "metadata": dict(self.metadata), "opset": self.opset,
                "input": {"name": self.input_name, "shape": self.input_shape},
                "output": {"name": self.output_name, "shape": self.output_shape},
                "size_bytes": self.size_bytes, "digest_checked": self.digest_checked,
                "warnings": list(self.warnings)}


def _shape(value_info: Any) -> list[Any]:
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return dims


def check_onnx(path: str | os.PathLike, require_metadata: bool = True, session: bool = True) -> CheckedModel:
    """Load an exported face model and refuse it, with a clear :class:`ExportError`, when it is damaged.

    Checks, in order: the file parses; ``onnx.checker`` accepts the graph; the weights match the
    ``content_sha256`` written at export (catches garbled bytes that still parse); one 4-D input and
    one 2-D output; the facedistill metadata keys (``require_metadata``); and that onnxruntime can
    build a session (``session``).
    """
    import onnx

    path = Path(path)
    model = _load(path, "parsing")
    hint = "export the model again with `facedistill export`"
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ExportError(f"{path}: the file holds no graph (truncated?); {hint}")
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # onnx raises ValidationError (and C++ errors as RuntimeError)
        raise ExportError(f"{path}: the ONNX checker refuses the model ({str(e).strip().splitlines()[0]}); "
                          f"the file is damaged or was not written by a complete export; {hint}") from e
    meta = {p.key: p.value for p in model.metadata_props}
    warnings: list[str] = []
    digest_checked = False
    if DIGEST_KEY in meta:
        got = content_digest(model)
        if got != meta[DIGEST_KEY]:
            raise ExportError(f"{path}: the weights do not match the checksum written at export "
                              f"({DIGEST_KEY}); the file was modified or garbled after it was written; {hint}")
        digest_checked = True
    elif require_metadata:
        warnings.append(f"no {DIGEST_KEY} in the metadata: the weights could not be verified")
    if require_metadata:
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise ExportError(f"{path}: missing facedistill metadata {', '.join(missing)}: the file was not "
                              f"written by `facedistill export` or is truncated; {hint}")
        if meta["precision"] not in PRECISIONS:
            raise ExportError(f"{path}: metadata precision={meta['precision']!r} is not one of {PRECISIONS}")
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ExportError(f"{path}: expected one image input and one embedding output, the graph has "
                          f"{len(inputs)} input(s) and {len(model.graph.output)} output(s)")
    in_shape, out_shape = _shape(inputs[0]), _shape(model.graph.output[0])
    if len(in_shape) != 4:
        raise ExportError(f"{path}: the input {inputs[0].name!r} has shape {in_shape}; expected N x 3 x H x W")
    if out_shape and len(out_shape) != 2:
        raise ExportError(f"{path}: the output {model.graph.output[0].name!r} has shape {out_shape}; "
                          "expected N x embedding_size")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if session:
        import onnxruntime as ort

        try:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own exception types
            raise ExportError(f"{path}: onnxruntime {ort.__version__} cannot load the model "
                              f"({str(e).strip().splitlines()[0]}); {hint}") from e
    return CheckedModel(path=path, metadata=meta, opset=opset, input_name=inputs[0].name,
                        input_shape=in_shape, output_name=model.graph.output[0].name, output_shape=out_shape,
                        size_bytes=path.stat().st_size, digest_checked=digest_checked, warnings=warnings)
