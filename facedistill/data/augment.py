"""Seeded augmentation of aligned 112x112 faces that a teacher can follow (``data.augment``).

Distillation by "consistent function matching" shows the student and the teacher the *same*
augmented image, so the teacher's target describes exactly what the student sees. That needs
augmentations that are a pure function of a key: view ``v`` of image ``i`` under seed ``s`` is
drawn from ``np.random.default_rng([s, i, v])`` and nothing else, so

* a teacher cache can hold views 1..K-1 of every image (built once, reused by every run), and
* a resumed run, or a student that looks a view up again, gets identical bytes.

View 0 is always the plain image (no flip, no change). Any other view applies, in this order:

1. **geometry**, one ``cv2.warpAffine`` (bilinear): mirror (when ``data.flip``), rotation by up to
   ``rotate`` degrees about the centre, zoom in ``[1 - scale, 1 + scale]``, shift by up to
   ``shift`` of the side per axis. The defaults stay within alignment tolerance: ArcFace-template
   crops of one face from different detectors/landmarks differ by a few pixels and degrees, so
   5 degrees, 5 % and 3 % (3.4 px) make views the evaluation could also have produced.
   Border: ``replicate`` (default) repeats the edge pixel into the few uncovered pixels; a shift of
   3 px with ``constant`` would add black bars that aligned test faces never have (only crops of a
   face near the photo edge do), a cue the student could learn to read. ``constant`` is offered
   for that case.
2. **colour**, vectorised over the batch: brightness (gain), contrast (around the image's mean
   grey), saturation (around each pixel's grey), each a factor in ``[1 - a, 1 + a]``; then, with
   probability ``greyscale``, the grey image (ITU-R 601 luma) in all three channels.
3. **blur** with probability ``blur``: Gaussian, sigma in ``[blur_sigma / 4, blur_sigma]``.
4. **JPEG** with probability ``jpeg``: encoded and decoded at a quality in ``[jpeg_quality, 95]``
   (libjpeg through ``cv2.imencode``, on BGR so chroma subsampling acts on real colours).

Every random number of a view is drawn, in a fixed order, whether or not its step applies: the
parameters of one step never shift because another step's probability changed.

Images are uint8 NHWC RGB, as ``PackedDataset.images`` returns them; outputs have the same shape
and dtype. Results do not depend on which other images share the batch.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from facedistill.errors import RecipeError

BORDERS = {"replicate": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT}
JPEG_MAX_QUALITY = 95
_LUMA = (0.299, 0.587, 0.114)
_DRAWS = 13  # random numbers per view, always all drawn (see module doc)


@dataclass
class AugmentConfig:
    """``data.augment`` in a recipe. Off by default: recipes without it train (and hash) as before."""

    enabled: bool = False
    seed: int = 0  # seed of the teacher cache's views; shared by runs so a seed sweep reuses one cache
    scale: float = 0.05  # zoom factor in [1 - scale, 1 + scale]
    shift: float = 0.03  # translation per axis, fraction of the side (0.03 = 3.4 px)
    rotate: float = 5.0  # degrees, either way
    border: str = "replicate"  # replicate | constant (black)
    brightness: float = 0.2  # gain in [1 - b, 1 + b]
    contrast: float = 0.2
    saturation: float = 0.2
    greyscale: float = 0.1  # probability
    blur: float = 0.1  # probability
    blur_sigma: float = 1.2  # largest Gaussian sigma, pixels
    jpeg: float = 0.25  # probability
    jpeg_quality: int = 40  # lowest JPEG quality drawn (up to 95)

    def validate(self, path: str = "data.augment") -> None:
        """Raise RecipeError naming the key path of the first invalid value."""
        ranges = {"scale": (0.0, 0.5), "shift": (0.0, 0.25), "rotate": (0.0, 45.0), "brightness": (0.0, 1.0),
                  "contrast": (0.0, 1.0), "saturation": (0.0, 1.0), "greyscale": (0.0, 1.0), "blur": (0.0, 1.0),
                  "jpeg": (0.0, 1.0), "blur_sigma": (0.1, 10.0)}
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
                raise RecipeError(f"`{path}.{name}` must be between {low} and {high}, got {value!r}")
        if self.border not in BORDERS:
            raise RecipeError(f"`{path}.border` is {self.border!r}, expected one of {', '.join(BORDERS)}")
        if not 1 <= self.jpeg_quality <= JPEG_MAX_QUALITY:
            raise RecipeError(f"`{path}.jpeg_quality` must be between 1 and {JPEG_MAX_QUALITY}, "
                              f"got {self.jpeg_quality!r}")
        if self.seed < 0:
            raise RecipeError(f"`{path}.seed` must be >= 0, got {self.seed!r}")

    def key(self, flip: bool, views: int | None = None) -> str:
        """Short hash of everything that decides the views' pixels (``enabled`` aside): keys a view cache."""
        data = {k: v for k, v in asdict(self).items() if k != "enabled"}
        blob = json.dumps({"augment": data, "flip": bool(flip), "views": views}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class ViewParams:
    """The drawn parameters of a batch of views, one entry per image (see ``draw_params``)."""

    plain: np.ndarray  # bool: view 0, returned unchanged
    matrix: np.ndarray  # (B, 2, 3) float64 affine, source -> output pixel coordinates
    gain: np.ndarray  # float32 brightness factor
    contrast: np.ndarray
    saturation: np.ndarray
    grey: np.ndarray  # bool
    blur_sigma: np.ndarray  # float64; 0 = no blur
    jpeg_quality: np.ndarray  # int; 0 = no JPEG


def _ints(values: Sequence[int] | np.ndarray, name: str, n: int | None = None) -> np.ndarray:
    arr = np.asarray(values, dtype=np.int64).reshape(-1)
    if n is not None and len(arr) != n:
        raise ValueError(f"{name}: expected {n} values, got {len(arr)}")
    if len(arr) and arr.min() < 0:
        raise ValueError(f"{name}: must be >= 0")
    return arr


def draw_params(cfg: AugmentConfig, seed: int, indices: Sequence[int] | np.ndarray,
                views: Sequence[int] | np.ndarray, flip: bool = True, size: int = 112) -> ViewParams:
    """The parameters of view ``views[k]`` of image ``indices[k]``: a pure function of (seed, index, view)."""
    idx = _ints(indices, "indices")
    vws = _ints(views, "views", len(idx))
    u = np.stack([np.random.default_rng([int(seed), int(i), int(v)]).random(_DRAWS) for i, v in zip(idx, vws)]) \
        if len(idx) else np.zeros((0, _DRAWS))
    sym = 2.0 * u - 1.0  # uniform in [-1, 1)
    mirrored = (u[:, 0] < 0.5) & bool(flip)
    angle = sym[:, 1] * cfg.rotate
    zoom = 1.0 + sym[:, 2] * cfg.scale
    tx, ty = sym[:, 3] * cfg.shift * size, sym[:, 4] * cfg.shift * size
    centre = (size - 1) / 2.0
    matrix = np.empty((len(idx), 2, 3))
    for k in range(len(idx)):
        m = cv2.getRotationMatrix2D((centre, centre), float(angle[k]), float(zoom[k]))
        if mirrored[k]:  # x -> (size - 1) - x first, then rotate/zoom
            m = np.concatenate([m[:, :2] @ np.diag([-1.0, 1.0]), (m[:, :2] @ [size - 1.0, 0.0] + m[:, 2])[:, None]], 1)
        m[:, 2] += (tx[k], ty[k])
        matrix[k] = m
    blur_on = u[:, 8] < cfg.blur
    jpeg_on = u[:, 10] < cfg.jpeg
    quality = np.minimum(JPEG_MAX_QUALITY,
                         cfg.jpeg_quality + np.floor(u[:, 11] * (JPEG_MAX_QUALITY - cfg.jpeg_quality + 1)))
    return ViewParams(
        plain=vws == 0, matrix=matrix,
        gain=(1.0 + sym[:, 5] * cfg.brightness).astype(np.float32),
        contrast=(1.0 + sym[:, 6] * cfg.contrast).astype(np.float32),
        saturation=(1.0 + sym[:, 7] * cfg.saturation).astype(np.float32),
        grey=u[:, 12] < cfg.greyscale,
        blur_sigma=np.where(blur_on, cfg.blur_sigma * (0.25 + 0.75 * u[:, 9]), 0.0),
        jpeg_quality=np.where(jpeg_on, quality, 0).astype(np.int64))


def _luma(x: np.ndarray) -> np.ndarray:
    # elementwise on purpose (no BLAS): the result of one image never depends on the batch around it
    return x[..., 0] * np.float32(_LUMA[0]) + x[..., 1] * np.float32(_LUMA[1]) + x[..., 2] * np.float32(_LUMA[2])


def _colour(images: np.ndarray, p: ViewParams) -> np.ndarray:
    """Brightness, contrast, saturation and greyscale over the batch (float32), back to uint8."""
    x = images.astype(np.float32)
    col = (slice(None), None, None, None)
    x *= p.gain[col]
    mean = _luma(x).reshape(len(x), -1).mean(axis=1, dtype=np.float64).astype(np.float32)
    x = (x - mean[col]) * p.contrast[col] + mean[col]
    grey = _luma(x)[..., None]
    x = grey + (x - grey) * p.saturation[col]
    if p.grey.any():
        x = np.where(p.grey[col], _luma(x)[..., None], x)
    return np.rint(np.clip(x, 0.0, 255.0)).astype(np.uint8)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("cv2.imencode failed to write a JPEG")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]


