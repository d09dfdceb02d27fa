"""Read what a benchmark needs from an ONNX file without the ``onnx`` package.

The slim runtime image ships onnxruntime but not ``onnx``; this walks the protobuf wire format just
far enough to list the op types, the initializer data types, the metadata properties and the
external-data files. Tensor payloads are skipped, never copied (the file is memory-mapped).
"""

from __future__ import annotations

import json
import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

# onnx.TensorProto.DataType values
_FLOAT, _UINT8, _INT8, _FLOAT16, _BFLOAT16, _INT4, _UINT4 = 1, 2, 3, 10, 16, 22, 21
_DTYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
                9: "bool", 10: "float16", 11: "float64", 16: "bfloat16", 21: "uint4", 22: "int4"}

# Operator-oriented (QOperator) and integer ops: the graph computes in int8.
QOPERATOR_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearAveragePool",
    "QLinearGlobalAveragePool", "QLinearConcat", "QLinearLeakyRelu", "QLinearSigmoid",
    "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere", "QGemm", "QAttention",
    "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
    "DynamicQuantizeLinear", "DynamicQuantizeLSTM",
})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


class OnnxParseError(ValueError):
    pass


@dataclass
class OnnxSummary:
    op_counts: dict[str, int] = field(default_factory=dict)
    initializer_dtypes: dict[str, int] = field(default_factory=dict)  # dtype name -> count
    metadata: dict[str, str] = field(default_factory=dict)
    external_files: list[str] = field(default_factory=list)
    opsets: dict[str, int] = field(default_factory=dict)
    producer: str = ""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise OnnxParseError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise OnnxParseError("varint too long")


def _fields(buf: memoryview, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value); length-delimited values come as (start, end)."""
    pos, end = start, len(buf) if end is None else end
    while pos < end:
        key, pos = _varint(buf, pos)
        fno, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 1:
            val, pos = None, pos + 8
        elif wt == 2:
            n, pos = _varint(buf, pos)
            val = (pos, pos + n)
            pos += n
        elif wt == 5:
            val, pos = None, pos + 4
        else:
            raise OnnxParseError(f"unsupported wire type {wt}: not an ONNX model")
        if pos > end:
            raise OnnxParseError("truncated message: not an ONNX model, or a partial download")
        yield fno, wt, val


def _str(buf: memoryview, span: tuple[int, int]) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", "replace")


def _key_values(buf: memoryview, span: tuple[int, int]) -> tuple[str, str]:
    k = v = ""
    for fno, wt, val in _fields(buf, *span):
        if wt == 2 and fno == 1:
            k = _str(buf, val)
        elif wt == 2 and fno == 2:
            v = _str(buf, val)
    return k, v


def _tensor(buf: memoryview, span: tuple[int, int], out: OnnxSummary) -> None:
    dtype = _FLOAT
    for fno, wt, val in _fields(buf, *span):
        if fno == 2 and wt == 0:
            dtype = val
        elif fno == 13 and wt == 2:  # external_data
            k, v = _key_values(buf, val)
            if k == "location" and v not in out.external_files:
                out.external_files.append(v)
    name = _DTYPE_NAMES.get(dtype, str(dtype))
    out.initializer_dtypes[name] = out.initializer_dtypes.get(name, 0) + 1


def _graph(buf: memoryview, span: tuple[int, int], out: OnnxSummary, depth: int = 0) -> None:
    if depth > 16:
        return
    for fno, wt, val in _fields(buf, *span):
        if wt != 2:
            continue
        if fno == 1:  # node
            for nfno, nwt, nval in _fields(buf, *val):
                if nfno == 4 and nwt == 2:
                    op = _str(buf, nval)
                    out.op_counts[op] = out.op_counts.get(op, 0) + 1
                elif nfno == 5 and nwt == 2:  # attribute: may hold subgraphs (If / Loop / Scan)
                    for afno, awt, aval in _fields(buf, *nval):
                        if awt == 2 and afno in (6, 11):
                            _graph(buf, aval, out, depth + 1)
        elif fno == 5:  # initializer
            _tensor(buf, val, out)
        elif fno == 15:  # sparse_initializer: values is field 1
            for sfno, swt, sval in _fields(buf, *val):
                if sfno == 1 and swt == 2:
                    _tensor(buf, sval, out)


def summarize_onnx(path: str | Path) -> OnnxSummary:
    """Op counts, initializer dtypes, metadata and external-data files of an ONNX model."""
    path = Path(path)
    out = OnnxSummary()
    with open(path, "rb") as f:
        if path.stat().st_size == 0:
            raise OnnxParseError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            buf = memoryview(mm)
            try:
                seen_graph = False
                for fno, wt, val in _fields(buf):
                    if fno == 7 and wt == 2:
                        _graph(buf, val, out)
                        seen_graph = True
                    elif fno == 14 and wt == 2:
                        k, v = _key_values(buf, val)
                        out.metadata[k] = v
                    elif fno == 8 and wt == 2:
                        domain, version = "", 0
                        for ofno, owt, oval in _fields(buf, *val):
                            if ofno == 1 and owt == 2:
                                domain = _str(buf, oval)
                            elif ofno == 2 and owt == 0:
                                version = oval
                        out.opsets[domain or "ai.onnx"] = version
                    elif fno == 2 and wt == 2:
                        out.producer = _str(buf, val)
                if not seen_graph:
                    raise OnnxParseError("no graph found: not an ONNX model")
            finally:
                buf.release()
    return out


def _metadata_precision(meta: dict[str, str]) -> str | None:
    for key in ("precision", "facedistill.precision", "facedistill_precision"):
        if meta.get(key):
            return meta[key].strip().lower()
    for value in meta.values():  # a JSON blob written by an exporter: {"precision": "int8", ...}
        if value.startswith("{"):
            try:
                obj = json.loads(value)
            except ValueError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("precision"), str):
                return obj["precision"].strip().lower()
    return None


def graph_precision(summary: OnnxSummary) -> tuple[str, str]:
    """(precision, detail) judged from the graph: QLinear / QDQ ops -> int8, fp16 weights -> fp16."""
    ops = summary.op_counts
    if any(op in QOPERATOR_OPS for op in ops):
        dynamic = any(op.startswith("Dynamic") or op == "MatMulInteger" for op in ops)
        return "int8", "dynamic quantization" if dynamic else "QOperator"
    if "QuantizeLinear" in ops and "DequantizeLinear" in ops:
        return "int8", "QDQ"
    if "DequantizeLinear" in ops:
        dt = summary.initializer_dtypes
        if dt.get("int4", 0) or dt.get("uint4", 0):
            return "int4", "weight-only"
        return "int8", "weight-only QDQ"
    dt = summary.initializer_dtypes
    if dt.get("float16", 0) > dt.get("float32", 0):
        return "fp16", "float16 initializers"
    if dt.get("bfloat16", 0) > dt.get("float32", 0):
        return "bf16", "bfloat16 initializers"
    return "fp32", "float32 initializers"


def model_precision(summary: OnnxSummary) -> tuple[str, str]:
    """(precision, source): the exporter's metadata wins, else the graph decides."""
    meta = _metadata_precision(summary.metadata)
    if meta:
        return meta, "metadata"
    precision, detail = graph_precision(summary)
    return precision, f"graph ({detail})"


def model_size_mb(path: str | Path, summary: OnnxSummary | None = None) -> float:
    """Size on disk, external-data files included."""
    path = Path(path)
    total = path.stat().st_size
    for name in (summary.external_files if summary else []):
        ext = path.parent / name
        if ext.is_file():
            total += ext.stat().st_size
    return total / 2**20
