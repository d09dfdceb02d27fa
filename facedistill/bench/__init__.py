"""Latency / memory benchmarks of exported models, target machine info, cross-target comparison,
and emulated-ARM parity checks. No torch import here: this runs in the slim runtime image."""

from facedistill.bench.arm import ArmReport, find_arm_python, verify_arm
from facedistill.bench.latency import (BenchmarkError, BenchmarkReport, BenchmarkRow, benchmark_models,
                                       check_latency_gates, parse_latency_gates)
from facedistill.bench.merge import load_report, merge_reports
from facedistill.bench.sysinfo import machine_info

__all__ = ["ArmReport", "BenchmarkError", "BenchmarkReport", "BenchmarkRow", "benchmark_models",
           "check_latency_gates", "find_arm_python", "load_report", "machine_info", "merge_reports",
           "parse_latency_gates", "verify_arm"]
