"""ONNX face models as a pretrained student start: import, parity with onnxruntime, errors, recipes.

Two kinds of input: a MobileFaceNet exported here by torch (BatchNorm folded into the convs, the
head's BatchNorm1d kept, random non-trivial statistics), so the import is tested without ../shared,
and the two public models of ../shared/models on real LFW faces (skipped when absent).
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from facedistill.cli.main import app  # noqa: E402
from facedistill.config import load_recipe  # noqa: E402
from facedistill.config.recipe import student_preprocessing  # noqa: E402
from facedistill.data.preprocessing import Preprocessing  # noqa: E402
from facedistill.errors import CheckpointError, RecipeError  # noqa: E402
from facedistill.models import create_backbone, infer_arch  # noqa: E402
from facedistill.models.checkpoints import load_backbone  # noqa: E402
from facedistill.models.onnx_import import calibrate_batchnorm, import_onnx_backbone  # noqa: E402

MODELS = Path(__file__).resolve().parents[2].parent / "shared" / "models"
PADDLEX = MODELS / "paddlex_mobilefacenet_prelu_128d.onnx"
FOAMLIU = MODELS / "foamliu_mobilefacenet_relu6_128d.onnx"
# what each public model wants (../shared/models/README.md)
PADDLEX_PRE = Preprocessing(127.5, 127.5, "BGR")
FOAMLIU_PRE = Preprocessing((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), "RGB")
REAL_FACES = 48


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ort_embed(path: Path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0].reshape(len(x), -1)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def torch_embed(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A ReLU6 MobileFaceNet (64-d) with random BatchNorm statistics, exported by torch: every conv BN
    folded into its conv, the head's BatchNorm1d left as a BatchNormalization node after a MatMul."""
    torch.manual_seed(0)
    model = create_backbone("mobilefacenet_s_relu6", embedding_size=64).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
    path = tmp_path_factory.mktemp("onnx") / "mbf_relu6.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 3, 112, 112), str(path), dynamo=False, opset_version=13,
                          input_names=["x"], output_names=["emb"], dynamic_axes={"x": {0: "n"}, "emb": {0: "n"}})
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "BatchNormalization" in ops and "MatMul" in ops  # the two paths the import must handle
    return path


@pytest.fixture(scope="module")
def real_faces() -> np.ndarray:
    images = MODELS.parent / "data" / "lfw112-dev" / "images"
    if not images.is_dir() or not PADDLEX.is_file() or not FOAMLIU.is_file():
        pytest.skip(f"real faces or public models not found under {MODELS.parent} (../shared beside the project)")
    from PIL import Image

    files = sorted(images.rglob("*.jpg"))
    picked = files[:: max(1, len(files) // REAL_FACES)][:REAL_FACES]
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in picked])


def rand_input(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, 3, 112, 112)).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# the import
# ------------------------------------------------------------------------------------------------
def test_an_exported_mobilefacenet_imports_back_and_computes_the_same(exported):
    loaded = load_backbone(exported)
    assert (loaded.arch, loaded.embedding_size) == ("mobilefacenet_s_relu6", 64)
    x = rand_input(6, seed=3)
    assert cosines(torch_embed(loaded.model, x), ort_embed(exported, x)).min() >= 0.99999
    # a folded BatchNorm comes back as an identity with the conv's bias as its shift
    stem_bn = loaded.model.layers[0].layers[1]
    assert torch.all(stem_bn.weight == 1) and torch.all(stem_bn.running_mean == 0)
    assert torch.allclose(stem_bn.running_var + stem_bn.eps, torch.ones_like(stem_bn.running_var))
    assert stem_bn.bias.abs().sum() > 0
    assert loaded.model.layers[0].layers[0].bias is None  # arcface names and shapes, nothing added
    assert infer_arch(loaded.model.state_dict()) == ("mobilefacenet_s_relu6", 64)
    assert loaded.info["preprocessing_recorded"] is False


def test_the_first_mismatching_layer_is_named_with_both_shapes(exported):
    with pytest.raises(CheckpointError) as e:
        import_onnx_backbone(exported, arch="mobilefacenet")  # scale 2: 128 stem channels, not 64
    text = str(e.value)
    first_conv = next(n for n in onnx.load(str(exported)).graph.node if n.op_type == "Conv")
    assert "layer 1 does not match" in text and first_conv.name in text and first_conv.input[1] in text
    assert "(64, 3, 3, 3)" in text and "layers.0.layers.0.weight (128, 3, 3, 3)" in text
    assert "the file matches 'mobilefacenet_s_relu6'" in text
    with pytest.raises(CheckpointError, match="activations differ: the file's is relu6, the backbone's prelu"):
        import_onnx_backbone(exported, arch="mobilefacenet_s")
    with pytest.raises(CheckpointError, match="64-d, not 128-d"):
        import_onnx_backbone(exported, arch="mobilefacenet_s_relu6", embedding_size=128)


