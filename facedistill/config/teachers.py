"""A recipe's teachers: one ``teacher:`` section, or a ``teachers:`` list distilled as one joint teacher.

Each ``teachers`` entry is a full teacher section plus ``weight`` (> 0, default 1): the run distils
the concatenation of the teachers' L2-normalised embeddings, block i scaled by sqrt(w_i / sum w)
(:mod:`facedistill.utils.embeddings`; docs/method.md, "Several teachers").

What each teacher *is* (type, onnx/checkpoint, arch, mean/std, channel_order, input_size,
embedding_size, weight) is per entry. How the run *uses* teachers is one choice for all of them
(``SHARED_KEYS``: views, online, cache, batch_size, cache_dtype, cache_workers): set them on
``teachers[0]``; a later entry takes them from there, and one that states another value is an
error, since every teacher must embed the same views of the same images.

    teacher: null          # only to drop a `teacher:` inherited through `extends`
    teachers:
      - {type: onnx, onnx: models/sface_fp32.onnx, mean: 0.0, std: 1.0, views: 4}
      - {type: onnx, onnx: models/paddlex_mobilefacenet_prelu_128d.onnx, channel_order: BGR, weight: 0.5}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facedistill.config.schema import check_normalisation, choice
from facedistill.errors import RecipeError


@dataclass
class TeacherConfig:
    """A frozen teacher: a torch backbone with a checkpoint, or any ONNX face model."""

    type: str = "none"  # none | torch | onnx
    arch: str | None = None  # torch: backbone name (inferred from the checkpoint when omitted)
    checkpoint: str | None = None  # torch: state dict, arcface_torch model.pt or a run folder
    onnx: str | None = None  # onnx: model path
    embedding_size: int | None = None  # read from the model when omitted
    # one value for all channels or three in the model's channel order, pixel scale 0..255
    # (ImageNet-normalised models: mean [123.675, 116.28, 103.53], std [58.395, 57.12, 57.375])
    mean: float | list[float] = 127.5
    std: float | list[float] = 127.5
    channel_order: str = "RGB"  # RGB | BGR
    input_size: int = 112
    cache: bool = True  # compute embeddings once per (image, flip) and reuse them across runs
    batch_size: int = 64
    # With `data.augment` on: K cached views per image (view 0 the plain image), each step picks one
    # per sample. 1 = the plain cache of (image, flip) used without augmentation.
    views: int = 1
    online: bool = False  # the teacher embeds every (freshly augmented) batch; no cache
    cache_dtype: str = "float32"  # float32 | float16 (half the file; targets rounded to fp16)
    cache_workers: int = 1  # processes that build the cache's shards (each with threads / workers)
    # torch teachers on a CPU: auto runs the frozen network through onnxruntime when its embeddings
    # agree with PyTorch's (worst probe cosine >= 0.9999; several times faster), else PyTorch
    runtime: str = "auto"  # auto | torch | onnxruntime


@dataclass
class TeacherEntry(TeacherConfig):
    """One teacher of a ``teachers`` list: a teacher section and its share of the joint cosine."""

    weight: float = 1.0


RUNTIMES = ("auto", "torch", "onnxruntime")  # what executes a torch teacher (engine/teachers.py)

# How the run uses its teachers: one value for all (see the module doc).
SHARED_KEYS = ("views", "online", "cache", "batch_size", "cache_dtype", "cache_workers")
_SHARED = ", ".join(SHARED_KEYS)


def share_settings(data: dict[str, Any], where: str) -> dict[str, Any]:
    """Raw recipe data with ``teachers[0]``'s shared keys given to the later entries that omit them.

    Also where ``teacher`` and ``teachers`` together are refused: only the raw data knows that a
    ``teacher`` section was written (perhaps in a recipe this one extends).
    """
    teachers = data.get("teachers")
    if not teachers:
        return data
    if data.get("teacher") is not None:
        raise RecipeError(f"{where}: `teacher` and `teachers` are both given (`teacher` may come from a recipe "
                          "this one extends); keep one, or write `teacher: null` to replace an inherited teacher "
                          "by the list")
    if not isinstance(teachers, list) or not all(isinstance(t, dict) for t in teachers):
        return data  # the type check names the bad entry
    first, defaults = teachers[0], TeacherConfig()
    out = []
    for i, entry in enumerate(teachers):
        entry = dict(entry)
        for key in SHARED_KEYS:
            lead = first.get(key, getattr(defaults, key))
            if i and key in entry and entry[key] != lead:
                raise RecipeError(f"{where}: `teachers[{i}].{key}` is {entry[key]!r} but `teachers[0].{key}` is "
                                  f"{lead!r}: {_SHARED} are shared by all teachers; set them on teachers[0] only")
            if key in first:
                entry[key] = first[key]
        out.append(entry)
    return {**data, "teacher": None, "teachers": out}


def validate_teacher(t: TeacherConfig, key: str, where: str, aliases: tuple[str, ...]) -> None:
    """What one teacher is: type, preprocessing, weights (``key``: ``teacher`` or ``teachers[i]``)."""
    types = ("torch", "onnx") if isinstance(t, TeacherEntry) else ("none", "torch", "onnx")
    choice(t.type, types, f"{key}.type", where)
    check_normalisation(t, key, where)
    choice(t.runtime, RUNTIMES, f"{key}.runtime", where)
    if isinstance(t, TeacherEntry) and not t.weight > 0:
        raise RecipeError(f"{where}: `{key}.weight` must be > 0 (its share of the joint cosine), got {t.weight!r}")
    if t.type == "torch":
        if not t.checkpoint:
            raise RecipeError(f"{where}: `{key}.checkpoint` is required when `{key}.type` is torch")
        if t.arch is not None:
            choice(t.arch, aliases, f"{key}.arch", where)
    if t.type == "onnx" and not t.onnx:
        raise RecipeError(f"{where}: `{key}.onnx` is required when `{key}.type` is onnx")


def check_files(t: TeacherConfig, key: str, where: str) -> None:
    """The teacher's checkpoint or ONNX file exists."""
    if t.type == "torch" and not Path(t.checkpoint).exists():
        raise RecipeError(f"{where}: `{key}.checkpoint` {t.checkpoint} does not exist")
    if t.type == "onnx" and not Path(t.onnx).is_file():
        raise RecipeError(f"{where}: `{key}.onnx` {t.onnx} does not exist "
                          "(see `facedistill prepare teacher --help` to get one)")


