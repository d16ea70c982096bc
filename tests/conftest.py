"""Shared fixtures: headless Chromium (Debian's, through Playwright) and a localhost server for built sites.

Browser tests run offline: every request that is not for the test server is aborted and recorded, and a test
fails if any was attempted. One browser serves the whole session; each test gets fresh contexts (storage).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("WEBGEMMA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--enable-unsafe-webgpu",  # SwiftShader's WebGPU adapter on CPU-only machines
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
]


@pytest.fixture(scope="session")
def chromium():
    """One headless Chromium for the session (Playwright cannot download browsers here: Debian's is used)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set WEBGEMMA_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@dataclass
class Served:
    """A site served on localhost; `url` ends with '/'."""

    root: Path
    url: str
    server: object = field(repr=False)


@pytest.fixture(scope="session")
def serve_dir() -> Iterator:
    """serve_dir(path) → Served: the webgemma site server on a free localhost port, in a thread, for the session."""
    from webgemma_site.serve import make_server

    servers = []

    def start(root: Path) -> Served:
        server = make_server(root, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return Served(Path(root), f"http://127.0.0.1:{server.server_address[1]}/", server)

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


@dataclass
class Traffic:
    """What a browser context asked for: `requests` to the test server (recorded when issued, so counts are
    final once the page's code that issued them returns), their `responses` (url, status), `failed` ones, and
    `external` URLs (aborted)."""

    origin: str
    requests: list[str] = field(default_factory=list)
    responses: list[tuple[str, int | None]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)

    def count(self, path: str) -> int:
        """Requests for `path` (relative to the origin, query ignored)."""
        return sum(1 for url in self.requests if url.split("?")[0] == self.origin + path)


def open_offline_context(browser, origin: str, init_script: str | None = None):
    """(context, Traffic): a fresh context (own storage) in which requests outside `origin` are aborted and
    recorded in Traffic.external."""
    context = browser.new_context()
    traffic = Traffic(origin)

    def route(r) -> None:
        if r.request.url.startswith(origin):
            traffic.requests.append(r.request.url)
            r.continue_()
        else:
            traffic.external.append(r.request.url)
            r.abort()

    def finished(req) -> None:
        response = req.response()
        traffic.responses.append((req.url, response.status if response else None))

    def failed(req) -> None:
        if req.url.startswith(origin):
            traffic.failed.append(f"{req.url}: {req.failure}")

    context.route("**/*", route)
    context.on("requestfinished", finished)
    context.on("requestfailed", failed)
    if init_script:
        context.add_init_script(init_script)
    return context, traffic


@pytest.fixture(scope="session")
def offline_context_factory(chromium):
    """open_offline_context bound to the session's browser, for fixtures wider than one test (they must check
    Traffic.external themselves)."""
    return lambda origin, init_script=None: open_offline_context(chromium, origin, init_script)


@pytest.fixture
def offline_context(offline_context_factory) -> Iterator:
    """offline_context(origin, init_script=None) → (context, Traffic); the test fails at teardown if any request
    outside localhost was attempted."""
    made = []

    def make(origin: str, init_script: str | None = None):
        made.append(offline_context_factory(origin, init_script))
        return made[-1]

    yield make
    for context, traffic in made:
        context.close()
        assert traffic.external == [], f"requests outside localhost were attempted: {traffic.external}"
