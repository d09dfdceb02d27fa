"""PNG plots for evaluation reports and training logs (matplotlib, Agg backend, no display)."""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from facedistill.utils.atomic import atomic_path

__all__ = ["plot_roc", "plot_score_histogram", "plot_training_curves"]

FAR_MIN = 1e-6


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out_png: str | os.PathLike) -> Path:
    plt = _pyplot()
    out = Path(out_png)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return out


def _auc(far: np.ndarray, tar: np.ndarray) -> float:
    fn = getattr(np, "trapezoid", None) or getattr(np, "trapz")
    return float(fn(tar, far))


def plot_roc(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    title: str,
    out_png: str | os.PathLike,
    accuracies: Mapping[str, float] | None = None,
    aucs: Mapping[str, float] | None = None,
) -> Path:
    """ROC curves (TAR vs FAR) with a log FAR axis from 1e-6 to 1.

    ``curves``: name -> (far, tar). The legend shows each curve's AUC (given in ``aucs`` or computed
    by the trapezoid rule) and its accuracy when ``accuracies`` has it.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for name, (far, tar) in curves.items():
        far = np.asarray(far, dtype=np.float64)
        tar = np.asarray(tar, dtype=np.float64)
        auc = aucs[name] if aucs and name in aucs else _auc(far, tar)
        label = f"{name} (AUC {auc:.4f}"
        if accuracies and name in accuracies:
            label += f", acc {100.0 * accuracies[name]:.2f}%"
        label += ")"
        # FAR = 0 cannot be drawn on a log axis: clip it to the left edge so the curve starts there.
        ax.step(np.clip(far, FAR_MIN, 1.0), tar, where="post", label=label, linewidth=1.5)
    ax.set_xscale("log")
    ax.set_xlim(FAR_MIN, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("False accept rate (FAR)")
    ax.set_ylabel("True accept rate (TAR)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.5)
    ax.grid(True, which="minor", alpha=0.15)
    if curves:
        ax.legend(loc="lower right", fontsize="small")
    return _save(fig, out_png)


def plot_score_histogram(
    scores: np.ndarray,
    same: np.ndarray,
    title: str,
    out_png: str | os.PathLike,
    threshold: float | None = None,
    bins: int = 100,
) -> Path:
    """Overlaid density histograms of same-identity and different-identity pair scores."""
    plt = _pyplot()
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    same = np.asarray(same).astype(bool).reshape(-1)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    finite = scores[np.isfinite(scores)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    for mask, label, color in ((same, "same identity", "tab:green"), (~same, "different identity", "tab:red")):
        part = scores[mask]
        if part.size:
            ax.hist(part, bins=edges, density=True, alpha=0.5, color=color, label=f"{label} ({part.size})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("score (squared L2 distance)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    return _save(fig, out_png)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def plot_training_curves(
    metrics: Sequence[Mapping[str, Any]], out_png: str | os.PathLike, title: str | None = None
) -> Path:
    """Training log plot: x = ``step``; panel 1 every numeric ``loss*`` key (log y when all positive),
    panel 2 every numeric ``val_*`` key (only drawn when present).

    Records without ``step`` use their index. Records lacking a key just leave a gap in that series.
    """
    plt = _pyplot()
    loss_keys: list[str] = []
    val_keys: list[str] = []
    for rec in metrics:
        for k, v in rec.items():
            if not _is_number(v):
                continue
            if k.startswith("loss") and k not in loss_keys:
                loss_keys.append(k)
            elif k.startswith("val_") and k not in val_keys:
                val_keys.append(k)

    def series(key: str) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for i, rec in enumerate(metrics):
            v = rec.get(key)
            if _is_number(v):
                step = rec.get("step", i)
                xs.append(float(step) if _is_number(step) else float(i))
                ys.append(float(v))
        return xs, ys

    npanels = 2 if val_keys else 1
    fig, axes = plt.subplots(npanels, 1, figsize=(7.0, 3.6 * npanels), sharex=True, squeeze=False)
    ax_loss = axes[0, 0]
    all_positive = True
    for k in loss_keys:
        xs, ys = series(k)
        all_positive &= all(y > 0 for y in ys)
        ax_loss.plot(xs, ys, label=k, linewidth=1.2)
    if loss_keys and all_positive:
        ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title(title or "Training curves")
    ax_loss.grid(True, which="both", alpha=0.3)
    if loss_keys:
        ax_loss.legend(loc="upper right", fontsize="small")
    else:
        ax_loss.text(0.5, 0.5, "no loss values logged", ha="center", va="center", transform=ax_loss.transAxes)
    if val_keys:
        ax_val = axes[1, 0]
        for k in val_keys:
            xs, ys = series(k)
            ax_val.plot(xs, ys, marker="o", markersize=3, label=k, linewidth=1.2)
        ax_val.set_ylabel("validation")
        ax_val.grid(True, alpha=0.3)
        ax_val.legend(loc="lower right", fontsize="small")
    axes[-1, 0].set_xlabel("step")
    return _save(fig, out_png)
