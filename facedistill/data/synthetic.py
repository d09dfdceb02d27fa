"""A built-in, procedural synthetic face set: no downloads, deterministic, fast.

Every identity is a fixed vector of shape, texture and colour parameters (head and jaw shape, eye
spacing/size/height/tilt, iris colour, brows, nose, mouth, ears, skin tone, hair colour/style/hairline,
and rarer attributes: freckles, moles, glasses, beard). Every image of an identity draws nuisance
factors on top: pose (yaw and pitch through a simple 3-D head model, roll), scale and translation
jitter, expression (smile, open mouth, raised brows, blink, gaze), background and clothing,
lighting (shading of the head, a directional gradient, brightness, contrast, gamma, colour cast),
blur (gaussian, motion, low resolution), sensor noise, JPEG artefacts and partial occlusions
(a rectangle, a hand, sunglasses, a face mask, a cap).

Determinism: identity ``k``'s parameters depend only on ``(seed, k)`` and image ``j`` of identity ``k``
only on ``(seed, k, j)`` (and ``difficulty``/``size``), so any subset renders byte-identically.
All random numbers of an image are drawn up front in a fixed order whatever the difficulty, so
``difficulty`` scales the *same* nuisance draws: 0 is clean (frontal, neutral, evenly lit, no blur,
noise or occlusion; only background and clothing vary), 1 the default, 2 very hard.

Drawing is plain OpenCV on a 112x112 canvas (anti-aliased, sub-pixel coordinates) plus a few
vectorised numpy passes; one core renders several hundred images per second.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from facedistill.data.packed import IMAGE_SIZE, PackedWriter

GENERATOR_VERSION = 1
_TAG_IDENTITY = 0x1D_FACE
_TAG_IMAGE = 0x1A_FACE
_SHIFT = 4
_ONE = 1 << _SHIFT
_AA = cv2.LINE_AA

# Canonical 112-pixel frame: the head centre. Eyes land near y=48, the mouth near y=77.
_CX, _CY = 56.0, 55.0

_SKIN = np.array([[255, 226, 204], [241, 198, 168], [222, 171, 132], [190, 136, 98],
                  [150, 100, 68], [104, 68, 46], [70, 46, 34]], np.float32)
_HAIR = np.array([[22, 18, 17], [52, 36, 27], [92, 62, 40], [140, 100, 62], [200, 164, 104],
                  [150, 62, 30], [140, 136, 132], [212, 208, 200]], np.float32)
_HAIR_P = np.array([0.30, 0.22, 0.16, 0.10, 0.09, 0.05, 0.05, 0.03])
_IRIS = np.array([[60, 36, 22], [100, 64, 34], [126, 100, 52], [74, 110, 72], [66, 104, 150],
                  [112, 122, 134]], np.float32)
_IRIS_P = np.array([0.40, 0.22, 0.12, 0.08, 0.12, 0.06])
_HAIR_STYLES = ("short", "long", "bald", "volume", "fringe")
_HAIR_STYLE_P = np.array([0.34, 0.30, 0.07, 0.13, 0.16])
_OCCLUDERS = ("rect", "hand", "sunglasses", "mask", "cap")


# ------------------------------------------------------------------------------------------------
# identity parameters
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class FaceIdentity:
    """The fixed appearance of one synthetic person; lengths are in pixels of the 112 frame."""

    a: float                 # head half-width
    b: float                 # head half-height
    jaw: float               # how much the lower face narrows (0 round .. 0.4 tapered)
    chin: float              # chin squareness (0 pointed .. 1 square)
    eye_dx: float            # half the distance between the eye centres
    eye_y: float             # eye line relative to the head centre
    eye_w: float             # eye half-width
    eye_h: float             # eye half-height when open
    eye_tilt: float          # degrees, outer corners up when positive
    iris: tuple              # RGB
    iris_r: float            # iris radius as a fraction of eye_h
    brow_gap: float          # brow height above the eye centre
    brow_thick: float
    brow_arch: float
    brow_len: float
    brow_tilt: float         # outer end up (px)
    brow_color: tuple
    nose_len: float          # eye line to nose tip
    nose_w: float            # half-width of the nostrils
    nose_prot: float         # how far the tip sticks out (depth, px)
    mouth_dy: float          # nose tip to mouth line
    mouth_w: float           # half-width of the mouth
    lip_up: float
    lip_low: float
    lip_color: tuple
    ear_y: float
    ear_h: float
    ear_w: float
    skin: tuple              # RGB
    hair: tuple              # RGB
    hair_style: str
    hairline: float          # y of the hairline at the centre (relative to head centre)
    hairline_curve: float    # how much it rises towards the temples
    hairline_tilt: float     # side-part asymmetry
    hair_volume: float
    hair_strands: tuple      # ((phase, offset), ...) for strand lines
    blush: float
    freckles: tuple          # ((x, y, r), ...) on the face frame; empty when none
    moles: tuple             # ((x, y, r), ...)
    glasses: str             # "", "round", "rect"
    glasses_color: tuple
    glasses_size: float
    beard: str               # "", "stubble", "moustache", "goatee", "full"
    contour: Any = None      # derived: (3, n) face outline x, y, depth
    strand_pts: Any = None   # derived: (5, 7, 2) hair strand polylines in the face frame


def _pick(u: float, probs: np.ndarray) -> int:
    return int(min(np.searchsorted(np.cumsum(probs) / probs.sum(), u, side="right"), len(probs) - 1))


def _jitter_color(base: np.ndarray, g: np.ndarray, amount: float) -> tuple:
    return tuple(float(c) for c in np.clip(base * (1.0 + amount * g), 0, 255))


@lru_cache(maxsize=8192)
def face_identity(identity: int, seed: int = 0) -> FaceIdentity:
    """The parameters of identity ``identity`` under ``seed`` (pure function of the two)."""
    rng = np.random.default_rng([_TAG_IDENTITY, int(seed), int(identity)])
    g = rng.standard_normal(48)
    v = rng.random(48)
    extra = rng.random((40, 3))          # freckle / mole / strand positions, always drawn
    clip = np.clip

    a = float(clip(31.5 + 2.0 * g[0], 26.5, 36.5))
    b = float(clip(42.0 + 2.2 * g[1], 37.0, 47.0))
    eye_w = float(clip(5.7 + 0.55 * g[5], 4.4, 7.0))
    # skin tone: a continuous position along the palette, biased to the middle
    s = float(clip(0.45 + 0.24 * g[20], 0.0, 1.0)) * (len(_SKIN) - 1)
    i0 = int(min(s, len(_SKIN) - 2))
    skin_rgb = _SKIN[i0] * (1 - (s - i0)) + _SKIN[i0 + 1] * (s - i0)
    skin_rgb = skin_rgb * np.array([1.0 + 0.03 * g[21], 1.0, 1.0 - 0.03 * g[21]], np.float32)
    skin = tuple(float(c) for c in clip(skin_rgb, 0, 255))
    hair_i = _pick(v[2], _HAIR_P)
    hair_rgb = clip(_HAIR[hair_i] * (1 + 0.12 * g[22]) + 6 * g[23], 0, 255)
    hair = tuple(float(c) for c in hair_rgb)
    brow_rgb = hair_rgb * 0.75 if hair_i < 4 else hair_rgb * 0.55 + 20
    brow = tuple(float(c) for c in clip(brow_rgb, 0, 255))
    iris = _jitter_color(_IRIS[_pick(v[1], _IRIS_P)], g[24:27], 0.1)
    lip_rgb = np.array(skin) * np.array([0.86, 0.60, 0.60]) + np.array([20, 6, 8]) * (1 + 0.5 * g[27])
    lip = tuple(float(c) for c in clip(lip_rgb, 0, 255))
    style = _HAIR_STYLES[_pick(v[3], _HAIR_STYLE_P)]
    hairline = float(clip(-0.66 * b + 2.5 * g[28], -0.82 * b, -0.5 * b))
    if style == "fringe":
        hairline = float(-0.43 * b + 1.5 * g[28])
    elif style == "bald":
        hairline = -2.0 * b
    freckles: tuple = ()
    if v[8] < 0.14:
        n = 14 + int(v[9] * 16)
        fx = (extra[:n, 0] * 2 - 1) * 0.55 * a
        fy = -0.05 * b + extra[:n, 1] * 0.28 * b
        freckles = tuple((float(x), float(y), float(0.35 + 0.3 * r)) for x, y, r in zip(fx, fy, extra[:n, 2]))
    n_moles = int(v[10] < 0.35) + int(v[11] < 0.12)
    moles = tuple((float((extra[30 + m, 0] * 2 - 1) * 0.6 * a), float((extra[30 + m, 1] * 1.1 - 0.3) * b),
                   float(0.7 + 0.6 * extra[30 + m, 2])) for m in range(n_moles))
    glasses = ""
    if v[12] < 0.14:
        glasses = "round" if v[13] < 0.45 else "rect"
    gl_col = _jitter_color(np.array([30, 28, 28], np.float32) if v[14] < 0.6
                           else np.array([150, 110, 60], np.float32) if v[14] < 0.8
                           else np.array([170, 170, 175], np.float32), g[29:32], 0.15)
    beard = ""
    if v[15] < 0.18 and style != "long" or v[15] < 0.05:
        beard = ("stubble", "moustache", "goatee", "full")[_pick(v[16], np.array([0.35, 0.2, 0.2, 0.25]))]
    strands = tuple((float(extra[20 + m, 0] * 6.28), float(extra[20 + m, 1] * 2 - 1)) for m in range(8))
    f = FaceIdentity(
        a=a, b=b,
        jaw=float(clip(0.2 + 0.07 * g[2], 0.05, 0.38)),
        chin=float(clip(0.45 + 0.2 * g[3], 0.0, 1.0)),
        eye_dx=float(clip(13.6 + 1.1 * g[4], 10.8, 16.5)),
        eye_y=float(clip(-7.0 + 1.6 * g[6], -11.5, -2.5)),
        eye_w=eye_w,
        eye_h=float(eye_w * clip(0.48 + 0.06 * g[7], 0.34, 0.62)),
        eye_tilt=float(clip(3.0 * g[8], -7, 8)),
        iris=iris,
        iris_r=float(clip(0.92 + 0.06 * g[9], 0.8, 1.0)),
        brow_gap=float(clip(6.8 + 1.0 * g[10], 4.5, 9.5)),
        brow_thick=float(clip(1.9 + 0.5 * g[11], 1.0, 3.4)),
        brow_arch=float(clip(1.6 + 0.8 * g[12], 0.0, 3.6)),
        brow_len=float(clip(1.9 * eye_w + 1.2 * g[13], 7.5, 15.5)),
        brow_tilt=float(clip(0.8 * g[14], -2.0, 2.0)),
        brow_color=brow,
        nose_len=float(clip(16.0 + 1.6 * g[15], 12.0, 20.5)),
        nose_w=float(clip(4.3 + 0.55 * g[16], 3.1, 5.8)),
        nose_prot=float(clip(10.0 + 2.0 * g[17], 6.0, 14.0)),
        mouth_dy=float(clip(10.5 + 1.3 * g[18], 7.5, 14.0)),
        mouth_w=float(clip(9.6 + 1.1 * g[19], 7.0, 12.5)),
        lip_up=float(clip(1.9 + 0.45 * g[32], 1.0, 3.0)),
        lip_low=float(clip(2.6 + 0.55 * g[33], 1.4, 4.0)),
        lip_color=lip,
        ear_y=float(clip(2.0 + 1.5 * g[34], -2.0, 6.0)),
        ear_h=float(clip(8.5 + 1.0 * g[35], 6.5, 11.0)),
        ear_w=float(clip(4.2 + 0.6 * g[36], 3.0, 5.5)),
        skin=skin, hair=hair, hair_style=style, hairline=hairline,
        hairline_curve=float(clip(4.0 + 2.5 * g[37], -1.0, 10.0)),
        hairline_tilt=float(3.0 * g[38] if style != "fringe" else 5.0 * g[38]),
        hair_volume=float(clip(1.0 + 0.25 * abs(g[39]), 1.0, 1.7) if style == "volume"
                          else clip(1.0 + 0.03 * abs(g[39]), 1.0, 1.1)),
        hair_strands=strands,
        blush=float(clip(0.10 + 0.07 * g[40], 0.0, 0.25)),
        freckles=freckles, moles=moles,
        glasses=glasses, glasses_color=gl_col,
        glasses_size=float(clip(1.45 + 0.12 * g[41], 1.2, 1.75)),
        beard=beard,
    )
    return replace(f, contour=np.stack(_face_contour(f)), strand_pts=_strand_points(f))


# ------------------------------------------------------------------------------------------------
# drawing helpers (sub-pixel, anti-aliased)
# ------------------------------------------------------------------------------------------------
def _ellipse(img, c, axes, angle, color, thickness=-1, start=0.0, end=360.0) -> None:
    cv2.ellipse(img, (int(round(c[0] * _ONE)), int(round(c[1] * _ONE))),
                (max(int(round(axes[0] * _ONE)), 1), max(int(round(axes[1] * _ONE)), 1)),
                float(angle), float(start), float(end), color, thickness, _AA, _SHIFT)


def _poly(img, pts, color) -> None:
    cv2.fillPoly(img, [np.round(np.asarray(pts) * _ONE).astype(np.int32)], color, _AA, _SHIFT)


def _lines(img, pts, color, thickness=1, closed=False) -> None:
    cv2.polylines(img, [np.round(np.asarray(pts) * _ONE).astype(np.int32)], closed, color,
                  max(int(round(thickness)), 1), _AA, _SHIFT)


def _blend(img: np.ndarray, overlay: np.ndarray, alpha: float) -> None:
    cv2.addWeighted(overlay, float(alpha), img, 1.0 - float(alpha), 0.0, dst=img)


def _clamp(v, lo, hi) -> float:
    return min(max(float(v), lo), hi)


def _mul(color, f) -> tuple:
    return tuple(float(min(max(c * f, 0.0), 255.0)) for c in color)


class _Pose:
    """Projects face-frame points (x right, y down, z towards the camera) into the image.

    The head is an ellipsoid (half-axes a, b and depth 0.8a); yaw and pitch rotate it, then a
    similarity (roll, scale, translation) places it. Scalar methods avoid numpy overhead for the
    many small ellipses; array methods project polygons.
    """

    def __init__(self, f: FaceIdentity, yaw, pitch, roll_deg, scale, tx, ty, unit) -> None:
        self.f = f
        self.cy, self.sy = math.cos(yaw), math.sin(yaw)
        self.cp, self.sp = math.cos(pitch), math.sin(pitch)
        r = math.radians(roll_deg)
        k = scale * unit
        self.roll_deg = roll_deg
        self.k = k
        self.m00, self.m01, self.m02 = k * math.cos(r), -k * math.sin(r), (_CX + tx) * unit
        self.m10, self.m11, self.m12 = k * math.sin(r), k * math.cos(r), (_CY + ty) * unit
        self.m = np.array([[self.m00, self.m01, self.m02], [self.m10, self.m11, self.m12]], np.float64)
        self.c = 0.8 * f.a     # head depth
        self.ia2, self.ib2 = 1.0 / (f.a * f.a), 1.0 / (f.b * f.b)
        self.ib = 1.0 / f.b
        self.chin = 0.35 * f.a   # the lower face and chin come forward of the ellipsoid

    # -- arrays ----------------------------------------------------------------------------------
    def _img(self, x1, y1) -> np.ndarray:
        out = np.empty((len(x1), 2), np.float64)
        out[:, 0] = self.m00 * x1 + self.m01 * y1 + self.m02
        out[:, 1] = self.m10 * x1 + self.m11 * y1 + self.m12
        return out

    def pts(self, x, y, dz=0.0) -> np.ndarray:
        """Points on the face surface (plus ``dz`` in front of it) -> (N, 2) image coordinates."""
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        yp = np.maximum(y, 0.0) * self.ib
        z = self.c * np.sqrt(np.maximum(1.0 - x * x * self.ia2 - y * y * self.ib2, 0.04)) \
            + self.chin * yp * yp * yp * np.maximum(1.0 - x * x * self.ia2, 0.0) + dz
        x1 = x * self.cy + z * self.sy
        y1 = y * self.cp - (z * self.cy - x * self.sy) * self.sp
        return self._img(x1, y1)

    def flat(self, x, y, z=0.0) -> np.ndarray:
        """Silhouette-like points: only their own depth ``z`` moves them with the pose."""
        x = np.atleast_1d(np.asarray(x, np.float64))
        y = np.atleast_1d(np.asarray(y, np.float64))
        return self._img(x + z * self.sy, y - z * self.sp)

    # -- scalars ---------------------------------------------------------------------------------
    def pt(self, x: float, y: float, dz: float = 0.0) -> tuple[float, float]:
        yp = max(y, 0.0) * self.ib
        z = self.c * math.sqrt(max(1.0 - x * x * self.ia2 - y * y * self.ib2, 0.04)) \
            + self.chin * yp * yp * yp * max(1.0 - x * x * self.ia2, 0.0) + dz
        x1 = x * self.cy + z * self.sy
        y1 = y * self.cp - (z * self.cy - x * self.sy) * self.sp
        return (self.m00 * x1 + self.m01 * y1 + self.m02, self.m10 * x1 + self.m11 * y1 + self.m12)

    def fpt(self, x: float, y: float, z: float = 0.0) -> tuple[float, float]:
        x1, y1 = x + z * self.sy, y - z * self.sp
        return (self.m00 * x1 + self.m01 * y1 + self.m02, self.m10 * x1 + self.m11 * y1 + self.m12)

    def ellipse(self, cx, cy, w, h, tilt_deg=0.0, dz=0.0):
        """Project a small ellipse lying on the surface: returns centre, axes, angle (deg)."""
        t = math.radians(tilt_deg)
        ct, st = math.cos(t), math.sin(t)
        pt = self.pt
        c = pt(cx, cy, dz)
        l, r = pt(cx - w * ct, cy - w * st, dz), pt(cx + w * ct, cy + w * st, dz)
        tp, bt = pt(cx + h * st, cy - h * ct, dz), pt(cx - h * st, cy + h * ct, dz)
        dx, dy = r[0] - l[0], r[1] - l[1]
        return c, (0.5 * math.hypot(dx, dy), 0.5 * math.hypot(bt[0] - tp[0], bt[1] - tp[1])), \
            math.degrees(math.atan2(dy, dx))


# ------------------------------------------------------------------------------------------------
# the renderer
# ------------------------------------------------------------------------------------------------
def _face_contour(f: FaceIdentity, n: int = 72) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    st, ct = np.sin(t), np.cos(t)
    low = np.clip(st, 0, None)
    x = f.a * ct * (1.0 - f.jaw * low ** 1.5)
    # a squarer chin flattens the bottom
    y = f.b * st * np.where(st > 0, 1.0 - 0.08 * f.chin * low ** 6, 1.0)
    x = x * np.where(st > 0.85, 1.0 + 0.35 * f.chin * (st - 0.85) / 0.15, 1.0)
    z = 0.55 * f.a * low ** 3      # chin and jaw come forward a little
    return x, y, z


def _strand_points(f: FaceIdentity) -> np.ndarray:
    out = []
    for phase, off in f.hair_strands[:5]:
        t = np.linspace(0.15, 0.85, 7) * np.pi + 0.1 * off
        r = 0.93 + 0.05 * np.sin(phase + 3 * t)
        out.append(np.stack([-np.cos(t) * f.a * r * f.hair_volume,
                             -np.sin(t) * f.b * r * (0.9 + 0.08 * off) - 0.04 * f.b], -1))
    return np.stack(out)


def _hairline(f: FaceIdentity, x: np.ndarray, jitter: float) -> np.ndarray:
    u = x / f.a
    y = f.hairline + jitter + f.hairline_curve * u ** 2 * (-1) + f.hairline_tilt * u
    if f.hair_style == "fringe":
        y = y + 0.8 * np.sin(9.0 * u + f.hair_strands[0][0])
    return y


def _draw_hair_back(img, f: FaceIdentity, P: _Pose, hair) -> None:
    if f.hair_style == "long":
        a, b = f.a, f.b
        sh = -3.0 * P.sy
        xs = np.array([-1.12 * a, -1.22 * a, -1.25 * a, 1.25 * a, 1.22 * a, 1.12 * a]) + sh
        ys = np.array([-0.2 * b, 0.5 * b, 1.25 * b, 1.25 * b, 0.5 * b, -0.2 * b])
        _poly(img, P.flat(xs, ys), hair)
    elif f.hair_style == "volume":
        c = P.fpt(-3.0 * P.sy, -0.08 * f.b)
        _ellipse(img, c, (f.a * 1.18 * f.hair_volume * P.k, f.b * 0.95 * P.k), P.roll_deg, hair)


def _draw_hair_top(img, f: FaceIdentity, P: _Pose, hair) -> None:
    if f.hair_style == "bald":
        return
    vol = f.hair_volume
    cy = f.eye_y - 2.0
    c = P.fpt(-2.0 * P.sy, cy)
    _ellipse(img, c, (f.a * 1.07 * vol * P.k, (f.b * 1.06 * (1 + 0.5 * (vol - 1)) + cy) * P.k), P.roll_deg, hair,
             start=180, end=360)
    # a few strand lines for texture
    dark = _mul(hair, 0.7) if sum(hair) > 150 else _mul(hair, 1.6)
    sp = f.strand_pts
    pts = P.flat(sp[..., 0].ravel(), sp[..., 1].ravel()).reshape(sp.shape)
    cv2.polylines(img, list(np.round(pts * _ONE).astype(np.int32)), False, dark, 1, _AA, _SHIFT)


def _draw_eye(img, f: FaceIdentity, P: _Pose, side: int, openness: float, gaze: tuple, skin) -> None:
    ex = side * f.eye_dx
    ey = f.eye_y
    tilt = -side * f.eye_tilt
    dz = -2.0
    h = max(f.eye_h * openness, 0.25)
    # socket shadow and upper crease
    c, ax, ang = P.ellipse(ex, ey - 1.0, f.eye_w * 1.35, f.eye_h * 1.5 + 1.0, tilt, dz)
    _ellipse(img, c, ax, ang, _mul(skin, 0.9))
    c, ax, ang = P.ellipse(ex, ey - 0.6, f.eye_w * 1.12, f.eye_h + 1.6, tilt, dz)
    _ellipse(img, c, ax, ang, _mul(skin, 0.72), thickness=1, start=200, end=340)
    c, ax, ang = P.ellipse(ex, ey, f.eye_w, h, tilt, dz)
    if openness < 0.2:
        _ellipse(img, c, (ax[0], max(ax[1], 0.6)), ang, _mul(f.brow_color, 1.2), thickness=1, start=0, end=180)
        return
    _ellipse(img, c, ax, ang, (236, 232, 226))
    ir = f.iris_r * f.eye_h
    gx, gy = gaze
    ic, iax, iang = P.ellipse(ex + gx * f.eye_w * 0.45, ey + gy * f.eye_h * 0.3, ir, ir, 0.0, dz)
    iax = (min(iax[0], ax[0] * 0.95), min(iax[1], max(ax[1], 0.5) * 1.0))
    _ellipse(img, ic, iax, iang, f.iris)
    _ellipse(img, ic, (iax[0] * 0.45, iax[1] * 0.45), iang, (12, 10, 10))
    _ellipse(img, (ic[0] - 0.35 * iax[0], ic[1] - 0.35 * iax[1]), (0.45 * P.k, 0.45 * P.k), 0, (250, 250, 250))
    # lids: a thick dark upper line (lashes) and a thin lower line
    _ellipse(img, c, ax, ang, (28, 22, 22), thickness=max(1, int(round(0.9 * P.k))), start=180, end=360)
    _ellipse(img, c, ax, ang, _mul(skin, 0.7), thickness=1, start=20, end=160)


def _draw_brow(img, f: FaceIdentity, P: _Pose, side: int, raise_px: float) -> None:
    n = 9
    t = np.linspace(0.0, 1.0, n)
    inner = side * (f.eye_dx - 0.45 * f.brow_len)
    xs = inner + side * t * f.brow_len
    base = f.eye_y - f.brow_gap - raise_px * (0.6 + 0.4 * t)
    ys = base - f.brow_arch * np.sin(np.pi * np.clip(t * 1.15, 0, 1)) - f.brow_tilt * t
    th = f.brow_thick * (1.0 - 0.55 * t ** 1.5)
    pp = P.pts(np.concatenate([xs, xs[::-1]]), np.concatenate([ys - 0.5 * th, (ys + 0.5 * th)[::-1]]))
    _poly(img, pp, f.brow_color)


def _draw_nose(img, f: FaceIdentity, P: _Pose, skin) -> None:
    ty = f.eye_y + f.nose_len
    shade = _mul(skin, 0.78)
    # bridge shadow on the side away from the light-ish (we use the side the head turns from)
    side = -1.0 if P.sy >= 0 else 1.0
    ys = np.linspace(f.eye_y + 2, ty - 2.5, 6)
    xs = side * (1.6 + 0.9 * f.nose_w * ((ys - ys[0]) / (ys[-1] - ys[0])) ** 2)
    prot = f.nose_prot * ((ys - f.eye_y) / f.nose_len) ** 1.2
    ov = img.copy()
    pts = P.pts(xs, ys, prot)
    _lines(ov, pts, shade, max(1.0, 1.2 * P.k))
    _blend(img, ov, 0.7)
    # alae and nostrils
    for s in (-1, 1):
        c, ax, ang = P.ellipse(s * f.nose_w * 0.82, ty - 0.6, f.nose_w * 0.42, f.nose_w * 0.36, 0, 1.5)
        _ellipse(img, c, ax, ang, _mul(skin, 0.8), thickness=1, start=90 - s * 90, end=270 - s * 90)
        c, ax, ang = P.ellipse(s * f.nose_w * 0.45, ty + 0.5, f.nose_w * 0.3, 0.75, s * 15, 2.0)
        _ellipse(img, c, ax, ang, _mul(skin, 0.42))
    c, ax, ang = P.ellipse(0, ty - 1.2, f.nose_w * 0.5, 1.4, 0, f.nose_prot)
    _ellipse(img, c, ax, ang, _mul(skin, 1.07))


def _draw_mouth(img, f: FaceIdentity, P: _Pose, smile: float, open_: float) -> None:
    my = f.eye_y + f.nose_len + f.mouth_dy
    w = f.mouth_w * (1.0 + 0.12 * smile)
    n = 11
    t = np.linspace(-1.0, 1.0, n)
    xs = t * w
    corner_up = 2.2 * smile
    mid = my + corner_up * (t ** 2) * -1.0 + corner_up * 0.3
    gap = 3.6 * open_ * (1 - t ** 2)
    bow = 0.7 * np.exp(-((np.abs(t) - 0.25) / 0.2) ** 2)          # cupid's bow peaks
    up_top = mid - gap * 0.35 - f.lip_up * (1 - t ** 2) ** 0.6 - bow * (1 - 0.2 * smile)
    up_bot = mid - gap * 0.35
    lo_top = mid + gap * 0.65
    lo_bot = mid + gap * 0.65 + f.lip_low * (1 - t ** 2) ** 0.7
    lip = f.lip_color
    pp = P.pts(np.tile(xs, 4), np.concatenate([up_top, up_bot, lo_top, lo_bot]), 1.0)
    p_ut, p_ub, p_lt, p_lb = pp[:n], pp[n:2 * n], pp[2 * n:3 * n], pp[3 * n:]
    if open_ > 0.05:
        _poly(img, np.concatenate([p_ub, p_lt[::-1]]), (70, 22, 24))
        teeth = P.pts(np.concatenate([xs * 0.7, xs[::-1] * 0.7]),
                      np.concatenate([up_bot, (up_bot + 0.45 * gap)[::-1]]), 1.0)
        _poly(img, teeth, (232, 228, 216))
    _poly(img, np.concatenate([p_ut, p_ub[::-1]]), _mul(lip, 0.92))
    _poly(img, np.concatenate([p_lt, p_lb[::-1]]), lip)
    _lines(img, p_ub, _mul(lip, 0.55), 1)


def _draw_beard(img, f: FaceIdentity, P: _Pose, hair, cx, cy, cz) -> None:
    my = f.eye_y + f.nose_len + f.mouth_dy
    ov = img.copy()
    alpha = 0.9
    t = np.linspace(-1, 1, 11)
    if f.beard in ("moustache", "goatee", "full"):
        xs = t * (f.mouth_w + 1.2)
        bot = my - f.lip_up - 0.2 + 1.6 * t ** 2
        top = bot - 2.6 * (1 - 0.55 * t ** 2)
        _poly(ov, np.concatenate([P.pts(xs, top, 1), P.pts(xs[::-1], bot[::-1], 1)]), hair)
    if f.beard == "goatee":
        chin_y = f.b * 0.97
        xs = t * f.mouth_w * 0.62
        top = my + f.lip_low + 0.6 + 0.8 * t ** 2
        bot = chin_y - 2.5 * t ** 2
        _poly(ov, np.concatenate([P.pts(xs, top, 1), P.pts(xs[::-1], bot[::-1], 0.5)]), hair)
    if f.beard in ("full", "stubble"):
        sel = (cy > f.ear_y) & (np.abs(cx) < f.a * 0.99)
        order = np.argsort(-np.arctan2(cy[sel], cx[sel]))     # right-to-left along the jaw (y down)
        outer = P.flat(cx[sel][order] * 1.02, cy[sel][order] * 1.02, cz[sel][order])
        # upper edge: sideburn at the ear, down the cheek, across under the nose
        nose_y = f.eye_y + f.nose_len
        xs = np.linspace(f.a * 0.97, -f.a * 0.97, 15)     # right to left, closing the jaw line
        ys = np.interp(np.abs(xs), [0.0, f.nose_w + 0.5, f.mouth_w + 2.5, 0.75 * f.a, 0.97 * f.a],
                       [nose_y + 2.6, nose_y + 2.4, my - 1.0, nose_y - 2.0, f.ear_y])
        inner = P.pts(xs, ys)
        _poly(ov, np.concatenate([outer, inner]), hair)
        if f.beard == "stubble":
            alpha = 0.35
    _blend(img, ov, alpha)


def _draw_glasses(img, f: FaceIdentity, P: _Pose, color, dark: bool = False) -> None:
    r = f.eye_w * f.glasses_size
    th = max(1, int(round(0.9 * P.k)))
    for side in (-1, 1):
        c, ax, ang = P.ellipse(side * f.eye_dx, f.eye_y + 0.5, r, r * (0.85 if f.glasses == "round" else 0.72), 0, 3.5)
        if dark:
            _ellipse(img, c, ax, ang, (18, 18, 22))
        if f.glasses == "round" or dark:
            _ellipse(img, c, ax, ang, color, thickness=th)
        else:
            rad = math.radians(ang)
            u = np.array([math.cos(rad), math.sin(rad)])
            v = np.array([-math.sin(rad), math.cos(rad)])
            corners = np.array([c - ax[0] * u - ax[1] * v, c + ax[0] * u - ax[1] * v,
                                c + ax[0] * u + ax[1] * v * 0.9, c - ax[0] * u + ax[1] * v * 0.9])
            _lines(img, corners, color, th, closed=True)
    bridge = np.array([P.pt(-f.eye_dx + r * 0.95, f.eye_y - 1, 4.0), P.pt(0.0, f.eye_y - 1.5, 5.0),
                       P.pt(f.eye_dx - r * 0.95, f.eye_y - 1, 4.0)])
    _lines(img, bridge, color, th)
    for side in (-1, 1):
        x0 = side * (f.eye_dx + r)
        if side * P.sy > 0.25:      # the far temple arm is hidden behind the head
            continue
        arm = np.array([P.pt(x0, f.eye_y, 2.0), P.fpt(side * f.a * 0.99, f.eye_y + 1.0, -0.2 * P.c)])
        _lines(img, arm, color, th)


def _draw_occluder(img, kind, f: FaceIdentity, P: _Pose, u: np.ndarray, g: np.ndarray, size: int,
                   skin) -> None:
    k = P.k
    if kind == "rect":
        # an object entering from one side of the frame
        side = int(u[0] * 4)
        frac = 0.22 + 0.25 * u[1]
        col = tuple(float(c) for c in 40 + 190 * u[2:5])
        w = size * frac
        pos = size * (0.2 + 0.6 * u[5])
        if side == 0:
            box = [(0, pos - w), (w, pos + w * 0.6)]
        elif side == 1:
            box = [(size - w, pos - w), (size, pos + w * 0.6)]
        elif side == 2:
            box = [(pos - w, size - w), (pos + w, size)]
        else:
            box = [(pos - w * 0.7, 0), (pos + w * 0.7, w * 0.8)]
        (x0, y0), (x1, y1) = box
        pts = np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], np.float64)
        ang = math.radians(20 * g[0])
        ctr = pts.mean(0)
        R = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
        _poly(img, (pts - ctr) @ R.T + ctr, col)
        _lines(img, (pts - ctr) @ R.T + ctr, _mul(col, 0.6), 1, closed=True)
    elif kind == "hand":
        hs = _mul(skin, 0.8 + 0.15 * u[2])
        cx = size * (0.2 + 0.6 * u[0])
        cy = size * (0.55 + 0.4 * u[1])
        rot = 60 * g[0]
        _ellipse(img, (cx, cy), (11 * k, 14 * k), rot, hs)
        _ellipse(img, (cx, cy), (11 * k, 14 * k), rot, _mul(hs, 0.7), thickness=1)
        rr = math.radians(rot)
        for i in range(4):
            off = (i - 1.5) * 5.2 * k
            fx = cx + off * math.cos(rr) + 16 * k * math.sin(rr)
            fy = cy + off * math.sin(rr) - 16 * k * math.cos(rr)
            _ellipse(img, (fx, fy), (2.6 * k, (8.5 - abs(i - 1.5) * 1.2) * k), rot, hs)
            _ellipse(img, (fx, fy), (2.6 * k, (8.5 - abs(i - 1.5) * 1.2) * k), rot, _mul(hs, 0.7), thickness=1)
        _ellipse(img, (cx - 11 * k * math.cos(rr), cy - 11 * k * math.sin(rr)), (3 * k, 7 * k), rot + 50, hs)
    elif kind == "sunglasses":
        _draw_glasses(img, f, P, (15, 15, 18), dark=True)
    elif kind == "mask":
        col = ((150, 200, 225), (235, 235, 235), (40, 40, 48), (90, 140, 200))[int(u[0] * 4)]
        top = f.eye_y + f.nose_len * (0.55 + 0.2 * u[1])
        xs = np.linspace(-f.a * 0.98, f.a * 0.98, 11)
        ys_top = top + 3.0 * (xs / f.a) ** 2
        bot_t = np.linspace(0, np.pi, 11)
        bx = -np.cos(bot_t) * f.a * 0.82
        by = f.b * (0.92 - 0.25 * np.cos(bot_t) ** 2)
        pts = np.concatenate([P.pts(xs, ys_top, 3.0), P.pts(bx[::-1], by[::-1], 2.0)])
        _poly(img, pts, col)
        for d in (0.3, 0.55):
            _lines(img, P.pts(xs * 0.85, ys_top + d * (f.b * 0.8 - top), 3.0), _mul(col, 0.8), 1)
        for side in (-1, 1):
            _lines(img, np.array([P.pt(side * f.a * 0.95, top + 1, 0.0), P.fpt(side * f.a * 1.01, f.ear_y, 0)]),
                   _mul(col, 0.9), 1)
    else:  # cap
        col = tuple(float(c) for c in 30 + 200 * u[2:5])
        brim_y = f.eye_y - f.brow_gap - 4.0 - 6.0 * u[1]
        t = np.linspace(0, np.pi, 15)
        xs = -np.cos(t) * f.a * 1.12
        ys = -np.sin(t) * f.b * 1.12 - 0.05 * f.b
        crown = P.flat(np.concatenate([xs, xs[::-1] * 0.98]),
                       np.concatenate([ys, np.full(15, brim_y)]))
        _poly(img, crown, col)
        bx = np.linspace(-f.a * 0.95, f.a * 0.95, 9)
        brim = np.concatenate([P.pts(bx, np.full_like(bx, brim_y - 1.0), 6.0),
                               P.pts(bx[::-1], brim_y + 3.5 - 1.5 * (bx[::-1] / f.a) ** 2, 10.0)])
        _poly(img, brim, _mul(col, 0.8))


def _render(f: FaceIdentity, rng: np.random.Generator, d: float, size: int) -> np.ndarray:
    g = rng.standard_normal(64)
    u = rng.random(64)
    occ_u = rng.random(8)
    occ_g = rng.standard_normal(4)
    bg_cells = rng.random((3, 3, 3)).astype(np.float32)
    unit = size / IMAGE_SIZE
    clip = _clamp

    def p(prob: float) -> float:
        return min(prob * d, 0.95)

    # -- nuisance parameters -------------------------------------------------------------------
    yaw = float(clip(0.30 * d * g[0], -1.0, 1.0))
    pitch = float(clip(0.15 * d * g[1], -0.55, 0.55))
    roll = float(clip(7.0 * d * g[2], -35.0, 35.0))
    scale = float(math.exp(clip(0.06 * d * g[3], -0.35, 0.35)))
    tx, ty = float(2.5 * d * g[4]), float(2.5 * d * g[5])
    smile = float(clip(0.45 * d * g[6], -0.6, 1.0))
    open_ = float(u[1]) if u[0] < p(0.25) else 0.0
    brow_raise = float(clip(1.2 * d * g[7], -1.5, 3.5))
    openness = 0.08 if u[2] < p(0.05) else float(clip(1.0 - 0.25 * d * u[3], 0.35, 1.0))
    gaze = (float(clip(0.25 * d * g[8], -1, 1)), float(clip(0.25 * d * g[9], -1, 1)))
    hair_jit = float(0.8 * d * g[10])
    wear_glasses = bool(f.glasses) and not (u[4] < p(0.15))
    tan = float(0.03 * d * g[11])

    skin = _mul(f.skin, 1.0 + tan)
    hair = f.hair
    P = _Pose(f, yaw, pitch, roll, scale, tx, ty, unit)

    # -- background, clothes, neck ---------------------------------------------------------------
    base = 35 + 190 * u[5:8].astype(np.float32)
    base = 0.55 * base + 0.45 * base.mean()          # muted, photo-like colours
    cells = base[None, None, :] * (0.7 + 0.6 * bg_cells)
    cells = 0.6 * cells + 0.4 * cells.mean(-1, keepdims=True)
    bg = cv2.resize(np.clip(cells, 0, 255), (size, size), interpolation=cv2.INTER_CUBIC)
    img = np.clip(bg, 0, 255).astype(np.uint8)
    n_clutter = int(u[8] * 4) if u[9] < p(0.5) else 0
    for i in range(n_clutter):
        cu = rng.random(6)
        col = tuple(float(c) for c in 30 + 200 * cu[:3])
        c = (size * cu[3], size * cu[4])
        if i % 2:
            _ellipse(img, c, (size * 0.2 * cu[5] + 2, size * 0.12 + 2), 90 * cu[0], col)
        else:
            _poly(img, np.array([c, (c[0] + size * 0.3 * cu[5] + 3, c[1]),
                                 (c[0] + size * 0.3 * cu[5] + 3, size), (c[0], size)]), col)

    cloth = tuple(float(c) for c in 20 + 210 * u[10:13])
    a, b = f.a, f.b
    _ellipse(img, P.fpt(0.0, b + 30.0), (a * 2.3 * P.k, 24.0 * P.k), roll, cloth)
    _draw_hair_back(img, f, P, hair)
    neck = np.array([[-0.52 * a, 0.35 * b], [-0.56 * a, b + 14], [0.56 * a, b + 14], [0.52 * a, 0.35 * b]])
    _poly(img, P.flat(neck[:, 0], neck[:, 1]), _mul(skin, 0.82))

    # -- ears, hair, face ----------------------------------------------------------------------
    for side in (-1, 1):
        turn = side * P.sy   # > 0: this ear is on the side the features move towards (hidden)
        ex = side * (a + 0.5 - 10.0 * max(turn, 0.0) + 2.0 * max(-turn, 0.0))
        w = f.ear_w * (1.0 + 0.8 * max(-turn, 0.0)) * max(1.0 - 1.5 * max(turn, 0.0), 0.2)
        c = P.fpt(ex, f.ear_y)
        _ellipse(img, c, (w * P.k, f.ear_h * P.k), roll + side * 8, _mul(skin, 0.95))
        _ellipse(img, (c[0] + side * 0.8 * P.k, c[1]), (w * 0.5 * P.k, f.ear_h * 0.6 * P.k), roll + side * 8,
                 _mul(skin, 0.78), thickness=1)
    _draw_hair_top(img, f, P, hair)
    cx, cy, cz = f.contour
    hl = _hairline(f, cx, hair_jit)
    top_clamped = np.maximum(cy, np.where(cy < 0, hl, -1e9))
    _poly(img, P.flat(cx, top_clamped, cz), skin)
    if f.hair_style == "long":
        # locks framing the face, over the temples and cheeks
        t = np.linspace(-0.95, -0.05, 10) * np.pi
        for side in (-1, 1):
            tt = t if side > 0 else -np.pi - t
            ox, oy = np.cos(tt) * a * 1.06, np.sin(tt) * b * 1.04
            ix = np.cos(tt) * a * (0.9 + 0.04 * np.abs(np.sin(tt)))
            iy = np.sin(tt) * b * 1.0
            sel = np.cos(tt) * side > 0.0
            if side * P.sy < -0.3:
                ix = ix * 1.03
            lock = np.concatenate([P.flat(ox[sel], oy[sel]), P.flat(ix[sel][::-1], iy[sel][::-1])])
            low = P.flat(np.array([side * a * 1.06, side * a * 0.93]), np.array([0.45 * b, 0.45 * b]))
            _poly(img, np.concatenate([lock[: sel.sum()], low, lock[sel.sum():]]), hair)

    # -- soft shading on the face: cheeks, under the brow --------------------------------------
    if f.blush > 0.01:
        ov = img.copy()
        for side in (-1, 1):
            c, ax, ang = P.ellipse(side * (f.eye_dx + 2.5), f.eye_y + 10.0, 6.0, 4.0, 0, 0)
            _ellipse(ov, c, ax, ang, (215, 95, 95))
        _blend(img, ov, f.blush)
    if f.freckles:
        fr = np.asarray(f.freckles)
        col = _mul(skin, 0.8)
        for (x, y), r in zip(P.pts(fr[:, 0], fr[:, 1]), fr[:, 2] * P.k):
            _ellipse(img, (x, y), (r, r), 0, col)
    for x, y, r in f.moles:
        c, ax, ang = P.ellipse(x, y, r, r, 0, 0)
        _ellipse(img, c, ax, ang, _mul(skin, 0.45))

    # -- features ------------------------------------------------------------------------------
    for side in (-1, 1):
        _draw_brow(img, f, P, side, brow_raise)
        _draw_eye(img, f, P, side, openness, gaze, skin)
    if f.beard:
        _draw_beard(img, f, P, _mul(hair, 0.9), cx, cy, cz)
    _draw_nose(img, f, P, skin)
    _draw_mouth(img, f, P, smile, open_)
    if wear_glasses:
        _draw_glasses(img, f, P, f.glasses_color)

    # -- occlusion -----------------------------------------------------------------------------
    if u[14] < min(0.22 * d, 0.6):
        kind = _OCCLUDERS[int(u[15] * len(_OCCLUDERS)) % len(_OCCLUDERS)]
        _draw_occluder(img, kind, f, P, occ_u, occ_g, size, skin)

    # -- photometric: head shading, directional gradient, exposure, colour cast -----------------
    # Everything multiplicative is a smooth field: computed on a 1/4-resolution grid and resized.
    xs, ys = _low_grid(size)
    inv = cv2.invertAffineTransform(P.m)
    qx = (inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]) * (1.0 / (a * 1.08))
    qy = (inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]) * (1.0 / (b * 1.06))
    r2 = qx * qx + qy * qy
    nz = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
    lx, ly = 0.55 * d * g[12], -0.35 + 0.4 * d * g[13]
    ln = math.sqrt(lx * lx + ly * ly + 1.0)
    lx, ly, lz = lx / ln, ly / ln, 1.0 / ln
    amb = 0.6
    lam = np.clip(qx * lx + qy * ly + nz * lz, 0.0, 1.0)
    shade_face = (amb + (1 - amb) * lam) * (1.0 / (amb + (1 - amb) * lz))
    wgt = np.clip((1.06 - np.sqrt(r2)) * (1.0 / 0.12), 0.0, 1.0)
    shade = 1.0 + wgt * (shade_face - 1.0)
    gang = 2 * math.pi * u[16]
    gstr = 0.35 * d * u[17]
    shade *= 1.0 + gstr * ((xs * (1.0 / size) - 0.5) * math.cos(gang) + (ys * (1.0 / size) - 0.5) * math.sin(gang))
    gain = np.exp(np.clip(0.07 * d * g[14:17], -0.3, 0.3))
    contrast = float(math.exp(clip(0.18 * d * g[17], -0.6, 0.6)))
    bright = float(clip(0.10 * d * g[18], -0.35, 0.35))
    gamma = float(math.exp(clip(0.15 * d * g[19], -0.5, 0.5)))
    field = (shade[..., None] * (gain * contrast)).astype(np.float32)
    field = cv2.resize(field, (size, size), interpolation=cv2.INTER_LINEAR)
    x = cv2.multiply(img.astype(np.float32), field)
    out = cv2.convertScaleAbs(x)          # x >= 0: a saturating cast to uint8
    # contrast offset, brightness and gamma as one lookup table
    lut = np.arange(256, dtype=np.float64) + 255.0 * (0.5 - 0.5 * contrast + bright)
    lut = (np.clip(lut * (1.0 / 255.0), 0.0, 1.0) ** gamma) * 255.0 + 0.5
    out = cv2.LUT(out, lut.astype(np.uint8))

    # -- blur, resolution, noise, compression ---------------------------------------------------
    if u[20] < p(0.1):   # low resolution: down and up again
        fct = 1.5 + 1.5 * min(d, 2.0) * u[21]
        small = max(int(size / fct), 8)
        out = cv2.resize(cv2.resize(out, (small, small), interpolation=cv2.INTER_AREA), (size, size),
                         interpolation=cv2.INTER_LINEAR)
    if u[22] < p(0.12):  # motion blur
        length = 3 + int(4 * min(d, 2.0) * u[23])
        kern = np.zeros((length, length), np.float32)
        kern[length // 2, :] = 1.0 / length
        rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), 180 * u[24], 1.0)
        kern = cv2.warpAffine(kern, rot, (length, length))
        kern /= max(float(kern.sum()), 1e-6)
        out = cv2.filter2D(out, -1, kern, borderType=cv2.BORDER_REFLECT)
    sigma = (0.35 + 0.9 * d * u[26]) * unit if u[25] < p(0.45) else 0.0
    if sigma > 0.25:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    nsig = 5.0 * d * u[27]                 # sensor noise, in grey levels
    if nsig > 0.05:
        bank = _noise_bank(size)
        oy, ox = int(u[30] * (bank.shape[0] - size)), int(u[31] * (bank.shape[1] - size))
        x = out.astype(np.float32)
        x += bank[oy:oy + size, ox:ox + size] * np.float32(nsig)
        out = cv2.convertScaleAbs(np.maximum(x, 0.0, out=x))
    if u[28] < p(0.3):
        q = int(25 + 60 * u[29])
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return out


@lru_cache(maxsize=8)
def _low_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres (in full-resolution coordinates) of a quarter-resolution grid."""
    n = max(size // 4, 8)
    c = (np.arange(n, dtype=np.float32) + 0.5) * (size / n)
    return np.meshgrid(c, c)


@lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
    """A fixed field of unit gaussian noise; each image takes a window at its own offset."""
    n = 2 * size + 32
    return np.random.default_rng(0x5EED).standard_normal((n, n, 3), dtype=np.float32)


# ------------------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------------------
def _check_common(seed: int, difficulty: float) -> tuple[int, float]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    try:
        d = float(difficulty)
    except (TypeError, ValueError):
        raise ValueError(f"difficulty must be a number, got {difficulty!r}") from None
    if not math.isfinite(d) or d < 0 or d > 4:
        raise ValueError(f"difficulty must be between 0 (clean) and 4 (2 is already very hard), got {difficulty!r}")
    return int(seed), d


def render_face(identity: int, image: int, seed: int = 0, difficulty: float = 1.0, size: int = IMAGE_SIZE) -> np.ndarray:
    """Render image ``image`` of identity ``identity``: a uint8 ``(size, size, 3)`` RGB array.

    The result depends only on ``(seed, identity, image, difficulty, size)``.
    """
    seed, d = _check_common(seed, difficulty)
    for nm, val in (("identity", identity), ("image", image)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 0:
            raise ValueError(f"{nm} must be a non-negative integer, got {val!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an integer >= 32, got {size!r}")
    f = face_identity(int(identity), seed)
    rng = np.random.default_rng([_TAG_IMAGE, seed, int(identity), int(image)])
    # RGB throughout (cv2 only draws the colours it is given).
    return _render(f, rng, d, int(size))


def render_identities(identities: Sequence[int] | range, images_per_identity: int, seed: int = 0,
                      difficulty: float = 1.0, progress: Callable[[int], None] | None = None,
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Render ``images_per_identity`` 112x112 images of every identity in ``identities``.

    Returns ``(images, labels)``: uint8 ``(N, 112, 112, 3)`` RGB and int64 ``(N,)`` holding the
    identity ids, grouped by identity in the given order (image ``j`` of identity ``k`` is the same
    as ``render_face(k, j, seed, difficulty)``). ``progress`` is called with the number of images
    just rendered (an increment, like ``tqdm.update``) after each identity.
    """
    ids = [int(i) for i in identities]
    if not ids:
        raise ValueError("identities is empty: render at least one identity")
    if isinstance(images_per_identity, bool) or not isinstance(images_per_identity, (int, np.integer)) \
            or images_per_identity < 1:
        raise ValueError(f"images_per_identity must be an integer >= 1, got {images_per_identity!r}")
    n = len(ids) * int(images_per_identity)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    labels = np.repeat(np.asarray(ids, np.int64), int(images_per_identity))
    i = 0
    for k in ids:
        for j in range(int(images_per_identity)):
            images[i] = render_face(k, j, seed, difficulty)
            i += 1
        if progress is not None:
            progress(int(images_per_identity))
    return images, labels


def make_pairs(num_identities: int, images_per_identity: int, num_pairs: int, seed: int = 0) -> np.ndarray:
    """Verification pairs over a set laid out identity by identity (``images_per_identity`` each).

    Returns int64 ``(num_pairs, 3)`` rows ``index_a, index_b, same`` in 10 contiguous blocks
    (insightface/LFW style), each block first ``num_pairs/20`` same pairs then as many different
    pairs. When there are at least 20 identities, the identities are split into 10 disjoint groups
    and block ``f`` only uses group ``f``, so the folds of a 10-fold evaluation share no identity.
    Pairs are distinct where the set has enough of them.
    """
    if num_pairs <= 0 or num_pairs % 20:
        raise ValueError(f"val_pairs must be a positive multiple of 20 (10 folds, half same/half different), "
                         f"got {num_pairs}")
    if num_identities < 2:
        raise ValueError(f"a pair set needs at least 2 identities, got {num_identities}")
    if images_per_identity < 2:
        raise ValueError(f"a pair set needs at least 2 images per identity for same pairs, got {images_per_identity}")
    rng = np.random.default_rng([0x9A125, int(seed), num_identities, images_per_identity, num_pairs])
    half = num_pairs // 20
    perm = rng.permutation(num_identities)
    disjoint = num_identities >= 20
    groups = np.array_split(perm, 10) if disjoint else [perm] * 10
    m = images_per_identity
    ia, ib = np.triu_indices(m, 1)
    if not disjoint:
        # one shared pool: draw all folds' same pairs at once so they repeat only when they must
        n_same = num_identities * len(ia)
        shared = rng.choice(n_same, size=10 * half, replace=n_same < 10 * half)
    out = []
    used: set[tuple[int, int]] = set()
    for fold, grp in enumerate(groups):
        # same pairs: every (identity, i<j) combination, sampled without replacement when possible
        n_same = len(grp) * len(ia)
        if disjoint:
            pick = rng.choice(n_same, size=half, replace=n_same < half)
        else:
            pick = shared[fold * half:(fold + 1) * half]
        ident = grp[pick // len(ia)]
        same = np.stack([ident * m + ia[pick % len(ia)], ident * m + ib[pick % len(ia)], np.ones(half, np.int64)], 1)
        diff = np.empty((half, 3), np.int64)
        n_done = 0
        tries = 0
        while n_done < half:
            p, q = rng.choice(len(grp), size=2, replace=False)
            a_ = int(grp[p]) * m + int(rng.integers(m))
            b_ = int(grp[q]) * m + int(rng.integers(m))
            key = (min(a_, b_), max(a_, b_))
            tries += 1
            if key in used and tries < 50 * half:
                continue
            used.add(key)
            diff[n_done] = (a_, b_, 0)
            n_done += 1
        out.append(same.astype(np.int64))
        out.append(diff)
    return np.concatenate(out)


def write_synthetic(out_dir: str | Path, train_identities: int = 200, images_per_identity: int = 20,
                    val_identities: int = 100, val_images_per_identity: int = 6, val_pairs: int = 1200,
                    seed: int = 0, difficulty: float = 1.0,
                    progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write a synthetic training set ``out_dir/train`` and a pair set ``out_dir/val``.

    Train holds identities ``0..train_identities-1`` (labels equal to the ids); val holds the next
    ``val_identities`` ids, relabelled ``0..val_identities-1``, so the two share no identity.
    ``progress`` gets image-count increments (total ``train_identities*images_per_identity +
    val_identities*val_images_per_identity``). Returns a summary dict.
    """
    seed, d = _check_common(seed, difficulty)
    for nm, val, lo in (("train_identities", train_identities, 1), ("images_per_identity", images_per_identity, 1),
                        ("val_identities", val_identities, 2), ("val_images_per_identity", val_images_per_identity, 2),
                        ("val_pairs", val_pairs, 20)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < lo:
            raise ValueError(f"{nm} must be an integer >= {lo}, got {val!r}")
    if val_pairs % 20:
        raise ValueError(f"val_pairs must be a multiple of 20 (10 folds, half same/half different), got {val_pairs}")
    pairs = make_pairs(val_identities, val_images_per_identity, val_pairs, seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    params = {"generator": "facedistill.data.synthetic", "generator_version": GENERATOR_VERSION,
              "seed": seed, "difficulty": d}
    train_extra = {"synthetic": {**params, "identities": int(train_identities),
                                 "images_per_identity": int(images_per_identity), "first_identity": 0}}
    val_extra = {"synthetic": {**params, "identities": int(val_identities),
                               "images_per_identity": int(val_images_per_identity),
                               "first_identity": int(train_identities), "pairs": int(val_pairs)}}
    src = f"synthetic(seed={seed}, difficulty={d:g})"
    with PackedWriter(out_dir / "train", kind="train", source=src, extra=train_extra) as w:
        for k in range(train_identities):
            name = f"synth-{k:06d}"
            w.set_identity(k, name)
            for j in range(images_per_identity):
                w.add(render_face(k, j, seed, d), k, f"{name}/{j:04d}")
            if progress is not None:
                progress(int(images_per_identity))
    with PackedWriter(out_dir / "val", kind="pairs", source=src, extra=val_extra) as w:
        for lab in range(val_identities):
            k = train_identities + lab
            name = f"synth-{k:06d}"
            w.set_identity(lab, name)
            for j in range(val_images_per_identity):
                w.add(render_face(k, j, seed, d), lab, f"{name}/{j:04d}")
            if progress is not None:
                progress(int(val_images_per_identity))
        w.set_pairs(pairs)
    return {
        "train": str(out_dir / "train"),
        "val": str(out_dir / "val"),
        "train_identities": int(train_identities),
        "train_images": int(train_identities * images_per_identity),
        "val_identities": int(val_identities),
        "val_images": int(val_identities * val_images_per_identity),
        "val_pairs": int(val_pairs),
        "seed": seed,
        "difficulty": d,
        "seconds": round(time.time() - start, 3),
    }
