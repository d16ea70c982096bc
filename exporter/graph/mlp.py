"""Gemma MLP: down(gelu_tanh(gate x) * up x)."""

from __future__ import annotations

from .context import Context


def gelu_tanh(ctx: Context, x: str) -> str:
    return ctx.g.op("Gelu", [x], approximate="tanh")


def mlp(ctx: Context, x: str, layer: int) -> str:
    hidden, inner = ctx.arch.hidden_size, ctx.arch.intermediate_size[layer]
    p = f"layers.{layer}.mlp."
    with ctx.g.scope("mlp"):
        gate = gelu_tanh(ctx, ctx.linear_layer(x, p + "gate_proj.weight", inner, hidden))
        up = ctx.linear_layer(x, p + "up_proj.weight", inner, hidden)
        return ctx.linear_layer(ctx.g.op("Mul", [gate, up]), p + "down_proj.weight", hidden, inner)
