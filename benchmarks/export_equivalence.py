"""Claim: two versions of ``facedistill.export`` write the same files and take the same gate decisions.

    # with the version before a change (a checkout of it on PYTHONPATH), then with the one after:
    PYTHONPATH=/path/to/old python benchmarks/export_equivalence.py record runs/qs/quickstart-unified \
        --calib runs/qs/data/train --verify runs/qs/data/val --out eq/old
    python benchmarks/export_equivalence.py record runs/qs/quickstart-unified \
        --calib runs/qs/data/train --verify runs/qs/data/val --out eq/new
    python benchmarks/export_equivalence.py compare eq/old eq/new

``record`` exports one trained student through every path of :func:`facedistill.export.export_model`
that decides something, each into its own folder under ``--out``:

* ``full``: fp32 + fp16 + int8, calibrated on ``--calib``, gated on ``--verify`` when given (the default
  export);
* ``mixed``: int8 with a mean-cosine gate of ``--mixed-cosine`` (default 0.9995), which plain int8 of a
  briefly trained student fails, so the sensitivity-guided mixed-precision fallback runs;
* ``refused``: int8 with the fallback off and an unreachable gate (0.99999): the gate refuses and the
  rejected file is kept (``keep_rejected``);
* ``onnx``: the ``full`` fp32 file quantized again as an ONNX source (the path of a model trained
  elsewhere);
* ``qat``: ``--qat-steps`` steps (batches of 8 faces) of quantization-aware fine-tuning before int8
  (0 skips it).

Each case writes ``case.json``: the report (``to_dict()``; for a refused export the report an
:class:`~facedistill.export.ExportGateError` carries, and the message of any refusal) and the sha256 of every file
it wrote. ``compare`` prints one row per case: whether the files are byte-identical, and whether the
gate decisions (passed, plain or mixed int8, the layers kept float, the failure message) and the rest
of the report agree once the timings (seconds, batch-1 latencies, the ms and s inside notes) are
masked. It exits 1 on any difference. Latency timing is off (``latency=False``) to keep it quick.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

from _table import print_table  # benchmarks/_table.py, beside this script

TIMING_KEYS = {"seconds", "latency_ms_b1", "latency_threads", "plain_latency_ms_b1"}
TIMING_TEXT = re.compile(r"(\d+\.\d+ -> )?[-+]?\d+(\.\d+)? ?(ms|s)\b")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path) -> dict[str, str]:
    return {p.name: _sha(p) for p in sorted(folder.glob("*.onnx"))}


def _run(folder: Path, call: Any) -> dict[str, Any]:
    from facedistill.errors import FaceDistillError

    folder.mkdir(parents=True, exist_ok=True)
    try:
        report, error = call(folder), None
    except FaceDistillError as e:  # a refusal is an outcome to compare too (a gate's carries its report)
        report, error = getattr(e, "report", None), str(e)
    case = {"report": report.to_dict() if report is not None else None, "error": error, "files": _files(folder)}
    (folder / "case.json").write_text(json.dumps(case, indent=1, sort_keys=True, default=str))
    return case


def record(args: argparse.Namespace) -> None:
    from facedistill.export import export_model

    out = Path(args.out)
    common = dict(calib=args.calib, latency=False, seed=0)

    def full(d: Path) -> Any:
        return export_model(args.model, d / "student.onnx", int8=True, fp16=True, verify=args.verify, **common)

    def mixed(d: Path) -> Any:
        return export_model(args.model, d / "student.onnx", int8=True, int8_min_cosine=args.mixed_cosine, **common)

    def refused(d: Path) -> Any:
        return export_model(args.model, d / "student.onnx", int8=True, int8_min_cosine=0.99999, int8_mixed=False,
                            keep_rejected=True, **common)

    def onnx_source(d: Path) -> Any:
        return export_model(out / "full" / "student.onnx", d / "student.int8.onnx", int8=True, **common)

    def qat(d: Path) -> Any:
        from facedistill.export.qat import QATOptions

        qat = QATOptions(steps=args.qat_steps, batch_size=8, calib_batches=2, threads=1)
        return export_model(args.model, d / "student.onnx", int8=True, qat=qat, **common)

    cases = [("full", full), ("mixed", mixed), ("refused", refused), ("onnx", onnx_source)]
    if args.qat_steps > 0:
        cases.append(("qat", qat))
    for name, call in cases:
        if args.only and name not in args.only:
            continue
        case = _run(out / name, call)
        print(f"{name}: {'refused' if case['error'] else 'written'}, files {sorted(case['files'])}", flush=True)


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    if isinstance(value, str):
        return TIMING_TEXT.sub("<t>", value)
    return value


def _paths_relative(value: Any, roots: tuple[str, ...]) -> Any:
    """Paths inside a report name the folder it was recorded in: compare them relative to it."""
    if isinstance(value, dict):
        return {k: _paths_relative(v, roots) for k, v in value.items()}
    if isinstance(value, list):
        return [_paths_relative(v, roots) for v in value]
    if isinstance(value, str):
        for root in roots:
            value = value.replace(root, "<out>")
    return value


def _roots(folder: str, name: str) -> tuple[str, ...]:
    """The recording's folder as a report may spell it (the 'onnx' case reads the 'full' case's file)."""
    return (str(Path(folder).resolve()), str(Path(folder)))


def decisions(case: dict[str, Any]) -> dict[str, Any]:
    """The gate decisions of one export: what passed, and how int8 got there."""
    rep = case["report"] or {}
    int8 = rep.get("int8") or {}
    mixed = int8.get("mixed_precision")
    return {
        "passed": rep.get("passed"), "failure": case["error"] is not None,
        "artifacts": {a["precision"]: (a["passed"], a["written"]) for a in rep.get("artifacts", [])},
        "int8": None if not int8 else ("mixed" if mixed else "plain"),
        "keep_float": int8.get("keep_float"),
        "float_layers": mixed and mixed["kept_float_layers"],
    }


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += differences(a.get(k), b.get(k), f"{where}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where or '.'}: {a!r} != {b!r}"]


def compare(args: argparse.Namespace) -> int:
    rows, problems = [], []
    for case_a in sorted(Path(args.a).glob("*/case.json")):
        name = case_a.parent.name
        case_b = Path(args.b) / name / "case.json"
        if not case_b.is_file():
            rows.append([name, "missing in B", "", "", ""])
            problems.append(f"{name}: missing in {args.b}")
            continue
        a, b = json.loads(case_a.read_text()), json.loads(case_b.read_text())
        same_bytes = a["files"] == b["files"] and bool(a["files"])
        da, db = decisions(a), decisions(b)
        rest = differences(_paths_relative(_masked(a), _roots(args.a, name)),
                           _paths_relative(_masked(b), _roots(args.b, name)))
        rows.append([name, f"{'yes' if same_bytes else 'NO'} ({len(a['files'])} files)",
                     "same" if da == db else "DIFFER", f"{da['int8']}, float layers {len(da['float_layers'] or [])}",
                     "same" if not rest else f"{len(rest)} differ"])
        problems += [f"{name}: file bytes differ: {a['files']} vs {b['files']}"] * (not same_bytes)
        problems += [f"{name}: decisions {da} vs {db}"] * (da != db)
        problems += [f"{name}: report{d}" for d in rest]
    print_table(["case", "byte-identical", "gate decisions", "int8 (A)", "report (timings masked)"], rows)
    for p in problems:
        print(p)
    return 1 if problems or not rows else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="export one student through every deciding path")
    r.add_argument("model", help="run folder or state dict of a trained student")
    r.add_argument("--calib", required=True, help="prepared set of faces to calibrate (and fine-tune) on")
    r.add_argument("--verify", help="prepared pair set for the accuracy gate of the 'full' case (none: cosine only)")
    r.add_argument("--out", required=True, help="folder for the cases (one sub-folder each)")
    r.add_argument("--mixed-cosine", type=float, default=0.9995, help="int8 gate of the 'mixed' case")
    r.add_argument("--qat-steps", type=int, default=4, help="QAT steps of the 'qat' case (0: no such case)")
    r.add_argument("--only", nargs="*", help="record only these cases")
    c = sub.add_parser("compare", help="compare two recordings")
    c.add_argument("a")
    c.add_argument("b")
    args = ap.parse_args(argv)
    if args.command == "record":
        record(args)
        return 0
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
