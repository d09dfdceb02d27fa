"""Prove that exported models run on aarch64 and agree with this host, using an emulated ARM CPU.

The emulated interpreter (qemu user mode + an aarch64 CPython with onnxruntime and numpy) runs
``arm_worker.py`` as a subprocess; inputs and outputs travel as .npy files in a temporary folder.
Emulation is 35-80x slower than real hardware and its timings say nothing about a board's latency:
this checks *correctness* only. Latency comes from ``facedistill benchmark`` run on the board.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from facedistill.bench.latency import BenchmarkError, ort_session
from facedistill.bench.onnxinfo import OnnxParseError, model_precision, summarize_onnx

ARM_PYTHON_ENV = "FACEDISTILL_ARM_PYTHON"
DEFAULT_ARM_PYTHON = "/tmp/armemu/py-aarch64"
DEFAULT_CPU = "cortex-a72"
WORKER = Path(__file__).with_name("arm_worker.py")
# Minimum per-embedding cosine (host vs emulated ARM) by precision.
MIN_COSINE = {"fp32": 0.99999, "fp16": 0.999, "bf16": 0.999, "int8": 0.999, "int4": 0.999}
LATENCY_DISCLAIMER = ("Emulated ARM: these runs prove the model loads and agrees with this host. "
                      "Emulated timings mean nothing for a real board (emulation is 35-80x slower); "
                      "measure latency with `facedistill benchmark` on the device.")

SETUP_HINT = (
    "Set {env} (or --arm-python) to an aarch64 python that has onnxruntime and numpy at the host's "
    "versions, running under qemu user mode. To build one under /tmp/armemu (about 20 s, Debian/"
    "Ubuntu, needs qemu-user-static: `apt-get install -y qemu-user-static`):\n"
    "    bash ../shared/arm/setup-arm64-emulator.sh     # from the repository root; writes /tmp/armemu/py-aarch64\n"
    "With Docker and binfmt (docker run --privileged --rm tonistiigi/binfmt --install arm64) you can "
    "instead run the linux/arm64 runtime image: docker run --platform linux/arm64 ... "
    "(see docs/deploy.md)."
)


@dataclass
class ArmParity:
    model: str
    precision: str
    min_cosine: float | None
    mean_cosine: float | None
    max_abs_diff: float | None
    threshold: float
    passed: bool
    batch: int
    emulated_run_s: float | None = None  # meaningless as a latency; kept to show emulation cost
    error: str = ""


@dataclass
class ArmReport:
    cpu: str
    arm_python: str
    host: dict[str, Any]
    target: dict[str, Any]
    results: list[ArmParity] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    disclaimer: str = LATENCY_DISCLAIMER

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "facedistill.verify-arm/1", "cpu": self.cpu, "arm_python": self.arm_python,
                "passed": self.passed, "host": self.host, "target": self.target,
                "results": [asdict(r) for r in self.results], "warnings": self.warnings,
                "disclaimer": self.disclaimer}


def find_arm_python(explicit: str | os.PathLike | None = None) -> Path:
    """The emulated python: ``explicit``, else $FACEDISTILL_ARM_PYTHON, else /tmp/armemu/py-aarch64."""
    chosen = explicit or os.environ.get(ARM_PYTHON_ENV) or DEFAULT_ARM_PYTHON
    p = Path(chosen)
    if not p.is_file() or not os.access(p, os.X_OK):
        where = "--arm-python" if explicit else (ARM_PYTHON_ENV if os.environ.get(ARM_PYTHON_ENV)
                                                  else "the default location")
        raise BenchmarkError(f"no emulated ARM python at {p} ({where}).\n" + SETUP_HINT.format(env=ARM_PYTHON_ENV))
    return p


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(den, 1e-30)


def _input_independent(y: np.ndarray) -> bool:
    """True when every embedding points the same way (e.g. a freshly initialised network)."""
    flat = y.reshape(len(y), -1).astype(np.float64)
    cos = cosine_rows(flat[:-1], flat[1:])
    return bool(cos.min() > 0.9999)


def _input_for(path: Path, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Face-crop-like input (uniform in [-1, 1], as after (x - 127.5) / 127.5) and the host output."""
    sess = ort_session(path, threads=1)
    inp = sess.get_inputs()[0]
    shape = [batch] + [d if isinstance(d, int) and d > 0 else (3 if i == 0 else 112)
                       for i, d in enumerate(inp.shape[1:])]
    if inp.shape and isinstance(inp.shape[0], int) and inp.shape[0] > 0:
        shape[0] = inp.shape[0]
    rng = np.random.default_rng(seed)
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    x = rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
    y = sess.run(None, {inp.name: x})[0]
    return x, y, inp.type


