"""One place that lists the backbones, builds them by name and loads their weights.

Why a registry: recipes, the CLI, export and benchmark code all name models by string
(``r50``, ``mbf``); resolving names, aliases and checkpoint files here keeps error messages
consistent and lets a wrong checkpoint be diagnosed ("these keys look like iresnet100").
"""

from __future__ import annotations

import difflib
import os
import re
from collections import Counter
from typing import Any, Callable, Mapping

import torch
from torch import nn

from facedistill.errors import CheckpointError, FaceDistillError
from facedistill.models.iresnet import IRESNET_LAYERS, iresnet18, iresnet34, iresnet50, iresnet100
from facedistill.models.mobilefacenet import get_mbf

__all__ = [
    "create_backbone",
    "list_backbones",
    "load_state_dict_file",
    "load_backbone_weights",
    "infer_arch",
    "count_parameters",
]

_BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "iresnet18": lambda emb: iresnet18(num_features=emb),
    "iresnet34": lambda emb: iresnet34(num_features=emb),
    "iresnet50": lambda emb: iresnet50(num_features=emb),
    "iresnet100": lambda emb: iresnet100(num_features=emb),
    "mobilefacenet": lambda emb: get_mbf(False, emb),
    # The original MobileFaceNet width (scale 1, 1.0 M params): arcface_torch's get_mbf(scale=1),
    # same parameter names. About 4x cheaper to train on a CPU than mbf (scale 2), whose grouped
    # (not depthwise) convolutions are slow in PyTorch's CPU backward.
    "mobilefacenet_s": lambda emb: get_mbf(False, emb, blocks=(1, 4, 6, 2), scale=1),
    # ReLU6 instead of PReLU (same widths and parameter names, minus the PReLU slopes): the design of
    # public int8 MobileFaceNets; every layer quantizes to a fused int8 conv (docs/deploy.md, int8).
    "mobilefacenet_relu6": lambda emb: get_mbf(False, emb, activation="relu6"),
    "mobilefacenet_s_relu6": lambda emb: get_mbf(False, emb, blocks=(1, 4, 6, 2), scale=1, activation="relu6"),
    # LeakyReLU(0.25) instead of PReLU: onnxruntime has an int8 LeakyReLU, so the int8 graph has no
    # float islands; the slopes trained PReLUs end with are close to 0.25 anyway (docs/results.md).
    # Its state dict looks like the ReLU6 variant's (no slopes): load raw weights with --arch.
    # foamliu/MobileFaceNet's layout (the public ReLU6 model): scale 1, ReLU6, and a separable second
    # stem block (depthwise + pointwise, plain ReLU). Its ONNX weights import into it (models/onnx_import.py).
    "mobilefacenet_s_relu6_sepstem": lambda emb: get_mbf(False, emb, blocks=(1, 4, 6, 2), scale=1,
                                                         activation="relu6", stem="separable",
                                                         stem_activation="relu"),
    "mobilefacenet_leaky": lambda emb: get_mbf(False, emb, activation="leaky"),
    "mobilefacenet_s_leaky": lambda emb: get_mbf(False, emb, blocks=(1, 4, 6, 2), scale=1, activation="leaky"),
    # ReLU6 at 56x56 and 28x28 (about 70% of the activation elements), LeakyReLU(0.25) from 14x14 on:
    # most of int8's LeakyReLU lookups go while the late layers keep the leaky slope. Same parameter
    # names and state-dict shapes as the two above: load raw weights with --arch.
    "mobilefacenet_s_relu6_early": lambda emb: get_mbf(False, emb, blocks=(1, 4, 6, 2), scale=1,
                                                       activation="leaky", early_activation="relu6"),
}

# arcface_torch's config names (``network = "r50"``) map to the canonical names.
_ALIASES: dict[str, str] = {
    "r18": "iresnet18",
    "r34": "iresnet34",
    "r50": "iresnet50",
    "r100": "iresnet100",
    "mbf": "mobilefacenet",
}

