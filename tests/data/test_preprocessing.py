"""One Preprocessing for students, teachers, exports and evaluation: numpy and torch paths agree,
metadata round-trips, and the teacher-cache fingerprint is unchanged by the merge."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from facedistill.data.preprocessing import Preprocessing
from facedistill.errors import DataError, FaceDistillError


def _images(n: int = 3, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def _direct(images: np.ndarray, mean, std, bgr: bool) -> np.ndarray:
    """The definition, written out: flip channels if BGR, normalise per channel, NHWC -> NCHW."""
    x = images.astype(np.float64)
    if bgr:
        x = x[..., ::-1]
    x = (x - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)
    return x.transpose(0, 3, 1, 2)


CASES = [
    (127.5, 127.5, "RGB"),
    (0.0, 1.0, "BGR"),
    ((123.0, 117.0, 104.0), (58.0, 57.0, 57.5), "RGB"),
    ((104.0, 117.0, 123.0), (57.5, 57.0, 58.0), "BGR"),
]


@pytest.mark.parametrize("mean,std,order", CASES)
def test_apply_numpy_matches_direct(mean, std, order):
    images = _images()
    pre = Preprocessing(mean=mean, std=std, channel_order=order, input_size=8)
    x = pre.apply(images)
    assert x.dtype == np.float32 and x.shape == (3, 3, 8, 8) and x.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(x, _direct(images, mean, std, order == "BGR"), rtol=1e-6, atol=1e-6)


def test_apply_numpy_errors():
    with pytest.raises(DataError, match="8x8"):
        Preprocessing(input_size=4).apply(_images())
    with pytest.raises(DataError, match="uint8"):
        Preprocessing(input_size=8).apply(_images().astype(np.float32))
    with pytest.raises(DataError, match="shape"):
        Preprocessing(input_size=8).apply(_images()[0])


@pytest.mark.parametrize("mean,std,order", CASES)
def test_apply_torch_equals_apply(mean, std, order):
    torch = pytest.importorskip("torch")
    images = _images()
    pre = Preprocessing(mean=mean, std=std, channel_order=order, input_size=8)
    x = pre.apply_torch(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    assert x.dtype == torch.float32 and tuple(x.shape) == (3, 3, 8, 8)
    np.testing.assert_allclose(x.numpy(), pre.apply(images), rtol=1e-6, atol=1e-6)


def test_apply_torch_resizes():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    images = torch.from_numpy(_images(size=16)).permute(0, 3, 1, 2).contiguous()
    pre = Preprocessing(mean=(1.0, 2.0, 3.0), std=2.0, channel_order="BGR", input_size=8)
    x = pre.apply_torch(images)
    assert tuple(x.shape) == (3, 3, 8, 8)
    ref = F.interpolate(images.float().flip(1), size=(8, 8), mode="bilinear", align_corners=False)
    ref = (ref - torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)) / 2.0
    torch.testing.assert_close(x, ref)
    flat = torch.full((1, 3, 16, 16), 200, dtype=torch.uint8)  # a constant image stays constant
    torch.testing.assert_close(Preprocessing(input_size=8).apply_torch(flat),
                               torch.full((1, 3, 8, 8), (200 - 127.5) / 127.5))


def test_channel_order_normalised_and_checked():
    pre = Preprocessing(channel_order="bgr")
    assert pre.channel_order == "BGR" and pre.bgr
    assert not Preprocessing().bgr
    with pytest.raises(FaceDistillError, match="'YUV'"):
        Preprocessing(channel_order="YUV")
    with pytest.raises(dataclasses.FrozenInstanceError):
        pre.bgr = False  # type: ignore[misc]


def test_to_dict_and_summary_round_trip():
    pre = Preprocessing(mean=(0.5, 0.25, 1.0), std=2.0, channel_order="BGR", input_size=96)
    d = pre.to_dict()
    assert d == {"mean": [0.5, 0.25, 1.0], "std": 2.0, "channel_order": "BGR", "input_size": 96}
    assert Preprocessing().to_dict() == {"mean": 127.5, "std": 127.5, "channel_order": "RGB", "input_size": 112}
    # run summaries are JSON: lists come back and become tuples (hashable, equal to the original)
    again = Preprocessing(**d)
    assert again == pre and isinstance(again.mean, tuple) and hash(again) == hash(pre)


@pytest.mark.parametrize("pre", [
    Preprocessing(),
    Preprocessing(mean=0.0, std=1.0, channel_order="BGR", input_size=96),
    Preprocessing(mean=(0.5, 0.25, 1.0), std=(58.0, 57.0, 57.5), channel_order="rgb", input_size=112),
])
def test_from_metadata_round_trip(pre):
    meta = {k: str(v) for k, v in pre.to_dict().items()}  # "[0.5, 0.25, 1.0]", "BGR", "96"
    assert Preprocessing.from_metadata(meta) == pre
    assert Preprocessing.from_metadata({}) == Preprocessing()


def test_from_metadata_errors():
    with pytest.raises(FaceDistillError, match=r"m\.onnx: metadata 'mean' = '1,2' is not a number or three"):
        Preprocessing.from_metadata({"mean": "1,2"}, source="m.onnx")
    with pytest.raises(FaceDistillError, match="metadata 'channel_order' = 'YUV', expected 'RGB' or 'BGR'"):
        Preprocessing.from_metadata({"channel_order": "YUV"})
    with pytest.raises(FaceDistillError, match="metadata 'input_size' = '112x96' is not one square size"):
        Preprocessing.from_metadata({"input_size": "112x96"})
    assert Preprocessing.from_metadata({"mean": "0.5,0.5,0.5", "input_size": "96x96"}) == \
        Preprocessing(mean=0.5, input_size=96)


# Computed with the pre-merge code (engine.teachers.TeacherPreprocessing, whose ``__dict__`` was
# hashed). Changing any of these invalidates every teacher-embedding cache on disk.
@pytest.mark.parametrize("pre,extra,expected", [
    (Preprocessing(0.0, 1.0, "RGB", 112), {"kind": "onnx"}, "db32017f1cb72df2"),
    (Preprocessing(), {"kind": "torch", "arch": "iresnet50"}, "d190f4d2f42ea1db"),
    (Preprocessing(127, 128, "BGR", 112), {"kind": "onnx"}, "0bfb313cb320a1a8"),
    (Preprocessing([0.5, 0.5, 0.5], (0.25, 0.5, 1.0), "BGR", 112), {"kind": "onnx"}, "0fc5dd27e38e3f43"),
])
def test_teacher_fingerprint_is_pinned(pre, extra, expected):
    pytest.importorskip("torch")
    from facedistill.engine.teachers import _fingerprint

    assert _fingerprint("abc", pre, extra) == expected


def test_no_torch_import():
    """ONNX evaluation must work where torch is not installed."""
    code = ("import sys, facedistill.data.preprocessing, facedistill.evaluation.embedders; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
