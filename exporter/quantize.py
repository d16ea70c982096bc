"""Symmetric block quantization in the layout of onnxruntime's MatMulNBits / GatherBlockQuantized.

A weight [N, K] is cut into blocks of `block_size` along K. Each block gets one float scale; values are stored as
unsigned integers with the implicit zero point 2^(bits-1) (8 for int4, 128 for int8), so no zero-point tensor is
needed. int4 packs two values per byte, the even element in the low nibble.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np

from .errors import OptionError

PIECE_VALUES = 1 << 18  # rows quantized together: ~1 MiB of float32, so that the temporaries stay in cache

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
    Rows are independent: they go in pieces of ~PIECE_VALUES values over a thread per core (numpy releases the GIL),
    the same bytes as all at once (E2B's gate·up weight: 7× faster on 2 cores, BENCHMARKS.md).
    """
    n, k = w.shape
    if bits not in (4, 8):
        raise ValueError(f"bits={bits}")
    q = np.empty((n, k // block_size, block_size * bits // 8), np.uint8)
    scales = np.empty((n, k // block_size), scale_dtype)
    rows = max(1, PIECE_VALUES // k)

    def piece(start: int) -> None:
        q[start:start + rows], scales[start:start + rows] = _quantize_rows(w[start:start + rows], bits, block_size, scale_dtype)

    list(_pool().map(piece, range(0, n, rows)))
    return q, scales


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="quantize")


def _quantize_rows(w: np.ndarray, bits: int, block_size: int, scale_dtype) -> tuple[np.ndarray, np.ndarray]:
    n, k = w.shape
    blocks = w.reshape(n, k // block_size, block_size)
    if bits == 4:
        # Map the largest-magnitude value to -8 so the full [-8, 7] range is used (as llama.cpp's Q4_0 does),
        # then try slightly smaller scales, which clip that value but round the others finer: keep the best.
        idx = np.abs(blocks).argmax(axis=-1)[..., None]
        scales = _best_scale(blocks, np.take_along_axis(blocks, idx, axis=-1)[..., 0] / -8.0, scale_dtype)
        lo, hi = -8, 7
    else:
        scales = (np.abs(blocks).max(axis=-1) / 127.0).astype(np.float32)
        lo, hi = -127, 127
    scales = scales.astype(scale_dtype)
    safe = np.where(scales == 0, 1.0, scales.astype(np.float32))[..., None]
    q = (np.clip(np.rint(blocks / safe), lo, hi) + (1 << (bits - 1))).astype(np.uint8)
    if bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return q, scales


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