_MBF_BLOCKS = (1, 4, 6, 2)
_MBF_SCALE = 2
# Keys that wrap a backbone state dict inside a larger checkpoint, most specific first.
# ``state_dict_backbone`` is what arcface_torch's ``checkpoint_gpu_N.pt`` (resume files) use.
_WRAPPER_KEYS = ("state_dict_backbone", "backbone", "state_dict", "model")
_MAX_LISTED = 10


def list_backbones() -> list[str]:
    """Canonical backbone names, sorted (aliases are not listed)."""
    return sorted(_BUILDERS)


def _resolve(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key in _BUILDERS:
        return key
    candidates = sorted(set(_BUILDERS) | set(_ALIASES))
    close = difflib.get_close_matches(name.strip().lower(), candidates, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise FaceDistillError(
        f"Unknown backbone '{name}'.{hint} Valid names: {', '.join(list_backbones())} "
        f"(aliases: {', '.join(f'{a}={c}' for a, c in sorted(_ALIASES.items()))})."
    )


def create_backbone(name: str, embedding_size: int = 512) -> nn.Module:
    """Build a freshly initialised backbone by canonical name or alias (``r50``, ``mbf``)."""
    if not isinstance(embedding_size, int) or isinstance(embedding_size, bool) or embedding_size <= 0:
        raise FaceDistillError(f"embedding_size must be a positive integer, got {embedding_size!r}")
    return _BUILDERS[_resolve(name)](embedding_size)


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements, frozen ones included (matches the usual '43.6M' figures)."""
    return sum(p.numel() for p in model.parameters())


def _strip_module_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    # DistributedDataParallel / DataParallel save every key under "module.".
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a backbone state dict from a ``torch.save`` file without executing pickled code.

    Accepts a plain state dict (arcface_torch's ``model.pt``) or a dict that wraps one under
    ``state_dict_backbone`` / ``backbone`` / ``state_dict`` / ``model``; strips a DDP ``module.``
    prefix. Raises CheckpointError with the path when the file is missing, unreadable or holds
    something else.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"Checkpoint file not found: {path}")
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint path is not a file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, non-allowlisted globals, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"Could not read checkpoint {path}: {first}. Expected a file written by torch.save "
            f"holding a state dict (tensors only; files that pickle whole models are refused)."
        ) from exc

    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"Checkpoint {path} holds a {type(obj).__name__}, not a state dict (a dict of tensors)."
        )
    state: Mapping[str, Any] = obj
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            state = inner
            break
    state = _strip_module_prefix(state)
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if not state or bad:
        top = ", ".join(repr(k) for k in list(obj)[:_MAX_LISTED])
        what = "is empty" if not state else f"has non-tensor entries ({', '.join(map(repr, bad[:5]))})"
        raise CheckpointError(
            f"Checkpoint {path} is not a backbone state dict: it {what}. Top-level keys: {top}. "
            f"Expected tensors, optionally under one of {', '.join(_WRAPPER_KEYS)}."
        )
    return dict(state)


def _embedding_size(state: Mapping[str, Any]) -> int | None:
    for key in ("features.weight", "features.layers.3.weight", "features.layers.2.weight"):
        t = state.get(key)
        if isinstance(t, torch.Tensor) and t.dim() >= 1:
            return int(t.shape[0])
    return None


def _iresnet_depths(state: Mapping[str, Any]) -> tuple[int, ...] | None:
    depths = []
    for stage in range(1, 5):
        pat = re.compile(rf"^layer{stage}\.(\d+)\.")
        idx = {int(m.group(1)) for k in state if (m := pat.match(k))}
        if not idx:
            return None
        depths.append(max(idx) + 1)
    return tuple(depths)


def _mbf_config(state: Mapping[str, Any]) -> tuple[tuple[int, ...], int] | None:
    stem = state.get("layers.0.layers.0.weight")
    if not isinstance(stem, torch.Tensor) or "conv_sep.layers.0.weight" not in state:
        return None
    scale = int(stem.shape[0]) // 64

    def count(stage: int) -> int:
        pat = re.compile(rf"^layers\.{stage}\.layers\.(\d+)\.layers\.0\.layers\.0\.weight$")
        return len({m.group(1) for k in state if (m := pat.match(k))})

    first = 1 if "layers.1.layers.0.weight" in state or _separable_stem(state) else count(1)
    return (first, count(3), count(5), count(7)), scale


def _separable_stem(state: Mapping[str, Any]) -> bool:
    """True for the depthwise + pointwise second stem block (foamliu's layout)."""
    return "layers.1.layers.1.layers.0.weight" in state and "layers.1.layers.0.layers.0.weight" in state


def infer_arch(state_dict: Mapping[str, Any]) -> tuple[str, int] | None:
    """Guess ``(canonical name, embedding size)`` of a state dict from its keys and shapes.

    IResNets are told apart by the number of blocks in ``layer1..layer4``; MobileFaceNet by its
    ``layers.* / conv_sep`` keys. Returns None for anything not in the registry.
    """
    state = _strip_module_prefix(state_dict)
    emb = _embedding_size(state)
    if emb is None:
        return None
    depths = _iresnet_depths(state)
    if depths is not None:
        for name, layers in IRESNET_LAYERS.items():
            if layers == depths:
                return name, emb
        return None
    mbf = _mbf_config(state)
    # the ReLU6 variants have no PReLU slopes (the stem's would be layers.0.layers.2.weight)
    suffix = "" if "layers.0.layers.2.weight" in state else "_relu6"
    if mbf is not None and _separable_stem(state):
        return ("mobilefacenet_s_relu6_sepstem", emb) if mbf == (_MBF_BLOCKS, 1) and suffix else None
    if mbf is not None and mbf == (_MBF_BLOCKS, _MBF_SCALE):
        return "mobilefacenet" + suffix, emb
    if mbf is not None and mbf == (_MBF_BLOCKS, 1):
        return "mobilefacenet_s" + suffix, emb
    return None


def _describe(state: Mapping[str, Any]) -> str:
    """A short human guess of what a state dict is, for error hints."""
    guess = infer_arch(state)
    if guess is not None:
        return f"'{guess[0]}' with embedding_size={guess[1]}"
    depths = _iresnet_depths(state)
    if depths is not None:
        return f"an IResNet with stage depths {depths}, which is not a registered backbone"
    mbf = _mbf_config(state)
    if mbf is not None:
        return f"a MobileFaceNet with blocks {mbf[0]} and scale {mbf[1]}, which is not registered"
    prefixes = Counter(k.split(".", 1)[0] for k in state)
    top = ", ".join(p for p, _ in prefixes.most_common(5))
    return f"no known backbone (top-level names: {top})"


def _listing(title: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f", ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"  {title} ({len(keys)}): {shown}{more}"


def load_backbone_weights(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Load ``state_dict`` into ``model`` strictly; on any mismatch raise a CheckpointError that
    names ``source``, lists missing / unexpected keys and shape mismatches, and says which
    architecture the checkpoint looks like, so the user can pick the right ``--backbone``."""
    state = _strip_module_prefix(state_dict)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and isinstance(state[k], torch.Tensor) and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        lines = [f"Checkpoint {source} does not match the {type(model).__name__} it is loaded into."]
        if missing:
            lines.append(_listing("missing keys", missing))
        if unexpected:
            lines.append(_listing("unexpected keys", unexpected))
        if shapes:
            lines.append(_listing("shape mismatches", shapes))
        model_guess = infer_arch(expected)
        ckpt_guess = _describe(state)
        model_desc = f"'{model_guess[0]}' with embedding_size={model_guess[1]}" if model_guess else "this model"
        lines.append(f"  hint: the checkpoint looks like {ckpt_guess}; the model is {model_desc}.")
        raise CheckpointError("\n".join(lines))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. dtype that cannot be copied
        raise CheckpointError(f"Checkpoint {source} could not be loaded: {exc}") from exc
