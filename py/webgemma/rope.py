"""RoPE cos/sin tables for a chunk's absolute positions, fed to the graph (GPU trig loses accuracy at large angles)."""

from __future__ import annotations

import numpy as np


def rope_tables(inv_freq: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[S] positions → (cos, sin) [S, head_dim/2] float32, the angle rounded to float32 first as transformers does."""
    angles = positions.astype(np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    return np.cos(angles), np.sin(angles)


class RopeRows:
    """`rope_tables` of positions 0, 1, 2, ... each computed once and kept: in Pyodide numpy's cos and sin took 12-15
    ms for a 1,024-token chunk of E2B's two tables on an H200 host (BENCHMARKS.md), slicing kept rows nothing (E2B
    keeps 3 KB a position)."""

    def __init__(self, inv_freq: np.ndarray):
        self.inv_freq = inv_freq
        self.cos = self.sin = np.zeros((0, len(inv_freq)), np.float32)
        self.count = 0  # rows computed; the arrays have room for more

    def rows(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(cos, sin) of positions start .. start + count - 1."""
        end = start + count
        if end > self.count:
            if end > len(self.cos):  # room doubles: a token at a time costs no copy of the whole table
                room = np.empty((max(end, 2 * len(self.cos)) - self.count, len(self.inv_freq)), np.float32)
                self.cos, self.sin = (np.concatenate([t[:self.count], room]) for t in (self.cos, self.sin))
            self.cos[self.count:end], self.sin[self.count:end] = rope_tables(self.inv_freq, np.arange(self.count, end))
            self.count = end
        return self.cos[start:end], self.sin[start:end]
