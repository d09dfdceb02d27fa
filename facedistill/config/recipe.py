"""Recipes: YAML files that say what to train, as data (torchdistill's shape, none of its code tags).

A recipe has the sections ``data``, ``student``, ``teacher`` (or ``teachers``, a list distilled as
one joint teacher: config/teachers.py), ``loss``, ``optim`` and ``train``.
``extends: base.yaml`` (relative to the file) merges a base recipe under this one, so the unified
method and each baseline differ only in their ``loss`` block. Command-line overrides
(``--set train.epochs=3``) apply last. YAML is read with ``yaml.safe_load`` only: a recipe cannot
run code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Union

import yaml

from facedistill.config import teachers as teacher_rules
from facedistill.config.schema import check_normalisation, choice, deep_merge, from_dict, to_dict
from facedistill.config.teachers import TeacherConfig, TeacherEntry, share_settings
from facedistill.data.augment import AugmentConfig
from facedistill.errors import RecipeError
from facedistill.losses.config import DistillConfig


@dataclass
class TrainSource:
    """One of several training sets (``data.train: [lfw, {path: utk, weight: 0.2}]``).

    Identity labels stay distinct per source; label -1 stays unknown (see
    ``facedistill.data.multisource``). ``weight``: share of each epoch (give all sources one, or
    none: then each counts by its size). ``max_border``: drop faces whose aligned crop lies more
    than this fraction outside the photo (UTKFace chips are about 0.3).
    """

    path: str = ""
    weight: Optional[float] = None
    max_border: float = 1.0
    name: Optional[str] = None


@dataclass
class DataConfig:
    """Where the packed data lives and how batches are drawn."""

    train: Union[str, list[Union[str, TrainSource]]] = "data/synthetic/train"
    val: Optional[str] = "data/synthetic/val"
    batch_size: int = 64
    workers: int = 2
    flip: bool = True  # random horizontal flip (with `augment` on, one of its steps)
    val_max_pairs: Optional[int] = None  # evaluate on the first N pairs during training (speed)
    # scale/shift/rotation, colour, greyscale, blur, JPEG that the teacher follows (data/augment.py);
    # the teacher sees each view through `teacher.views` (cache) or `teacher.online`
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class StudentConfig:
    """The student backbone, an optional start and the input it expects.

    ``checkpoint``: initial weights: a state dict, a run folder, or an ONNX face model whose weights
    are imported into ``arch`` (models/onnx_import.py; a mismatch names the first layer that differs
    and the registered backbone that fits). ``mean``/``std``/``channel_order``: the student's input
    normalisation, like the teacher's keys; unset means arcface_torch's RGB (x - 127.5) / 127.5, or
    what the checkpoint records (run summary, facedistill ONNX metadata). An ONNX start that records
    nothing (most public files) must state all three: training with another normalisation than the
    model learned silently throws away what it knows.
    """

    arch: str = "mobilefacenet"
    embedding_size: int = 512
    checkpoint: Optional[str] = None  # optional initial weights (state dict, run folder or ONNX face model)
    mean: Union[float, List[float], None] = None  # pixel scale 0..255, one value or three (model's order)
    std: Union[float, List[float], None] = None
    channel_order: Optional[str] = None  # RGB | BGR
    # ReLU/ReLU6 students: train them as LeakyReLU (slope 0.25, PReLU's initial value) whose negative
    # slope falls linearly to 0 from this fraction of the run to its last step, so the run ends with
    # the plain ReLU/ReLU6 network (all-int8 on export) after a leaky start (models/activations.py).
    # null: plain ReLU/ReLU6 from the first step.
    leaky_anneal_from: Optional[float] = None
    # Fine-tuning a start: module names (prefixes, e.g. [layers.0, layers.1]) that do not train; their
    # parameters stay as loaded and their BatchNorms keep their statistics (engine/freeze.py).
    freeze: List[str] = field(default_factory=list)


@dataclass
class MarginConfig:
    type: str = "arcface"  # arcface | cosface | none
    scale: float = 64.0
    margin: Optional[float] = None  # default 0.5 (arcface) or 0.35 (cosface)
    weight: float = 1.0


@dataclass
class LossConfig:
    margin: MarginConfig = field(default_factory=MarginConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    projector: str = "auto"  # auto (linear when dims differ) | linear | none


@dataclass
class OptimConfig:
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = 0.0
    milestones: list[float] = field(default_factory=list)  # step schedule, in epochs
    gamma: float = 0.1
    grad_clip: Optional[float] = 5.0


@dataclass
class TrainConfig:
    epochs: float = 10.0
    max_steps: Optional[int] = None  # stop early (smoke tests)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # CUDA only; ignored on CPU
    compile: bool = False
    channels_last: bool = True  # NHWC activations: ~3x faster grouped-conv training on CPU
    # fp32 | bf16 | auto: bf16 autocast (depthwise convs and losses in fp32, engine/precision.py) on
    # CPUs with AVX512-BF16/AMX, else fp32. On a Xeon with AMX, bf16 trained the LFW student 1.2-1.3x
    # faster and as accurately (docs/results.md, "bf16 training"); CUDA keeps train.amp.
    precision: str = "auto"
    threads: Optional[int] = None  # torch intra-op threads on CPU
    precise_bn_images: int = 512  # re-estimate BatchNorm stats on this many images before eval/save
    checkpoint_every: int = 200  # steps
    eval_every: int = 0  # steps; 0 = at the end of each epoch; -1 = only at the end of the run
    log_every: int = 10  # steps


# Keys added after runs already existed, with the value that does what every run before them did.
# At that value they are left out of the recipe hash: a run trained before the key existed is still
# the same training (reused, resumed), while any other value makes a new run. Add a key here only
# when its neutral value reproduces the old behaviour bit for bit.
HASH_NEUTRAL: dict[str, Any] = {
    "train.precision": "fp32",
    "data.augment": to_dict(AugmentConfig()),  # off (and untouched): no augmentation beyond data.flip
    "teacher.views": 1,
    "student.leaky_anneal_from": None,
    "student.freeze": [],
    "teacher.online": False,
    "teacher.cache_dtype": "float32",
    "student.mean": None,  # unset: the checkpoint's or arcface_torch's preprocessing, as before
    "student.std": None,
    "student.channel_order": None,
    "teachers": [],  # one `teacher:` section, as every recipe had before the list
}

__all__ = ["Recipe", "TeacherConfig", "TeacherEntry", "load_recipe", "recipe_from_dict", "validate"]


@dataclass
class Recipe:
    name: str = "run"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    # one teacher, or (``teachers``) several as one joint teacher; None only beside a ``teachers`` list
    teacher: TeacherConfig | None = field(default_factory=TeacherConfig)
    teachers: list[TeacherEntry] = field(default_factory=list)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    source: str = field(default="", repr=False, compare=False, metadata={"internal": True})

    def __post_init__(self) -> None:
        if self.teachers and self.teacher == TeacherConfig():
            self.teacher = None  # a list given in Python beside the default section
        elif self.teacher is None and not self.teachers:
            self.teacher = TeacherConfig()  # `teacher: null` alone: no teacher

    @property
    def teacher_sections(self) -> list[TeacherConfig]:
        """Every teacher of the run in order: the ``teachers`` list, or ``teacher`` ([] when its type is none)."""
        if self.teachers:
            return list(self.teachers)
        return [self.teacher] if self.teacher is not None and self.teacher.type != "none" else []

    @property
    def teacher_settings(self) -> TeacherConfig:
        """The section whose shared keys (views, online, cache, batch_size, cache_dtype, cache_workers)
        the run uses: ``teacher``, or ``teachers[0]`` (config/teachers.py)."""
        return self.teachers[0] if self.teachers else (self.teacher or TeacherConfig())

    @property
    def keyed_teachers(self) -> list[tuple[str, TeacherConfig]]:
        """(key, section) of each teacher section as written: ``teacher``, or ``teachers[i]`` of the list."""
        if self.teachers:
            return [(f"teachers[{i}]", t) for i, t in enumerate(self.teachers)]
        return [("teacher", self.teacher or TeacherConfig())]

    @property
    def teacher_key(self) -> str:
        """Where :attr:`teacher_settings` is written, for messages: ``teacher`` or ``teachers[0]``."""
        return "teachers[0]" if self.teachers else "teacher"

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        data = to_dict(self)
        data.pop("source", None)
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self) -> str:
        """A short stable hash of what was trained (name and output folder excluded).

        Keys in ``HASH_NEUTRAL`` at their neutral value are left out, so upgrading facedistill does
        not turn every finished run into a stale one; ``train.precision: auto`` counts as what it
        resolves to on this CPU.
        """
        data = self.to_dict()
        data.pop("name", None)
        data.pop("output_dir", None)
        for section in [data.get("teacher") or {}, *data.get("teachers", [])]:
            section.pop("cache_workers", None)  # how the cache is built, not what
            section.pop("runtime", None)  # what executes a torch teacher (same embeddings, cosine >= 0.9999)
        data.get("loss", {}).get("distill", {}).get("rpsd", {}).pop("accept_few_anchors", None)  # a warning only
        train = data.get("train", {})
        if train.get("precision") == "auto":
            # hash what trains: auto is fp32 on most CPUs (the old runs' hash) and bf16 where the CPU has
            # it, so an fp32 run is never continued in bf16 on another machine
            from facedistill.bench.sysinfo import resolve_precision

            train["precision"] = resolve_precision("auto", "cpu")
        for dotted, neutral in HASH_NEUTRAL.items():
            *parents, key = dotted.split(".")
            section = data
            for part in parents:
                section = section.get(part) or {}
            if key in section and section[key] == neutral:
                del section[key]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


_choice = choice


def validate(recipe: Recipe, where: str = "recipe", check_files: bool = True) -> None:
    """Semantic checks that types alone cannot express; run before any training starts."""
    from facedistill.models import list_backbones

    backbones = tuple(list_backbones())
    aliases = backbones + ("r18", "r34", "r50", "r100", "mbf")
    _choice(recipe.student.arch, aliases, "student.arch", where)
    if recipe.student.embedding_size < 1:
        raise RecipeError(f"{where}: `student.embedding_size` must be positive")
    _validate_student_input(recipe.student, where, check_files)
    anneal = recipe.student.leaky_anneal_from
    if anneal is not None:
        if isinstance(anneal, bool) or not isinstance(anneal, (int, float)) or not 0.0 <= anneal < 1.0:
            raise RecipeError(f"{where}: `student.leaky_anneal_from` must be a fraction of the run in [0, 1) "
                              f"(e.g. 0.5: the slope falls over the second half), or null; got {anneal!r}")
        if "relu" not in recipe.student.arch:
            relu = [b for b in backbones if "relu" in b]
            raise RecipeError(f"{where}: `student.leaky_anneal_from` anneals a ReLU/ReLU6 network, but "
                              f"`student.arch` is {recipe.student.arch!r}; use one of {', '.join(relu)}, or "
                              "drop the key")
    if recipe.data.batch_size < 2:
        raise RecipeError(f"{where}: `data.batch_size` must be at least 2 (relations need pairs)")
    if recipe.data.workers < 0:
        raise RecipeError(f"{where}: `data.workers` must be >= 0")
    _validate_teachers(recipe, where, aliases)
    m = recipe.loss.margin
    _choice(m.type, ("arcface", "cosface", "none"), "loss.margin.type", where)
    if m.weight < 0 or m.scale <= 0:
        raise RecipeError(f"{where}: `loss.margin.weight` must be >= 0 and `loss.margin.scale` > 0")
    _choice(recipe.loss.projector, ("auto", "linear", "none", "per_teacher"), "loss.projector", where)
    if recipe.loss.projector == "per_teacher" and not recipe.teachers:
        raise RecipeError(f"{where}: `loss.projector: per_teacher` maps the student to each block of a `teachers` "
                          "list; with one `teacher:` use auto or linear")
    try:
        recipe.loss.distill.validate("loss.distill")
    except RecipeError as e:
        raise RecipeError(f"{where}: {e}") from None
    if recipe.loss.distill.type != "none" and not recipe.teacher_sections:
        raise RecipeError(f"{where}: `loss.distill.type` is {recipe.loss.distill.type!r} but there is no "
                          "teacher; set `teacher.type` (torch or onnx) or use `loss.distill.type: none`")
    if recipe.loss.distill.type == "none" and m.type == "none":
        raise RecipeError(f"{where}: nothing to train: `loss.margin.type` and `loss.distill.type` are both none")
    o = recipe.optim
    _choice(o.optimizer, ("sgd", "adamw"), "optim.optimizer", where)
    _choice(o.schedule, ("cosine", "step", "constant"), "optim.schedule", where)
    if o.lr <= 0:
        raise RecipeError(f"{where}: `optim.lr` must be positive")
    if o.grad_clip is not None and o.grad_clip <= 0:
        raise RecipeError(f"{where}: `optim.grad_clip` must be positive or null")
    if check_files:
        for key, t in recipe.keyed_teachers:
            teacher_rules.check_files(t, key, where)
    tr = recipe.train
    _choice(tr.device, ("auto", "cpu", "cuda"), "train.device", where)
    _choice(tr.precision, ("auto", "fp32", "bf16"), "train.precision", where)
    sources = recipe.data.train if isinstance(recipe.data.train, list) else [recipe.data.train]
    if not sources:
        raise RecipeError(f"{where}: `data.train` is an empty list; give at least one packed train set")
    weights = [s.weight for s in sources if isinstance(s, TrainSource)]
    for i, src in enumerate(sources):
        if isinstance(src, TrainSource):
            if not src.path:
                raise RecipeError(f"{where}: `data.train[{i}].path` is required")
            if src.weight is not None and src.weight < 0:
                raise RecipeError(f"{where}: `data.train[{i}].weight` must be >= 0")
            if not 0.0 <= src.max_border <= 1.0:
                raise RecipeError(f"{where}: `data.train[{i}].max_border` must be between 0 and 1")
    if any(w is not None for w in weights) and (len(weights) != len(sources) or None in weights):
        raise RecipeError(f"{where}: give every `data.train` source a weight, or none (each then counts by its size)")
    if tr.epochs <= 0:
        raise RecipeError(f"{where}: `train.epochs` must be positive")
    if tr.checkpoint_every < 1 or tr.log_every < 1 or tr.eval_every < -1:
        raise RecipeError(f"{where}: `train.checkpoint_every`/`log_every` must be >= 1, `eval_every` >= -1")


def _validate_teachers(recipe: Recipe, where: str, aliases: tuple[str, ...]) -> None:
    """Each teacher (config/teachers.py), the shared keys, and how they meet ``data.augment``."""
    if recipe.teachers and recipe.teacher is not None:
        raise RecipeError(f"{where}: `teacher` and `teachers` are both given; keep one")
    for key, t in recipe.keyed_teachers:
        teacher_rules.validate_teacher(t, key, where, aliases)
    teacher_rules.validate_list(recipe.teachers, where)
    t, key = recipe.teacher_settings, recipe.teacher_key
    teacher_rules.validate_shared(t, key, where)
    aug = recipe.data.augment
    try:
        aug.validate("data.augment")
    except RecipeError as e:
        raise RecipeError(f"{where}: {e}") from None
    uses_cache = bool(recipe.teacher_sections) and recipe.loss.distill.type != "none" and t.cache and not t.online
    if aug.enabled and uses_cache and t.views < 2:
        raise RecipeError(f"{where}: `data.augment` is on and the teacher is cached, but `{key}.views` is "
                          f"{t.views}: view 0 is the plain image, so give `{key}.views: 2` or more (e.g. 4), "
                          f"or `{key}.online: true`")
    if t.views > 1 and not aug.enabled:
        raise RecipeError(f"{where}: `{key}.views` is {t.views} but `data.augment.enabled` is false; "
                          f"views are augmented copies: enable `data.augment` or set `{key}.views: 1`")
    if t.views > 1 and t.online:
        raise RecipeError(f"{where}: `{key}.views` ({t.views}) and `{key}.online: true` exclude each other "
                          "(cached views, or a teacher that embeds every batch); drop one")


def student_preprocessing_given(s: StudentConfig) -> Any:
    """The :class:`Preprocessing` the recipe states for the student, or None when it states none."""
    from facedistill.data.preprocessing import Preprocessing

    if s.mean is None and s.std is None and s.channel_order is None:
        return None
    default = Preprocessing()
    return Preprocessing(mean=default.mean if s.mean is None else s.mean,
                         std=default.std if s.std is None else s.std,
                         channel_order=s.channel_order or default.channel_order)


def student_preprocessing(s: StudentConfig) -> Any:
    """What the student trains on: the recipe's keys, else what its checkpoint records, else
    arcface_torch's RGB (x - 127.5) / 127.5. :func:`validate` has checked the two agree."""
    from facedistill.data.preprocessing import Preprocessing

    given = student_preprocessing_given(s)
    if given is not None:
        return given
    if s.checkpoint:
        from facedistill.models.checkpoints import recorded_preprocessing

        recorded, _ = recorded_preprocessing(s.checkpoint)
        if recorded is not None:
            return recorded
    return Preprocessing()


