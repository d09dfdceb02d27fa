"""Safe reader for insightface verification ``.bin`` files (lfw.bin, cfp_fp.bin, agedb_30.bin, ...).

A ``.bin`` is a pickle of ``(bins, issame_list)``: ``bins`` a list of encoded images (JPEG/PNG
bytes), ``issame_list`` a list of bools; images ``2i`` and ``2i+1`` form pair ``i``. insightface
wrote them from Python 2 with ``pickle.HIGHEST_PROTOCOL`` (protocol 2): the images are Python 2
``str`` objects, which load as ``bytes`` with ``encoding="bytes"``, and the flags are plain
bools. Files written from Python 3 hold ``bytes`` directly. Neither needs any class.

A pickle can run arbitrary code when loaded, and a ``.bin`` may come from anyone. So we unpickle
with ``SafeUnpickler``, whose ``find_class`` refuses every global: only the built-in values the
pickle opcodes create themselves (lists, tuples, dicts, bytes, strings, numbers, bools, None) can
come through, and nothing is imported or called (``bytes`` pickled by Python 3 at protocol 2, as
``_codecs.encode(text, 'latin1')``, are rebuilt by a local function). Files holding numpy arrays
or numpy bools (some re-saved copies do) or mxnet NDArrays are therefore refused, with a message
explaining how to convert them once in a trusted environment.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

from facedistill.errors import DataError

CONVERT_HINT = (
    "If you trust the file, convert it once to plain lists: python -c \"import pickle; "
    "b, s = pickle.load(open('IN.bin', 'rb'), encoding='bytes'); "
    "pickle.dump(([bytes(x) for x in b], [bool(v) for v in s]), open('OUT.bin', 'wb'))\""
)


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for a class or function; refused."""


def _latin1_bytes(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` as Python 3 pickles ``bytes`` at protocol <= 2.

    Python 3 writes ``bytes`` at protocol 2 as ``_codecs.encode(<latin-1 str>, 'latin1')``. This
    local function does only that (no codec lookup, no import) and refuses anything else.
    """
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode with arguments other than (str, 'latin1')")
    return text.encode("latin-1")


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that imports nothing.

    ``find_class`` refuses every global; the one exception is ``_codecs.encode``, answered by a
    local latin-1 encoder (how Python 3 pickles ``bytes`` at protocol 2), which runs no code from
    the file. Persistent ids are refused too.
    """

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        raise UnsafePickleError(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")


def safe_loads(data: bytes, encoding: str = "bytes") -> Any:
    """Unpickle ``data`` allowing only plain built-in values; raises ``UnsafePickleError`` otherwise."""
    return SafeUnpickler(io.BytesIO(data), encoding=encoding).load()


def load_bin(path: str | os.PathLike) -> tuple[list[bytes], list[bool]]:
    """Read a verification ``.bin``: ``(encoded images, same flags)``, with ``2 * len(flags)`` images.

    Raises ``DataError`` for anything else, and never executes code from the file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    if not data:
        raise DataError(f"{path}: empty file")
    try:
        obj = safe_loads(data)
    except UnsafePickleError as e:
        what = str(e)
        hint = ""
        if what.startswith(("numpy", "mxnet")):
            hint = f" The file holds {what.split('.')[0]} objects, which are refused too. {CONVERT_HINT}"
        raise DataError(f"{path}: refused: the pickle asks for {what}. facedistill loads .bin files "
                        f"without importing or calling anything, because unpickling can run code.{hint}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, OverflowError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a valid verification .bin: corrupt, truncated or not a pickle "
                        f"({type(e).__name__}: {e}); re-download the file") from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataError(f"{path}: expected a pickle of (images, same flags), got {type(obj).__name__}"
                        f"{' of length ' + str(len(obj)) if isinstance(obj, (tuple, list)) else ''}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise DataError(f"{path}: expected two lists (images, same flags), got "
                        f"{type(bins).__name__} and {type(issame).__name__}")
    images: list[bytes] = []
    for i, b in enumerate(bins):
        if isinstance(b, (bytes, bytearray)):
            images.append(bytes(b))
        elif isinstance(b, str):  # Python 2 str loaded with a text encoding
            images.append(b.encode("latin-1"))
        else:
            raise DataError(f"{path}: image {i} is a {type(b).__name__}, expected encoded image bytes")
    flags: list[bool] = []
    for i, v in enumerate(issame):
        if isinstance(v, bool) or (isinstance(v, int) and v in (0, 1)):
            flags.append(bool(v))
        else:
            raise DataError(f"{path}: same flag {i} is {v!r}, expected True/False")
    if len(images) != 2 * len(flags):
        raise DataError(f"{path}: {len(images)} images for {len(flags)} pairs; a .bin needs exactly two images "
                        "per pair (images 2i and 2i+1 form pair i)")
    return images, flags
