"""A localhost server for a built site: the right MIME types, cross-origin isolation, byte ranges, no stale caches.

    serve(site_dir, host="127.0.0.1", port=8000)          blocks; Ctrl-C stops it
    server = make_server(site_dir, port=0)                 for tests: run server.serve_forever() in a thread

COOP/COEP make the page `crossOriginIsolated`, which wasm threads need; a plain static host without them still
works (onnxruntime-web then runs its wasm single-threaded). Responses carry `Cache-Control: no-cache` so a rebuilt
site is never shadowed by the browser's HTTP cache (unchanged files still revalidate to 304).
"""

from __future__ import annotations

import email.utils
import os
import re
import shutil
import sys
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".py": "text/x-python; charset=utf-8",
    ".wasm": "application/wasm",
    ".whl": "application/zip",
    ".zip": "application/zip",
    ".onnx": "application/octet-stream",
    ".bin": "application/octet-stream",
    ".data": "application/octet-stream",
    ".jinja": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class SiteHandler(SimpleHTTPRequestHandler):
    """Static files with COOP/COEP/CORP headers and single-range `Range` requests (206 / 416)."""

    quiet = True

    def guess_type(self, path: str) -> str:
        return MIME_TYPES.get(os.path.splitext(path)[1].lower(), "application/octet-stream")

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def send_head(self):  # noqa: ANN201 - http.server's contract: a file object or None
        path = self.translate_path(self.path)
        if os.path.isdir(path) or "Range" not in self.headers:
            return self._full_head()
        try:
            f = open(path, "rb")
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        size = os.fstat(f.fileno()).st_size
        span = _parse_range(self.headers["Range"], size)
        if span is None:  # malformed or multi-range: ignore the header, as RFC 9110 allows
            f.close()
            return self._full_head()
        if span == ():
            f.close()
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        start, end = span
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Last-Modified", email.utils.formatdate(os.fstat(f.fileno()).st_mtime, usegmt=True))
        self.end_headers()
        f.seek(start)
        self._remaining = end - start + 1
        return f

    def _full_head(self):  # noqa: ANN202
        self._remaining = None
        return super().send_head()

    def send_response(self, code: int, message: str | None = None) -> None:
        super().send_response(code, message)
        if code == HTTPStatus.OK:
            self.send_header("Accept-Ranges", "bytes")

    def copyfile(self, source, outputfile) -> None:  # noqa: ANN001
        try:
            if self._remaining is None:
                shutil.copyfileobj(source, outputfile, 1 << 20)
                return
            left = self._remaining
            while left > 0:
                chunk = source.read(min(left, 1 << 20))
                if not chunk:
                    break
                outputfile.write(chunk)
                left -= len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page aborted a download (reload, test teardown)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        if not self.quiet:
            super().log_message(format, *args)


def _parse_range(header: str, size: int) -> tuple[int, int] | tuple[()] | None:
    """(first, last) inclusive; () when unsatisfiable; None when the header is to be ignored."""
    m = _RANGE.match(header.strip())
    if not m or m.group(1) == m.group(2) == "":
        return None
    first, last = m.group(1), m.group(2)
    if first == "":  # suffix range: the last N bytes
        n = int(last)
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else ()
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        return ()
    return start, end


def make_server(site_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, *,
                quiet: bool = True) -> ThreadingHTTPServer:
    """A server for `site_dir` (not yet serving); port 0 picks a free port (read `server.server_address`)."""
    site = Path(site_dir)
    if not (site / "index.html").is_file():
        raise FileNotFoundError(f"{site} has no index.html: build it with `webgemma site`")
    handler = type("Handler", (SiteHandler,), {"quiet": quiet})
    server = ThreadingHTTPServer((host, port), partial(handler, directory=str(site)))
    server.daemon_threads = True
    return server


def serve(site_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serves the site until interrupted, logging requests."""
    server = make_server(site_dir, host, port, quiet=False)
    h, p = server.server_address[:2]
    print(f"webgemma: serving {site_dir} at http://{h}:{p}/ (Ctrl-C stops)", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
