"""ONNX teachers: messy real-world files (stale graph inputs) are repaired; preprocessing applies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from facedistill.data.preprocessing import Preprocessing
from facedistill.engine.teachers import OnnxTeacher
from facedistill.errors import FaceDistillError


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4)
        self.fc = nn.Linear(4 * 28 * 28, 16)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def export(tmp_path, stale: bool) -> tuple[str, nn.Module]:
    torch.manual_seed(0)
    model = Tiny().eval()
    path = tmp_path / "t.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, 112, 112), str(path), input_names=["data"], output_names=["emb"],
                      dynamic_axes={"data": {0: "n"}, "emb": {0: "n"}}, opset_version=17, dynamo=False)
    if stale:  # what SFace ships with: initializers still listed as graph inputs
        m = onnx.load(str(path))
        for init in m.graph.initializer:
            m.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        onnx.save(m, str(path))
    return str(path), model


@pytest.mark.parametrize("stale", [False, True])
def test_onnx_teacher_matches_torch(tmp_path, stale):
    path, model = export(tmp_path, stale)
    pre = Preprocessing(mean=0.0, std=1.0, channel_order="BGR")
    teacher = OnnxTeacher(path, pre)
    assert teacher.repaired == stale and teacher.embedding_size == 16
    images = torch.randint(0, 256, (5, 3, 112, 112), dtype=torch.uint8)
    with torch.no_grad():
        expected = model(images.float().flip(1))  # BGR, raw 0..255
    np.testing.assert_allclose(teacher(images).numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_onnx_teacher_errors(tmp_path):
    with pytest.raises(FaceDistillError, match="not found"):
        OnnxTeacher(tmp_path / "missing.onnx", Preprocessing())
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(FaceDistillError, match="not a readable ONNX model"):
        OnnxTeacher(bad, Preprocessing())


class BakedBatch(Tiny):
    """A graph whose Reshape names batch 1: it cannot run batched."""

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).reshape(1, -1))


@pytest.mark.parametrize("model_cls, batched", [(Tiny, True), (BakedBatch, False)])
def test_fixed_batch_1_teacher_runs_batched_when_the_graph_allows(tmp_path, model_cls, batched):
    """SFace ships batch 1: the teacher makes the axis dynamic (one call per batch) when every image
    keeps its embedding that way, and runs image by image otherwise."""
    torch.manual_seed(0)
    model = model_cls().eval()
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, 112, 112), str(path), input_names=["data"], output_names=["emb"],
                      opset_version=17, dynamo=False)  # no dynamic axes: batch fixed at 1
    teacher = OnnxTeacher(path, Preprocessing(mean=0.0, std=1.0))
    assert teacher.batched == batched and (teacher.fixed_batch is None) == batched
    images = torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8)
    with torch.no_grad():
        expected = torch.cat([model(images[i:i + 1].float()) for i in range(4)])
    np.testing.assert_allclose(teacher(images).numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_torch_teacher_runs_on_onnxruntime_when_it_pays_off(tmp_path):
    """``runtime: auto``: a CPU torch teacher that will embed many images runs as an ONNX graph on
    onnxruntime, with the same fingerprint (so the same cache) and the same embeddings; a small job,
    or ``runtime: torch``, keeps PyTorch; a bad runtime is a recipe error naming the key."""
    from facedistill.config.teachers import TeacherConfig
    from facedistill.engine.teachers import AUTO_MIN_IMAGES, PARITY_COSINE, TorchTeacher, build_teacher
    from facedistill.models import create_backbone

    torch.manual_seed(0)
    model = create_backbone("mobilefacenet_s", embedding_size=16)
    ckpt = tmp_path / "teacher.pt"
    torch.save(model.state_dict(), ckpt)
    cfg = TeacherConfig(type="torch", checkpoint=str(ckpt), arch="mobilefacenet_s", embedding_size=16)
    fast = build_teacher(cfg, "cpu", threads=1, images=AUTO_MIN_IMAGES)
    small = build_teacher(cfg, "cpu", threads=1, images=AUTO_MIN_IMAGES - 1)
    cfg.runtime = "torch"
    plain = build_teacher(cfg, "cpu", threads=1)
    assert isinstance(fast, OnnxTeacher) and "onnxruntime" in fast.description
    assert isinstance(small, TorchTeacher) and isinstance(plain, TorchTeacher)
    assert fast.fingerprint == plain.fingerprint == small.fingerprint and fast.embedding_size == 16
    images = torch.randint(0, 256, (6, 3, 112, 112), dtype=torch.uint8)
    cosine = torch.nn.functional.cosine_similarity(fast(images), plain(images))
    assert float(cosine.min()) >= PARITY_COSINE


def test_teacher_runtime_is_checked():
    from facedistill.config import load_recipe
    from facedistill.errors import RecipeError

    with pytest.raises(RecipeError, match=r"teacher.runtime"):
        load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "quickstart" / "unified.yaml",
                    ["teacher.runtime=tensorrt"], check_files=False)
