"""TorchEmbedder and OnnxEmbedder agree; preprocessing metadata; flip-sum; size and shape errors."""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from facedistill.data.preprocessing import Preprocessing  # noqa: E402
from facedistill.errors import DataError, FaceDistillError  # noqa: E402
from facedistill.evaluation.embedders import (  # noqa: E402
    Embedder,
    OnnxEmbedder,
    TorchEmbedder,
    embed_images,
)

SIZE = 32


class TinyNet(nn.Module):
    def __init__(self, dim: int = 16, flat: bool = True):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.PReLU(8),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(16, dim)
        self.flat = flat

    def forward(self, x):
        y = self.body(x).mean(dim=(2, 3))
        y = self.head(y)
        return y if self.flat else y[:, :, None]


def make_net(**kw) -> nn.Module:
    torch.manual_seed(0)
    net = TinyNet(**kw)
    with torch.no_grad():  # non-trivial BN statistics
        net.body[1].running_mean.uniform_(-0.2, 0.2)
        net.body[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


def export(net: nn.Module, batch: int | None = None, size: int = SIZE, meta: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    x = torch.zeros(batch or 2, 3, size, size)
    kwargs = dict(input_names=["input"], output_names=["embedding"], opset_version=17)
    if batch is None:
        kwargs["dynamic_axes"] = {"input": {0: "batch"}, "embedding": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(net, (x,), buf, dynamo=False, **kwargs)
        except TypeError:  # older torch without the dynamo flag
            torch.onnx.export(net, (x,), buf, **kwargs)
    model = onnx.load_from_string(buf.getvalue())
    for k, v in (meta or {}).items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    return model.SerializeToString()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(7, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def onnx_dynamic() -> bytes:
    return export(make_net())


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_preprocess_apply():
    img = np.zeros((1, 2, 2, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 0, 255, 100
    x = Preprocessing(input_size=2).apply(img)
    assert x.dtype == np.float32 and x.shape == (1, 3, 2, 2)
    np.testing.assert_allclose(x[0, :, 0, 0], [-1.0, 1.0, (100 - 127.5) / 127.5], rtol=1e-6)
    xb = Preprocessing(mean=0.0, std=1.0, channel_order="BGR", input_size=2).apply(img)
    np.testing.assert_array_equal(xb[0, :, 0, 0], [100, 255, 0])
    with pytest.raises(DataError, match="2x2"):
        Preprocessing(input_size=4).apply(img)


def test_torch_matches_onnx(images, onnx_dynamic, tmp_path):
    net = make_net()
    te = TorchEmbedder(net, Preprocessing(input_size=SIZE), batch_size=3)
    path = tmp_path / "tiny.onnx"
    path.write_bytes(onnx_dynamic)
    oe = OnnxEmbedder(path, Preprocessing(input_size=SIZE), batch_size=4, threads=1)
    assert oe.fixed_batch is None and oe.batch_size == 4
    assert isinstance(te, Embedder) and isinstance(oe, Embedder)
    a, b = te(images), oe(images)
    assert a.shape == b.shape == (7, 16) and a.dtype == b.dtype == np.float32
    assert cosine(a, b).min() > 0.9999
    ea = embed_images(te, images, batch_size=5)
    eb = embed_images(oe, images, batch_size=2)
    assert cosine(ea, eb).min() > 0.9999


def test_onnx_reads_metadata(images):
    meta = {"mean": "100.0", "std": "50.0", "channel_order": "BGR", "input_size": str(SIZE)}
    oe = OnnxEmbedder(export(make_net(), meta=meta))
    assert oe.preprocess == Preprocessing(mean=100.0, std=50.0, channel_order="BGR", input_size=SIZE)
    te = TorchEmbedder(make_net(), Preprocessing(mean=100.0, std=50.0, channel_order="BGR", input_size=SIZE))
    assert cosine(te(images), oe(images)).min() > 0.9999
    # no metadata -> defaults (with the graph's size)
    assert OnnxEmbedder(export(make_net())).preprocess == Preprocessing(input_size=SIZE)
    with pytest.raises(FaceDistillError, match="channel_order"):
        OnnxEmbedder(export(make_net(), meta={"channel_order": "YUV", "input_size": str(SIZE)}))


def test_flip_sum_math(images):
    calls = []

    def fake(x):
        calls.append(x.copy())
        return x.reshape(len(x), -1)[:, :4].astype(np.float32) + 1.0  # depends on left pixels only

    out = embed_images(fake, images, batch_size=3)
    assert len(calls) == 6  # 3 batches x (plain + flipped)
    np.testing.assert_array_equal(calls[1], calls[0][:, :, ::-1, :])
    raw = fake(images) + fake(images[:, :, ::-1, :])
    expect = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(out, expect, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    no_flip = embed_images(fake, images, flip=False)
    np.testing.assert_allclose(no_flip, fake(images) / np.linalg.norm(fake(images), axis=1, keepdims=True), rtol=1e-6)

    done = []
    embed_images(fake, images, batch_size=3, progress=done.append)
    assert done == [3, 6, 7]


def test_wrong_input_size(onnx_dynamic, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(onnx_dynamic)
    oe = OnnxEmbedder(path)
    assert oe.preprocess.input_size == SIZE
    wrong = np.zeros((2, SIZE + 8, SIZE + 8, 3), np.uint8)
    with pytest.raises(FaceDistillError) as e:
        oe(wrong)
    msg = str(e.value)
    assert str(path) in msg and f"{SIZE}x{SIZE}" in msg and f"{SIZE + 8}x{SIZE + 8}" in msg
    with pytest.raises(FaceDistillError, match="input_size 112"):
        OnnxEmbedder(path, Preprocessing())  # graph is 32x32, preprocess says 112
    with pytest.raises(FaceDistillError, match="not found"):
        OnnxEmbedder(tmp_path / "missing.onnx")


def test_fixed_batch_one(images):
    oe = OnnxEmbedder(export(make_net(), batch=1), Preprocessing(input_size=SIZE), batch_size=64)
    assert oe.fixed_batch == 1 and oe.batch_size == 1
    te = TorchEmbedder(make_net(), Preprocessing(input_size=SIZE))
    assert cosine(te(images), oe(images)).min() > 0.9999


def test_fixed_batch_padding(images):
    oe = OnnxEmbedder(export(make_net(), batch=4), Preprocessing(input_size=SIZE))
    assert oe.fixed_batch == 4
    te = TorchEmbedder(make_net(), Preprocessing(input_size=SIZE))
    out = oe(images)  # 7 images: batches of 4, the last padded
    assert out.shape == (7, 16)
    assert cosine(te(images), out).min() > 0.9999


def test_output_not_2d():
    with pytest.raises(FaceDistillError, match=r"\(batch, dim\)"):
        OnnxEmbedder(export(make_net(flat=False)), Preprocessing(input_size=SIZE))
    te = TorchEmbedder(make_net(flat=False), Preprocessing(input_size=SIZE))
    with pytest.raises(FaceDistillError, match=r"\(batch, dim\)"):
        te(np.zeros((1, SIZE, SIZE, 3), np.uint8))


# -- the fast torch path (issue 14): same numbers, caller's model untouched, stale weights never used --
def _trained_mbf():
    from facedistill.models import create_backbone

    torch.manual_seed(0)
    m = create_backbone("mobilefacenet_s", embedding_size=128)
    m.train()
    for bn in m.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            bn.momentum = None  # cumulative: eval-mode statistics that match the data (no collapse)
    with torch.no_grad():
        for _ in range(3):
            m(torch.rand(16, 3, 112, 112) * 2 - 1)
    return m


def test_fast_modes_match_the_plain_eager_path():
    pre = Preprocessing(mean=(120.0, 127.5, 130.0), std=(60.0, 64.0, 70.0), channel_order="BGR")
    model = _trained_mbf()
    imgs = np.random.default_rng(1).integers(0, 256, size=(10, 112, 112, 3), dtype=np.uint8)
    ref_model = copy.deepcopy(model).eval()
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(pre.apply(imgs))).numpy()
    assert cosine(ref[:5], ref[5:10]).max() < 0.99  # embeddings depend on the image: the check can fail
    for mode in ("none", "channels_last", "jit", "auto"):
        te = TorchEmbedder(model, pre, batch_size=4, optimize=mode)
        got = te(imgs)
        assert te.fallback_reason is None, te.fallback_reason
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
        assert cosine(got, ref).min() > 0.99999
    # the caller's model keeps its mode and memory format
    assert model.training
    conv = next(p for p in model.parameters() if p.dim() == 4)
    assert conv.is_contiguous()
    # embed_images reads memmaps and flips through the same path
    emb = embed_images(TorchEmbedder(model, pre), imgs, batch_size=5)
    np.testing.assert_allclose(emb, embed_images(TorchEmbedder(model, pre, optimize="none"), imgs), atol=1e-4)


def test_jit_cache_follows_weight_changes():
    model = _trained_mbf().eval()
    imgs = np.random.default_rng(2).integers(0, 256, size=(3, 112, 112, 3), dtype=np.uint8)
    te = TorchEmbedder(model, optimize="jit")
    before = te(imgs)
    assert te._compiled is not None
    with torch.no_grad():
        next(p for p in model.parameters() if p.dim() == 4).mul_(-1.5)  # the first convolution
    after = te(imgs)
    fresh = TorchEmbedder(model, optimize="none")(imgs)
    np.testing.assert_allclose(after, fresh, rtol=1e-3, atol=1e-3 * np.abs(fresh).max())
    assert np.abs(after - before).max() > 1e-3


class _NoTrace(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = make_net()

    def forward(self, x):
        if torch.jit.is_tracing():
            raise RuntimeError("this model cannot be traced")
        return self.net(x)


def test_jit_falls_back_to_eager_with_the_reason(images):
    net = _NoTrace()
    te = TorchEmbedder(net, Preprocessing(input_size=SIZE), optimize="jit")
    got = te(images)
    assert te.optimize == "channels_last" and "cannot be traced" in te.fallback_reason
    np.testing.assert_allclose(got, TorchEmbedder(net, Preprocessing(input_size=SIZE), optimize="none")(images),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="optimize"):
        TorchEmbedder(net, optimize="fast")
