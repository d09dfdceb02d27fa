"""The fp32 graph of a PyTorch backbone: ``torch.onnx.export`` with an input named ``input``
(N x 3 x S x S) and an output named ``embedding``, a dynamic batch axis (or a fixed one), then onnxsim
(keeping the batch axis). :func:`check_opset` refuses, before any work, an opset the installed
torch/onnx/onnxruntime cannot produce or quantize.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from typing import Any

from facedistill.errors import ExportError
from facedistill.export.graph_parts import graph_opset
from facedistill.export.metadata import INPUT_NAME, OUTPUT_NAME
from facedistill.export.quantize import MAX_INT8_OPSET, MIN_INT8_OPSET

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "check_opset", "simplify_graph", "torch_to_onnx"]

DEFAULT_OPSET = 17
MIN_OPSET = 11


def check_opset(opset: int, int8: bool) -> None:
    """Refuse, before any work, an opset the installed packages cannot produce or quantize."""
    import onnx
    import onnxruntime as ort

    try:
        from torch.onnx import _constants as c
        torch_max = int(getattr(c, "ONNX_MAX_OPSET", 20))
    except Exception:  # private module: be lenient
        torch_max = 20
    onnx_max = onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET:
        raise ExportError(f"--opset {opset} is too old; use {MIN_OPSET} or newer (default {DEFAULT_OPSET})")
    if opset > onnx_max:
        raise ExportError(f"--opset {opset}: the installed onnx {onnx.__version__} can write opsets up to "
                          f"{onnx_max}; use --opset {min(onnx_max, DEFAULT_OPSET)} or upgrade onnx")
    if opset > torch_max:
        import torch
        raise ExportError(f"--opset {opset}: torch {torch.__version__}'s ONNX exporter goes up to opset "
                          f"{torch_max}; use a lower --opset")
    if int8 and opset > MAX_INT8_OPSET:
        raise ExportError(f"--int8 needs --opset <= {MAX_INT8_OPSET} (onnxruntime {ort.__version__}'s static "
                          f"quantizer); got {opset}")
    if int8 and opset < MIN_INT8_OPSET:
        raise ExportError(f"--int8 needs --opset >= {MIN_INT8_OPSET} (per-channel DequantizeLinear takes an axis "
                          f"from opset {MIN_INT8_OPSET} on); got {opset}")


def torch_to_onnx(model: Any, opset: int = DEFAULT_OPSET, batch: str | int = "dynamic", input_size: int = 112,
                  simplify: bool = True, notes: list[str] | None = None) -> Any:
    """Export ``model`` (eval mode, CPU) to an in-memory ``onnx.ModelProto``.

    Input ``input`` (N x 3 x S x S, N symbolic ``batch`` unless ``batch`` is an int), output
    ``embedding``. Opsets up to 20 use the TorchScript exporter (fast, exact, all opsets >= 11);
    newer ones the torch.export-based exporter. onnxsim runs unless ``simplify`` is False; if it fails
    or loses the dynamic batch axis, the unsimplified graph is kept and a note says so.
    """
    import onnx
    import torch

    notes = notes if notes is not None else []
    dynamic = batch == "dynamic"
    if not dynamic:
        try:
            batch = int(batch)
        except (TypeError, ValueError):
            raise ExportError(f"--batch must be 'dynamic' or a positive integer, got {batch!r}") from None
        if batch < 1:
            raise ExportError(f"--batch must be 'dynamic' or a positive integer, got {batch}")
    example = torch.zeros((2 if dynamic else int(batch), 3, input_size, input_size), dtype=torch.float32)
    model = model.eval()
    with tempfile.TemporaryDirectory(prefix="facedistill-export-") as tmp:
        raw = os.path.join(tmp, "raw.onnx")
        _torch_export(model, example, raw, opset, dynamic)
        proto = onnx.load(raw)
    got = graph_opset(proto)
    if got != opset:
        raise ExportError(f"asked for opset {opset} but the exporter wrote opset {got}; pick another --opset")
    proto.producer_name = "facedistill"
    if simplify:
        proto = simplify_graph(proto, dynamic, input_size, notes)
    _check_io(proto, dynamic, batch)
    return proto


def _torch_export(model: Any, example: Any, path: str, opset: int, dynamic: bool) -> None:
    import torch

    use_dynamo = opset > 20
    sink = io.StringIO()
    for attempt in ("torchscript", "dynamo") if not use_dynamo else ("dynamo",):
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
                warnings.simplefilter("ignore")
                if attempt == "torchscript":
                    torch.onnx.export(
                        model, (example,), path, dynamo=False, input_names=[INPUT_NAME],
                        output_names=[OUTPUT_NAME], opset_version=opset, do_constant_folding=True,
                        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic else None,
                    )
                else:
                    kwargs: dict[str, Any] = {}
                    if dynamic:
                        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1)},)
                    torch.onnx.export(model, (example,), path, dynamo=True, input_names=[INPUT_NAME],
                                      output_names=[OUTPUT_NAME], opset_version=opset, external_data=False,
                                      verbose=False, **kwargs)
            return
        except Exception as e:
            if attempt == "torchscript" and _legacy_unavailable(e):
                continue  # a torch without the TorchScript exporter: try torch.export
            raise ExportError(f"torch.onnx.export failed at opset {opset} ({attempt} exporter): "
                              f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e


def _legacy_unavailable(e: Exception) -> bool:
    text = str(e).lower()
    return isinstance(e, (NotImplementedError, AttributeError, ImportError)) or "dynamo=false" in text or \
        "torchscript" in text and "removed" in text


def simplify_graph(proto: Any, dynamic: bool, input_size: int, notes: list[str]) -> Any:
    """onnxsim's graph, or ``proto`` unchanged (and a note why) when it fails or fixes the batch axis."""
    try:
        import onnxsim
    except ImportError:
        notes.append("onnxsim is not installed: the graph was not simplified")
        return proto
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            kwargs: dict[str, Any] = {}
            if dynamic:
                kwargs["test_input_shapes"] = {INPUT_NAME: [2, 3, input_size, input_size]}
            simplified, ok = onnxsim.simplify(proto, **kwargs)
    except Exception as e:  # onnxsim raises plain RuntimeErrors from C++
        notes.append(f"onnxsim failed ({type(e).__name__}: {str(e).strip()[:200]}); kept the unsimplified graph")
        return proto
    if not ok:
        notes.append("onnxsim's own check failed; kept the unsimplified graph")
        return proto
    if dynamic and not _batch_is_dynamic(simplified):
        notes.append("onnxsim fixed the batch axis; kept the unsimplified graph to keep it dynamic")
        return proto
    return simplified


def _batch_is_dynamic(proto: Any) -> bool:
    inits = {t.name for t in proto.graph.initializer}
    inp = next(i for i in proto.graph.input if i.name not in inits)
    d_in = inp.type.tensor_type.shape.dim[0]
    d_out = proto.graph.output[0].type.tensor_type.shape.dim
    return not d_in.HasField("dim_value") and (len(d_out) == 0 or not d_out[0].HasField("dim_value"))


def _check_io(proto: Any, dynamic: bool, batch: Any) -> None:
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in proto.graph.output] != [OUTPUT_NAME]:
        raise ExportError(f"the exported graph has inputs {[i.name for i in inputs]} and outputs "
                          f"{[o.name for o in proto.graph.output]}; expected one input {INPUT_NAME!r} and one "
                          f"output {OUTPUT_NAME!r} (does the model's forward return a single tensor?)")
    if dynamic and not _batch_is_dynamic(proto):
        raise ExportError("the exported graph has a fixed batch axis although a dynamic one was asked for")
