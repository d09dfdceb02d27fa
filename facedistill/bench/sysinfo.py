"""What machine a benchmark ran on: the CPU, the instruction sets that decide int8/fp16 speed, the
runtime, and the process memory probes the latency runner uses.

Only the standard library (and onnxruntime, imported lazily) is used, so this works in the slim
``runtime`` Docker image and on ARM boards.
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# Instruction-set features that change which kernels onnxruntime / PyTorch can use.
# x86 names as in /proc/cpuinfo "flags"; ARM names as in /proc/cpuinfo "Features".
X86_FEATURES = {
    "avx2": "AVX2",
    "fma": "FMA",
    "f16c": "F16C",
    "avx512f": "AVX-512F",
    "avx512bw": "AVX-512BW",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "avx512_fp16": "AVX-512 FP16",
    "amx_tile": "AMX",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
}
ARM_FEATURES = {
    "asimd": "NEON",
    "asimdhp": "FP16 arithmetic",
    "asimddp": "dot-product (asimddp)",
    "i8mm": "int8 matmul (i8mm)",
    "bf16": "BF16",
    "sve": "SVE",
    "sve2": "SVE2",
    "sme": "SME",
}

# MIDR implementer / part numbers of the cores found on edge boards and ARM servers.
_ARM_IMPLEMENTERS = {"0x41": "ARM", "0x51": "Qualcomm", "0x61": "Apple", "0x48": "HiSilicon",
                     "0x4e": "NVIDIA", "0x46": "Fujitsu", "0xc0": "Ampere"}
_ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd0e": "Cortex-A76AE", "0xd40": "Neoverse-V1",
    "0xd41": "Cortex-A78", "0xd42": "Cortex-A78AE", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510",
    "0xd47": "Cortex-A710", "0xd48": "Cortex-X2", "0xd49": "Neoverse-N2", "0xd4a": "Neoverse-E1",
    "0xd4b": "Cortex-A78C", "0xd4d": "Cortex-A715", "0xd4e": "Cortex-X3", "0xd4f": "Neoverse-V2",
    "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4", "0xd84": "Neoverse-V3",
    "0xd8e": "Neoverse-N3", "0x001": "A64FX",
}


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def _parse_cpuinfo(text: str) -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per block (per logical CPU, plus trailing global blocks on ARM)."""
    blocks: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if cur:
                blocks.append(cur)
                cur = {}
            continue
        if ":" in line:
            k, v = line.split(":", 1)
            cur[k.strip()] = v.strip()
    if cur:
        blocks.append(cur)
    return blocks


def cpu_description(cpuinfo_text: str | None = None, machine: str | None = None) -> dict[str, Any]:
    """CPU model name, vendor and the instruction sets that matter, from /proc/cpuinfo (Linux)."""
    machine = machine or platform.machine()
    text = cpuinfo_text if cpuinfo_text is not None else (_read("/proc/cpuinfo") or "")
    blocks = _parse_cpuinfo(text)
    merged: dict[str, str] = {}
    for b in blocks:
        for k, v in b.items():
            merged.setdefault(k, v)
    flags = set((merged.get("flags") or merged.get("Features") or "").split())
    is_arm = machine.lower() in ("aarch64", "arm64") or machine.lower().startswith("arm")
    table = ARM_FEATURES if is_arm else X86_FEATURES
    isa = {label: (name in flags) for name, label in table.items()} if flags else {}

    model = merged.get("model name") or merged.get("Model") or merged.get("Hardware")
    vendor = merged.get("vendor_id")
    cores_by_part: dict[str, int] = {}
    if is_arm:
        impl = merged.get("CPU implementer", "").lower()
        vendor = _ARM_IMPLEMENTERS.get(impl, impl or None)
        for b in blocks:
            part = b.get("CPU part", "").lower()
            if part:
                name = _ARM_PARTS.get(part, f"part {part}")
                cores_by_part[name] = cores_by_part.get(name, 0) + 1
        if cores_by_part and not merged.get("model name"):
            # big.LITTLE boards list two core types: "4x Cortex-A76 + 4x Cortex-A55".
            model = " + ".join(f"{n}x {name}" for name, n in cores_by_part.items()) \
                if len(cores_by_part) > 1 else next(iter(cores_by_part))
    if not model:
        model = platform.processor() or machine
        if sys.platform == "darwin":
            model = _sysctl("machdep.cpu.brand_string") or model
    out: dict[str, Any] = {"model": model, "vendor": vendor, "isa": isa,
                           "flags_seen": bool(flags)}
    if cores_by_part:
        out["core_types"] = cores_by_part
    return out


