"""How fast a worker reads model-sized files from the browser's storage: 21 files of 64 MiB (E2B's decoder shards)
from the Cache API as Blobs (1, 2 or 4 at once, or streamed into one buffer) and from copies in OPFS through
synchronous access handles (into a new buffer per file, or into one reused buffer). The choice behind
ort_bridge.mjs copyReader (BENCHMARKS.md, nineteenth session).

    python bench/storage_read_bench.py            # Debian's Chromium here; on the GPU host CHROMIUM and
                                                  # CHROMIUM_GPU_FLAGS from ../shared/gpu-browser/setup.sh

Prints GB/s per way of reading, three runs each (bench/storage_read/: the page and its worker).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
CDP = HERE.parent / ".gpu" / "tools" / "cdp.py"


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def main() -> None:
    handler = functools.partial(Quiet, directory=str(HERE / "storage_read"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    profile = Path(tempfile.mkdtemp(prefix="storage-read-"))
    flags = os.environ.get("CHROMIUM_GPU_FLAGS", "--headless=new --no-sandbox").split()
    command = [os.environ.get("CHROMIUM", "/usr/bin/chromium"), *flags, "--remote-debugging-port=9444",
               f"--user-data-dir={profile}", "about:blank"]
    chromium = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
        out = subprocess.run([sys.executable, str(CDP), "9444", url, "--expr", "window.result", "--timeout", "600"],
                             capture_output=True, text=True, check=True).stdout
        result = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    finally:
        chromium.terminate()
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    print(f"{'read (21 x 64 MiB, in a worker)':34s} GB/s, three runs")
    for mode, runs in result.items():
        print(f"{mode:34s} " + "  ".join(f"{r['gbps']:.2f}" for r in runs))


if __name__ == "__main__":
    main()