def test_matching_weights_with_other_wiring_are_refused(exported, tmp_path):
    """Dropping a residual Add leaves every weight in place: only the parity probe can see it. (The last
    one: a randomly initialised net maps all inputs to about the same vector, so an early change hides.)"""
    model = onnx.load(str(exported))
    add = [n for n in model.graph.node if n.op_type == "Add"][-1]
    for node in model.graph.node:  # consumers of the sum read the branch alone
        for i, name in enumerate(node.input):
            if name == add.output[0]:
                node.input[i] = add.input[1]
    model.graph.node.remove(add)
    broken = tmp_path / "no_shortcut.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(CheckpointError, match=r"outputs differ \(worst cosine .*\(11 residual adds"):
        import_onnx_backbone(broken)


def _tiny_graph(path: Path, *, head: str) -> Path:
    """A small non-face graph: a conv that leaves a 4-D map, or a classifier with pooling and softmax."""
    w = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv")]
    inits = [w]
    if head == "map":
        out = helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 8, 30, 30])
    else:
        inits.append(numpy_helper.from_array(np.ones((8, 10), np.float32), "fc"))
        nodes += [helper.make_node("GlobalAveragePool", ["c"], ["p"], name="pool"),
                  helper.make_node("Flatten", ["p"], ["f"], name="flat"),
                  helper.make_node("MatMul", ["f", "fc"], ["l"], name="fc"),
                  helper.make_node("Softmax", ["l"], ["prob"], name="softmax")]
        out = helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 10])
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [out], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_non_face_models_are_refused_in_one_line_by_the_cli(tmp_path):
    runner = CliRunner()
    cases = {"map": "expected N x D", "classifier": "node 'pool' is a GlobalAveragePool"}
    for head, message in cases.items():
        path = _tiny_graph(tmp_path / f"{head}.onnx", head=head)
        res = runner.invoke(app, ["prepare", "student", str(path), "--out", str(tmp_path / head),
                                  "--mean", "127.5", "--std", "127.5", "--rgb"])
        assert res.exit_code == 2, res.output
        assert message in res.output and str(path.name) in res.output
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("hello")
    res = runner.invoke(app, ["prepare", "student", str(not_onnx), "--out", str(tmp_path / "x"),
                              "--mean", "0", "--std", "1", "--rgb"])
    assert res.exit_code == 2 and "not a readable ONNX model" in res.output


