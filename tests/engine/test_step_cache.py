"""Reusing a finished step: only with the same key, every output file unchanged, and the check passing."""

from __future__ import annotations

import json

from facedistill.engine.step_cache import load_reusable, save_stamp


def test_a_step_is_reused_only_when_nothing_it_was_made_from_changed(tmp_path):
    stamp = tmp_path / "out" / "stamp.json"
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    out.write_bytes(b"weights")
    key = {"weights_sha256": "abc", "recipe_hash": "r1"}
    assert load_reusable(stamp, key) == (None, "not made yet")

    save_stamp(stamp, key, {"model.onnx": out}, {"accuracy": 0.8})
    assert load_reusable(stamp, key) == ({"accuracy": 0.8}, "unchanged")
    assert json.loads(stamp.read_text())["files"]["model.onnx"]  # the digest is stored

    result, why = load_reusable(stamp, {**key, "recipe_hash": "r2"})
    assert result is None and "recipe_hash changed" in why
    result, why = load_reusable(stamp, {**key, "int8": True})
    assert result is None and "int8 changed" in why

    result, why = load_reusable(stamp, key, check=lambda d: "model.onnx names another recipe")
    assert result is None and why == "model.onnx names another recipe"
    assert load_reusable(stamp, key, check=lambda d: None)[0] == {"accuracy": 0.8}

    out.write_bytes(b"weights, retrained")
    assert load_reusable(stamp, key) == (None, "model.onnx changed since it was made")
    out.unlink()
    assert load_reusable(stamp, key) == (None, "model.onnx is missing")

    stamp.write_text('{"key": ')  # a stamp cut by a crash is no stamp
    assert load_reusable(stamp, key) == (None, "stamp.json is unreadable")
