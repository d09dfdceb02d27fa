"""Reuse a finished pipeline step (an export, an evaluation) when nothing it was made from changed.

A step's result is stored beside its outputs in a small JSON stamp::

    {"key": {...what the step was made from...},     # e.g. sha256 of each input checkpoint
     "files": {"student.onnx": "<sha256>", ...},     # every output file, hashed when written
     "result": {...}}                                # what the step returned, as plain data

The step is reused only when the stamp's ``key`` equals the current one *and* every listed file is
still there with the same sha256; ``check`` (optional) looks inside the files too (the quickstart
compares each ONNX file's ``recipe_hash`` metadata with its run's). Anything else (a retrained
checkpoint, another recipe, another facedistill version, a replaced or truncated file, an unreadable
stamp) means the step runs again. The stamp is written atomically after the outputs, so a step killed
half-way is never taken for a finished one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from facedistill.utils.atomic import write_json_atomic
from facedistill.utils.hashing import sha256_file


def file_digests(paths: Mapping[str, str | os.PathLike]) -> dict[str, str]:
    """``{name: sha256}`` of each file (``"missing"`` for one that is not there)."""
    return {name: sha256_file(p) if Path(p).is_file() else "missing" for name, p in paths.items()}


def load_reusable(stamp: str | os.PathLike, key: Mapping[str, Any],
                  check: Callable[[dict[str, Any]], str | None] | None = None) -> tuple[dict[str, Any] | None, str]:
    """The stored result when the step can be reused, else None; and why (for the log).

    ``check(stamp_dict)`` returns None when the outputs are fine, or the reason they are not.
    """
    stamp = Path(stamp)
    if not stamp.is_file():
        return None, "not made yet"
    try:
        data = json.loads(stamp.read_text())
    except (OSError, json.JSONDecodeError):
        return None, f"{stamp.name} is unreadable"
    if not isinstance(data, dict) or data.get("key") != dict(key):
        changed = sorted(k for k in set(key) | set((data.get("key") or {}) if isinstance(data, dict) else {})
                         if not isinstance(data, dict) or (data.get("key") or {}).get(k) != key.get(k))
        return None, f"made from other inputs ({', '.join(changed) or 'stamp format'} changed)"
    for name, digest in (data.get("files") or {}).items():
        path = stamp.parent / name
        if not path.is_file():
            return None, f"{name} is missing"
        if sha256_file(path) != digest:
            return None, f"{name} changed since it was made"
    if check is not None:
        problem = check(data)
        if problem:
            return None, problem
    return data.get("result"), "unchanged"


def save_stamp(stamp: str | os.PathLike, key: Mapping[str, Any], files: Mapping[str, str | os.PathLike],
               result: Mapping[str, Any]) -> None:
    """Record a finished step: its key, the sha256 of each output (named relative to the stamp), its result."""
    stamp = Path(stamp)
    digests = {}
    for name, path in files.items():
        digests[name] = sha256_file(path)
    write_json_atomic(stamp, {"key": dict(key), "files": digests, "result": dict(result)})
