"""The benchmark scripts run end to end at the tiniest sizes (subprocesses, as a user runs them).

``benchmarks/kd_ablation.py``: two types, one seed, a few steps each; a second invocation reuses every
finished run. ``benchmarks/teacher_cache.py``: an iresnet18 teacher, a tiny student, two steps.
``benchmarks/augment_cost.py``: a tiny ONNX teacher, 16 images, one step per training mode.
The numbers are meaningless at these sizes; only that the scripts work is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def run_script(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    # One torch thread: tiny batches gain nothing from more, and a busy machine is not oversubscribed.
    env = {**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / name), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def tiny_onnx_teacher(path: Path) -> Path:
    """A 16-d ONNX "teacher" small enough for tests (RGB 112x112 in, like SFace)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    tiny = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28 * 28, 16)).eval()
    torch.onnx.export(tiny, torch.zeros(1, 3, 112, 112), str(path), input_names=["data"],
                      output_names=["emb"], dynamic_axes={"data": {0: "n"}, "emb": {0: "n"}}, opset_version=17,
                      dynamo=False)
    return path


def test_kd_ablation_tiny_runs_and_resumes(tmp_path):
    work = tmp_path / "kd"
    out = tmp_path / "kd.json"
    tiny = ["--workdir", str(work), "--types", "none,unified", "--seeds", "0", "--identities", "8",
            "--images-per-identity", "4", "--val-identities", "20", "--val-images-per-identity", "2",
            "--val-pairs", "100", "--teacher-epochs", "1", "--student-epochs", "1", "--batch-size", "8",
            "--teacher-set", "student.arch=mobilefacenet_s", "--teacher-set", "student.embedding_size=64",
            "--teacher-set", "data.workers=0", "--set", "student.embedding_size=32", "--set", "data.workers=0",
            "--set", "loss.distill.rpsd.bank_size=16", "--set", "loss.distill.rpsd.hard_negatives=4",
            "--set", "loss.distill.rpsd.warmup_entries=4"]
    proc = run_script("kd_ablation.py", *tiny, "--json", str(out))
    assert "KD ablation" in proc.stdout
    for row in ("teacher", "none", "unified"):
        assert row in proc.stdout
    result = json.loads(out.read_text())
    assert [r["type"] for r in result["rows"]] == ["none", "unified"]
    assert {(r["type"], r["seed"], r["how"]) for r in result["runs"]} == {("none", 0, "trained"),
                                                                           ("unified", 0, "trained")}
    for r in result["rows"]:
        assert 0.0 <= r["accuracy_mean"] <= 1.0 and r["accuracy_std"] == 0.0 and r["wall_time_mean_s"] > 0
    assert result["rows"][0]["delta_vs_none"] == 0.0
    assert 0.0 <= result["teacher"]["accuracy"] <= 1.0
    assert (work / "kd_ablation.png").stat().st_size > 0
    assert (work / "kd_ablation.json").is_file()
    assert (work / "none-s0" / "summary.json").is_file() and (work / "unified-s0" / "summary.json").is_file()
    # By default the accuracy is the runs' own (nothing evaluated twice)
    assert result["accuracy_source"].startswith("run summaries")
    assert [r["accuracy"] for r in result["runs"]] == [r["summary_val_accuracy"] for r in result["runs"]]

    # Run again: every finished run is reused (nothing trained); --accuracy evaluate re-evaluates.
    proc = run_script("kd_ablation.py", *tiny, "--accuracy", "evaluate", "--no-plot", "--json", str(out))
    assert "teacher: reusing" in proc.stderr
    result = json.loads(out.read_text())
    assert {r["how"] for r in result["runs"]} == {"reused"}
    assert result["accuracy_source"].startswith("evaluate()")


