"""ort_bridge.mjs keepWarm seen from a Playwright page: `bridge` is a JS expression importing that module as the
page did (the page's own URL, or the widget's assets)."""

from __future__ import annotations


def warmth(page, bridge: str) -> dict:
    """keepWarm's state: its dispatches so far, whether it spins now."""
    return page.evaluate(bridge + ".then(({warmth: w}) => ({dispatches: w.dispatches, spinning: w.spinning !== null}))")


def wait_for_spin(page, bridge: str, since: int = 0, timeout_s: float = 10) -> None:
    """Waits for a dispatch of keepWarm's after its first `since` (what the reader did starts it; the first spin
    builds its pipeline first)."""
    for _ in range(int(timeout_s * 10)):
        if warmth(page, bridge)["dispatches"] > since:
            return
        page.wait_for_timeout(100)
    raise AssertionError("the reader's approach did not keep the GPU busy (ort_bridge.mjs keepWarm)")


def stop_spin(page, bridge: str, timeout_s: float = 10) -> int:
    """Ends the spin now (as a prompt does) and waits until it has; returns the dispatches so far."""
    page.evaluate(bridge + ".then(({warmth}) => { warmth.until = 0; })")
    for _ in range(int(timeout_s * 10)):
        if not (state := warmth(page, bridge))["spinning"]:
            return state["dispatches"]
        page.wait_for_timeout(100)
    raise AssertionError("keepWarm's spin did not stop")
