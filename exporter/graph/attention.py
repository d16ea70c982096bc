"""Gemma 4 self-attention as plain operators (MatMul, Softmax), in both graphs.

    q = rope(q_norm(q_proj x))        k = rope(k_norm(k_proj x))        v = v_norm(v_proj x)   (norms per head)
    out = o_proj(softmax(q kᵀ · 1.0 + causal/window mask) v)

RoPE uses cos/sin tables for the chunk's absolute positions (computed by the runtime in float64), because a
sliding layer's cache is capped at the window and positions cannot be derived from its length.

The prefill graph appends the chunk's keys and values to the layer's cache (its present) and attends over it with
an additive mask built once per layer type from the positions of the queries and the keys (decoder.py). A KV-shared
layer attends over its source layer's present at the last position only, which sees every key there. Not
onnxruntime's GroupQueryAttention: on the WebGPU EP its prefill took 1.3 ms (head 256) and 4.6 ms (head 512) for a
512-token chunk on an H100, ~10× what MatMul and Softmax take, and its flash-attention path is wrong on SwiftShader
(BENCHMARKS.md, thirteenth session).

The step graph (one token, fixed caches, replayed under graph capture) attends over the fixed cache with an
additive mask input (0 for a slot holding a visible position, -1e9 otherwise) plus the token's own key, and returns
the new key/value row, which the runtime writes into its slot afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .builder import MS_DOMAIN
from .context import Context
from .norms import head_rms_norm, rms_norm


@dataclass(frozen=True)
class Rope:
    cos: str  # [S, head_dim/2]
    sin: str


def rotary(ctx: Context, x: str, rope: Rope, heads: int) -> str:
    """Rotate-half RoPE over whole heads (proportional RoPE's unrotated dims have cos 1, sin 0 in the tables)."""
    start = ctx.g.const([0])  # the tables hold exactly the chunk's positions, row 0 first
    return ctx.g.op("RotaryEmbedding", [x, start, rope.cos, rope.sin], domain=MS_DOMAIN, num_heads=heads, interleaved=0)


def self_attention(ctx: Context, x: str, layer: int, rope: Rope, mask: str | None, past: tuple[str, ...],
                   shared: bool, step: bool) -> tuple[str, str, str]:
    """Returns (attention output after o_proj, present key, present value).

    Prefill graph: `past` is the layer's cache, or for a KV-shared layer its source layer's present as `kv_views`
    (the last position sees all of those keys: `mask` None); `mask` is [chunk, keys]. Step graph: `past` is the
    layer's fixed cache, or for a KV-shared layer the source layer's (cache key, cache value, new key row, new value
    row); `mask` is [1, slots]; the presents are the new rows.
    """
    a, g = ctx.arch, ctx.g
    kind = a.layer_types[layer]
    d, heads, kv_heads, hidden = a.head_dim[kind], a.num_heads, a.num_kv_heads[kind], a.hidden_size
    p = f"layers.{layer}.self_attn."
    with g.scope("self_attn"):
        q = ctx.linear_layer(x, p + "q_proj.weight", heads * d, hidden)
        q = rotary(ctx, head_rms_norm(g, q, ctx.small(p + "q_norm.weight", (d,)), heads, d, a.rms_norm_eps), rope, heads)
        if step and shared:
            past, (k, v) = past[:2], past[2:]
        elif step:
            # the rows are computed as [1, kv, 1, d] by the norm and RoPE kernels themselves: a graph output made by
            # a Reshape is copied into its bound buffer outside the captured commands, so replays would not update it
            rows = g.const([1, kv_heads, 1, d])
            k = g.op("Reshape", [ctx.linear_layer(x, p + "k_proj.weight", kv_heads * d, hidden), rows])
            k = rotary(ctx, rms_norm(g, k, ctx.small(p + "k_norm.weight", (d,)), a.rms_norm_eps), rope, kv_heads)
            v = g.op("Reshape", [ctx.linear_layer(x, p + "v_proj.weight", kv_heads * d, hidden), rows])
            v = rms_norm(g, v, g.const(np.ones(d, np.float32), np.float32), a.rms_norm_eps)
        elif not shared:
            k = ctx.linear_layer(x, p + "k_proj.weight", kv_heads * d, hidden)
            k = rotary(ctx, head_rms_norm(g, k, ctx.small(p + "k_norm.weight", (d,)), kv_heads, d, a.rms_norm_eps), rope, kv_heads)
            v = head_rms_norm(g, ctx.linear_layer(x, p + "v_proj.weight", kv_heads * d, hidden), None, kv_heads, d, a.rms_norm_eps)
        if step:
            out = _attend_fixed_cache(g, q, k, v, past, mask, heads, kv_heads, d)
            present_k, present_v = k, v
        elif shared:  # the last position only
            present_k, present_v = past
            out = _attend(g, q, *past, None, heads, kv_heads, d, one_row=True)
        else:
            present_k, present_v = (_append(g, cached, new, kv_heads, d) for cached, new in zip(past, (k, v)))
            out = _attend(g, q, *kv_views(g, present_k, present_v, kv_heads, d), mask, heads, kv_heads, d)
        out = ctx.linear_layer(out, p + "o_proj.weight", hidden, heads * d)
    return out, present_k, present_v


def _append(g, cache: str, rows: str, kv_heads: int, d: int) -> str:
    """The cache [1, kv, T, d] with the chunk's rows [1, S, kv·d] after its own: [1, kv, T + S, d]. (Each node
    costs the page's session creation time, so none that only moves data where a reshape does.)"""
    rows = g.op("Reshape", [rows, g.const([1, -1, kv_heads, d] if kv_heads > 1 else [1, 1, -1, d])])
    if kv_heads > 1:
        rows = g.op("Transpose", [rows], perm=[0, 2, 1, 3])
    return g.op("Concat", [cache, rows], axis=2)


def kv_views(g, keys: str, values: str, kv_heads: int, d: int) -> tuple[str, str]:
    """A present's keys [1, kv, T, d] as [kv, 1, d, T] and values as [kv, 1, T, d]: `_attend`'s operands."""
    if kv_heads > 1:
        per_kv = g.const([kv_heads, 1, -1, d])
        keys, values = (g.op("Reshape", [t, per_kv]) for t in (keys, values))
    return g.op("Transpose", [keys], perm=[0, 1, 3, 2]), values


def _attend(g, q: str, keys_t: str, values: str, mask: str | None, heads: int, kv_heads: int, d: int,
            one_row: bool = False) -> str:
    """softmax(q Kᵀ + mask) V for a chunk's queries q [1, S, heads·d] over `kv_views`; mask [S, T] (0 or ≤ -1e9) or
    None: every key visible. Batched over [kv, heads per kv] by MatMul's broadcasting. one_row: S is 1."""
    n = heads // kv_heads
    if one_row:
        q4 = g.op("Reshape", [q, g.const([kv_heads, n, 1, d])])
    else:
        q4 = g.op("Transpose", [g.op("Reshape", [q, g.const([-1, kv_heads, n, d])])], perm=[1, 2, 0, 3])  # [kv, n, S, d]
    scores = g.op("MatMul", [q4, keys_t])  # [kv, n, S, T]
    if mask is not None:
        scores = g.op("Add", [scores, mask])
    out = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), values])  # [kv, n, S, d]
    if not one_row:
        out = g.op("Transpose", [out], perm=[2, 0, 1, 3])
    return g.op("Reshape", [out, g.const([1, -1, heads * d])])


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
