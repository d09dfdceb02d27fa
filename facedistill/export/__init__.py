"""Export trained backbones to ONNX (fp32, fp16, int8) with parity and accuracy gates.

Library entry point: :func:`export_model` (the ``facedistill export`` command is a thin layer over
it). Consumers of exported files use :func:`check_onnx` (refuses damaged files) and
:func:`read_metadata` (architecture, preprocessing, precision, ...).
"""

from facedistill.export.metadata import CheckedModel, build_metadata, check_onnx, read_metadata
from facedistill.export.onnx_export import (ArtifactReport, ExportGateError, ExportReport, export_model,
                                            sibling_path, torch_to_onnx)
from facedistill.export.quantize import Int8Options, quantize_int8

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
