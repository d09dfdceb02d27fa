"""What one export measured and decided: :class:`ExportReport` (what ``--json`` writes), one
:class:`ArtifactReport` per model file, and :class:`ExportGateError`, which carries the report of an
export a gate refused.

Every stage of an export (:mod:`facedistill.export.onnx_export`, :mod:`facedistill.export.onnx_source`)
fills its part of the one report; :class:`ExportRun` carries it from stage to stage together with
what the stages hand each other (the images, the fp32 reference embeddings, the metadata).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from facedistill.errors import ExportError

__all__ = ["ArtifactReport", "ExportGateError", "ExportReport", "ExportRun", "Progress", "fill_parity", "say"]

Progress = Callable[[str], None]


class ExportGateError(ExportError):
    """An export gate failed; ``report`` holds everything measured up to the failure."""

    def __init__(self, message: str, report: "ExportReport | None" = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ArtifactReport:
    """One written (or rejected) model file."""

    precision: str
    path: str
    written: bool
    size_bytes: int = 0
    reference: str = ""  # what the cosines compare against: "torch" or "fp32"
    cosine_worst: float | None = None
    cosine_mean: float | None = None
    cosine_images: int = 0
    gate: str = ""
    passed: bool = False
    accuracy: float | None = None  # verification accuracy in percent, when verified
    latency_ms_b1: float | None = None
    latency_threads: int | None = None
    ops: dict[str, int] = field(default_factory=dict)

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size_mb"] = round(self.size_mb, 3)
        return d


@dataclass
class ExportReport:
    """Everything ``export_model`` measured; ``to_dict()`` is what ``--json`` writes."""

    source: str
    arch: str
    embedding_size: int
    opset: int  # the opset written
    batch: str
    simplified: bool
    preprocessing: dict[str, Any]
    source_opset: int | None = None  # an ONNX source's own opset, when it was converted on the way
    artifacts: list[ArtifactReport] = field(default_factory=list)
    parity_source: str = ""
    calibration: dict[str, Any] | None = None
    int8: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    batch_check: list[int] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    divergence: dict[str, Any] | None = None
    qat: dict[str, Any] | None = None  # facedistill.export.qat.QATResult, when --qat-steps was used
    passed: bool = False
    failure: str | None = None
    seconds: float = 0.0

    def artifact(self, precision: str) -> ArtifactReport | None:
        return next((a for a in self.artifacts if a.precision == precision), None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["artifacts"] = [a.to_dict() for a in self.artifacts]
        return d


def say(progress: Progress | None, msg: str) -> None:
    """Tell ``progress`` (when there is one) which stage runs."""
    if progress is not None:
        progress(msg)


def fill_parity(art: ArtifactReport, par: Any) -> None:
    """Copy a :class:`facedistill.export.parity.ParityResult` into the artifact's report."""
    art.cosine_worst = round(par.worst, 7)
    art.cosine_mean = round(par.mean, 7)
    art.cosine_images = par.images
    art.passed = par.passed


@dataclass
class ExportRun:
    """One export in progress: the report every stage fills, and what the stages hand each other."""

    report: ExportReport
    pre: Any  # facedistill.data.preprocessing.Preprocessing of the model's input
    progress: Progress | None = None
    start: float = field(default_factory=time.time)
    imgs: Any = None  # facedistill.export.images.ExportImages
    x_parity: np.ndarray | None = None  # the parity images, preprocessed
    ref_onnx: np.ndarray | None = None  # the fp32 file's embeddings of x_parity: what fp16/int8 are gated on
    base_meta: dict[str, Any] = field(default_factory=dict)  # build_metadata's arch, preprocessing, ...
    source_extra: dict[str, Any] = field(default_factory=dict)  # informative metadata of every file

    @property
    def notes(self) -> list[str]:
        return self.report.notes

    def say(self, msg: str) -> None:
        say(self.progress, msg)

    def fail(self, message: str) -> ExportGateError:
        """The error to raise when a gate fails: the report records the failure and the time spent."""
        self.report.failure = message
        self.report.passed = False
        self.report.seconds = round(time.time() - self.start, 2)
        return ExportGateError(message, self.report)

    def finish(self) -> ExportReport:
        """The report of an export whose every stage ran."""
        self.report.passed = all(a.passed for a in self.report.artifacts)
        self.report.seconds = round(time.time() - self.start, 2)
        return self.report
