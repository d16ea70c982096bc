"""Decoding through the step graph: fixed-size caches written in place, so the backend can capture the graph once
and replay it for every token (onnxruntime's WebGPU graph capture; see exporter/graph/decoder.py).

A global layer's cache has a slot per position (the context). A sliding layer's cache is a ring of `window` slots:
keys are stored already rotated, so attention does not care which slot holds which position, but GQA always
writes the new token right after the `seqlens_k` slots it attends to. Until the ring is full the token at
position p goes to slot p; after that the step attends to all `window` slots and writes the last one, so before
each such step the entry in the last slot (the previous token) moves over the entry that leaves the window.

The prompt is prefilled by the ordinary graph; its caches are then copied into the fixed buffers once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .manifest import FULL, SHARED_SLIDING, SLIDING


@dataclass(frozen=True)
class Copy:
    """Copy `rows` positions of every KV head into cache `dst` from row `dst_row` on. The source is a prefill
    present (a device handle, `src_rows` long) or, where `src` is None, the same fixed cache."""

    dst: str
    dst_row: int
    src: Any
    src_rows: int
    src_row: int
    rows: int


class StepSession(Protocol):
    """What a backend gives for step decoding: fixed cache buffers (name → slots) and a run over them."""

    slots: dict[str, int]  # cache input name → capacity along the sequence axis

    async def copy(self, copies: list[Copy]) -> None:
        """Performs the copies in order, before the next run."""

    async def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """One step: (top logits, their token ids)."""


def length_feeds(io: dict, lengths: dict[str, int]) -> dict[str, np.ndarray]:
    """GQA's seqlens_k and total_sequence_length inputs for the key-sequence length each attention view sees."""
    feeds = {}
    for view, names in io["kv_length"].items():
        feeds[names["seqlens_k"]] = np.asarray([lengths[view] - 1], np.int32)
        feeds[names["total"]] = np.asarray(lengths[view], np.int32)
    return feeds


def step_caches(io: dict, context: int) -> list[dict]:
    """The step session's fixed caches: {input, output, dims} per past key/value, `context` slots for a global
    layer, `window` for a sliding layer's ring ([1, kv heads, slots, head_dim] float32)."""
    return [{"input": c[f"past_{part}"], "output": c[f"present_{part}"],
             "dims": [1, c["num_key_value_heads"], c["window"] or context, c["head_dim"]]}
            for c in io["cache"] for part in ("key", "value")]


class SlotRing:
    """Which slot of a sliding layer's ring holds which position."""

    def __init__(self, window: int):
        self.window = window
        self.slot_of: dict[int, int] = {}

    def fill(self, length: int) -> tuple[int, int]:
        """After a prefill of `length` tokens: the ring holds its last min(length, window) positions in order.
        Returns (first position kept, count)."""
        first = max(0, length - self.window)
        self.slot_of = {p: p - first for p in range(first, length)}
        return first, length - first

    def step(self, p: int) -> tuple[int, tuple[int, int] | None]:
        """For the token at position p: (slots attended before it, the (from, to) slot move to make first)."""
        w = self.window
        if p < w:
            self.slot_of[p] = p
            return p, None
        leaving = self.slot_of.pop(p - w)
        move = None
        if leaving != w - 1:  # the previous token sits in the last slot: it takes the leaving entry's place
            self.slot_of[p - 1] = leaving
            move = (w - 1, leaving)
        self.slot_of[p] = w - 1
        return w - 1, move


class StaticDecoder:
    """Moves a prefilled cache into the step session's buffers and decodes one token per `step`."""

    def __init__(self, session: StepSession, io: dict, window: int):
        self.session, self.io = session, io
        self.own = list(io["cache"])
        self.sliding = [c for c in self.own if c["window"]]
        self.ring = SlotRing(window)
        self.length = 0

    def capacity(self) -> int:
        """Longest context the global caches hold."""
        return min((self.session.slots[c["past_key"]] for c in self.own if not c["window"]), default=1 << 30)

    async def load(self, cache: dict[str, Any], length: int) -> None:
        """Copies a prefill's presents (`cache`: past name → handle, as the engine keeps them) for `length` tokens."""
        first, kept = self.ring.fill(length)
        copies = []
        for c in self.own:
            for name in (c["past_key"], c["past_value"]):
                rows = kept if c["window"] else length
                copies.append(Copy(name, 0, cache[name], rows, 0, rows))
        await self.session.copy(copies)
        self.length = length

    async def step(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Decodes the token in `feeds` (ids, rows, rope for position `self.length`): sets the cache lengths."""
        p = self.length
        attended, move = self.ring.step(p)
        if move:
            await self.session.copy([Copy(name, move[1], None, 0, move[0], 1)
                                     for c in self.sliding for name in (c["past_key"], c["past_value"])])
        feeds |= length_feeds(self.io, {FULL: p + 1, SLIDING: attended + 1, SHARED_SLIDING: attended + 1})
        out = await self.session.run(feeds)
        self.length = p + 1
        return out
