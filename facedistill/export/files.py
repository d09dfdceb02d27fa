"""Atomic model files: every file is written under a temporary name beside its final one, checked,
and renamed into place (:func:`staged`), so a failed export leaves nothing under the final name and
a previous good file survives. Write errors become one-line :class:`ExportError` messages.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from facedistill.errors import ExportError

__all__ = ["check_writable", "sibling_path", "staged", "unlink", "write_error", "write_model_file"]


def sibling_path(out: str | os.PathLike, precision: str) -> Path:
    """``student.onnx`` -> ``student.int8.onnx`` / ``student.fp16.onnx``."""
    out = Path(out)
    suffix = out.suffix or ".onnx"
    return out.with_name(f"{out.stem if out.suffix else out.name}.{precision}{suffix}")


def check_writable(folder: Path) -> None:
    """Create ``folder`` and prove a file can be written there, before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:
        raise ExportError(f"cannot write into {folder}: a file of that name is in the way") from e
    except OSError as e:
        raise ExportError(f"cannot create the output folder {folder}: {e.strerror or e}") from e
    if not folder.is_dir():
        raise ExportError(f"cannot write into {folder}: it is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".facedistill-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ExportError(f"the output folder {folder} is not writable ({e.strerror or e}); "
                          "choose another --out") from e


def write_error(path: Path, e: OSError) -> ExportError:
    """The one-line message for an ``OSError`` met while writing ``path``."""
    if e.errno == errno.ENOSPC:
        return ExportError(f"no space left on the device while writing {path}; free some space and export "
                           "again (nothing was left under that name)")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ExportError(f"cannot write {path}: {e.strerror}; choose another --out")
    return ExportError(f"cannot write {path}: {e.strerror or e}")


def write_model_file(model: Any, path: Path) -> None:
    """Serialize ``model`` to ``path``, fsync'd (the caller renames it into place)."""
    data = model.SerializeToString()
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def staged(final: Path) -> Iterator[Path]:
    """A temporary path beside ``final``, renamed onto it only when the block succeeds."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}.partial")
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as e:
        unlink(tmp)
        raise write_error(final, e) from e
    except BaseException:
        unlink(tmp)
        raise


def unlink(path: Path) -> None:
    """Remove ``path`` if it is there."""
    with contextlib.suppress(OSError):
        path.unlink()
