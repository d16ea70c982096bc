"""Linear-layer factories, injected into the components: float MatMul or block-quantized MatMulNBits.

A checkpoint Linear weight is [N, K] (out, in). Weights larger than `max_bytes` (the shard size, at most WebGPU's
default 128 MiB binding limit) are split along N into parts whose outputs are concatenated.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..quantize import check_block, quantize
from ..weights import Weights
from .builder import MS_DOMAIN, GraphBuilder


def _parts(n: int, row_bytes: int, max_bytes: int) -> list[tuple[int, int]]:
    """Row ranges [a, b) of at most max_bytes each, as equal as possible."""
    count = max(1, -(-n * row_bytes // max_bytes))
    bounds = np.linspace(0, n, count + 1).astype(int)
    return list(zip(bounds[:-1], bounds[1:]))


class FloatLinear:
    """y = x @ W.T with W stored transposed ([K, N]) in float32 or float16 (cast to float32 in the graph)."""

    def __init__(self, weights: Weights, dtype, max_bytes: int):
        self.weights, self.dtype, self.max_bytes = weights, np.dtype(dtype), max_bytes

    def __call__(self, g: GraphBuilder, x: str, name: str, n: int, k: int) -> str:
        outs = []
        parts = _parts(n, k * self.dtype.itemsize, self.max_bytes)
        for i, (a, b) in enumerate(parts):
            suffix = f".part{i}" if len(parts) > 1 else ""
            w = g.weight(f"{name}{suffix}.T", self.dtype, (k, b - a), lambda a=a, b=b: self._read(name)[a:b].T.astype(self.dtype))
            if self.dtype != np.float32:
                w = g.op("Cast", [w], to=1, name=f"Cast{suffix}")
            outs.append(g.op("MatMul", [x, w], name=f"MatMul{suffix}"))
        return outs[0] if len(outs) == 1 else g.op("Concat", outs, axis=-1)

    @lru_cache(maxsize=1)
    def _read(self, name: str) -> np.ndarray:
        return self.weights.read(name)


class NBitsLinear:
    """y = MatMulNBits(x, B, scales): symmetric block quantization, implicit zero point."""

    def __init__(self, weights: Weights, bits: int, block_size: int, max_bytes: int):
        self.weights, self.bits, self.block_size, self.max_bytes = weights, bits, block_size, max_bytes

    def __call__(self, g: GraphBuilder, x: str, name: str, n: int, k: int) -> str:
        check_block(name, k, self.block_size)
        nb = k // self.block_size
        row = nb * self.block_size * self.bits // 8
        outs = []
        parts = _parts(n, row, self.max_bytes)
        for i, (a, b) in enumerate(parts):
            suffix = f".part{i}" if len(parts) > 1 else ""
            q = g.weight(f"{name}{suffix}.qweight", np.uint8, (b - a, nb, row // nb), lambda a=a, b=b: self._quantized(name)[0][a:b])
            s = g.weight(f"{name}{suffix}.scales", np.float32, (b - a, nb), lambda a=a, b=b: self._quantized(name)[1][a:b])
            outs.append(
                g.op("MatMulNBits", [x, q, s], domain=MS_DOMAIN, name=f"MatMulNBits{suffix}", K=k, N=b - a, bits=self.bits, block_size=self.block_size)
            )
        return outs[0] if len(outs) == 1 else g.op("Concat", outs, axis=-1)

    @lru_cache(maxsize=1)
    def _quantized(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return quantize(self.weights.read(name), self.bits, self.block_size)
