"""Export trained backbones to ONNX (fp32, fp16, int8) with parity and accuracy gates.

Library entry point: :func:`export_model` (the ``facedistill export`` command is a thin layer over
it). Consumers of exported files use :func:`check_onnx` (refuses damaged files) and
:func:`read_metadata` (architecture, preprocessing, precision, ...).

Modules, top to bottom (each imports only the ones below it):

* ``onnx_export``: :func:`export_model`, the stages of a PyTorch export; ``onnx_source``: int8 of an
  ONNX model trained elsewhere;
* ``int8_stage``: calibrate -> quantize -> gate -> mixed precision -> write (and QAT before it);
  ``qat``: quantization-aware fine-tuning;
* ``gates``: the parity, batch and int8 gates and their thresholds; ``torch_graph``: the fp32 graph
  (torch.onnx.export, onnxsim, opset checks); ``fp16``: the float16 conversion;
* ``mixed_precision``: layer sensitivity and the fewest-layers-float search; ``quantize``:
  :class:`Int8Options` (with the measurements behind each default) and :func:`quantize_int8`;
* ``calibration``: calibration readers; ``graph_rewrites``: PReLU rewrite, compact weights, zero
  points, names; ``graph_parts``: stem/head/depthwise nodes and graph lookups;
* ``images``: calibration, parity and verify faces; ``measure``: latency and verification accuracy;
  ``parity``: embedding comparison and divergence localisation; ``metadata``: what a file says about
  itself; ``files``: atomic writes; ``report``: :class:`ExportReport` and the state of a running export.
"""

from facedistill.export.files import sibling_path
from facedistill.export.metadata import CheckedModel, build_metadata, check_onnx, read_metadata
from facedistill.export.onnx_export import export_model
from facedistill.export.quantize import Int8Options, quantize_int8
from facedistill.export.report import ArtifactReport, ExportGateError, ExportReport
from facedistill.export.torch_graph import torch_to_onnx

__all__ = [
    "ArtifactReport",
    "CheckedModel",
    "ExportGateError",
    "ExportReport",
    "Int8Options",
    "build_metadata",
    "check_onnx",
    "export_model",
    "quantize_int8",
    "read_metadata",
    "sibling_path",
    "torch_to_onnx",
]
