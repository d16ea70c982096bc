"""Decoding through the step graph: fixed-size caches, so the backend can capture the graph once and replay it for
every token (onnxruntime's WebGPU graph capture; see exporter/graph/decoder.py).

The step graph only reads the caches: an additive mask per layer type marks the slots that hold positions the
token attends to, and the graph returns the token's key/value rows, which are then copied into their slots.
A global layer's cache has a slot per position (the context). A sliding layer's cache is a ring of `window` slots:
keys are stored already rotated, so attention does not care which slot holds which position. Until the ring is
full the token at position p goes to slot p; after that it takes the slot of the entry leaving the window (which
the mask hides from it: the token sees the window's other `window - 1` positions and itself).

The prompt is prefilled by the ordinary graph; its caches are then copied into the fixed buffers once.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .manifest import FULL, SLIDING


@dataclass(frozen=True)
class Copy:
    """Copy `rows` positions of every KV head into cache `dst` from row `dst_row` on. The source, `src_rows` long,
    is a prefill present (a device handle) or the name of one of the step's own outputs (its new row)."""

    dst: str
    dst_row: int
    src: Any
    src_rows: int
    src_row: int
    rows: int


class StepSession(Protocol):
    """What a backend gives for step decoding: fixed cache buffers (name → slots) and a run over them."""

    slots: dict[str, int]  # cache input name → capacity along the sequence axis
    reads_rows: bool  # whether `run` can read the token's per-layer row itself (given `row`, not its feeds)
    chains: bool  # whether it holds the per-layer table and samples: steps then need no row and can be queued (`submit`),
    # and a prefill chunk's rows come from it (`prefill_rows`)

    async def copy(self, copies: list[Copy]) -> None:
        """Performs the copies in order, before the next run."""

    async def run(self, feeds: dict[str, np.ndarray], row: object = None) -> tuple[np.ndarray, np.ndarray]:
        """One step: (top logits, their token ids). row: where to read the per-layer row (PerLayerRows.source)
        instead of its feeds, for sessions that read rows."""


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

    def step(self, p: int) -> int:
        """The slot that takes the entry of the token at position p. Until `place` records it, `slot_of` maps
        exactly the other positions the token attends to."""
        return self.slot_of.pop(p - self.window) if p >= self.window else p

    def place(self, p: int, slot: int) -> None:
        self.slot_of[p] = slot


class StaticDecoder:
    """Moves a prefilled cache into the step session's buffers and decodes one token per `step`."""

    def __init__(self, session: StepSession, io: dict, window: int):
        self.session, self.io = session, io
        self.own = list(io["cache"])
        self.masks = io["step_graph"]["masks"]  # layer type → mask input
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

    async def rehearse(self, feeds: dict[str, np.ndarray]) -> None:
        """Runs a token that is not kept (`feeds` for position 0, no slot visible, its rows not copied), twice:
        onnxruntime records the captured graph on the second run, so loading pays for it, not the first token."""
        for _ in range(2):
            await self.session.run(feeds | self._masks(0))

    def submit(self, feeds: dict[str, np.ndarray], chained: bool) -> Awaitable:
        """Queues the token at position `self.length` on a session that chains steps (it writes its own rows; see
        WebStepSession.submit); returns what to await for its result."""
        p = self.length
        slot = self.ring.step(p)
        pending = self.session.submit(feeds | self._masks(p), chained)
        self.ring.place(p, slot)
        self.length = p + 1
        return pending

    def rollback(self, length: int) -> None:
        """Forgets the positions from `length` on (steps queued past a stop): the ring gives each slot back to the
        position it held before. Their cache rows must not have been written (or the slots are stale), unless the
        next step is position `length` again: it takes that slot back and writes its rows there (Engine.prefill)."""
        for p in range(self.length - 1, length - 1, -1):
            slot = self.ring.slot_of.pop(p)
            if p >= self.ring.window:
                self.ring.slot_of[p - self.ring.window] = slot
        self.length = length

    async def step(self, feeds: dict[str, np.ndarray], row: object = None) -> tuple[np.ndarray, np.ndarray]:
        """Decodes the token in `feeds` (ids, rows or `row`, rope for position `self.length`), then stores its
        key/value rows."""
        p = self.length
        slot = self.ring.step(p)
        out = await self.session.run(feeds | self._masks(p), row)
        self.ring.place(p, slot)
        await self.session.copy([Copy(c[f"past_{part}"], slot if c["window"] else p, c[f"present_{part}"], 1, 0, 1)
                                 for c in self.own for part in ("key", "value")])
        self.length = p + 1
        return out

    def _masks(self, p: int) -> dict[str, np.ndarray]:
        """0 over the slots the token at position p attends to besides itself, -1e9 elsewhere."""
        masks = {}
        if FULL in self.masks:
            masks[self.masks[FULL]] = np.where(np.arange(self.capacity()) < p, 0, -1e9).astype(np.float32)[None]
        if SLIDING in self.masks:
            mask = np.full((1, self.ring.window), -1e9, np.float32)
            mask[0, list(self.ring.slot_of.values())] = 0
            masks[self.masks[SLIDING]] = mask
        return masks
