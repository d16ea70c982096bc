"""The tied embedding: `embed_tokens` [V, H] stored once, read by the token lookup and by the lm_head.

Quantized, one packed buffer serves both: MatMulNBits reads it as [V, H/block, block*bits/8] and
GatherBlockQuantized reads a Reshape of it to [V, H*bits/8]. A full Gemma table (192 MiB at int4 for E2B) is
larger than a shard and than WebGPU's default 128 MiB binding, so it is cut along H into column chunks: every
chunk holds all V rows, so the lookup gathers each chunk with the same ids and concatenates, and the lm_head
sums the chunks' partial products (no index arithmetic, which WebGPU runs poorly on int64).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..quantize import check_block, quantize
from ..weights import Weights
from .builder import MS_DOMAIN, GraphBuilder

_ROWS_PER_READ = 16384  # rows of the checkpoint table read at once while quantizing a chunk


class TiedEmbedding:
    def __init__(self, g: GraphBuilder, weights: Weights, name: str, vocab: int, hidden: int, *, bits: int | None,
                 float_dtype, block_size: int, max_bytes: int):
        self.g, self.weights, self.name = g, weights, name
        self.vocab, self.hidden, self.bits, self.block_size = vocab, hidden, bits, block_size
        self.dtype = np.dtype(float_dtype)
        unit = block_size if bits else 1  # chunks are cut at block boundaries
        if bits:
            check_block(name, hidden, block_size)
        units = hidden // unit
        row_bytes = (hidden * bits // 8) if bits else hidden * self.dtype.itemsize
        self.chunks = next(c for c in range(1, units + 1) if units % c == 0 and vocab * row_bytes // c <= max_bytes)
        self.width = hidden // self.chunks
        self.tensors = [self._declare(c) for c in range(self.chunks)]

    def _declare(self, c: int) -> tuple[str, str | None]:
        suffix = f".chunk{c}" if self.chunks > 1 else ""
        if not self.bits:
            w = self.g.weight(f"{self.name}{suffix}", self.dtype, (self.vocab, self.width), lambda: self._chunk(c)[0])
            return w, None
        nb = self.width // self.block_size
        q = self.g.weight(f"{self.name}{suffix}.qweight", np.uint8, (self.vocab, nb, self.block_size * self.bits // 8), lambda: self._chunk(c)[0])
        s = self.g.weight(f"{self.name}{suffix}.scales", np.float32, (self.vocab, nb), lambda: self._chunk(c)[1])
        return q, s

    @lru_cache(maxsize=1)
    def _chunk(self, c: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Column chunk c of the table, quantized block of rows by block of rows (bounded memory)."""
        cols = slice(c * self.width, (c + 1) * self.width)
        if not self.bits:
            out = np.empty((self.vocab, self.width), self.dtype)
            for r in range(0, self.vocab, _ROWS_PER_READ):
                out[r : r + _ROWS_PER_READ] = self.weights.read_rows(self.name, r, min(r + _ROWS_PER_READ, self.vocab))[:, cols]
            return out, None
        nb = self.width // self.block_size
        q = np.empty((self.vocab, nb, self.block_size * self.bits // 8), np.uint8)
        s = np.empty((self.vocab, nb), np.float32)
        for r in range(0, self.vocab, _ROWS_PER_READ):
            stop = min(r + _ROWS_PER_READ, self.vocab)
            q[r:stop], s[r:stop] = quantize(np.ascontiguousarray(self.weights.read_rows(self.name, r, stop)[:, cols]), self.bits, self.block_size)
        return q, s

    def lookup(self, ids: str) -> str:
        """[1, S] int64 ids → [1, S, H] float32 rows (not yet scaled)."""
        g, parts = self.g, []
        for c, (w, s) in enumerate(self.tensors):
            with g.scope(f"chunk{c}"):
                if self.bits:
                    packed = g.op("Reshape", [w, g.const([self.vocab, self.width * self.bits // 8])])
                    parts.append(g.op("GatherBlockQuantized", [packed, ids, s], domain=MS_DOMAIN, bits=self.bits,
                                      block_size=self.block_size, gather_axis=0, quantize_axis=1))
                else:
                    table = w if self.dtype == np.float32 else g.op("Cast", [w], to=1)
                    parts.append(g.op("Gather", [table, ids], axis=0))
        return parts[0] if len(parts) == 1 else g.op("Concat", parts, axis=-1)

    def project(self, x: str) -> str:
        """[1, H] → [1, V]: x @ embed_tokens.T, the tied lm_head."""
        g = self.g
        xs = g.op("Split", [x, g.const([self.width] * self.chunks)], self.chunks, axis=-1) if self.chunks > 1 else [x]
        xs = [xs] if isinstance(xs, str) else xs
        partial = []
        for c, ((w, s), xc) in enumerate(zip(self.tensors, xs)):
            with g.scope(f"chunk{c}"):
                if self.bits:
                    partial.append(g.op("MatMulNBits", [xc, w, s], domain=MS_DOMAIN, K=self.width, N=self.vocab,
                                        bits=self.bits, block_size=self.block_size))
                else:
                    table = w if self.dtype == np.float32 else g.op("Cast", [w], to=1)
                    partial.append(g.op("Gemm", [xc, table], transB=1))
        out = partial[0]
        for p in partial[1:]:
            out = g.op("Add", [out, p])
        return out