# ------------------------------------------------------------------------------------------------
# the CLI path: prepare student, then evaluate's torch-vs-ONNX comparison
# ------------------------------------------------------------------------------------------------
def test_prepare_student_writes_a_folder_that_evaluate_compares_with_the_onnx_file(exported, tmp_path, tiny_synthetic):
    runner = CliRunner()
    start = tmp_path / "start"
    res = runner.invoke(app, ["prepare", "student", str(exported), "--out", str(start), "--mean", "127.5",
                              "--std", "127.5", "--bgr", "--json", "-"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["student"]["arch"] == "mobilefacenet_s_relu6"
    assert summary["preprocessing"]["channel_order"] == "BGR"
    assert summary["imported_from"]["probe_min_cosine"] >= 0.9999
    assert json.loads((start / "summary.json").read_text()) == summary
    res = runner.invoke(app, ["evaluate", str(start), str(exported), "--mean", "127.5", "--std", "127.5", "--bgr",
                              "--compare", f"{start}={exported}", "--data", str(tiny_synthetic / "val"),
                              "--threads", "1", "--json", "-"])
    assert res.exit_code == 0, res.output
    parity = json.loads(res.stdout[res.stdout.index("{"):])["parity"]
    assert len(parity) == 1 and parity[0]["min_cosine"] >= 0.9999, parity
    res = runner.invoke(app, ["prepare", "student", str(exported), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "does not record the preprocessing" in res.output


# ------------------------------------------------------------------------------------------------
# recipes: the start's preprocessing is carried or checked, the import is checked before training
# ------------------------------------------------------------------------------------------------
def write_recipe(tmp_path: Path, student: dict, data: Path | None = None, name: str = "r.yaml") -> Path:
    recipe = {"name": "start", "output_dir": str(tmp_path / "runs"), "student": student,
              "loss": {"margin": {"type": "arcface"}, "distill": {"type": "none"}},
              "optim": {"optimizer": "adamw", "lr": 1e-4},
              "train": {"max_steps": 2, "threads": 1, "precise_bn_images": 16, "eval_every": -1}}
    if data is not None:
        recipe["data"] = {"train": str(data / "train"), "val": str(data / "val"), "batch_size": 8, "workers": 0}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_recipe_checks_the_onnx_start_before_training(exported, tmp_path):
    base = {"checkpoint": str(exported), "embedding_size": 64}
    with pytest.raises(RecipeError, match=r"(?s)does not import into 'mobilefacenet'.*student.arch: mobilefacenet_s_relu6"):
        load_recipe(write_recipe(tmp_path, base), check_files=True)
    with pytest.raises(RecipeError, match="does not record the preprocessing"):
        load_recipe(write_recipe(tmp_path, {**base, "arch": "mobilefacenet_s_relu6", "channel_order": "BGR"}))
    with pytest.raises(RecipeError, match="student.checkpoint.*does not exist"):
        load_recipe(write_recipe(tmp_path, {**base, "checkpoint": str(tmp_path / "missing.onnx")}))
    ok = load_recipe(write_recipe(tmp_path, {**base, "arch": "mobilefacenet_s_relu6", "mean": [1, 2, 3],
                                             "std": 2.0, "channel_order": "BGR"}))
    assert student_preprocessing(ok.student) == Preprocessing((1, 2, 3), 2.0, "BGR")


def test_preprocessing_recorded_in_onnx_metadata_is_carried_and_contradictions_refused(exported, tmp_path):
    model = onnx.load(str(exported))
    for key, value in {"mean": "123.675,116.28,103.53", "std": "58.395,57.12,57.375", "channel_order": "RGB"}.items():
        model.metadata_props.add(key=key, value=value)
    tagged = tmp_path / "tagged.onnx"
    onnx.save(model, str(tagged))
    base = {"checkpoint": str(tagged), "arch": "mobilefacenet_s_relu6", "embedding_size": 64}
    carried = load_recipe(write_recipe(tmp_path, base))
    assert student_preprocessing(carried.student) == FOAMLIU_PRE
    with pytest.raises(RecipeError, match=r"say BGR.*records RGB"):
        load_recipe(write_recipe(tmp_path, {**base, "channel_order": "BGR"}))


def test_distill_from_an_onnx_start_trains_and_records_its_preprocessing(exported, tmp_path, tiny_synthetic):
    recipe = write_recipe(tmp_path, {"checkpoint": str(exported), "arch": "mobilefacenet_s_relu6",
                                     "embedding_size": 64, "mean": 127.5, "std": 127.5, "channel_order": "BGR"},
                          data=tiny_synthetic)
    res = CliRunner().invoke(app, ["distill", str(recipe), "--json", "-"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["preprocessing"]["channel_order"] == "BGR" and summary["steps"] == 2
    assert "BatchNorms calibrated" in res.output
    # the run folder is a start too, and says its preprocessing: a contradicting recipe is refused
    run = Path(summary["run_dir"])
    again = write_recipe(tmp_path, {"checkpoint": str(run), "arch": "mobilefacenet_s_relu6", "embedding_size": 64,
                                    "channel_order": "RGB"}, name="again.yaml")
    with pytest.raises(RecipeError, match=r"say RGB.*records BGR"):
        load_recipe(again)


def test_calibrating_batchnorm_keeps_the_eval_function(exported):
    model = load_backbone(exported).model
    x = rand_input(8, seed=5)
    before = torch_embed(model, x)
    changed = calibrate_batchnorm(model, [torch.from_numpy(rand_input(16, seed=6))])
    assert changed == sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert cosines(torch_embed(model, x), before).min() >= 0.99999
    assert not torch.all(model.layers[0].layers[1].running_mean == 0)


# ------------------------------------------------------------------------------------------------
# the public models on real faces
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, pre, arch", [(PADDLEX, PADDLEX_PRE, "mobilefacenet_s"),
                                             (FOAMLIU, FOAMLIU_PRE, "mobilefacenet_s_relu6_sepstem")],
                         ids=["paddlex-prelu", "foamliu-relu6"])
def test_public_models_import_and_give_their_embeddings_on_real_faces(real_faces, path, pre, arch):
    loaded = load_backbone(path)
    assert (loaded.arch, loaded.embedding_size) == (arch, 128)
    x = pre.apply(real_faces)
    cos = cosines(torch_embed(loaded.model, x), ort_embed(path, x))
    assert len(cos) == REAL_FACES and cos.min() >= 0.9999, (cos.min(), cos.mean())


def test_the_relu6_file_names_its_first_difference_from_the_arcface_layout(real_faces):
    with pytest.raises(CheckpointError) as e:
        import_onnx_backbone(FOAMLIU, arch="mobilefacenet_s_relu6")
    text = str(e.value)
    assert "'/dw_conv/relu/Relu'" in text and "layers.1.layers.2 (ReLU6)" in text
    assert "the file matches 'mobilefacenet_s_relu6_sepstem'" in text


def test_calibration_makes_train_mode_compute_the_public_model(real_faces):
    """Unit statistics are exact in eval mode only; calibrated, a train-mode batch stays close."""
    model = load_backbone(PADDLEX).model
    x = torch.from_numpy(PADDLEX_PRE.apply(real_faces))
    ref = torch_embed(model, x.numpy()[24:])

    def train_mode_cos() -> float:
        with torch.no_grad():  # a copy: a train-mode pass moves the running statistics
            out = copy.deepcopy(model).train()(x[24:]).numpy()
        return float(cosines(out, ref).mean())

    uncalibrated = train_mode_cos()
    calibrate_batchnorm(model, [x[:24]])
    assert cosines(torch_embed(model, x.numpy()[24:]), ref).min() >= 0.99999
    calibrated = train_mode_cos()
    assert uncalibrated < 0.5 < 0.9 < calibrated, (uncalibrated, calibrated)
