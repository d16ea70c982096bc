"""The sliding ring of the step session: which slot holds which position, and which positions a token sees."""

from __future__ import annotations

import pytest

from webgemma.static_cache import SlotRing


def replay(window: int, prompt: int, steps: int) -> list[int]:
    """Simulates the ring's contents (slot → position) through a prefill and `steps` decoded tokens, writing each
    token's row where the step session does; returns the final slots."""
    ring = SlotRing(window)
    first, kept = ring.fill(prompt)
    slots = [-1] * window
    slots[:kept] = range(first, first + kept)
    for p in range(prompt, prompt + steps):
        slot = ring.step(p)
        # what the mask lets the token see besides itself: the window's other positions, nothing else
        assert sorted(ring.slot_of) == list(range(max(0, p - window + 1), p)), f"position {p}: {ring.slot_of}"
        assert slots[slot] in (-1, p - window)  # a free slot, or the one of the entry leaving the window
        slots[slot] = p
        ring.place(p, slot)
        assert ring.slot_of == {q: slots.index(q) for q in slots if q >= 0}
    return slots


@pytest.mark.parametrize("prompt", [1, 3, 7, 8, 9, 20])
def test_the_ring_always_holds_exactly_the_window(prompt):
    slots = replay(window=8, prompt=prompt, steps=30)
    assert sorted(slots) == list(range(prompt + 30 - 8, prompt + 30))


def test_before_the_ring_is_full_positions_are_slots():
    ring = SlotRing(4)
    assert ring.fill(2) == (0, 2)
    assert [ring.step(2), ring.place(2, 2), ring.step(3)] == [2, None, 3]
    ring.place(3, 3)
    assert ring.step(4) == 0  # position 0 leaves: its slot takes position 4


def test_a_window_of_one_keeps_only_the_token_itself():
    ring = SlotRing(1)
    ring.fill(5)
    for p in range(5, 8):
        assert ring.step(p) == 0 and ring.slot_of == {}
        ring.place(p, 0)


class QueueOnly:
    """A step session that only records what would be queued (StaticDecoder.submit)."""

    slots = {}

    def submit(self, feeds, chained):
        return None


@pytest.mark.parametrize(("prompt", "ahead"), [(3, 2), (6, 3), (20, 3)])
def test_rolling_back_steps_queued_past_a_stop_gives_each_slot_back(prompt, ahead):
    from webgemma.static_cache import StaticDecoder
    io = {"cache": [], "step_graph": {"masks": {}}}
    decoder = StaticDecoder(QueueOnly(), io, window=8)
    decoder.ring.fill(prompt)
    decoder.length = prompt
    for _ in range(4):  # accepted tokens
        decoder.submit({}, chained=True)
    kept = dict(decoder.ring.slot_of)
    for _ in range(ahead):  # queued past the stop
        decoder.submit({}, chained=True)
    decoder.rollback(prompt + 4)
    assert decoder.ring.slot_of == kept and decoder.length == prompt + 4
    assert replay_from(decoder.ring, prompt + 4, 12)  # and the ring goes on as if they never were


def replay_from(ring: SlotRing, start: int, steps: int) -> bool:
    for p in range(start, start + steps):
        slot = ring.step(p)
        assert sorted(ring.slot_of) == list(range(max(0, p - ring.window + 1), p))
        ring.place(p, slot)
    return sorted(ring.slot_of.values()) == list(range(ring.window))
