"""Embed face images with a torch module or an ONNX model through one interface.

An :class:`Embedder` maps uint8 RGB images (N, H, W, 3) to raw float32 embeddings (N, D).
:func:`embed_images` adds the insightface test-time flip: ``f(x) + f(flip(x))``, then L2-normalises.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from facedistill.data.preprocessing import Preprocessing, check_images
from facedistill.errors import FaceDistillError

__all__ = [
    "Embedder",
    "OnnxEmbedder",
    "TorchEmbedder",
    "embed_images",
    "l2_normalise",
]


@runtime_checkable
class Embedder(Protocol):
    """``embedder(images)``: uint8 NHWC RGB images -> raw (not normalised) float32 (N, D)."""

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


def _as_2d(out: np.ndarray, source: str) -> np.ndarray:
    if out.ndim != 2:
        raise FaceDistillError(
            f"{source}: the model's output has shape {tuple(out.shape)}; an embedding model must output "
            f"(batch, dim)"
        )
    return out.astype(np.float32, copy=False)


class TorchEmbedder:
    """Embed with a torch module (eval mode, no grad, in batches)."""

    def __init__(self, model: Any, preprocess: Preprocessing | None = None, device: str = "cpu", batch_size: int = 128):
        import torch

        self._torch = torch
        self.model = model
        self.preprocess = preprocess or Preprocessing()
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")

    def __call__(self, images: np.ndarray) -> np.ndarray:
        torch = self._torch
        images = check_images(images)
        self.model.eval()
        outs: list[np.ndarray] = []
        with torch.no_grad():
            for i in range(0, images.shape[0], self.batch_size):
                x = torch.from_numpy(self.preprocess.apply(images[i : i + self.batch_size])).to(self.device)
                y = self.model(x)
                if isinstance(y, (tuple, list)):
                    y = y[0]
                outs.append(_as_2d(y.detach().float().cpu().numpy(), type(self.model).__name__))
        if not outs:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(outs, axis=0)


class OnnxEmbedder:
    """Embed with an ONNX model on onnxruntime's CPU provider.

    ``preprocess=None`` reads it from the model's metadata (``mean``, ``std``, ``channel_order``,
    ``input_size``), falling back to the defaults (``input_size``: the graph's own size when fixed).
    A graph whose batch dimension is fixed (e.g. 1) is fed batches of exactly that size (the last one
    zero-padded).
    """

    def __init__(
        self,
        path_or_bytes: str | os.PathLike | bytes,
        preprocess: Preprocessing | None = None,
        batch_size: int = 64,
        threads: int | None = None,
    ):
        import onnxruntime as ort

        if isinstance(path_or_bytes, (bytes, bytearray)):
            self.source = "<in-memory ONNX model>"
            model_arg: Any = bytes(path_or_bytes)
        else:
            path = Path(path_or_bytes)
            self.source = str(path)
            if not path.is_file():
                raise FaceDistillError(f"ONNX model not found: {path}")
            model_arg = str(path)
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(model_arg, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise FaceDistillError(f"cannot load ONNX model {self.source}: {e}") from e

        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise FaceDistillError(f"{self.source}: expected a model with one input, it has {len(inputs)}")
        inp = inputs[0]
        self.input_name = inp.name
        self.input_shape = list(inp.shape)
        if len(self.input_shape) != 4:
            raise FaceDistillError(
                f"{self.source}: expected a 4-D NCHW image input, got input shape {self.input_shape}"
            )
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        out = self.session.get_outputs()[0]
        self.output_name = out.name
        if out.shape is not None and len(out.shape) != 2:
            raise FaceDistillError(
                f"{self.source}: the model's output {out.name!r} has shape {out.shape}; an embedding model "
                f"must output (batch, dim)"
            )

        batch_dim = self.input_shape[0]
        self.fixed_batch: int | None = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        self.batch_size = self.fixed_batch or int(batch_size)
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")

        c, h, w = self.input_shape[1:]
        if preprocess is None:
            meta = dict(self.session.get_modelmeta().custom_metadata_map or {})
            if "input_size" not in meta and isinstance(h, int) and h == w:
                meta["input_size"] = str(h)  # no metadata: the graph's own (square) size
            preprocess = Preprocessing.from_metadata(meta, source=self.source)
        self.preprocess = preprocess

        if isinstance(c, int) and c != 3:
            raise FaceDistillError(f"{self.source}: expected 3 input channels (NCHW), the model has {c}")
        self.model_hw: tuple[int | None, int | None] = (
            h if isinstance(h, int) else None,
            w if isinstance(w, int) else None,
        )
        for dim in self.model_hw:
            if dim is not None and dim != preprocess.input_size:
                raise FaceDistillError(
                    f"{self.source}: the graph's input is {h}x{w} but its preprocessing says input_size "
                    f"{preprocess.input_size}"
                )

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = check_images(images)
        ih, iw = images.shape[1:3]
        mh, mw = self.model_hw
        if (mh is not None and mh != ih) or (mw is not None and mw != iw) or ih != self.preprocess.input_size \
                or iw != self.preprocess.input_size:
            want = f"{mh or self.preprocess.input_size}x{mw or self.preprocess.input_size}"
            raise FaceDistillError(f"{self.source}: the model takes {want} images but got {ih}x{iw} images")
        outs: list[np.ndarray] = []
        n = images.shape[0]
        for i in range(0, n, self.batch_size):
            x = self.preprocess.apply(images[i : i + self.batch_size])
            count = x.shape[0]
            if self.fixed_batch is not None and count < self.fixed_batch:
                pad = np.zeros((self.fixed_batch - count,) + x.shape[1:], dtype=x.dtype)
                x = np.concatenate([x, pad], axis=0)
            y = self.session.run([self.output_name], {self.input_name: x.astype(self.input_dtype, copy=False)})[0]
            outs.append(_as_2d(np.asarray(y), self.source)[:count])
        if not outs:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(outs, axis=0)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (computed in float64, rows of norm 0 stay 0), returned as float32."""
    x64 = np.asarray(x, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x64, x64))
    norms[norms == 0.0] = 1.0
    return (x64 / norms[:, None]).astype(np.float32)


def embed_images(
    embedder: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray | Sequence[np.ndarray],
    flip: bool = True,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """insightface-style embeddings: ``f(x) + f(hflip(x))`` (raw sum), then L2-normalised.

    ``images``: uint8 (N, H, W, 3) RGB (an array or anything indexable by slices, e.g. a memmap).
    Works through ``batch_size`` images at a time so memory stays bounded; ``progress(n_done)`` is
    called after each batch. Returns float32 (N, D).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    n = len(images)
    out: np.ndarray | None = None
    for start in range(0, n, batch_size):
        chunk = check_images(np.asarray(images[start : start + batch_size]))
        emb = np.asarray(embedder(chunk), dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != chunk.shape[0]:
            raise FaceDistillError(
                f"the embedder returned shape {emb.shape} for {chunk.shape[0]} images; expected (N, D)"
            )
        if flip:
            flipped = np.ascontiguousarray(chunk[:, :, ::-1, :])
            emb = emb + np.asarray(embedder(flipped), dtype=np.float32)
        if out is None:
            out = np.empty((n, emb.shape[1]), dtype=np.float32)
        out[start : start + chunk.shape[0]] = l2_normalise(emb)
        if progress is not None:
            progress(min(start + chunk.shape[0], n))
    if out is None:
        return np.zeros((0, 0), dtype=np.float32)
    return out