def verify_arm(
    models: Sequence[str | os.PathLike],
    cpu: str = DEFAULT_CPU,
    arm_python: str | os.PathLike | None = None,
    batch: int = 4,
    threads: int = 1,
    timeout: float = 900.0,
    seed: int = 0,
    min_cosine: dict[str, float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ArmReport:
    """Run each ONNX model on this host and on the emulated ARM CPU; compare the embeddings.

    Pass when every per-embedding cosine reaches the precision's threshold (fp32 0.99999, int8 0.999).
    """
    py = find_arm_python(arm_python)
    thresholds = {**MIN_COSINE, **(min_cosine or {})}
    paths = [Path(m) for m in models]
    if not paths:
        raise BenchmarkError("no models given: pass one or more .onnx files")
    for p in paths:
        if not p.is_file():
            raise BenchmarkError(f"{p}: no such ONNX file")
    report = ArmReport(cpu=cpu, arm_python=str(py),
                       host={"architecture": platform.machine(), "python": platform.python_version(),
                             "numpy": np.__version__, "onnxruntime": _ort_version()},
                       target={})
    with tempfile.TemporaryDirectory(prefix="facedistill-arm-") as tmp:
        tmpd = Path(tmp)
        jobs, host_out, precisions = [], [], []
        for i, p in enumerate(paths):
            try:
                precision, _ = model_precision(summarize_onnx(p))
            except (OnnxParseError, OSError) as e:
                raise BenchmarkError(f"{p}: not a readable ONNX model ({e})") from None
            if progress:
                progress(f"host run: {p.name}")
            x, y, _ = _input_for(p, batch, seed)
            np.save(tmpd / f"in{i}.npy", x)
            jobs.append({"model": str(p.resolve()), "input": str(tmpd / f"in{i}.npy"),
                         "output": str(tmpd / f"out{i}.npy")})
            host_out.append(y)
            precisions.append(precision)
            if len(y) >= 2 and _input_independent(y):
                report.warnings.append(f"{p.name}: the embeddings hardly depend on the input (untrained "
                                       "weights?), so agreement says little about the ARM kernels")
        job_file = tmpd / "job.json"
        job_file.write_text(json.dumps({"threads": threads, "jobs": jobs}))
        env = {**os.environ, "QEMU_CPU": cpu}
        if progress:
            progress(f"emulated {cpu}: {len(jobs)} model(s) (slow: emulation)")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([str(py), str(WORKER), str(job_file)], capture_output=True, text=True,
                                  timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise BenchmarkError(f"the emulated ARM run took longer than {timeout:g} s; raise --timeout "
                                 "or check fewer / smaller models") from None
        except OSError as e:
            raise BenchmarkError(f"cannot start {py}: {e}\n" + SETUP_HINT.format(env=ARM_PYTHON_ENV)) from None
        wall = time.perf_counter() - t0
        last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        try:
            target = json.loads(last)
        except ValueError:
            tail = (proc.stderr or proc.stdout or "").strip()[-1500:]
            raise BenchmarkError(f"the emulated ARM python failed (exit {proc.returncode}, CPU {cpu}):\n"
                                 f"{tail}\nIs QEMU_CPU valid (cortex-a53, cortex-a72, cortex-a76, "
                                 f"neoverse-n1, a64fx)? " + SETUP_HINT.format(env=ARM_PYTHON_ENV)) from None
        report.target = {k: v for k, v in target.items() if k != "results"}
        report.target["wall_s"] = wall
        if target.get("machine") not in ("aarch64", "arm64"):
            report.warnings.append(f"the 'ARM' python reports machine {target.get('machine')!r}, not aarch64")
        if target.get("onnxruntime") != report.host["onnxruntime"]:
            report.warnings.append(f"onnxruntime differs: host {report.host['onnxruntime']}, target "
                                   f"{target.get('onnxruntime')}; keep them equal for a fair comparison")
        for p, job, res, y, precision in zip(paths, jobs, target["results"], host_out, precisions):
            thr = thresholds.get(precision, 0.999)
            if not res.get("ok"):
                report.results.append(ArmParity(str(p), precision, None, None, None, thr, False, batch,
                                                error=res.get("error", "failed")))
                continue
            z = np.load(job["output"])
            if z.shape != y.shape:
                report.results.append(ArmParity(str(p), precision, None, None, None, thr, False, batch,
                                                error=f"output shape {z.shape} != host {y.shape}"))
                continue
            cos = cosine_rows(y, z)
            report.results.append(ArmParity(
                model=str(p), precision=precision, min_cosine=float(cos.min()), mean_cosine=float(cos.mean()),
                max_abs_diff=float(np.abs(y.astype(np.float64) - z.astype(np.float64)).max()),
                threshold=thr, passed=bool(cos.min() >= thr), batch=int(y.shape[0]),
                emulated_run_s=res.get("run_s")))
    return report


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__
