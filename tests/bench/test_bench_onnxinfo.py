from pathlib import Path

import pytest

from _tiny import tiny_model
from facedistill.bench.onnxinfo import OnnxParseError, model_precision, model_size_mb, summarize_onnx


def test_fp32_and_int8_exports_are_told_apart(bench_models):
    fp32, int8 = summarize_onnx(bench_models["fp32"]), summarize_onnx(bench_models["int8"])
    assert model_precision(fp32) == ("fp32", "graph (float32 initializers)")
    assert model_precision(int8) == ("int8", "graph (QDQ)")
    assert fp32.op_counts["Conv"] > 10 and "QuantizeLinear" not in fp32.op_counts
    assert int8.op_counts["QuantizeLinear"] > 10 and int8.op_counts["DequantizeLinear"] > 10
    assert fp32.opsets["ai.onnx"] == 17 and fp32.producer == "pytorch"


def test_op_counts_match_the_onnx_package(bench_models):
    import onnx

    for key in ("fp32", "int8"):
        m = onnx.load(str(bench_models[key]))
        expected: dict[str, int] = {}
        for n in m.graph.node:
            expected[n.op_type] = expected.get(n.op_type, 0) + 1
        assert summarize_onnx(bench_models[key]).op_counts == expected
        assert sum(summarize_onnx(bench_models[key]).initializer_dtypes.values()) == len(m.graph.initializer)


def test_fp16_qoperator_and_metadata(tmp_path: Path):
    assert model_precision(summarize_onnx(tiny_model(tmp_path / "h.onnx", dtype="float16")))[0] == "fp16"
    s = summarize_onnx(tiny_model(tmp_path / "q.onnx", op="QLinearConv"))
    assert model_precision(s) == ("int8", "graph (QOperator)")
    # facedistill.export writes metadata_props["precision"]: it wins over the graph
    s = summarize_onnx(tiny_model(tmp_path / "m.onnx", metadata={"precision": "int8", "input_size": "112"}))
    assert model_precision(s) == ("int8", "metadata")
    assert s.metadata["input_size"] == "112"


def test_external_data_counts_in_size(tmp_path: Path):
    p = tiny_model(tmp_path / "e.onnx", external=True)
    s = summarize_onnx(p)
    assert s.external_files == ["e.onnx.data"]
    assert model_size_mb(p, s) * 2**20 == p.stat().st_size + (tmp_path / "e.onnx.data").stat().st_size


@pytest.mark.parametrize("content", [b"", b"not an onnx model at all \xff\xfe", b"\x0a\xff\xff\xff\xff"])
def test_garbage_is_refused(tmp_path: Path, content: bytes):
    p = tmp_path / "bad.onnx"
    p.write_bytes(content)
    with pytest.raises(OnnxParseError):
        summarize_onnx(p)


def test_truncated_export_is_refused(tmp_path: Path, bench_models):
    data = bench_models["fp32"].read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxParseError):
        summarize_onnx(p)
