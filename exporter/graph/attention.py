"""Gemma 4 self-attention: onnxruntime's GroupQueryAttention in the prefill graph, plain operators in the step graph.

    q = rope(q_norm(q_proj x))        k = rope(k_norm(k_proj x))        v = v_norm(v_proj x)   (norms per head)
    out = o_proj(softmax(q kᵀ · 1.0 + causal/window mask) v)

RoPE is applied outside GQA with cos/sin tables for the chunk's absolute positions (computed by the runtime in
float64), because a sliding layer's cache is capped at the window and GQA would derive positions from its length.
A KV-shared layer brings no keys of its own: it runs GQA with zero-length new K/V over its source layer's cache.

The step graph (one token, fixed caches, replayed under graph capture) does not use GQA: under capture GQA
dispatches indirectly, and Chromium validates every indirect dispatch (3× the whole step, BENCHMARKS.md). It
attends over the fixed cache with an additive mask (0 for a slot holding a visible position, -1e9 otherwise) plus
the token's own key, and returns the new key/value row, which the runtime writes into its slot afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import SLIDING
from .builder import MS_DOMAIN
from .context import Context
from .norms import head_rms_norm, rms_norm


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


def self_attention(ctx: Context, x: str, layer: int, rope: Rope, view: KvLength | str, past: tuple[str, ...],
                   shared: bool) -> tuple[str, str, str]:
    """Returns (attention output after o_proj, present key, present value).

    Prefill graph (`view` a KvLength): `past` is the layer's cache, or for a KV-shared layer the source layer's
    present. Step graph (`view` the mask input's name): `past` is the layer's fixed cache, or for a KV-shared
    layer the source layer's (cache key, cache value, new key row, new value row); the presents are the new rows.
    """
    a, g = ctx.arch, ctx.g
    kind = a.layer_types[layer]
    d, heads, kv_heads, hidden = a.head_dim[kind], a.num_heads, a.num_kv_heads[kind], a.hidden_size
    p = f"layers.{layer}.self_attn."
    with g.scope("self_attn"):
        q = ctx.linear_layer(x, p + "q_proj.weight", heads * d, hidden)
        q = rotary(ctx, head_rms_norm(g, q, ctx.small(p + "q_norm.weight", (d,)), heads, d, a.rms_norm_eps), rope, heads)
        step = isinstance(view, str)
        if shared and step:
            past, (k, v) = past[:2], past[2:]
        elif shared:
            k = v = g.const(np.zeros((1, 0, kv_heads * d), np.float32), np.float32)
        elif step:
            # the rows are computed as [1, kv, 1, d] by the norm and RoPE kernels themselves: a graph output made by
            # a Reshape is copied into its bound buffer outside the captured commands, so replays would not update it
            rows = g.const([1, kv_heads, 1, d])
            k = g.op("Reshape", [ctx.linear_layer(x, p + "k_proj.weight", kv_heads * d, hidden), rows])
            k = rotary(ctx, rms_norm(g, k, ctx.small(p + "k_norm.weight", (d,)), a.rms_norm_eps), rope, kv_heads)
            v = g.op("Reshape", [ctx.linear_layer(x, p + "v_proj.weight", kv_heads * d, hidden), rows])
            v = rms_norm(g, v, g.const(np.ones(d, np.float32), np.float32), a.rms_norm_eps)
        else:
            k = ctx.linear_layer(x, p + "k_proj.weight", kv_heads * d, hidden)
            k = rotary(ctx, head_rms_norm(g, k, ctx.small(p + "k_norm.weight", (d,)), kv_heads, d, a.rms_norm_eps), rope, kv_heads)
            v = head_rms_norm(g, ctx.linear_layer(x, p + "v_proj.weight", kv_heads * d, hidden), None, kv_heads, d, a.rms_norm_eps)
        if step:
            out = _attend_fixed_cache(g, q, k, v, past, view, heads, kv_heads, d)
            present_k, present_v = k, v
        else:
            # A shared sliding layer's past is already exactly the window, so only own sliding layers mask by window.
            window = a.sliding_window if kind == SLIDING and not shared else -1
            out, present_k, present_v = g.op(
                "GroupQueryAttention", [q, k, v, past[0], past[1], view.seqlens_k, view.total], 3, domain=MS_DOMAIN,
                num_heads=heads, kv_num_heads=kv_heads, scale=1.0, local_window_size=window,
            )
        out = ctx.linear_layer(out, p + "o_proj.weight", hidden, heads * d)
    return out, present_k, present_v


def _attend_fixed_cache(g, q: str, k: str, v: str, cache: tuple[str, str], mask: str, heads: int, kv_heads: int,
                        d: int) -> str:
    """softmax([q·K_cacheᵀ + mask | q·k]) · [V_cache | v] for one token; q [1, 1, heads·d], k and v [1, kv, 1, d],
    caches [1, kv, slots, d], mask [1, slots]. One key/value head (E2B) takes Gemm with transB, no transpose."""
    n = heads // kv_heads
    q3 = g.op("Reshape", [q, g.const([kv_heads, n, d])])
    if kv_heads == 1:
        flat = g.const([-1, d])
        scores = g.op("Gemm", [g.op("Reshape", [q, g.const([heads, d])]), g.op("Reshape", [cache[0], flat])], transB=1)
        scores = g.op("Reshape", [scores, g.const([1, heads, -1])])
    else:
        keys = g.op("Reshape", [cache[0], g.const([kv_heads, -1, d])])
        scores = g.op("MatMul", [q3, g.op("Transpose", [keys], perm=[0, 2, 1])])
    own = g.op("ReduceSum", [g.op("Mul", [q3, g.op("Reshape", [k, g.const([kv_heads, 1, d])])]), g.const([-1])], keepdims=1)
    weights = g.op("Softmax", [g.op("Concat", [g.op("Add", [scores, mask]), own], axis=-1)], axis=-1)
    last = g.const([-1])
    cached = g.op("Slice", [weights, g.const([0]), last, last])
    if kv_heads == 1:
        out = g.op("Gemm", [g.op("Reshape", [cached, g.const([heads, -1])]), g.op("Reshape", [cache[1], g.const([-1, d])])])
        out = g.op("Reshape", [out, g.const([1, heads, d])])
    else:
        out = g.op("MatMul", [cached, g.op("Reshape", [cache[1], g.const([kv_heads, -1, d])])])
    own_value = g.op("Mul", [g.op("Slice", [weights, last, g.const([np.iinfo(np.int64).max]), last]),
                             g.op("Reshape", [v, g.const([kv_heads, 1, d])])])
    return g.op("Reshape", [g.op("Add", [out, own_value]), g.const([1, 1, heads * d])])
