"""``facedistill evaluate`` through Typer's CliRunner: table, --json, --plot, errors without tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from facedistill.cli.main import app  # noqa: E402
from facedistill.data.packed import PackedWriter  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
META = {"mean": "127.5", "std": "127.5", "channel_order": "RGB", "input_size": "112"}


def tiny_onnx(path: Path, seed: int = 0, meta: dict[str, str] | None = None, out_rank: int = 2) -> Path:
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.2, (8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.5, (16, 8)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["data", "w"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["e" if out_rank == 3 else "emb"], transB=1)]
    out_shape: list = ["N", 16]
    if out_rank == 3:
        inits.append(numpy_helper.from_array(np.array([2], np.int64), "axes"))
        nodes.append(helper.make_node("Unsqueeze", ["e", "axes"], ["emb"]))
        out_shape = ["N", 16, 1]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("data", TensorProto.FLOAT,
                                                                            ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("emb", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for k, v in (meta or {}).items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(model, str(path))
    return path


def pair_set(path: Path, num_pairs: int = 1200, num_images: int = 60, seed: int = 0) -> Path:
    """Identities of 3 images each: images of one identity share a base pattern (so scores separate)."""
    rng = np.random.default_rng(seed)
    with PackedWriter(path, kind="pairs", source="test") as w:
        bases = rng.integers(0, 256, (num_images // 3, 112, 112, 3))
        for i in range(num_images):
            noise = rng.integers(-40, 40, (112, 112, 3))
            w.add(np.clip(bases[i // 3] + noise, 0, 255).astype(np.uint8), i // 3, f"id{i // 3}/{i % 3}")
        ident = rng.integers(0, num_images // 3, num_pairs)
        same = np.arange(num_pairs) % 2 == 0
        a = ident * 3 + rng.integers(0, 3, num_pairs)
        other = (ident + 1 + rng.integers(0, num_images // 3 - 1, num_pairs)) % (num_images // 3)
        b = np.where(same, ident * 3 + (a - ident * 3 + 1 + rng.integers(0, 2, num_pairs)) % 3,
                     other * 3 + rng.integers(0, 3, num_pairs))
        w.set_pairs(np.stack([a, b, same.astype(np.int64)], 1))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return {
        "a": tiny_onnx(root / "model_a.onnx", seed=0, meta=META),
        "b": tiny_onnx(root / "model_b.onnx", seed=1),
        "set1": pair_set(root / "set_one", seed=0),
        "set2": pair_set(root / "set_two", num_pairs=1000, seed=1),
        "root": root,
    }


def run(*args: str):
    return CliRunner().invoke(app, ["evaluate", *args])


def test_cli_table_json_and_plots(files, tmp_path):
    out_json = tmp_path / "eval.json"
    plots = tmp_path / "plots"
    res = run(str(files["a"]), str(files["b"]), "--data", str(files["set1"]), "--data", str(files["set2"]),
              "--mean", "0", "--std", "1", "--threads", "1", "--json", str(out_json), "--plot", str(plots))
    assert res.exit_code == 0, res.output
    text = res.output
    for word in ("model_a.onnx", "model_b.onnx", "set_one", "set_two", "1200 pairs", "±", "evaluated 2 model(s)"):
        assert word in text, word
    d = json.loads(out_json.read_text())
    assert len(d["results"]) == 4
    assert {(r["model"], r["data"]) for r in d["results"]} == {
        (m, s) for m in ("model_a.onnx", "model_b.onnx") for s in ("set_one", "set_two")}
    for r in d["results"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["accuracy_std"] >= 0.0
        assert set(r["tar_at_far"]) >= {"1e-3", "1e-4"}
        assert r["precision"] == "fp32" and r["params"] > 0 and r["size_mb"] > 0
    models = {m["name"]: m for m in d["models"]}
    assert models["model_a.onnx"]["preprocess_source"] == "metadata"
    assert models["model_b.onnx"]["preprocess_source"] == "flags"
    assert models["model_b.onnx"]["preprocess"]["mean"] == 0.0
    pngs = sorted(p.name for p in plots.iterdir())
    assert pngs == ["hist_model_a.onnx__set_one.png", "hist_model_a.onnx__set_two.png",
                    "hist_model_b.onnx__set_one.png", "hist_model_b.onnx__set_two.png",
                    "roc_set_one.png", "roc_set_two.png"]
    for p in plots.iterdir():
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
    assert sorted(d["plots"]) == sorted(str(plots / n) for n in pngs)


def test_cli_json_to_stdout(files):
    res = run(str(files["a"]), "--data", str(files["set2"]), "--threads", "1", "--no-flip", "--json", "-")
    assert res.exit_code == 0, res.output
    start = res.stdout.index("{")
    d = json.loads(res.stdout[start:])
    assert d["settings"]["flip"] is False and d["results"][0]["pairs"] == 1000


@pytest.mark.parametrize("case", ["few_pairs", "not_2d", "missing_model", "bad_compare"])
def test_cli_bad_input_exit_2(files, tmp_path, case):
    if case == "few_pairs":
        args = [str(files["a"]), "--data", str(pair_set(tmp_path / "few", num_pairs=60, num_images=30))]
        expect = "too few"
    elif case == "not_2d":
        args = [str(tiny_onnx(tmp_path / "rank3.onnx", out_rank=3, meta=META)), "--data", str(files["set2"])]
        expect = "(batch, dim)"
    elif case == "missing_model":
        args = [str(tmp_path / "nope.onnx"), "--data", str(files["set2"])]
        expect = "no such model"
    else:
        args = [str(files["a"]), "--data", str(files["set2"]), "--compare", "nonsense"]
        expect = "TORCH_MODEL=ONNX_MODEL"
    res = run(*args)
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and expect in res.output
    assert "Traceback" not in res.output


def test_cli_help_mentions_syntax():
    res = CliRunner().invoke(app, ["evaluate", "--help"])
    assert res.exit_code == 0
    assert "IMAGES_DIR" in res.output and "--no-flip" in res.output and "--mean" in res.output


def test_cli_per_channel_mean_std(files):
    """`--mean a,b,c --std a,b,c` reaches the model as per-channel values (ImageNet-style models)."""
    res = run(str(files["b"]), "--data", str(files["set2"]), "--threads", "1", "--mean", "123.675,116.28,103.53",
              "--std", "58.395,57.12,57.375", "--json", "-")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout[res.stdout.index("{"):])
    pre = d["models"][0]["preprocess"]
    assert pre["mean"] == [123.675, 116.28, 103.53] and pre["std"] == [58.395, 57.12, 57.375]
    assert d["models"][0]["preprocess_source"] == "flags"
    bad = run(str(files["b"]), "--data", str(files["set2"]), "--mean", "1,2")
    assert bad.exit_code == 2 and "three comma-separated" in bad.output


def test_cli_ensemble_row(files):
    """--ensemble adds a row scored on the joint embedding; --weights 1,0 reproduces the first model."""
    res = run(str(files["a"]), str(files["b"]), "--data", str(files["set1"]), "--mean", "0", "--std", "1",
              "--threads", "1", "--ensemble", "--weights", "1,0", "--json", "-")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout[res.stdout.index("{"):])
    acc = {r["model"]: r["accuracy"] for r in d["results"]}
    ens = [m for m in acc if m.startswith("ensemble(")]
    assert len(ens) == 1 and acc[ens[0]] == acc["model_a.onnx"]
    both = run(str(files["a"]), str(files["b"]), "--data", str(files["set1"]), "--mean", "0", "--std", "1",
               "--threads", "1", "--ensemble", "--json", "-")
    d2 = json.loads(both.stdout[both.stdout.index("{"):])
    assert len(d2["results"]) == 3 and d2["models"][-1]["kind"] == "ensemble"
    bad = run(str(files["a"]), str(files["b"]), "--data", str(files["set1"]), "--ensemble", "--weights", "1")
    assert bad.exit_code == 2 and "one non-negative weight per model" in bad.output


def _json(res) -> dict:
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout[res.stdout.index("{"):])


def test_cli_reference_row_paired_test_in_table_and_json(files):
    """Every row is compared with the first model on the same pairs: won / lost, p, a verdict."""
    args = [str(files["a"]), str(files["b"]), "--data", str(files["set1"]), "--data", str(files["set2"]),
            "--mean", "0", "--std", "1", "--threads", "1", "--ensemble"]
    res = run(*args)
    assert res.exit_code == 0, res.output
    cells = " ".join(res.output.replace("│", " ").replace("┃", " ").split())
    assert "vs model_a.onnx" in cells and "won/lost, p" in cells and "reference" in cells
    d = _json(run(*args, "--json", "-"))
    assert d["settings"]["reference"] == "model_a.onnx"
    for data in ("set_one", "set_two"):
        rows = {r["model"]: r for r in d["results"] if r["data"] == data}
        ref = rows.pop("model_a.onnx")
        assert ref["is_reference"] and ref["vs_reference"] is None
        for r in rows.values():
            v = r["vs_reference"]
            assert not r["is_reference"] and v["reference"] == "model_a.onnx" and v["pairs"] == r["pairs"]
            # equal folds: the accuracy difference is exactly (won - lost) / pairs
            assert v["won"] - v["lost"] == round((r["accuracy"] - ref["accuracy"]) * r["pairs"])
            assert v["verdict"] == ("a tie" if v["p_value"] > 0.05 else "worse" if v["lost"] > v["won"] else "better")
            cell = f"+{v['won']}/-{v['lost']}, p {v['p_value']:.2g}, {v['verdict']}"
            assert cell in cells
    # model_b's saturated embeddings (mean 0, std 1) guess: clearly worse than model_a
    b = next(r for r in d["results"] if r["model"] == "model_b.onnx" and r["data"] == "set_one")
    assert b["accuracy"] < 0.6 and b["vs_reference"]["verdict"] == "worse" and b["vs_reference"]["p_value"] < 1e-6


def test_cli_reference_choices(files):
    base = [str(files["a"]), str(files["b"]), "--data", str(files["set1"]), "--mean", "0", "--std", "1",
            "--threads", "1", "--ensemble", "--json", "-"]

    def reference_of(*extra):
        d = _json(run(*base, *extra))
        return [r["model"] for r in d["results"] if r["is_reference"]], d

    assert reference_of("--reference", "2")[0] == ["model_b.onnx"]
    assert reference_of("--reference", str(files["b"]))[0] == ["model_b.onnx"]
    assert reference_of("--reference", "model_b.onnx")[0] == ["model_b.onnx"]
    ens, _ = reference_of("--reference", "ensemble")
    assert len(ens) == 1 and ens[0].startswith("ensemble(")
    best, d = reference_of("--reference", "best")
    acc = {r["model"]: r["accuracy"] for r in d["results"]}
    assert acc[best[0]] == max(acc.values()) and d["settings"]["reference"] == "best"
    # the ensemble weighted 1,0 is model_a: the paired test sees no pair judged differently, a tie
    d = _json(run(*base, "--weights", "1,0"))
    ens_row = next(r for r in d["results"] if r["model"].startswith("ensemble("))
    v = ens_row["vs_reference"]
    assert (v["won"], v["lost"], v["p_value"], v["verdict"]) == (0, 0, 1.0, "a tie")


@pytest.mark.parametrize("value, message", [
    ("9", "--reference 9: there are 3 row(s); give a position 1..3"),
    ("0", "--reference 0: there are 3 row(s)"),
    ("nope.onnx", "--reference nope.onnx: not one of the models (model_a.onnx, model_b.onnx)"),
])
def test_cli_reference_errors(files, value, message):
    res = run(str(files["a"]), str(files["b"]), "--data", str(files["set1"]), "--ensemble", "--reference", value)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()) and "Traceback" not in res.output
    res = run(str(files["a"]), str(files["b"]), "--data", str(files["set1"]), "--reference", "ensemble")
    assert res.exit_code == 2 and "no ensemble row; add --ensemble" in " ".join(res.output.split())


def test_cli_single_model_has_no_comparison_column(files):
    res = run(str(files["a"]), "--data", str(files["set2"]), "--threads", "1")
    assert res.exit_code == 0 and "won/lost" not in res.output
    d = _json(run(str(files["a"]), "--data", str(files["set2"]), "--threads", "1", "--json", "-"))
    assert d["results"][0]["vs_reference"] is None and not d["results"][0]["is_reference"]
