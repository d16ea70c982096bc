"""Gemma 4 self-attention on onnxruntime's GroupQueryAttention.

    q = rope(q_norm(q_proj x))        k = rope(k_norm(k_proj x))        v = v_norm(v_proj x)   (norms per head)
    out = o_proj(softmax(q kᵀ · 1.0 + causal/window mask) v)

RoPE is applied outside GQA with cos/sin tables for the chunk's absolute positions (computed by the runtime in
float64), because a sliding layer's cache is capped at the window and GQA would derive positions from its length.
A KV-shared layer brings no keys of its own: it runs GQA with zero-length new K/V over its source layer's cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import SLIDING
from .builder import MS_DOMAIN
from .context import Context
from .norms import head_rms_norm


@dataclass(frozen=True)
class Rope:
    cos: str  # [S, head_dim/2]
    sin: str


@dataclass(frozen=True)
class KvLength:
    """GQA's view of the key sequence: seqlens_k = length - 1 ([1] int32), total_sequence_length (scalar int32)."""

    seqlens_k: str
    total: str


def rotary(ctx: Context, x: str, rope: Rope, heads: int) -> str:
    """Rotate-half RoPE over whole heads (proportional RoPE's unrotated dims have cos 1, sin 0 in the tables)."""
    start = ctx.g.const([0])  # the tables hold exactly the chunk's positions, row 0 first
    return ctx.g.op("RotaryEmbedding", [x, start, rope.cos, rope.sin], domain=MS_DOMAIN, num_heads=heads, interleaved=0)


def self_attention(ctx: Context, x: str, layer: int, rope: Rope, length: KvLength, past: tuple[str, str],
                   shared: bool, ring: bool = False) -> tuple[str, str, str]:
    """Returns (attention output after o_proj, present key, present value).

    For a cache-owning layer `past` is its own cache; for a KV-shared layer it is the source layer's present.
    ring: a sliding layer's cache holds exactly its window (the step graph's ring), so GQA must not cut it again.
    """
    a, g = ctx.arch, ctx.g
    kind = a.layer_types[layer]
    d, heads, kv_heads, hidden = a.head_dim[kind], a.num_heads, a.num_kv_heads[kind], a.hidden_size
    p = f"layers.{layer}.self_attn."
    with g.scope("self_attn"):
        q = ctx.linear_layer(x, p + "q_proj.weight", heads * d, hidden)
        q = rotary(ctx, head_rms_norm(g, q, ctx.small(p + "q_norm.weight", (d,)), heads, d, a.rms_norm_eps), rope, heads)
        if shared:
            k = v = g.const(np.zeros((1, 0, kv_heads * d), np.float32), np.float32)
        else:
            k = ctx.linear_layer(x, p + "k_proj.weight", kv_heads * d, hidden)
            k = rotary(ctx, head_rms_norm(g, k, ctx.small(p + "k_norm.weight", (d,)), kv_heads, d, a.rms_norm_eps), rope, kv_heads)
            v = head_rms_norm(g, ctx.linear_layer(x, p + "v_proj.weight", kv_heads * d, hidden), None, kv_heads, d, a.rms_norm_eps)
        # A shared sliding layer's past is already exactly the window, so only own sliding layers mask by window.
        window = a.sliding_window if kind == SLIDING and not shared and not ring else -1
        out, present_k, present_v = g.op(
            "GroupQueryAttention", [q, k, v, past[0], past[1], length.seqlens_k, length.total], 3, domain=MS_DOMAIN,
            num_heads=heads, kv_num_heads=kv_heads, scale=1.0, local_window_size=window,
        )
        out = ctx.linear_layer(out, p + "o_proj.weight", hidden, heads * d)
    return out, present_k, present_v