def test_teacher_cache_tiny(tmp_path):
    out = tmp_path / "cache.json"
    proc = run_script("teacher_cache.py", "--teacher-arch", "iresnet18", "--student-arch", "mobilefacenet_s",
                      "--student-embedding-size", "32", "--steps", "2", "--warmup", "1", "--batch-size", "4",
                      "--images", "8", "--workdir", str(tmp_path / "work"), "--json", str(out))
    assert "RANDOMLY INITIALISED iresnet18" in proc.stderr
    assert "online (teacher.cache: false)" in proc.stdout and "cached (teacher.cache: true)" in proc.stdout
    assert "cache build:" in proc.stdout and "ratio cached/online:" in proc.stdout
    result = json.loads(out.read_text())
    assert result["online"]["timed_steps"] == 2 and result["cached"]["timed_steps"] == 2
    assert result["online"]["teacher_cached"] is False and result["cached"]["teacher_cached"] is True
    assert result["online"]["images_per_s"] > 0 and result["cached"]["images_per_s"] > 0
    assert result["cache_build_s"] > 0 and result["ratio"] > 0
    assert Path(result["cache_file"]).is_file()


def test_sface_lfw_tiny_runs_and_reuses(tmp_path, tiny_synthetic):
    """The real-faces pipeline script with a tiny ONNX teacher on synthetic data: rows, evaluate, deploy."""
    teacher = tiny_onnx_teacher(tmp_path / "teacher.onnx")
    work = tmp_path / "sface"
    args = ["--workdir", str(work), "--types", "none,unified", "--epochs", "1", "--jobs", "2", "--threads", "1",
            "--set", f"data.train={tiny_synthetic / 'train'}", "--set", f"data.val={tiny_synthetic / 'val'}",
            "--set", f"teacher.onnx={teacher}", "--set", "data.batch_size=8", "--set", "student.embedding_size=32",
            "--set", "loss.distill.rpsd.bank_size=16", "--set", "loss.distill.rpsd.hard_negatives=4",
            "--set", "train.precise_bn_images=16"]
    out = tmp_path / "sface.json"
    proc = run_script("sface_lfw.py", *args, "--json", str(out), timeout=600)
    assert "SFace -> MobileFaceNet" in proc.stdout and "deployed student vs teacher" in proc.stdout
    result = json.loads(out.read_text())
    assert [r["model"] for r in result["rows"]] == ["teacher (SFace, ONNX)", "none", "unified"]
    for r in result["rows"]:
        assert 0.0 <= r["accuracy"] <= 1.0
    assert all(r["steps"] == 4 and r["how"] == "train" for r in result["rows"][1:])  # 32 images / batch 8
    precisions = [r["model"].split()[2] for r in result["deploy"][1:]]
    assert precisions == ["fp32", "int8"]
    for r in result["deploy"]:
        assert r["size_mb"] > 0 and r["p50_ms"] > 0 and 0.0 <= r["accuracy"] <= 1.0
    assert result["teacher_cache"]["built_s"] is not None
    assert (work / "sface_lfw.png").stat().st_size > 0

    # Again: both rows reused, the cache found.
    proc = run_script("sface_lfw.py", *args, "--deploy", "", timeout=600)
    assert "none: reusing" in proc.stderr and "unified: reusing" in proc.stderr
    result = json.loads((work / "sface_lfw.json").read_text())
    assert result["teacher_cache"]["built_s"] is None and result["deploy"] == []


