"""Scan image folders: one sub-folder per identity, or a flat folder named ``<identity>.<anything>``.

Layouts:

* ``dirs``: ``root/<identity>/**/<image>`` (AT&T ``sN/K.pgm``, LFW ``Name/Name_0001.jpg``, CASIA,
  VGGFace2, ...). Files directly under ``root`` are not images of anyone and are ignored.
* ``flat``: ``root/<image>`` with the identity taken from the file name: the part before the first
  dot (Yale ``subject01.happy``), with a trailing ``_0001``-style counter removed
  (``Aaron_Eckhart_0001.jpg`` -> ``Aaron_Eckhart``).
* ``auto``: ``dirs`` when ``root`` has sub-folders, else ``flat``.

Scanning never reads image bytes; it only lists. Problems (unreadable folders, empty identity
folders) are returned as skipped entries with reasons, never raised, except when the root itself
is unusable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from facedistill.errors import DataError

LAYOUTS = ("auto", "dirs", "flat")
# Files that are documentation or metadata, not images: ignored without a skip entry.
_TEXT_SUFFIXES = {".txt", ".md", ".csv", ".tsv", ".json", ".yaml", ".yml", ".xml", ".html", ".py", ".sh",
                  ".idx", ".rec", ".lst", ".bin", ".npy", ".npz", ".pdf", ".zip", ".tar", ".gz"}
_TEXT_NAMES = ("readme", "license", "licence", "copying", "notice", "changelog", "thumbs.db", "desktop.ini")
_COUNTER = re.compile(r"[_\-]\d+$")


@dataclass
class ImageItem:
    path: Path          # absolute (or as given) path to the file
    rel: str            # path relative to the root, with forward slashes
    identity: str       # identity name


@dataclass
class FolderScan:
    root: Path
    layout: str
    identities: dict[str, list[ImageItem]] = field(default_factory=dict)   # sorted by name
    skipped: list[dict[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def items(self) -> list[ImageItem]:
        return [it for name in self.identities for it in self.identities[name]]

    @property
    def num_images(self) -> int:
        return sum(len(v) for v in self.identities.values())


def is_metadata_file(name: str) -> bool:
    low = name.lower()
    if low.startswith("."):
        return True
    if Path(low).suffix in _TEXT_SUFFIXES:
        return True
    return any(low == n or low.startswith(n + ".") or low.startswith(n + "_") for n in _TEXT_NAMES)


def identity_from_filename(name: str) -> str:
    """``subject01.happy`` -> ``subject01``; ``Aaron_Eckhart_0001.jpg`` -> ``Aaron_Eckhart``."""
    base = name.split(".", 1)[0] if not name.startswith(".") else name
    stripped = _COUNTER.sub("", base)
    return stripped or base


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def _walk_files(folder: Path, skipped: list[dict[str, str]]) -> Iterable[Path]:
    def onerror(err: OSError) -> None:
        skipped.append({"path": str(getattr(err, "filename", folder)),
                        "reason": f"unreadable folder ({err.strerror or err})"})

    for dirpath, dirnames, filenames in os.walk(folder, onerror=onerror, followlinks=True):
        dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")), key=_natural_key)
        for fn in sorted(filenames, key=_natural_key):
            yield Path(dirpath) / fn


def scan_folder(root: str | os.PathLike, layout: str = "auto") -> FolderScan:
    """List the images of ``root`` by identity (see module doc). Deterministic order."""
    root = Path(root)
    if layout not in LAYOUTS:
        raise DataError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected one sub-folder per identity)")
    try:
        entries = sorted(os.scandir(root), key=lambda e: _natural_key(e.name))
    except OSError as e:
        raise DataError(f"{root}: cannot list the folder ({e.strerror or e})") from e
    subdirs = [e for e in entries if not e.name.startswith(".") and e.is_dir()]
    files = [e for e in entries if not e.name.startswith(".") and e.is_file()]
    if layout == "auto":
        layout = "dirs" if subdirs else "flat"
    scan = FolderScan(root=root, layout=layout)
    found: dict[str, list[ImageItem]] = {}
    if layout == "dirs":
        scan.ignored.extend(e.name for e in files)
        for d in subdirs:
            imgs = []
            for p in _walk_files(Path(d.path), scan.skipped):
                if is_metadata_file(p.name):
                    scan.ignored.append(p.relative_to(root).as_posix())
                    continue
                imgs.append(ImageItem(p, p.relative_to(root).as_posix(), d.name))
            if imgs:
                found[d.name] = imgs
            else:
                scan.skipped.append({"path": d.name + "/", "reason": "empty identity folder (no files)"})
    else:
        for e in files:
            if is_metadata_file(e.name):
                scan.ignored.append(e.name)
                continue
            ident = identity_from_filename(e.name)
            found.setdefault(ident, []).append(ImageItem(Path(e.path), e.name, ident))
        if subdirs:
            scan.ignored.extend(d.name + "/" for d in subdirs)
    scan.identities = {k: found[k] for k in sorted(found, key=_natural_key)}
    return scan
