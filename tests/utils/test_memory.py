"""keep_freed_memory: applied once per process on glibc Linux, a no-op elsewhere."""

from __future__ import annotations

import subprocess
import sys


def test_keep_freed_memory_is_idempotent():
    code = ("from facedistill.utils.memory import keep_freed_memory as k; a = k(); b = k(); "
            "import sys; print(a, b, sys.platform)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == out[1]
    if out[2].startswith("linux"):
        import platform

        assert out[0] == str(platform.libc_ver()[0] == "glibc")
