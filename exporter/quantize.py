"""Symmetric block quantization in the layout of onnxruntime's MatMulNBits / GatherBlockQuantized.

A weight [N, K] is cut into blocks of `block_size` along K. Each block gets one float scale; values are stored as
unsigned integers with the implicit zero point 2^(bits-1) (8 for int4, 128 for int8), so no zero-point tensor is
needed. int4 packs two values per byte, the even element in the low nibble.
"""

from __future__ import annotations

import numpy as np

from .errors import OptionError

WEIGHT_FORMATS = ("int4", "int8", "fp16", "fp32")


def bits_of(fmt: str) -> int | None:
    return {"int4": 4, "int8": 8}.get(fmt)


def check_block(name: str, k: int, block_size: int) -> None:
    if k % block_size:
        raise OptionError(
            f"{name}: its input size {k} is not a multiple of --block-size {block_size}; use a block size that divides it"
        )


def quantize(w: np.ndarray, bits: int, block_size: int, scale_dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """[N, K] float32 → (uint8 [N, K/block, block*bits/8], scales [N, K/block] in `scale_dtype`).

    Values are rounded against the stored (possibly float16) scale, so dequantization uses exactly what was stored.
    """
    n, k = w.shape
    blocks = w.reshape(n, k // block_size, block_size)
    if bits == 4:
        # Map the largest-magnitude value to -8 so the full [-8, 7] range is used (as llama.cpp's Q4_0 does),
        # then try slightly smaller scales, which clip that value but round the others finer: keep the best.
        idx = np.abs(blocks).argmax(axis=-1)[..., None]
        scales = _best_scale(blocks, np.take_along_axis(blocks, idx, axis=-1)[..., 0] / -8.0, scale_dtype)
        lo, hi = -8, 7
    elif bits == 8:
        scales = (np.abs(blocks).max(axis=-1) / 127.0).astype(np.float32)
        lo, hi = -127, 127
    else:
        raise ValueError(f"bits={bits}")
    scales = scales.astype(scale_dtype)
    safe = np.where(scales == 0, 1.0, scales.astype(np.float32))[..., None]
    q = (np.clip(np.rint(blocks / safe), lo, hi) + (1 << (bits - 1))).astype(np.uint8)
    if bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return np.ascontiguousarray(q), scales


_INT4_SCALE_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8)


def _best_scale(blocks: np.ndarray, full: np.ndarray, scale_dtype) -> np.ndarray:
    """Per block, the scale among `full × ratio` with the least squared rounding error (as stored)."""
    best, best_error = None, None
    for ratio in _INT4_SCALE_RATIOS:
        scale = (full * ratio).astype(scale_dtype).astype(np.float32)
        safe = np.where(scale == 0, 1.0, scale)[..., None]
        error = np.square(np.clip(np.rint(blocks / safe), -8, 7) * safe - blocks).sum(axis=-1)
        if best is None:
            best, best_error = scale, error
        else:
            better = error < best_error
            best, best_error = np.where(better, scale, best), np.where(better, error, best_error)
    return best


def dequantize(q: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    """The inverse of `quantize`, for tests and the per-layer table checks."""
    if bits == 4:
        q = np.stack([q & 0x0F, q >> 4], axis=-1).reshape(*q.shape[:-1], q.shape[-1] * 2)
    values = (q.astype(np.float32) - (1 << (bits - 1))) * scales[..., None]
    return values.reshape(q.shape[0], -1)


def require_format(fmt: str) -> None:
    if fmt not in WEIGHT_FORMATS:
        raise OptionError(f"--quant {fmt!r} is not supported; choose one of {', '.join(WEIGHT_FORMATS)}")
