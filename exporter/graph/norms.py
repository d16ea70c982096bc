"""RMSNorm as onnxruntime's fused kernels: x * rsqrt(mean(x²) + eps) * w, in float32, no `1 + w` offset."""

from __future__ import annotations

import numpy as np

from .builder import MS_DOMAIN, GraphBuilder


def rms_norm(g: GraphBuilder, x: str, weight: str, eps: float) -> str:
    return g.op("SimplifiedLayerNormalization", [x, weight], axis=-1, epsilon=eps, stash_type=1)


def add_rms_norm(g: GraphBuilder, x: str, residual: str, weight: str, eps: float) -> tuple[str, str]:
    """(rms_norm(x + residual), x + residual) in one kernel."""
    normed, _, _, total = g.op("SkipSimplifiedLayerNormalization", [x, residual, weight], ["*", "", "", "*"], domain=MS_DOMAIN, epsilon=eps)
    return normed, total


def head_rms_norm(g: GraphBuilder, x: str, weight: str | None, heads: int, head_dim: int, eps: float) -> str:
    """RMSNorm over each head of [1, S, heads*head_dim]; `weight` None is the unscaled norm (Gemma's v_norm)."""
    if weight is None:
        weight = g.const(np.ones(head_dim, np.float32), np.float32)
    split = g.op("Reshape", [x, g.const([0, 0, heads, head_dim])])
    return g.op("Reshape", [rms_norm(g, split, weight, eps), g.const([0, 0, heads * head_dim])])