def validate_shared(t: TeacherConfig, key: str, where: str) -> None:
    """How the run uses its teachers (``key``: where the shared keys live, ``teacher`` or ``teachers[0]``)."""
    if t.views < 1:
        raise RecipeError(f"{where}: `{key}.views` must be >= 1, got {t.views}")
    if t.batch_size < 1:
        raise RecipeError(f"{where}: `{key}.batch_size` must be >= 1, got {t.batch_size}")
    choice(t.cache_dtype, ("float32", "float16"), f"{key}.cache_dtype", where)
    if not isinstance(t.cache_workers, int) or t.cache_workers < 1:
        raise RecipeError(f"{where}: `{key}.cache_workers` must be an integer >= 1, got {t.cache_workers!r}")


def validate_list(teachers: list[TeacherEntry], where: str) -> None:
    """The entries of a ``teachers`` list agree on the shared keys (a recipe built in Python skips
    :func:`share_settings`)."""
    for i, t in enumerate(teachers[1:], 1):
        for key in SHARED_KEYS:
            if getattr(t, key) != getattr(teachers[0], key):
                raise RecipeError(f"{where}: `teachers[{i}].{key}` is {getattr(t, key)!r} but `teachers[0].{key}` "
                                  f"is {getattr(teachers[0], key)!r}: {_SHARED} are shared by all teachers; set "
                                  "them on teachers[0] only")