def augment_batch(images: np.ndarray, cfg: AugmentConfig, seed: int, indices: Sequence[int] | np.ndarray,
                  views: Sequence[int] | np.ndarray, flip: bool = True) -> np.ndarray:
    """View ``views[k]`` of each image ``images[k]`` (uint8 NHWC), whose key is ``(seed, indices[k], views[k])``.

    ``indices`` are the images' indices in their own packed set (what a per-source cache is keyed by).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"augment_batch expects uint8 NHWC square RGB images, got {images.dtype} {images.shape}")
    n, size = images.shape[0], images.shape[1]
    p = draw_params(cfg, seed, indices, views, flip, size)
    if len(p.plain) != n:
        raise ValueError(f"augment_batch: {n} images but {len(p.plain)} indices")
    out = np.empty_like(images)
    todo = np.flatnonzero(~p.plain)
    out[p.plain] = images[p.plain]
    if len(todo) == 0:
        return out
    border = BORDERS[cfg.border]
    warped = np.stack([cv2.warpAffine(images[k], p.matrix[k], (size, size), flags=cv2.INTER_LINEAR,
                                      borderMode=border, borderValue=(0, 0, 0)) for k in todo])
    sub = ViewParams(*(getattr(p, f)[todo] for f in ViewParams.__dataclass_fields__))
    coloured = _colour(warped, sub)
    for j, k in enumerate(todo):
        img = coloured[j]
        if sub.blur_sigma[j] > 0:
            img = cv2.GaussianBlur(img, (0, 0), float(sub.blur_sigma[j]))
        if sub.jpeg_quality[j] > 0:
            img = _jpeg(img, int(sub.jpeg_quality[j]))
        out[k] = img
    return out


def augment_view(image: np.ndarray, cfg: AugmentConfig, seed: int, index: int, view: int,
                 flip: bool = True) -> np.ndarray:
    """One view of one uint8 HWC image (``augment_batch`` of one)."""
    return augment_batch(np.asarray(image)[None], cfg, seed, [index], [view], flip)[0]


def describe(cfg: AugmentConfig, flip: bool) -> dict[str, Any]:
    """The parameters as plain data, for a cache's side file and run summaries."""
    return {**{k: v for k, v in asdict(cfg).items() if k != "enabled"}, "flip": bool(flip)}
