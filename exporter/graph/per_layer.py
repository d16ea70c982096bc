"""Gemma 4 per-layer inputs (PLE): a second, per-layer embedding mixed into every layer's residual stream.

    t   = embed_tokens_per_layer[id] * sqrt(P)            rows read by the runtime, given to the graph as an input
    c   = RMSNorm_P(per_layer_model_projection(h) * H^-0.5)          viewed as [.., L, P]
    ple = (c + t) * 2^-0.5
    layer i:  h = h + post_per_layer_input_norm(per_layer_projection(gelu_tanh(per_layer_input_gate(h)) * ple_i))
"""

from __future__ import annotations

import numpy as np

from .builder import MS_DOMAIN
from .context import Context
from .mlp import gelu_tanh
from .norms import rms_norm


def token_rows(ctx: Context, bits: int | None, block_size: int) -> str:
    """Graph inputs holding the table rows of the chunk's tokens → [1, S, L*P] float32.

    Quantized rows arrive as their packed bytes and scales and are dequantized on the device: GatherBlockQuantized
    over the chunk viewed as a single row (index 0) is a plain block dequantization.
    """
    g, width = ctx.g, ctx.arch.num_layers * ctx.arch.per_layer_dim
    if not bits:
        rows = g.input("per_layer_rows", np.float32, ["sequence", width])
        return g.op("Reshape", [rows, g.const([1, -1, width])])
    packed = g.input("per_layer_rows", np.uint8, ["sequence", width * bits // 8])
    scales = g.input("per_layer_scales", np.float32, ["sequence", width // block_size])
    one_row = [g.op("Reshape", [t, g.const([1, -1])]) for t in (packed, scales)]
    values = g.op("GatherBlockQuantized", [one_row[0], g.const([0]), one_row[1]], domain=MS_DOMAIN, bits=bits,
                  block_size=block_size, gather_axis=0, quantize_axis=1)
    return g.op("Reshape", [values, g.const([1, -1, width])])


def per_layer_inputs(ctx: Context, embeds: str, rows: str) -> str:
    """[1, S, H] scaled embeddings and [1, S, L*P] token rows → ple [1, S, L*P]."""
    a, g = ctx.arch, ctx.g
    width = a.num_layers * a.per_layer_dim
    with g.scope("per_layer_inputs"):
        proj = ctx.linear_layer(embeds, "per_layer_model_projection.weight", width, a.hidden_size)
        proj = g.op("Mul", [proj, g.const(np.float32(a.hidden_size ** -0.5), np.float32)])
        proj = g.op("Reshape", [proj, g.const([0, 0, a.num_layers, a.per_layer_dim])])
        proj = rms_norm(g, proj, ctx.small("per_layer_projection_norm.weight", (a.per_layer_dim,)), a.rms_norm_eps)
        proj = g.op("Reshape", [proj, g.const([0, 0, width])])
        return g.op("Mul", [g.op("Add", [proj, rows]), g.const(np.float32(2.0 ** -0.5), np.float32)])


SPLIT_GROUP = 8  # outputs per Split: a WebGPU shader binds at most 16 storage buffers (NVIDIA's default limit)


def split_per_layer(ctx: Context, ple: str, layers: range) -> list[str]:
    """The [1, S, P] slices of `ple` for `layers` (a contiguous range of layer indices)."""
    g, p = ctx.g, ctx.arch.per_layer_dim
    out = []
    for first in range(layers.start, layers.stop, SPLIT_GROUP):
        group = range(first, min(first + SPLIT_GROUP, layers.stop))
        part = g.op("Slice", [ple, g.const([group.start * p]), g.const([group.stop * p]), g.const([-1])])
        out += [part] if len(group) == 1 else list(g.op("Split", [part, g.const([p] * len(group))], len(group), axis=-1))
    return out


def per_layer_residual(ctx: Context, h: str, ple_i: str, layer: int) -> str:
    a, g = ctx.arch, ctx.g
    pre = f"layers.{layer}."
    with g.scope("per_layer"):
        gate = gelu_tanh(ctx, ctx.linear_layer(h, pre + "per_layer_input_gate.weight", a.per_layer_dim, a.hidden_size))
        out = ctx.linear_layer(g.op("Mul", [gate, ple_i]), pre + "per_layer_projection.weight", a.hidden_size, a.per_layer_dim)
        out = rms_norm(g, out, ctx.small(pre + "post_per_layer_input_norm.weight", (a.hidden_size,)), a.rms_norm_eps)
        return g.op("Add", [h, out])
