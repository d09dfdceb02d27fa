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


OPTIMIZE_MODES = ("auto", "jit", "channels_last", "none")


class TorchEmbedder:
    """Embed with a torch module (eval mode, ``torch.inference_mode``, in batches).

    Why the options: on CPU, eager PyTorch with contiguous (NCHW) tensors runs a MobileFaceNet
    several times slower than onnxruntime. ``optimize``:

    * ``auto`` (default): ``jit`` on CPU, ``channels_last`` elsewhere;
    * ``jit``: trace the model once per weight state, freeze it and let
      ``torch.jit.optimize_for_inference`` fold BatchNorm into the convolutions (oneDNN kernels).
      The traced copy is checked against the eager model on the first images of each rebuild and
      dropped (back to ``channels_last``) when it disagrees or cannot be traced; ``fallback_reason``
      says why. It is rebuilt when any parameter or buffer changes (tensor version counters), so a
      model that keeps training between calls is never embedded with stale weights;
    * ``channels_last``: NHWC activations (the uint8 NHWC input maps to it without a copy);
    * ``none``: the model as given (contiguous NCHW), the historical behaviour.

    On CPU it also keeps freed memory in the process (``facedistill.utils.memory``): without that,
    glibc returns the activation buffers to the kernel after every batch and half the CPU time goes
    to page faults.

    The caller's model is left as it was: memory format, train/eval mode and weights.
    """

    def __init__(self, model: Any, preprocess: Preprocessing | None = None, device: str = "cpu", batch_size: int = 64,
                 optimize: str = "auto"):
        import torch

        self._torch = torch
        self.model = model
        self.preprocess = preprocess or Preprocessing()
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if optimize not in OPTIMIZE_MODES:
            raise ValueError(f"optimize must be one of {', '.join(OPTIMIZE_MODES)}, got {optimize!r}")
        if optimize == "auto":
            optimize = "jit" if self.device.type == "cpu" else "channels_last"
        if self.device.type == "cpu":
            from facedistill.utils.memory import keep_freed_memory

            keep_freed_memory()  # otherwise every batch page-faults its activations in again (system time)
        self.optimize = optimize
        self.fallback_reason: str | None = None
        self._compiled: Any = None
        self._compiled_key: tuple | None = None
        self._cl_model: Any = None
        self._cl_key: tuple | None = None
        self._stats: tuple[Any, Any] | None = None

    # -- input ---------------------------------------------------------------------------------
    def _to_input(self, images: np.ndarray, channels_last: bool) -> Any:
        """uint8 NHWC -> normalised float NCHW on the device; NHWC memory is already channels_last."""
        torch = self._torch
        pre = self.preprocess
        h, w = images.shape[1:3]
        if (h, w) != (pre.input_size, pre.input_size):
            from facedistill.errors import DataError

            raise DataError(f"images are {h}x{w} but the model expects {pre.input_size}x{pre.input_size}")
        if self._stats is None:
            mean = torch.tensor(pre.mean, dtype=torch.float32).reshape(-1, 1, 1) if isinstance(pre.mean, tuple) \
                else torch.tensor(float(pre.mean))
            std = torch.tensor(pre.std, dtype=torch.float32).reshape(-1, 1, 1) if isinstance(pre.std, tuple) \
                else torch.tensor(float(pre.std))
            self._stats = (mean.to(self.device), std.to(self.device))
        # a C-contiguous, writable array: memmap slices and flipped views are copied (cheap next to the model)
        x = torch.from_numpy(np.require(images, requirements=["C", "W"])).to(self.device).permute(0, 3, 1, 2)
        if pre.bgr:
            x = x.flip(1)
        mean, std = self._stats
        x = (x.float() - mean) / std
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    # -- model variants ------------------------------------------------------------------------
    def _state_key(self) -> tuple:
        return tuple((id(t), t._version) for t in list(self.model.parameters()) + list(self.model.buffers()))

    def _channels_last_model(self, key: tuple) -> Any:
        """An eval-mode channels_last copy of the model (the caller's stays untouched)."""
        import copy

        if self._cl_model is None or self._cl_key != key:
            m = copy.deepcopy(self.model).eval()
            self._cl_model = m.to(memory_format=self._torch.channels_last)
            self._cl_key = key
        return self._cl_model

    def _jit_model(self, key: tuple, sample: np.ndarray) -> Any:
        torch = self._torch
        if self._compiled is not None and self._compiled_key == key:
            return self._compiled
        self._compiled = None
        eager = self._channels_last_model(key)
        x = self._to_input(sample[: min(len(sample), 8)], channels_last=True)
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(eager, x, check_trace=False)
                frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
            with torch.inference_mode():
                want = _first_output(eager(x)).float()
                got = _first_output(frozen(x)).float()
                # the traced graph must also accept another batch size (the last, partial batch)
                if len(x) > 1:
                    got1 = _first_output(frozen(x[:1])).float()
                    if not torch.allclose(got1, got[:1], rtol=1e-3, atol=1e-3 * float(got.abs().max())):
                        raise RuntimeError("the traced model depends on the batch size")
            tol = 1e-3 * max(1.0, float(want.norm(dim=1).max()))
            if got.shape != want.shape or float((got - want).abs().max()) > tol:
                raise RuntimeError(f"the optimised model differs from eager by {float((got - want).abs().max()):.3g}")
        except Exception as e:  # noqa: BLE001 - any tracing problem means: run eager
            self.fallback_reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
            self.optimize = "channels_last"
            return eager
        self._compiled, self._compiled_key = frozen, key
        return frozen

    def __call__(self, images: np.ndarray) -> np.ndarray:
        torch = self._torch
        images = check_images(images)
        if images.shape[0] == 0:
            return np.zeros((0, 0), dtype=np.float32)
        if self.optimize == "none":
            was_training = self.model.training
            self.model.eval()
            run, channels_last = self.model, False
        else:
            key = self._state_key()
            run = self._jit_model(key, images) if self.optimize == "jit" else self._channels_last_model(key)
            channels_last = True
        outs: list[np.ndarray] = []
        try:
            with torch.inference_mode():
                for i in range(0, images.shape[0], self.batch_size):
                    y = _first_output(run(self._to_input(images[i: i + self.batch_size], channels_last)))
                    outs.append(_as_2d(y.detach().float().cpu().numpy(), type(self.model).__name__))
        finally:
            if self.optimize == "none" and was_training:
                self.model.train()
        return np.concatenate(outs, axis=0)


def _first_output(y: Any) -> Any:
    return y[0] if isinstance(y, (tuple, list)) else y


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