def _sysctl(name: str) -> str | None:
    import subprocess

    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def usable_cpus() -> int:
    """CPUs this process may run on (affinity / cpuset), not the host's total."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cgroup_cpu_quota() -> float | None:
    """CPU limit set by a container runtime (``docker run --cpus``), in CPUs; None when unlimited."""
    text = _read("/sys/fs/cgroup/cpu.max")  # cgroup v2: "max 100000" or "200000 100000"
    if text:
        parts = text.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                return int(parts[0]) / int(parts[1])
            except ValueError:
                return None
        return None
    quota, period = _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
    try:
        if quota and period and int(quota) > 0:
            return int(quota) / int(period)
    except ValueError:
        pass
    return None


def _physical_cores(cpuinfo_text: str) -> int | None:
    pairs = set()
    for b in _parse_cpuinfo(cpuinfo_text):
        if "core id" in b:
            pairs.add((b.get("physical id", "0"), b["core id"]))
    return len(pairs) or None


def total_memory_mb() -> float | None:
    text = _read("/proc/meminfo")
    if text:
        for line in text.splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024, 1)
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20, 1)
    except (ValueError, OSError, AttributeError):
        return None


def board_model() -> str | None:
    """Device-tree board name on ARM boards ("Raspberry Pi 4 Model B Rev 1.4", "NVIDIA Jetson ...")."""
    for p in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        text = _read(p)
        if text:
            return text.strip("\x00 \n")
    return None


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _os_description() -> str:
    text = _read("/etc/os-release")
    if text:
        for line in text.splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return platform.platform(terse=True)


def in_container() -> bool:
    if os.environ.get("FACEDISTILL_IN_CONTAINER") == "1":  # set by the facedistill images
        return True
    if Path("/.dockerenv").exists() or Path("/run/.containerenv").exists():
        return True
    cg = _read("/proc/1/cgroup") or ""
    return any(s in cg for s in ("docker", "kubepods", "containerd", "libpod"))


def machine_info() -> dict[str, Any]:
    """Everything about the machine that a latency number depends on, as a JSON-able dict."""
    machine = platform.machine()
    cpuinfo = _read("/proc/cpuinfo") or ""
    cpu = cpu_description(cpuinfo, machine)
    info: dict[str, Any] = {
        "cpu_model": cpu["model"],
        "cpu_vendor": cpu["vendor"],
        "architecture": machine,
        "logical_cpus": os.cpu_count(),
        "physical_cores": _physical_cores(cpuinfo),
        "usable_cpus": usable_cpus(),
        "cpu_quota": cgroup_cpu_quota(),
        "isa": cpu["isa"],
        "memory_mb": total_memory_mb(),
        "os": _os_description(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": _package_version("numpy"),
        "onnxruntime": _package_version("onnxruntime"),
        "onnxruntime_providers": [],
        "torch": _package_version("torch"),  # installed version; torch is not imported here
        "in_container": in_container(),
        "board": board_model(),
        "cpu_governor": (_read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") or "").strip() or None,
    }
    if "core_types" in cpu:
        info["core_types"] = cpu["core_types"]
    try:
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        info["load_average_1m"] = None
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = list(ort.get_available_providers())
    except ImportError:
        pass
    return info


def short_label(info: dict[str, Any]) -> str:
    """A short default name for a target in comparison tables: "aarch64 Cortex-A72"."""
    model = str(info.get("board") or info.get("cpu_model") or "cpu")
    for noise in ("(R)", "(TM)", "CPU ", " Processor", "  "):
        model = model.replace(noise, " " if noise == "  " else "")
    return f"{info.get('architecture', '?')} {' '.join(model.split())}"[:48]


def isa_summary(info: dict[str, Any]) -> str:
    return ", ".join(k for k, v in (info.get("isa") or {}).items() if v) or "unknown"


def contention_warning(info: dict[str, Any]) -> str | None:
    """Say when the machine was busy: other work on the cores makes latencies noisy."""
    load, cpus = info.get("load_average_1m"), info.get("usable_cpus") or 1
    if load is not None and load > 0.5 * cpus:
        return (f"load average {load:.1f} on {cpus} usable CPU(s) before the run: other processes "
                "compete for the cores, so latencies are noisy (expect high std and outliers).")
    return None


# --- process memory probes --------------------------------------------------------------------

def _status_kb(field: str) -> float | None:
    text = _read("/proc/self/status")
    if text:
        for line in text.splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    return None


def current_rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0) so the next peak is per configuration.

    Also hands freed heap back to the OS first (glibc ``malloc_trim``), so memory freed by an
    earlier configuration does not hide what the next one allocates. Returns False where the peak
    cannot be reset (macOS, old kernels): then peaks are "so far in this process".
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / 2**20 if sys.platform == "darwin" else ru / 1024


# --- bf16 on CPU ------------------------------------------------------------------------------

def cpu_bf16_support(cpuinfo_text: str | None = None) -> tuple[bool, str]:
    """(native bf16 on this CPU, why): AVX512-BF16 or AMX-BF16 in /proc/cpuinfo, or torch's capability.

    Without them bf16 autocast on CPU is emulated and slower than fp32, so ``train.precision: auto``
    stays fp32 there.
    """
    text = cpuinfo_text if cpuinfo_text is not None else (_read("/proc/cpuinfo") or "")
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags") or line.startswith("Features"):
            flags.update(line.split(":", 1)[1].split())
            break
    found = sorted(flags & {"avx512_bf16", "amx_bf16"})
    cap = None
    try:
        import torch

        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - torch absent or too old: flags decide
        pass
    if found:
        return True, f"CPU flags {','.join(found)} (torch capability {cap})"
    if cap in ("AVX512_BF16", "AMX"):
        return True, f"torch capability {cap}"
    return False, f"no avx512_bf16/amx_bf16 in the CPU flags, torch capability {cap}"


def resolve_precision(precision: str, device_type: str = "cpu", cpuinfo_text: str | None = None) -> str:
    """``train.precision`` -> what to run: ``auto`` is bf16 on CPUs with native bf16, else fp32."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if precision != "auto":
        return precision
    if device_type != "cpu":
        return "fp32"   # CUDA keeps its own fp16 AMP switch (train.amp)
    return "bf16" if cpu_bf16_support(cpuinfo_text)[0] else "fp32"
