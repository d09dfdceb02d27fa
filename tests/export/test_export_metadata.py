"""Metadata written into exports, read back by read_metadata / the evaluation embedders, and the
loader (check_onnx) that refuses truncated or garbled files."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from facedistill import __version__
from facedistill.data.preprocessing import Preprocessing
from facedistill.errors import ExportError
from facedistill.export import build_metadata, check_onnx, read_metadata
from facedistill.export.metadata import REQUIRED_KEYS, content_digest


def test_metadata_keys_and_values(tiny_export):
    path, report = tiny_export
    meta = read_metadata(path)
    for key in REQUIRED_KEYS:
        assert key in meta, key
    assert meta["architecture"] == "tinyfacenet"
    assert meta["embedding_size"] == "32"
    assert meta["input_size"] == "112"
    assert float(meta["mean"]) == 127.5 and float(meta["std"]) == 127.5
    assert meta["channel_order"] == "RGB"
    assert meta["facedistill_version"] == __version__
    assert meta["recipe_hash"] == "abc123"
    assert meta["precision"] == "fp32"
    assert meta["opset"] == "17"
    assert float(meta["parity_worst_cosine"]) >= 0.9999
    assert report.passed and report.artifact("fp32").written


def test_embedders_read_our_metadata(tiny_export, tiny, faces):
    """evaluate/benchmark build their preprocessing from these keys: the ONNX embedder must give the
    PyTorch embeddings without being told the preprocessing."""
    from facedistill.evaluation.embedders import OnnxEmbedder, TorchEmbedder

    path, _ = tiny_export
    onnx_emb = OnnxEmbedder(path)  # preprocessing from metadata
    assert onnx_emb.preprocess == Preprocessing(mean=127.5, std=127.5, channel_order="RGB", input_size=112)
    a = onnx_emb(faces[:5])
    b = TorchEmbedder(tiny.model, Preprocessing())(faces[:5])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.9999


def test_build_metadata_formats_numbers():
    pre = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0), channel_order="bgr", input_size=112)
    meta = build_metadata("iresnet50", 512, pre, precision="int8", extra={"x": 1.5})
    assert meta["mean"] == "0.5"
    assert meta["std"] == "0.25,0.5,1.0"
    assert meta["channel_order"] == "BGR"
    assert meta["x"] == "1.5"
    with pytest.raises(ExportError):
        build_metadata("a", 1, pre, precision="int4")


def test_check_onnx_accepts_sound_export(tiny_export):
    path, _ = tiny_export
    checked = check_onnx(path)
    assert checked.digest_checked
    assert checked.input_name == "input" and checked.output_name == "embedding"
    assert checked.dynamic_batch
    assert checked.input_shape[1:] == [3, 112, 112]
    assert checked.output_shape[1] == 32
    assert checked.precision == "fp32"


@pytest.mark.parametrize("keep", [0.5, 0.97, 0.999])
def test_check_onnx_refuses_truncated(tiny_export, tmp_path, keep):
    path, _ = tiny_export
    data = path.read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ExportError, match="export the model again"):
        check_onnx(bad)


def test_check_onnx_refuses_garbled_weights(tiny_export, tmp_path):
    """Flipped bytes inside a weight still parse as protobuf: the content checksum catches them."""
    path, _ = tiny_export
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    raw = bytearray(init.raw_data)
    data = path.read_bytes()
    where = data.find(bytes(raw[:64]))
    assert where > 0
    garbled = bytearray(data)
    for i in range(where + 16, where + 48):
        garbled[i] ^= 0x5A
    bad = tmp_path / "garbled.onnx"
    bad.write_bytes(bytes(garbled))
    with pytest.raises(ExportError, match="checksum"):
        check_onnx(bad)


def test_check_onnx_refuses_noise_empty_missing(tmp_path):
    noise = tmp_path / "noise.onnx"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ExportError):
        check_onnx(noise)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ExportError, match="empty"):
        check_onnx(empty)
    with pytest.raises(ExportError, match="no such file"):
        check_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ExportError, match="folder"):
        check_onnx(tmp_path)


def test_check_onnx_foreign_model_needs_metadata(tiny_export, tmp_path):
    path, _ = tiny_export
    model = onnx.load(str(path))
    del model.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(model, str(foreign))
    with pytest.raises(ExportError, match="missing facedistill metadata"):
        check_onnx(foreign)
    checked = check_onnx(foreign, require_metadata=False)
    assert not checked.digest_checked


def test_digest_tracks_weights(tiny_export, tmp_path):
    path, _ = tiny_export
    model = onnx.load(str(path))
    before = content_digest(model)
    init = model.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[0] += 1.0
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    assert content_digest(model) != before
    copy = tmp_path / "copy.onnx"
    shutil.copy(path, copy)
    assert content_digest(onnx.load(str(copy))) == before
