"""Find and load a trained backbone from whatever the user points at.

Accepted: a run folder (``runs/<name>/`` with ``student.pt`` and ``summary.json``), a backbone state
dict (facedistill ``student.pt`` or an arcface_torch ``model.pt``; the architecture comes from
``--arch`` or is inferred from the keys), always loaded with ``weights_only=True``, or an ONNX face
model, whose weights are imported into the registered backbone its layers match
(:mod:`facedistill.models.onnx_import`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
import os
from typing import Any

from facedistill.data.preprocessing import Preprocessing
from facedistill.errors import CheckpointError

STUDENT_FILE = "student.pt"
SUMMARY_FILE = "summary.json"


@dataclass
class LoadedBackbone:
    model: Any  # torch.nn.Module, in eval mode
    arch: str
    embedding_size: int
    source: Path
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    recipe_hash: str = ""
    info: dict[str, Any] = field(default_factory=dict)


def resolve_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Return the state-dict file and the run summary (empty when not a run folder)."""
    path = Path(path)
    if path.is_dir():
        ckpt = path / STUDENT_FILE
        if not ckpt.is_file():
            raise CheckpointError(f"{path}: a run folder must contain {STUDENT_FILE}; this one does not "
                                  "(did the run finish? `facedistill distill --resume` continues it).")
        summary_path = path / SUMMARY_FILE
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        return ckpt, summary
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    sidecar = path.parent / SUMMARY_FILE
    summary = {}
    if path.name == STUDENT_FILE and sidecar.is_file():
        summary = json.loads(sidecar.read_text())
    return path, summary


def recorded_preprocessing(path: str | Path) -> tuple[Preprocessing | None, str]:
    """The preprocessing a checkpoint says its model wants, and where that was read; (None, "") when
    it says nothing (a bare state dict, an ONNX file without facedistill metadata)."""
    from facedistill.models.onnx_import import is_onnx_file
    from facedistill.models.onnx_import import recorded_preprocessing as onnx_preprocessing

    if is_onnx_file(path):
        pre = onnx_preprocessing(path)
        return pre, (f"{path} (ONNX metadata)" if pre is not None else "")
    ckpt, summary = resolve_checkpoint(path)
    if "preprocessing" not in summary:
        return None, ""
    return Preprocessing(**summary["preprocessing"]), f"{ckpt.parent / SUMMARY_FILE}"


def load_backbone(path: str | Path, arch: str | None = None, embedding_size: int | None = None) -> LoadedBackbone:
    """Load a backbone from a run folder, a state dict or an ONNX face model, in eval mode on the CPU.

    An ONNX file's preprocessing comes from its metadata; without any, ``preprocessing`` is the
    default and ``info["preprocessing_recorded"]`` is False: the caller must know it (a recipe's
    ``student.mean``/``std``/``channel_order``)."""
    from facedistill.models import create_backbone, infer_arch, load_backbone_weights, load_state_dict_file
    from facedistill.models.onnx_import import import_onnx_backbone, is_onnx_file

    if is_onnx_file(path):
        imported = import_onnx_backbone(path, arch=arch, embedding_size=embedding_size)
        info = dict(imported.info, preprocessing_recorded=imported.preprocessing is not None,
                    probe_min_cosine=imported.probe_min_cosine)
        pre = imported.preprocessing or Preprocessing(input_size=imported.input_size)
        return LoadedBackbone(model=imported.model, arch=imported.arch, embedding_size=imported.embedding_size,
                              source=Path(path), preprocessing=pre, info=info)
    ckpt, summary = resolve_checkpoint(path)
    state = load_state_dict_file(ckpt)
    arch = arch or summary.get("student", {}).get("arch")
    embedding_size = embedding_size or summary.get("student", {}).get("embedding_size")
    if arch is None or embedding_size is None:
        guess = infer_arch(state)
        if guess is None:
            raise CheckpointError(f"{ckpt}: cannot tell the architecture from the keys; pass --arch "
                                  "(iresnet18/34/50/100 or mobilefacenet).")
        arch = arch or guess[0]
        embedding_size = embedding_size or guess[1]
    model = create_backbone(arch, embedding_size=int(embedding_size))
    load_backbone_weights(model, state, source=str(ckpt))
    model.eval()
    # summaries store mean/std as numbers or lists; Preprocessing turns lists into tuples
    pre = Preprocessing(**summary["preprocessing"]) if "preprocessing" in summary else Preprocessing()
    return LoadedBackbone(model=model, arch=arch, embedding_size=int(embedding_size), source=ckpt,
                          preprocessing=pre, recipe_hash=summary.get("recipe_hash", ""), info=summary)


def save_imported_start(path: str | os.PathLike, out: str | os.PathLike, arch: str | None = None,
                        embedding_size: int | None = None, preprocessing: Preprocessing | None = None,
                        threads: int | None = 1) -> dict[str, Any]:
    """Import an ONNX face model and write it as a run folder (``student.pt`` + ``summary.json``).

    The folder is what ``facedistill evaluate`` / ``export`` and a recipe's ``student.checkpoint``
    read, with the preprocessing recorded in the summary, so nothing downstream has to be told it
    again. Returns the summary (arch, layers matched, the probe cosine against onnxruntime).
    """
    import torch

    from facedistill.models.onnx_import import import_onnx_backbone, resolve_start_preprocessing
    from facedistill.models.registry import count_parameters
    from facedistill.utils.atomic import atomic_path, write_json_atomic

    imported = import_onnx_backbone(path, arch=arch, embedding_size=embedding_size, threads=threads)
    pre = resolve_start_preprocessing(path, preprocessing, imported.preprocessing)
    if pre.input_size != imported.input_size:
        pre = Preprocessing(pre.mean, pre.std, pre.channel_order, imported.input_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / STUDENT_FILE) as tmp:
        torch.save(imported.model.state_dict(), tmp)
    summary = {
        "name": out.name,
        "run_dir": str(out),
        "student": {"arch": imported.arch, "embedding_size": imported.embedding_size,
                    "parameters": count_parameters(imported.model),
                    "size_mb": round((out / STUDENT_FILE).stat().st_size / 1e6, 3)},
        "preprocessing": pre.to_dict(),
        "imported_from": {"onnx": str(Path(path).resolve()), "sha256": imported.info["onnx_sha256"],
                          "layers_matched": imported.layers, "residual_adds": imported.residual_adds,
                          "probe_min_cosine": imported.probe_min_cosine,
                          "preprocessing_source": "metadata" if imported.preprocessing is not None else "given"},
    }
    write_json_atomic(out / SUMMARY_FILE, summary)
    return summary