def _describe_pre(p: Any) -> str:
    return f"{p.channel_order}, mean {p.mean}, std {p.std}, input {p.input_size}"


def _validate_student_input(s: StudentConfig, where: str, check_files: bool) -> None:
    """The student's preprocessing keys, and (with ``check_files``) its start: the checkpoint exists,
    imports into ``arch``, and records no other preprocessing than the recipe says."""
    check_normalisation(s, "student", where)
    if not check_files or not s.checkpoint:
        return
    from facedistill.errors import FaceDistillError
    from facedistill.data.preprocessing import same_preprocessing
    from facedistill.models.checkpoints import recorded_preprocessing
    from facedistill.models.onnx_import import import_onnx_backbone, is_onnx_file

    if not Path(s.checkpoint).exists():
        raise RecipeError(f"{where}: `student.checkpoint` {s.checkpoint} does not exist")
    try:
        recorded, recorded_by = recorded_preprocessing(s.checkpoint)
        if is_onnx_file(s.checkpoint):
            import_onnx_backbone(s.checkpoint, arch=s.arch, embedding_size=s.embedding_size)
    except FaceDistillError as e:
        raise RecipeError(f"{where}: `student.checkpoint`: {e}") from None
    given = student_preprocessing_given(s)
    if is_onnx_file(s.checkpoint) and recorded is None and (s.mean is None or s.std is None or s.channel_order is None):
        raise RecipeError(
            f"{where}: `student.checkpoint` {s.checkpoint} does not record the preprocessing it was trained with; "
            "state it as `student.mean`, `student.std` and `student.channel_order` (pixel scale 0..255, in the "
            "model's channel order), e.g. PaddleX/insightface: mean 127.5, std 127.5, BGR or RGB; ImageNet-"
            "normalised RGB: mean [123.675, 116.28, 103.53], std [58.395, 57.12, 57.375]")
    if recorded is not None and given is not None and not same_preprocessing(recorded, given):
        raise RecipeError(f"{where}: `student.mean/std/channel_order` say {_describe_pre(given)}, but "
                          f"{recorded_by} records {_describe_pre(recorded)}; drop the student keys to use "
                          "the checkpoint's, or correct them")


