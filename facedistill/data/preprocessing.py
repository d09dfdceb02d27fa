"""How uint8 RGB face images become model input: one description for students, teachers and exports.

A :class:`Preprocessing` is what a run summary records, what an export writes into its ONNX
metadata, what a teacher applies before its forward pass and what the evaluation embedders apply.
Keeping one class means those places cannot drift apart (channel order, per-channel mean/std).

torch is imported only inside :meth:`Preprocessing.apply_torch`, so evaluating ONNX models works
on machines without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from facedistill.errors import DataError, FaceDistillError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["CHANNEL_ORDERS", "Preprocessing", "check_images"]

CHANNEL_ORDERS = ("RGB", "BGR")


def check_images(images: np.ndarray) -> np.ndarray:
    """The images as an array, after checking they are uint8 (N, H, W, 3)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"expected images as (N, H, W, 3) RGB arrays, got shape {images.shape}")
    if images.dtype != np.uint8:
        raise DataError(f"expected uint8 images, got dtype {images.dtype}")
    return images


@dataclass(frozen=True)
class Preprocessing:
    """uint8 RGB -> float model input: optional RGB->BGR flip, then ``(x - mean) / std``.

    ``mean``/``std`` are one value for all channels or three values in the *model's* channel order
    (i.e. after the flip). Values are kept exactly as given (no float coercion): the teacher cache
    fingerprint hashes them. Lists (from JSON run summaries or YAML) become tuples so the object
    stays hashable; ``channel_order`` is upper-cased and must be RGB or BGR.
    """

    mean: float | tuple[float, float, float] = 127.5
    std: float | tuple[float, float, float] = 127.5
    channel_order: str = "RGB"
    input_size: int = 112

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        order = str(self.channel_order).upper()
        if order not in CHANNEL_ORDERS:
            raise FaceDistillError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        object.__setattr__(self, "channel_order", order)

    @property
    def bgr(self) -> bool:
        """True when the model expects BGR (the input's channels are flipped)."""
        return self.channel_order == "BGR"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (run summaries, export reports): tuples as lists, scalars unchanged."""

        def plain(v: Any) -> Any:
            return list(v) if isinstance(v, tuple) else v

        return {"mean": plain(self.mean), "std": plain(self.std), "channel_order": self.channel_order,
                "input_size": self.input_size}

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str = "model") -> "Preprocessing":
        """Read ``mean``, ``std``, ``channel_order`` (RGB/BGR), ``input_size`` written by the exporter.

        Missing keys keep the defaults; malformed values raise :class:`FaceDistillError` naming
        ``source`` (the model's path).
        """
        default = cls()

        def number(key: str, value: Any) -> float | tuple[float, float, float]:
            try:
                parts = [float(p) for p in str(value).replace("[", "").replace("]", "").split(",") if p.strip()]
            except ValueError:
                parts = []
            if len(parts) == 1:
                return parts[0]
            if len(parts) == 3:
                return parts[0] if parts[0] == parts[1] == parts[2] else (parts[0], parts[1], parts[2])
            raise FaceDistillError(f"{source}: metadata {key!r} = {value!r} is not a number or three numbers")

        mean = number("mean", meta["mean"]) if "mean" in meta else default.mean
        std = number("std", meta["std"]) if "std" in meta else default.std
        channel_order = default.channel_order
        if "channel_order" in meta:
            order = str(meta["channel_order"]).strip().upper()
            if order not in CHANNEL_ORDERS:
                raise FaceDistillError(
                    f"{source}: metadata 'channel_order' = {meta['channel_order']!r}, expected 'RGB' or 'BGR'"
                )
            channel_order = order
        input_size = default.input_size
        if "input_size" in meta:
            raw = str(meta["input_size"]).replace("[", "").replace("]", "").replace("x", ",")
            try:
                sizes = {int(float(p)) for p in raw.split(",") if p.strip()}
            except ValueError:
                sizes = set()
            if len(sizes) != 1:
                raise FaceDistillError(
                    f"{source}: metadata 'input_size' = {meta['input_size']!r} is not one square size"
                )
            input_size = sizes.pop()
        return cls(mean=mean, std=std, channel_order=channel_order, input_size=input_size)

    def apply(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) RGB numpy images -> float32 (N, 3, H, W); no resizing (a size mismatch
        raises :class:`DataError`). Used by the evaluation embedders and the exporter."""
        images = check_images(images)
        h, w = images.shape[1:3]
        if (h, w) != (self.input_size, self.input_size):
            raise DataError(
                f"images are {h}x{w} but the model expects {self.input_size}x{self.input_size}"
            )
        x = images[..., ::-1] if self.bgr else images
        x = x.astype(np.float32)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        x = (x - mean) / std  # broadcasts over the channel axis (NHWC)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def apply_torch(self, x: "torch.Tensor") -> "torch.Tensor":
        """uint8 (N, 3, H, W) RGB torch batch -> float32 model input, bilinearly resized to
        ``input_size`` when the batch has another size. Used by the teachers during distillation."""
        import torch
        import torch.nn.functional as F

        x = x.float()
        if self.bgr:
            x = x.flip(1)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        mean = self.mean
        std = self.std
        if isinstance(mean, tuple):
            mean = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        if isinstance(std, tuple):
            std = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


def _per_channel(value: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else (float(value),) * 3


def same_preprocessing(a: "Preprocessing", b: "Preprocessing") -> bool:
    """Equal normalisation (127.5 and [127.5, 127.5, 127.5] are the same), channel order and size."""
    close = all(abs(x - y) <= 1e-4 for x, y in zip(_per_channel(a.mean) + _per_channel(a.std),
                                                   _per_channel(b.mean) + _per_channel(b.std)))
    return close and a.channel_order == b.channel_order and a.input_size == b.input_size
