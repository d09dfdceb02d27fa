"""Each plot writes a real PNG atomically (no display needed)."""

from __future__ import annotations

import numpy as np

from facedistill.evaluation.plots import plot_roc, plot_score_histogram, plot_training_curves
from facedistill.evaluation.protocol import verification_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG_MAGIC


def _no_temp_files(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def _scores(n=3000, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    dist = np.where(same, rng.normal(0.9 + shift, 0.3, n), rng.normal(1.7, 0.25, n)).clip(0, 4)
    return dist, same


def test_plot_roc(tmp_path):
    teacher = verification_metrics(*_scores(seed=0))
    student = verification_metrics(*_scores(seed=1, shift=0.2))
    out = plot_roc(
        {"teacher": (teacher.far, teacher.tar), "student": (student.far, student.tar)},
        "LFW ROC",
        tmp_path / "sub" / "roc.png",
        accuracies={"teacher": teacher.accuracy, "student": student.accuracy},
    )
    assert out == tmp_path / "sub" / "roc.png"
    assert _is_png(out) and _no_temp_files(out.parent)


def test_plot_score_histogram(tmp_path):
    dist, same = _scores()
    res = verification_metrics(dist, same)
    out = plot_score_histogram(dist, same, "score distribution", tmp_path / "hist.png", threshold=res.threshold)
    assert _is_png(out) and _no_temp_files(tmp_path)
    # without a threshold, and overwriting an existing file
    out = plot_score_histogram(dist, same, "again", tmp_path / "hist.png")
    assert _is_png(out)


def test_plot_training_curves(tmp_path):
    metrics = []
    for step in range(0, 500, 10):
        rec = {"step": step, "loss": 5.0 * np.exp(-step / 150) + 0.1, "loss_iled": 2.0 * np.exp(-step / 100) + 0.05,
               "lr": 0.1, "epoch": step // 100, "note": "text is ignored"}
        if step % 100 == 0:
            rec["val_lfw"] = 0.7 + 0.25 * (1 - np.exp(-step / 200))
        metrics.append(rec)
    out = plot_training_curves(metrics, tmp_path / "curves.png")
    assert _is_png(out)
    # losses only (no val_ keys), one non-positive loss -> linear axis
    out2 = plot_training_curves([{"step": 0, "loss": 1.0}, {"step": 1, "loss": -0.5}], tmp_path / "c2.png")
    assert _is_png(out2)
    out3 = plot_training_curves([], tmp_path / "empty.png")
    assert _is_png(out3) and _no_temp_files(tmp_path)