def _read_yaml(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    if path in chain:
        raise RecipeError(f"{path}: `extends` forms a cycle: {' -> '.join(str(p) for p in chain + (path,))}")
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{path}:{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise RecipeError(f"{path}: `extends` must be a file path")
    base_path = (path.parent / base).resolve()
    return deep_merge(_read_yaml(base_path, chain + (path,)), data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML scalar)."""
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. --set train.epochs=3")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``--set a.b=v`` on plain recipe data; a number walks into a list (``teachers.1.weight=2``)."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = data
        for depth, key in enumerate(keys):
            last = depth == len(keys) - 1
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise RecipeError(f"--set {text!r}: `{'.'.join(keys[:depth])}` is a list of {len(node)}; "
                                      f"give an index 0..{len(node) - 1}, or replace the whole list")
                if last:
                    node[int(key)] = value
                else:
                    node = node[int(key)]
                continue
            if not isinstance(node, dict):
                raise RecipeError(f"--set {text!r}: `{'.'.join(keys[:depth])}` is not a section")
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
    return data


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None,
                check_files: bool = True) -> Recipe:
    """Read, merge (``extends``), override (``--set``), type-check and validate a recipe."""
    overrides = overrides or []
    if path is None:
        data: dict[str, Any] = {}
        where = "recipe"
    else:
        path = Path(path).resolve()
        data = _read_yaml(path, ())
        where = str(path)
    data = share_settings(apply_overrides(data, overrides), where)
    recipe = from_dict(Recipe, data, "", where)
    recipe.source = where
    validate(recipe, where, check_files=check_files)
    return recipe


def recipe_from_dict(data: dict[str, Any], where: str = "recipe", check_files: bool = True) -> Recipe:
    recipe = from_dict(Recipe, share_settings(data, where), "", where)
    recipe.source = where
    validate(recipe, where, check_files=check_files)
    return recipe
