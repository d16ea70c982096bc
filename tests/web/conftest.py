"""Fixtures for the browser tests: a site built from the tiny model folder, served on localhost, and pages booted
in `?selftest=1` mode, where `PyPage.py(code)` runs Python inside the page's Pyodide."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from tiny_web_model import TABLE, write_model_folder
from web_pages import open_page


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory) -> tuple[Path, list[dict]]:
    folder = tmp_path_factory.mktemp("tiny_model")
    return folder, write_model_folder(folder)


@pytest.fixture(scope="session")
def site(model_folder, tmp_path_factory, serve_dir):
    """The built site, served. Beside model/ it has model-bad/: the same files with one byte of the table flipped
    (a copy damaged on the server)."""
    from webgemma_site.build import build_site

    folder, _ = model_folder
    out = build_site(folder, tmp_path_factory.mktemp("site") / "static")
    bad = out / "model-bad"
    shutil.copytree(out / "model", bad)
    data = bytearray((bad / TABLE).read_bytes())
    data[12345] ^= 0xFF
    (bad / TABLE).write_bytes(bytes(data))
    return serve_dir(out)


@pytest.fixture(scope="session")
def plain_site(site):
    """The same site from Python's stock static server: no COOP/COEP, no Range handling of ours."""
    import http.server
    import threading
    from functools import partial

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(site.root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield SimpleNamespace(root=site.root, url=f"http://127.0.0.1:{server.server_address[1]}/")
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def booted(site, offline_context_factory):
    """One booted page shared by a module's tests (Pyodide boot costs seconds); `checked_page` checks its traffic."""
    pp = open_page(offline_context_factory, site)
    yield pp
    pp.page.context.close()


@pytest.fixture
def checked_page(booted):
    """The shared page; the test fails if it made a request outside localhost meanwhile."""
    before = len(booted.traffic.external)
    yield booted
    assert booted.traffic.external[before:] == [], f"requests outside localhost: {booted.traffic.external[before:]}"
