"""Frozen parts of a fine-tuned student (``student.freeze``).

Why: a pretrained start fine-tuned on a few thousand faces forgets what it learned from millions
(docs/results.md, "A pretrained ReLU6 start"); holding the early layers fixed is the classic way to
keep it. A frozen module keeps its loaded parameters (no gradient, not in the optimiser) and its
BatchNorms stay in eval mode, so their running statistics do not drift with the new batches.
"""

from __future__ import annotations

from torch import nn

from facedistill.errors import RecipeError


def freeze_modules(model: nn.Module, names: list[str], where: str = "recipe") -> list[nn.Module]:
    """Stop ``names`` (module names or their prefixes, e.g. ``layers.0``) from training; returns the
    frozen BatchNorms, which the trainer keeps in eval mode (:func:`hold_statistics`)."""
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules or not n]
    if unknown:
        top = ", ".join(n for n, _ in model.named_children())
        raise RecipeError(f"{where}: `student.freeze` names {unknown}, not modules of the student; use module "
                          f"names such as {top} (or deeper ones, e.g. layers.0.layers.1)")
    norms: list[nn.Module] = []
    for name in names:
        for module in modules[name].modules():
            for p in module.parameters(recurse=False):
                p.requires_grad_(False)
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module not in norms:
                norms.append(module)
    return norms


def hold_statistics(norms: list[nn.Module]) -> None:
    """Frozen BatchNorms normalise with their stored statistics, whatever mode the model is in."""
    for bn in norms:
        bn.eval()
