"""Precise BatchNorm statistics: recompute running mean/var before a model is evaluated or saved.

BatchNorm's running statistics are an exponential average (momentum 0.1) of the batches seen while
the weights kept changing. After a short run (a CPU quickstart, a few epochs) they lag the final
weights badly: a MobileFaceNet's eval-mode embeddings can collapse to the last BatchNorm's bias.
Re-estimating the statistics with the final weights over a fixed set of training images (a
cumulative average, no gradients) fixes that at the cost of a few forward passes (Wu & Johnson,
"Rethinking Batch in BatchNorm", 2021). The image set is fixed by the seed, so runs stay
reproducible and a resumed run ends with the same statistics.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from facedistill.data.packed import PackedDataset


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, dataset: PackedDataset, num_images: int, batch_size: int,
                       normalise, device: torch.device, seed: int = 0,
                       memory_format: torch.memory_format = torch.contiguous_format) -> int:
    """Reset and re-estimate every BatchNorm's running stats; returns the number of images used.

    A frozen BatchNorm (``student.freeze``: its affine weight does not train) keeps its statistics
    and normalises with them during the passes, as it did in training (engine/freeze.py)."""
    every = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    held = [m for m in every if m.weight is not None and not m.weight.requires_grad]
    bns = [m for m in every if m.weight is None or m.weight.requires_grad]
    if not bns or num_images <= 0:
        return 0
    n = min(num_images, len(dataset))
    idx = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:n])
    saved = [(m, m.momentum) for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    for m in held:
        m.eval()
    try:
        for start in range(0, n, batch_size):
            batch = idx[start:start + batch_size]
            if len(batch) < 2:
                break
            x = torch.from_numpy(dataset.images(batch)).permute(0, 3, 1, 2)
            model(normalise(x.to(device)).contiguous(memory_format=memory_format))
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)
    return n


@torch.no_grad()
def calibrate_imported_bn(model: nn.Module, dataset: PackedDataset, num_images: int, batch_size: int,
                          normalise, device: torch.device, seed: int = 0,
                          memory_format: torch.memory_format = torch.contiguous_format) -> int:
    """Give an imported start's BatchNorms the statistics of the training images (same seeded sample
    as :func:`recompute_bn_stats`) without changing its eval-mode function, so its first train-mode
    steps compute what the pretrained model computes (:func:`facedistill.models.onnx_import.calibrate_batchnorm`).
    Returns the number of BatchNorms calibrated."""
    from facedistill.models.onnx_import import calibrate_batchnorm

    n = min(max(num_images, batch_size), len(dataset))
    idx = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:n])

    def batches():
        for start in range(0, n, batch_size):
            x = torch.from_numpy(dataset.images(idx[start:start + batch_size])).permute(0, 3, 1, 2)
            yield normalise(x.to(device)).contiguous(memory_format=memory_format)

    return calibrate_batchnorm(model, batches())
