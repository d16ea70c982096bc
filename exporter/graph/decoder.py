"""The whole Gemma 4 text decoder as one graph: one `run()` per prefill chunk or decoded token.

    h    = embed_tokens[ids] * sqrt(H)                                   (tied table, see embedding.py)
    ple  = per_layer_inputs(h, table rows)                               (see per_layer.py)
    layer i:
      h  = h + post_attention_layernorm(attn_i(input_layernorm(h)))
      h  = h + post_feedforward_layernorm(mlp_i(pre_feedforward_layernorm(h)))
      h  = per_layer_residual(h, ple_i) * layer_scalar_i
    logits = 30 * tanh(norm(h_last) @ embed_tokens.T / 30)

KV-shared layers write no cache and only their last position reaches the logits, so from the first shared layer
on the graph keeps only the last position (transformers does the same). Only cache-owning layers have cache
inputs/outputs; a sliding layer's cache output keeps the last `window` positions.

With `static_cache` the same decoder becomes the one-token step graph that onnxruntime's WebGPU graph capture
replays: every shape fixed, each cache a preallocated buffer the graph only reads, an additive mask per layer type
saying which slots hold visible positions, the new key/value rows as the presents (the runtime writes them into
their slots), only the top-k read back. A sliding layer's cache is a ring of `window` slots: keys are stored
rotated, so attention does not care which slot holds which position (webgemma.static_cache).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config import SLIDING
from ..weights import Weights
from .attention import Rope, kv_views, self_attention
from .builder import GraphBuilder
from .context import Context, Linear
from .embedding import TiedEmbedding
from .mlp import mlp
from .norms import add_rms_norm, rms_norm
from .per_layer import per_layer_inputs, per_layer_residual, split_per_layer, token_rows
from .top_k import top_k

TOP_K = 64  # Gemma's generation config samples from the 64 best tokens
_END = np.iinfo(np.int64).max


@dataclass
class DecoderIO:
    """Graph input/output names, written to the manifest so the runtime never guesses them."""

    top_k: dict = field(default_factory=dict)  # {"k", "values", "ids"}: the best logits, so a step reads 64, not 262k
    rope: dict[str, dict[str, str]] = field(default_factory=dict)  # layer type → {"cos", "sin"}
    # prefill graph: "query" → the chunk's positions input, layer type → its keys' positions input (the masks' sources)
    positions: dict[str, str] = field(default_factory=dict)
    cache: list[dict] = field(default_factory=list)
    masks: dict[str, str] = field(default_factory=dict)  # step graph: layer type → additive mask input [1, slots]


def build_decoder(arch, weights: Weights, linear: Linear, *, bits: int | None, float_dtype, block_size: int,
                  max_bytes: int, static_cache: bool = False) -> tuple[GraphBuilder, DecoderIO]:
    g = GraphBuilder("webgemma_gemma4_decoder_step" if static_cache else "webgemma_gemma4_decoder")
    ctx = Context(g, arch, weights, linear)
    io = DecoderIO()
    first_shared = arch.first_shared_layer

    ids = g.input("input_ids", np.int64, [1, 1 if static_cache else "sequence"])
    rows = token_rows(ctx, bits, block_size)
    embed = TiedEmbedding(g, weights, weights.claim("embed_tokens.weight", (arch.vocab_size, arch.hidden_size)),
                          arch.vocab_size, arch.hidden_size, bits=bits, float_dtype=float_dtype, block_size=block_size,
                          max_bytes=max_bytes)
    with g.scope("embed_tokens"):
        h = g.op("Mul", [embed.lookup(ids), g.const(np.float32(arch.hidden_size ** 0.5), np.float32)])
    ple = per_layer_inputs(ctx, h, rows)

    ropes = {t: _rope_inputs(g, io, t, arch.head_dim[t]) for t in sorted(set(arch.layer_types))}
    if static_cache:  # a shared layer sees its source's slots, so one mask per layer type
        masks = {t: _mask_input(g, io, t) for t in sorted(set(arch.layer_types))}
    else:  # for the layers that own a cache; a shared layer's last position sees all of its source's keys
        masks = _chunk_masks(g, io, arch, sorted(set(arch.layer_types[:first_shared])))

    ple_layers = split_per_layer(ctx, ple, range(0, arch.num_layers if static_cache else first_shared))
    cache_out: dict[int, tuple[str, ...]] = {}  # prefill: the presents; step: (caches..., new rows...)
    shared_views: dict[int, tuple[str, str]] = {}
    for i in range(arch.num_layers):
        kind, shared = arch.layer_types[i], i >= first_shared
        if i == first_shared and not static_cache:  # one position already in the step graph
            with g.scope("last_position"):
                h = _last(g, h, axis=1)
                ple_layers += split_per_layer(ctx, _last(g, ple, axis=1), range(first_shared, arch.num_layers))
                ropes = {t: Rope(_last(g, r.cos, 0), _last(g, r.sin, 0)) for t, r in ropes.items()}
        with g.scope(f"layers.{i}"):
            source = arch.kv_source[i]
            if not shared:
                past = _cache_inputs(g, io, arch, i)
            elif static_cache:
                past = cache_out[source]
            else:  # the source's present as attention operands, made once for all the layers sharing it
                if source not in shared_views:
                    shared_views[source] = kv_views(g, *cache_out[source], arch.num_kv_heads[kind], arch.head_dim[kind])
                past = shared_views[source]
            mask = None if shared and not static_cache else masks[kind]
            h, present = _decoder_layer(ctx, h, i, ropes[kind], mask, past, shared, static_cache, ple_layers[i])
            if not shared:
                rows = _cache_outputs(g, io, arch, i, present, step=static_cache)
                cache_out[i] = (*past, *rows) if static_cache else rows

    with g.scope("final"):
        if first_shared == arch.num_layers and not static_cache:
            h = _last(g, h, axis=1)
        h = rms_norm(g, h, ctx.small("norm.weight", (arch.hidden_size,)), arch.rms_norm_eps)
        logits = embed.project(g.op("Reshape", [h, g.const([1, arch.hidden_size])]))
        if arch.final_logit_softcapping:
            cap = g.const(np.float32(arch.final_logit_softcapping), np.float32)
            logits = g.op("Mul", [g.op("Tanh", [g.op("Div", [logits, cap])]), cap])
        # Greedy and top-k sampling need only the best candidates: found on the device, read back small.
        k = min(TOP_K, arch.vocab_size)
        values, ids = top_k(g, logits, arch.vocab_size, k)
    if not static_cache:  # the step graph reads back only the candidates
        g.output(logits, "logits", np.float32, [1, arch.vocab_size])
    io.top_k = {"k": k, "values": g.output(values, "top_logits", np.float32, [1, k]),
                "ids": g.output(ids, "top_ids", np.int64, [1, k])}
    return g, io


def _decoder_layer(ctx: Context, h: str, i: int, rope: Rope, mask: str | None, past, shared: bool, step: bool,
                   ple_i: str):
    a, g = ctx.arch, ctx.g
    pre, eps = f"layers.{i}.", a.rms_norm_eps
    x = rms_norm(g, h, ctx.small(pre + "input_layernorm.weight", (a.hidden_size,)), eps)
    attn, *present = self_attention(ctx, x, i, rope, mask, past, shared, step)
    attn = rms_norm(g, attn, ctx.small(pre + "post_attention_layernorm.weight", (a.hidden_size,)), eps)
    x, h = add_rms_norm(g, attn, h, ctx.small(pre + "pre_feedforward_layernorm.weight", (a.hidden_size,)), eps)
    y = rms_norm(g, mlp(ctx, x, i), ctx.small(pre + "post_feedforward_layernorm.weight", (a.hidden_size,)), eps)
    h = per_layer_residual(ctx, g.op("Add", [h, y]), ple_i, i)
    return g.op("Mul", [h, ctx.small(pre + "layer_scalar", (1,))]), present


def _last(g: GraphBuilder, x: str, axis: int) -> str:
    return g.op("Slice", [x, g.const([-1]), g.const([_END]), g.const([axis])])


def _rope_inputs(g: GraphBuilder, io: DecoderIO, kind: str, head_dim: int) -> Rope:
    names = {part: f"rope_{part}.{kind}" for part in ("cos", "sin")}
    for name in names.values():
        g.input(name, np.float32, ["sequence", head_dim // 2])
    io.rope[kind] = names
    return Rope(names["cos"], names["sin"])


def _chunk_masks(g: GraphBuilder, io: DecoderIO, arch, kinds: list[str]) -> dict[str, str]:
    """Additive masks [chunk, keys] per layer type, from the absolute positions of the chunk's tokens and of the
    type's keys (its cache's, then the chunk's; float32, exact): 0 where the key is visible (not after the query and,
    in a sliding layer, fewer than `sliding_window` positions before it), -1e9 or less elsewhere."""
    io.positions["query"] = g.input("positions", np.float32, ["sequence"])
    queries = g.op("Reshape", [io.positions["query"], g.const([-1, 1])])
    masks = {}
    for kind in kinds:
        io.positions[kind] = g.input(f"key_positions.{kind}", np.float32, [f"keys.{kind}"])
        ahead = g.op("Sub", [io.positions[kind], queries])  # > 0 for a key after its query
        hidden = g.op("Relu", [ahead])
        if kind == SLIDING:  # > 0 for a key `sliding_window` or more positions before its query
            too_old = g.op("Sub", [g.const(np.float32(1 - arch.sliding_window), np.float32), ahead])
            hidden = g.op("Add", [hidden, g.op("Relu", [too_old])])
        masks[kind] = g.op("Mul", [hidden, g.const(np.float32(-1e9), np.float32)])
    return masks


def _mask_input(g: GraphBuilder, io: DecoderIO, kind: str) -> str:
    io.masks[kind] = g.input(f"attn_mask.{kind}", np.float32, [1, f"slots.{kind}"])
    return io.masks[kind]


def _cache_inputs(g: GraphBuilder, io: DecoderIO, arch, i: int) -> tuple[str, str]:
    kind = arch.layer_types[i]
    shape = [1, arch.num_kv_heads[kind], f"past_sequence.{i}", arch.head_dim[kind]]
    return g.input(f"past_key_values.{i}.key", np.float32, shape), g.input(f"past_key_values.{i}.value", np.float32, shape)


def _cache_outputs(g: GraphBuilder, io: DecoderIO, arch, i: int, present: list[str], step: bool) -> tuple[str, str]:
    """The presents as graph outputs: the prefill graph's caches (a sliding layer's cut to its window), or the step
    graph's new key/value rows."""
    kind = arch.layer_types[i]
    window = arch.sliding_window if kind == SLIDING and not step else None
    rows = 1 if step else f"present_sequence.{i}"
    shape = [1, arch.num_kv_heads[kind], rows, arch.head_dim[kind]]
    outs = []
    for part, value in zip(("key", "value"), present):
        if window:  # keep the last `window` positions: all a later query of a sliding layer can see
            value = g.op("Slice", [value, g.const([-window]), g.const([_END]), g.const([2])], name=f"window_{part}")
        outs.append(g.output(value, f"present.{i}.{part}", np.float32, shape))
    io.cache.append({
        "layer": i, "type": kind, "num_key_value_heads": arch.num_kv_heads[kind], "head_dim": arch.head_dim[kind],
        "window": window, "past_key": f"past_key_values.{i}.key", "past_value": f"past_key_values.{i}.value",
        "present_key": outs[0], "present_value": outs[1],
    })
    return outs[0], outs[1]
