"""Pages booted in `?selftest=1` mode: `PyPage.py(code)` runs Python inside the page's Pyodide."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

BOOT_TIMEOUT_MS = 90_000


@dataclass
class PyPage:
    page: object
    traffic: object
    boot_seconds: float
    ready: dict

    def py(self, code: str, **args):
        """Runs `code` in the page's Python (top-level await allowed) with `args` bound as ARGS; returns the JSON
        value of its last expression. Python exceptions raise here with the page's traceback."""
        prelude = f"import json as _json\nARGS = _json.loads({json.dumps(json.dumps(args))})\n"
        return json.loads(self.page.evaluate("code => window.webgemmaExec(code)", prelude + code))

    def reload(self) -> None:
        self.page.reload()
        self.boot_seconds, self.ready = _wait_ready(self.page)


def _wait_ready(page) -> tuple[float, dict]:
    t = time.monotonic()
    page.wait_for_function("window.webgemmaReady || document.querySelector('#status.error')", timeout=BOOT_TIMEOUT_MS)
    ready = page.evaluate("window.webgemmaReady")
    assert ready, f"page failed to boot: {page.text_content('#status')}"
    return time.monotonic() - t, ready


def open_page(make_context, site, query: str = "?selftest=1", init_script: str | None = None) -> PyPage:
    context, traffic = make_context(site.url, init_script)
    page = context.new_page()
    t = time.monotonic()
    page.goto(site.url + query)
    _, ready = _wait_ready(page)
    return PyPage(page, traffic, time.monotonic() - t, ready)
