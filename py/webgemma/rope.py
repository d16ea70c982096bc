"""RoPE cos/sin tables for a chunk's absolute positions, fed to the graph (GPU trig loses accuracy at large angles)."""

from __future__ import annotations

import numpy as np


def rope_tables(inv_freq: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[S] positions → (cos, sin) [S, head_dim/2] float32, the angle rounded to float32 first as transformers does."""
    angles = positions.astype(np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    return np.cos(angles), np.sin(angles)


ROPE_BLOCK = 1024  # positions a block of kept rows holds


class RopeRows:
    """`rope_tables` of positions 0, 1, 2, ... each computed once and kept: in Pyodide numpy's cos and sin took 12-15
    ms for a 1,024-token chunk of E2B's two tables on an H200 host (BENCHMARKS.md), slicing kept rows nothing (E2B
    keeps 3 KB a position). Kept in blocks of ROPE_BLOCK positions: a table that grew by copying itself into one
    twice as large cost the decode's first step past 4,096 tokens ~15 ms (BENCHMARKS.md, seventeenth session)."""

    def __init__(self, inv_freq: np.ndarray):
        self.inv_freq = inv_freq
        self.blocks: list[tuple[np.ndarray, np.ndarray]] = []  # (cos, sin) [ROPE_BLOCK, head_dim/2] each
        self.count = 0  # rows computed

    def rows(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(cos, sin) of positions start .. start + count - 1 (count ≥ 1): views of the kept rows within a block,
        else copies."""
        end = start + count
        while self.count < end:
            block, at = divmod(self.count, ROPE_BLOCK)
            if block == len(self.blocks):
                self.blocks.append(tuple(np.empty((ROPE_BLOCK, len(self.inv_freq)), np.float32) for _ in range(2)))
            stop = min(end, (block + 1) * ROPE_BLOCK)
            cos, sin = self.blocks[block]
            cos[at:at + stop - self.count], sin[at:at + stop - self.count] = rope_tables(
                self.inv_freq, np.arange(self.count, stop))
            self.count = stop
        pieces = [tuple(t[max(start - b * ROPE_BLOCK, 0):end - b * ROPE_BLOCK] for t in self.blocks[b])
                  for b in range(start // ROPE_BLOCK, -(-end // ROPE_BLOCK))]
        return pieces[0] if len(pieces) == 1 else tuple(np.concatenate(p) for p in zip(*pieces))
