"""Measurements of a written model file: a quick batch-1 latency and the verification accuracy on a
pair set (insightface's 10-fold protocol), with per-pair judgements for the paired test.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from facedistill.data.preprocessing import Preprocessing
from facedistill.export.parity import ort_session

__all__ = ["quick_latency_ms", "verification_accuracy", "verify_pairs"]


def quick_latency_ms(path: str | os.PathLike, input_size: int = 112, threads: int = 1, warmup: int = 3,
                     max_runs: int = 50, max_seconds: float = 1.5) -> float:
    """Median batch-1 latency (ms) of an onnxruntime CPU session: a quick figure, not a benchmark.
    A fixed-batch model is timed at its own batch size."""
    sess = ort_session(path, threads=threads)
    inp = sess.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    n = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else 1
    x = np.random.default_rng(0).standard_normal((n, 3, input_size, input_size)).astype(dtype)
    for _ in range(warmup):
        sess.run(None, {inp.name: x})
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (time.perf_counter() - start < max_seconds or len(times) < 5):
        t = time.perf_counter()
        sess.run(None, {inp.name: x})
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def verification_accuracy(path: str | os.PathLike, pairs_set: Any, pre: Preprocessing,
                          batch: int = 64) -> dict[str, Any]:
    """insightface-style 10-fold accuracy (percent) of an ONNX model on a prepared pair set (flip on)."""
    return verify_pairs(path, pairs_set, pre, batch)[0]


def verify_pairs(path: str | os.PathLike, pairs_set: Any, pre: Preprocessing,
                 batch: int = 64) -> tuple[dict[str, Any], np.ndarray]:
    """:func:`verification_accuracy` and, per pair, whether the model judged it right (for paired tests)."""
    from facedistill.evaluation.embedders import OnnxEmbedder, embed_images
    from facedistill.evaluation.protocol import pair_scores, verification_metrics

    embedder = OnnxEmbedder(str(path), preprocess=pre, batch_size=batch)
    pairs = np.asarray(pairs_set.pairs)
    used = np.unique(pairs[:, :2])
    got = embed_images(embedder, pairs_set.images(used), flip=True)
    emb = np.zeros((len(pairs_set), got.shape[1]), np.float32)
    emb[used] = got
    scores = pair_scores(emb[pairs[:, 0]], emb[pairs[:, 1]])
    nfolds = 10 if len(pairs) >= 100 else 1
    res = verification_metrics(scores, pairs[:, 2].astype(bool), nfolds=nfolds)
    return ({"accuracy": 100.0 * float(res.accuracy), "accuracy_std": 100.0 * float(res.accuracy_std),
             "auc": float(res.auc), "eer": float(res.eer), "pairs": int(len(pairs)), "nfolds": nfolds},
            res.pair_correct)
