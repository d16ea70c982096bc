"""RoPE cos/sin tables for a chunk's absolute positions, fed to the graph (GPU trig loses accuracy at large angles)."""

from __future__ import annotations

import numpy as np


def rope_tables(inv_freq: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[S] positions → (cos, sin) [S, head_dim/2] float32, the angle rounded to float32 first as transformers does."""
    angles = positions.astype(np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    return np.cos(angles), np.sin(angles)