def test_sface_lfw_data_from_and_more_seeds_for(tmp_path, tiny_synthetic):
    """--data-from trains every row on another recipe's sources; --more-seeds-for limits the extra seeds."""
    teacher = tiny_onnx_teacher(tmp_path / "teacher.onnx")
    train = tiny_synthetic / "train"
    sources = tmp_path / "two_sources.yaml"
    sources.write_text(f"data:\n  train:\n    - {{path: {train}, weight: 0.5, name: a}}\n"
                       f"    - {{path: {train}, weight: 0.5, name: b}}\n  val: {tiny_synthetic / 'val'}\n"
                       f"teacher: {{type: onnx, onnx: {teacher}, mean: 0.0, std: 1.0, channel_order: RGB}}\n")
    work = tmp_path / "sface"
    out = tmp_path / "sface.json"
    run_script("sface_lfw.py", "--workdir", str(work), "--types", "none,l2", "--seeds", "0,1", "--more-seeds-for", "l2",
               "--epochs", "1", "--jobs", "2", "--threads", "1", "--deploy", "", "--data-from", str(sources),
               "--set", f"data.val={tiny_synthetic / 'val'}", "--set", f"teacher.onnx={teacher}",
               "--set", "data.batch_size=8", "--set", "student.embedding_size=32",
               "--set", "train.precise_bn_images=16", "--json", str(out), timeout=600)
    result = json.loads(out.read_text())
    assert [(r["type"], r["seed"]) for r in result["runs"]] == [("none", 0), ("l2", 0), ("l2", 1)]
    none, l2 = result["rows"][1:]
    assert none["spread"] == "folds" and len(none["accuracies"]) == 1
    assert l2["spread"] == "seeds" and len(l2["accuracies"]) == 2
    assert all(r["steps"] == 8 for r in result["runs"])  # two sources of 32 images, batch 8 (one source: 4)
    assert [s["name"] for s in result["settings"]["data_train"]] == ["a", "b"]


def test_augment_cost_tiny(tmp_path, tiny_synthetic):
    """K-view cache build and the three training modes side by side, with a tiny ONNX teacher."""
    teacher = tiny_onnx_teacher(tmp_path / "teacher.onnx")
    out = tmp_path / "aug.json"
    run_script("augment_cost.py", "--train", str(tiny_synthetic / "train"), "--teacher", str(teacher),
               "--images", "16", "--batch-size", "8", "--steps", "1", "--warmup", "0", "--views", "2",
               "--set", "student.embedding_size=32", "--workdir", str(tmp_path / "work"), "--json", str(out))
    result = json.loads(out.read_text())
    assert result["images"] == 16 and result["views"] == 2
    assert result["cache_build"]["views_s_per_image"] > 0 and Path(result["cache_build"]["view_cache_file"]).is_file()
    rows = result["training"]
    assert list(rows) == ["flip only", "views K=2", "online"] and rows["flip only"]["ratio_vs_flip_only"] == 1.0
    assert rows["flip only"]["augment"] is None
    assert rows["views K=2"]["augment"]["teacher"] == "cache of 2 views" and rows["online"]["augment"]["teacher"] == "online"
    assert all(r["images_per_s"] > 0 and r["timed_steps"] == 1 for r in rows.values())
    # the script caches a copy of the slice, never beside the data it was given
    assert not list((tiny_synthetic / "train" / "teacher-cache").glob("*-views2-*.npy"))


@pytest.mark.slow  # about 2 minutes on 2 shared cores (several model copies, synthetic data, ONNX export)
def test_train_throughput_quick(tmp_path):
    out = tmp_path / "tp.json"
    proc = run_script("train_throughput.py", "--quick", "--no-compile", "--processes", "2",
                      "--data", str(tmp_path / "absent"),
                      "--json", str(out), timeout=600)
    assert "training step" in proc.stdout and "evaluation embedding" in proc.stdout
    result = json.loads(out.read_text())
    loader = f"loader {'bf16 dw-fp32' if result['bf16_native'] else 'fp32'} channels_last t1 workers 0"
    ddp = f"mobilefacenet_s {'bf16 dw-fp32' if result['bf16_native'] else 'fp32'} channels_last 2 processes x t1"
    assert {"contiguous t1", "channels_last t1", loader, ddp} <= set(result["train"])
    for row in list(result["train"].values()) + list(result["eval"].values()):
        assert row["images_per_s"] > 0
    assert result["eval"]["jit frozen (default) b8"]["min_cosine_vs_legacy"] > 0.9999
    assert result["eval"]["onnxruntime fp32 b64"]["min_cosine_vs_legacy"] > 0.9999
    assert ("bf16 autocast skipped" in proc.stdout) == (not result["bf16_native"])
