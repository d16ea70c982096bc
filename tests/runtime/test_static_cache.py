"""The sliding ring of the step session: which slot holds which position, and the moves that keep it right."""

from __future__ import annotations

import pytest

from webgemma.static_cache import SlotRing


def replay(window: int, prompt: int, steps: int) -> list[int]:
    """Simulates the ring's contents (slot → position) through a prefill and `steps` decoded tokens, applying the
    moves and GQA's write the way the step session does; returns the final slots."""
    ring = SlotRing(window)
    first, kept = ring.fill(prompt)
    slots = [-1] * window
    slots[:kept] = range(first, first + kept)
    for p in range(prompt, prompt + steps):
        attended, move = ring.step(p)
        if move:
            slots[move[1]] = slots[move[0]]
        slots[attended] = p  # GQA writes the new token right after the slots it attends to
        live = [s for s in slots[: attended + 1]]
        assert sorted(live) == list(range(max(0, p - window + 1), p + 1)), f"position {p}: slots {slots}"
        assert ring.slot_of == {q: slots.index(q) for q in live}
    return slots


@pytest.mark.parametrize("prompt", [1, 3, 7, 8, 9, 20])
def test_the_ring_always_holds_exactly_the_window(prompt):
    replay(window=8, prompt=prompt, steps=30)


def test_before_the_ring_is_full_positions_are_slots():
    ring = SlotRing(4)
    assert ring.fill(2) == (0, 2)
    assert ring.step(2) == (2, None)
    assert ring.step(3) == (3, None)
    assert ring.step(4) == (3, (3, 0))  # position 3 leaves the last slot for position 0's


def test_a_window_of_one_never_moves():
    ring = SlotRing(1)
    ring.fill(5)
    assert [ring.step(p) for p in range(5, 8)] == [(0, None)] * 3
