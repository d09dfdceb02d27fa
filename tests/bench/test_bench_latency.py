import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from _tiny import tiny_model
from facedistill.bench import latency as lat
from facedistill.bench.latency import (BenchmarkError, BenchmarkReport, benchmark_models, check_latency_gates,
                                       latency_stats, parse_int_list, parse_latency_gates, time_runs)


def test_time_runs_counts_and_min_time():
    calls = []
    t = time_runs(lambda: calls.append(1), warmup=3, runs=7, min_time=None)
    assert t.shape == (7,) and len(calls) == 10 and (t >= 0).all()
    start = time.perf_counter()
    t = time_runs(lambda: time.sleep(0.002), warmup=0, runs=None, min_time=0.05)
    assert time.perf_counter() - start >= 0.05 and t.size >= lat.MIN_RUNS
    t = time_runs(lambda: None, warmup=0, runs=3, min_time=0.02)  # both: whichever ends later
    assert t.size > 3


def test_stats_report_outliers_instead_of_hiding_them():
    times = np.array([10.0] * 18 + [16.0, 40.0])
    s = latency_stats(times, batch=4)
    assert s["p50_ms"] == 10.0 and s["outliers"] == 2 and s["max_ms"] == 40.0
    assert s["outlier_threshold_ms"] == 15.0
    assert math.isclose(s["images_per_s"], 4 * 1000 / times.mean())
    assert s["p99_ms"] > s["p90_ms"] >= s["p50_ms"] and s["runs"] == 20


def test_parse_lists():
    assert parse_int_list("1, 8,32,8", "batch") == [1, 8, 32]
    for bad in ("", "0", "a", "1,-2"):
        with pytest.raises(BenchmarkError):
            parse_int_list(bad, "batch")


def test_benchmark_fp32_and_int8(bench_models, tmp_path: Path):
    seen = []
    report = benchmark_models([bench_models["fp32"], bench_models["int8"]], [1, 2], [1], warmup=1, runs=3,
                              min_time=None, profile_dir=tmp_path / "prof",
                              progress=lambda d, t, w: seen.append((d, t)))
    assert seen[-1] == (4, 4) and len(seen) == 4
    assert [(r.model, r.batch, r.precision) for r in report.rows] == [
        ("mbf", 1, "fp32"), ("mbf", 2, "fp32"), ("mbf_int8", 1, "int8"), ("mbf_int8", 2, "int8")]
    for r in report.rows:
        assert r.status == "ok", r.note
        assert r.runs == 3 and 0 < r.min_ms <= r.p50_ms <= r.max_ms
        assert r.images_per_s > 0 and r.size_mb > 0 and r.threads == 1
        assert r.peak_rss_mb and r.peak_rss_mb > 20 and r.model_rss_mb is not None
        assert Path(r.profile).is_file() and r.top_ops
        assert {"op", "ms_per_run", "share", "calls_per_run"} <= set(r.top_ops[0])
    assert report.rows[2].size_mb < report.rows[0].size_mb / 2  # int8 weights are ~4x smaller
    assert any(op["op"] in ("Conv", "PRelu") for op in report.rows[0].top_ops)
    m = report.machine
    assert m["architecture"] and m["onnxruntime"] and "CPUExecutionProvider" in m["onnxruntime_providers"]
    d = json.loads(json.dumps(report.to_dict()))  # JSON-able, no NaN
    again = BenchmarkReport.from_dict(d)
    assert again.rows[3].p50_ms == report.rows[3].p50_ms and again.label == report.label


def test_fixed_batch_models_are_skipped_not_crashed(tmp_path: Path):
    p = tiny_model(tmp_path / "fixed.onnx", batch=1)
    report = benchmark_models([p], [1, 4], [1], warmup=0, runs=2)
    assert [r.status for r in report.rows] == ["ok", "skipped"]
    assert "fixed batch size of 1" in report.rows[1].note


def test_oversubscribed_threads_are_noted(tmp_path: Path):
    from facedistill.bench.sysinfo import usable_cpus

    p = tiny_model(tmp_path / "t.onnx")
    n = usable_cpus() + 1
    report = benchmark_models([p], [1], [n], warmup=0, runs=2)
    assert report.rows[0].status == "ok" and "oversubscribed" in report.rows[0].note


def test_bad_inputs_are_user_errors(tmp_path: Path, bench_models):
    with pytest.raises(BenchmarkError, match="no such file"):
        benchmark_models([tmp_path / "nope.onnx"], [1], [1], runs=1)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(BenchmarkError, match="not a readable ONNX"):
        benchmark_models([bad], [1], [1], runs=1)
    with pytest.raises(BenchmarkError, match="--torch"):
        benchmark_models([bench_models["run"]], [1], [1], runs=1)


def test_torch_eager_baseline_from_a_run_folder(bench_models):
    report = benchmark_models([bench_models["run"], bench_models["fp32"]], [1], [1], warmup=1, runs=2,
                              torch_baseline=True)
    torch_row, ort_row = report.rows
    assert torch_row.engine == "torch-eager" and torch_row.status == "ok", torch_row.note
    assert torch_row.model == "run (torch)" and ort_row.engine == "onnxruntime"
    assert lat.speedups(report)[0] == 1.0 and 1 in lat.speedups(report)


def test_latency_gates():
    assert parse_latency_gates(["15", "32=120", "b8=3ms"]) == {1: 15.0, 32: 120.0, 8: 3.0}
    for bad in ("abc", "0", "2=-1"):
        with pytest.raises(BenchmarkError):
            parse_latency_gates([bad])
    rows = [lat.BenchmarkRow("m", "m.onnx", "onnxruntime", "CPU", "fp32", "graph", 1.0, b, 1, p50_ms=p50)
            for b, p50 in ((1, 10.0), (8, 50.0))]
    rows.append(lat.BenchmarkRow("t", "run", "torch-eager", "torch", "fp32", "torch", 1.0, 1, 1, p50_ms=99.0))
    report = BenchmarkReport(machine={}, rows=rows)
    assert check_latency_gates(report, {1: 12.0}) == []  # torch baselines are not gated
    assert "p50 10.00 ms > 9 ms" in check_latency_gates(report, {1: 9.0})[0]
    assert "not benchmarked" in check_latency_gates(report, {32: 100.0})[0]
    rows[1].status, rows[1].note = "failed", "out of memory"
    assert "failed" in check_latency_gates(report, {8: 100.0})[0]
