from facedistill.bench import machine_info
from facedistill.bench.sysinfo import (contention_warning, cpu_description, current_rss_mb, peak_rss_mb,
                                       reset_peak_rss, short_label)

X86 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Core(TM) i7-1185G7 @ 3.00GHz
flags\t\t: fpu sse sse2 avx avx2 fma f16c avx512f avx512bw avx512_vnni
core id\t\t: 0

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Core(TM) i7-1185G7 @ 3.00GHz
flags\t\t: fpu sse sse2 avx avx2 fma f16c avx512f avx512bw avx512_vnni
core id\t\t: 0
"""


def _arm_block(i: int, part: str, features: str = "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp") -> str:
    return (f"processor\t: {i}\nBogoMIPS\t: 48.00\nFeatures\t: fp asimd evtstrm aes crc32 atomics "
            f"{features}\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
            f"CPU variant\t: 0x4\nCPU part\t: {part}\nCPU revision\t: 0\n\n")


def test_x86_instruction_sets():
    d = cpu_description(X86, "x86_64")
    assert d["model"].startswith("Intel(R) Core(TM) i7-1185G7")
    isa = d["isa"]
    assert isa["AVX2"] and isa["AVX-512 VNNI"] and not isa["AVX-VNNI"] and not isa["AMX"]


def test_arm_big_little_board():
    text = "".join(_arm_block(i, "0xd05") for i in range(4)) + "".join(_arm_block(i, "0xd0b") for i in range(4, 8))
    d = cpu_description(text, "aarch64")
    assert d["model"] == "4x Cortex-A55 + 4x Cortex-A76" and d["vendor"] == "ARM"
    assert d["isa"]["dot-product (asimddp)"] and not d["isa"]["int8 matmul (i8mm)"] and not d["isa"]["SVE"]
    single = cpu_description(_arm_block(0, "0xd08", features="cpuid"), "aarch64")
    assert single["model"] == "Cortex-A72" and not single["isa"]["dot-product (asimddp)"]


def test_machine_info_is_complete():
    m = machine_info()
    for key in ("cpu_model", "architecture", "logical_cpus", "usable_cpus", "isa", "os", "python",
                "onnxruntime", "onnxruntime_providers", "load_average_1m"):
        assert key in m, key
    assert m["usable_cpus"] >= 1 and m["onnxruntime"]
    assert short_label(m).startswith(m["architecture"])
    busy = dict(m, load_average_1m=10.0, usable_cpus=2)
    assert "noisy" in contention_warning(busy)
    assert contention_warning(dict(m, load_average_1m=0.1, usable_cpus=2)) is None


def test_peak_rss_resets_per_configuration():
    import numpy as np

    reset_peak_rss()
    big = np.ones(64 * 2**20 // 8)  # 64 MB
    peak_with = peak_rss_mb()
    del big
    if reset_peak_rss():  # Linux: the mark follows the current RSS again
        assert peak_rss_mb() < peak_with - 32
        assert abs(peak_rss_mb() - current_rss_mb()) < 16


def test_cpu_bf16_support_and_precision_auto():
    import pytest

    from facedistill.bench.sysinfo import cpu_bf16_support, resolve_precision

    amx = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
    ok, why = cpu_bf16_support(amx)
    assert ok and "amx_bf16" in why and "avx512_bf16" in why
    assert resolve_precision("auto", "cpu", amx) == "bf16"
    plain = "processor\t: 0\nflags\t\t: fpu sse avx2\n"
    ok, why = cpu_bf16_support(plain)
    try:
        import torch

        native = torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX")
    except ImportError:
        native = False
    assert ok == native and ("no avx512_bf16" in why) != native
    assert resolve_precision("auto", "cpu", plain) == ("bf16" if native else "fp32")
    assert resolve_precision("auto", "cuda", amx) == "fp32" and resolve_precision("bf16", "cpu", plain) == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8")
