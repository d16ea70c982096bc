"""ort_bridge.mjs keepWarm seen from a Playwright page: `bridge` is a JS expression importing that module as the
page did (the page's own URL, or the widget's assets)."""

from __future__ import annotations


def warmth(page, bridge: str) -> dict:
    """keepWarm's state: its dispatches so far, whether it spins now."""
    return page.evaluate(bridge + ".then(({warmth: w}) => ({dispatches: w.dispatches, spinning: w.spinning !== null}))")


def wait_for_spin(page, bridge: str, timeout_s: float = 10) -> None:
    """Waits for keepWarm's first dispatch (typing starts it; its pipeline is built first)."""
    for _ in range(int(timeout_s * 10)):
        if warmth(page, bridge)["dispatches"]:
            return
        page.wait_for_timeout(100)
    raise AssertionError("typing did not keep the GPU busy (ort_bridge.mjs keepWarm)")
