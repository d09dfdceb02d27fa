"""Bad input and faults: clear messages, and never a partial model under the final name."""

from __future__ import annotations

import errno
import tempfile

import pytest
import torch

from facedistill.errors import CheckpointError, ExportError, FaceDistillError
from facedistill.export import export_model, sibling_path
from facedistill.export import files, onnx_export


def _only(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        export_model(tmp_path / "nope.pt", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_mismatched_checkpoint(tmp_path):
    """A MobileFaceNet state dict loaded as iresnet18: refused with the checkpoint's name."""
    from facedistill.models import create_backbone

    ckpt = tmp_path / "mbf.pt"
    torch.save(create_backbone("mobilefacenet", 128).state_dict(), ckpt)
    with pytest.raises(CheckpointError) as info:
        export_model(ckpt, tmp_path / "out.onnx", arch="iresnet18")
    assert "mbf.pt" in str(info.value)
    assert _only(tmp_path) == ["mbf.pt"]


def test_garbage_checkpoint(tmp_path):
    ckpt = tmp_path / "garbage.pt"
    ckpt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(FaceDistillError):
        export_model(ckpt, tmp_path / "out.onnx")
    assert _only(tmp_path) == ["garbage.pt"]


def test_output_folder_is_a_file(tiny, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(ExportError, match="in the way|not a folder"):
        export_model(None, blocker / "student.onnx", loaded=tiny, latency=False)


def test_out_is_a_folder(tiny, tmp_path):
    with pytest.raises(ExportError, match="is a folder"):
        export_model(None, tmp_path, loaded=tiny, latency=False)


def test_unwritable_output_folder(tiny, tmp_path, monkeypatch):
    # Tests may run as root, where permission bits do not stop writes: simulate the refusal.
    def deny(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", deny)
    with pytest.raises(ExportError, match="not writable"):
        export_model(None, tmp_path / "ro" / "student.onnx", loaded=tiny, latency=False)


def test_disk_full_during_write_leaves_nothing(tiny, tmp_path, monkeypatch):
    real = files.write_model_file

    def half_then_enospc(model, path):
        data = model.SerializeToString()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "write_model_file", half_then_enospc)
    out = tmp_path / "student.onnx"
    with pytest.raises(ExportError, match="no space left"):
        export_model(None, out, loaded=tiny, latency=False)
    assert _only(tmp_path) == []  # neither the final name nor a partial file
    monkeypatch.setattr(files, "write_model_file", real)


def test_failure_keeps_previous_good_file(tiny, broken, tmp_path):
    """A failed re-export must not clobber the model already at the final name."""
    out = tmp_path / "student.onnx"
    export_model(None, out, loaded=tiny, latency=False, parity_images=4)
    before = out.read_bytes()
    with pytest.raises(ExportError):
        export_model(None, out, loaded=broken, latency=False, parity_images=4, keep_debug=False)
    assert out.read_bytes() == before


@pytest.mark.parametrize("opset, int8, pattern", [
    (99, False, "installed onnx"),
    (5, False, "too old"),
    (21, True, "--opset <= 20"),
    (12, True, "--opset >= 13"),
])
def test_bad_opset(tiny, tmp_path, opset, int8, pattern):
    with pytest.raises(ExportError, match=pattern):
        export_model(None, tmp_path / "s.onnx", loaded=tiny, opset=opset, int8=int8, latency=False)
    assert _only(tmp_path) == []


def test_bad_batch_and_options(tiny, tmp_path):
    with pytest.raises(ExportError, match="--batch"):
        export_model(None, tmp_path / "s.onnx", loaded=tiny, batch="lots", latency=False)
    with pytest.raises(ExportError, match="--calib is only used with --int8"):
        export_model(None, tmp_path / "s.onnx", loaded=tiny, calib=tmp_path, latency=False)
    with pytest.raises(ExportError, match="calibration method"):
        export_model(None, tmp_path / "s.onnx", loaded=tiny, int8=True, latency=False,
                     int8_options=onnx_export.Int8Options(method="magic"))


def test_verify_set_must_have_pairs(tiny, tmp_path, train_set):
    with pytest.raises(ExportError, match="not a pair set"):
        export_model(None, tmp_path / "s.onnx", loaded=tiny, verify=train_set, latency=False)
    assert _only(tmp_path) == []


def test_fixed_batch(tiny, tmp_path):
    out = tmp_path / "b4.onnx"
    report = export_model(None, out, loaded=tiny, batch=4, latency=False, parity_images=6)
    assert report.passed and report.batch_check == []
    from facedistill.export import check_onnx

    assert check_onnx(out).input_shape[0] == 4


def test_sibling_path(tmp_path):
    assert sibling_path(tmp_path / "student.onnx", "int8").name == "student.int8.onnx"
    assert sibling_path(tmp_path / "student", "fp16").name == "student.fp16.onnx"


def test_non_finite_model_is_refused(tmp_path):
    """A model that outputs inf/NaN cannot be parity-checked: say so instead of blaming the export."""
    from export_helpers import TinyFaceNet, loaded_backbone

    model = TinyFaceNet()
    with torch.no_grad():
        model.features.bias.fill_(float("inf"))
    with pytest.raises(ExportError, match="NaN/inf"):
        export_model(None, tmp_path / "s.onnx", loaded=loaded_backbone(model), latency=False, parity_images=4)
    assert _only(tmp_path) == []
