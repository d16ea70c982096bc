"""What reading one token's per-layer row costs the page: WebModelStore.read_ranges from the Cache API (a Blob read
per call) against its copies in the origin private file system (a message to rows_worker.mjs), timed inside the
page's Pyodide, in one Chromium with a profile on disk (as a visitor's browser keeps its storage).

    python bench/rows_read_bench.py MODEL_DIR [--reads 300] [--chromium /usr/bin/chromium]

MODEL_DIR is a folder written by `webgemma export`. Prints a table (ms per row read) and the JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CODE = """
import time
from webgemma.manifest import parse_manifest
from webgemma.storage_web import WebModelStore

store = WebModelStore("model/")
manifest = parse_manifest(await store.read("manifest.json"))
await store.ensure(manifest.files(), reverify=False)
table = manifest.table
per_file, size = table["rows_per_file"], table["row_bytes"]
rows = [(i * 7919) % table["rows"] for i in range(READS)]

async def ms_per_read():
    t = time.perf_counter()
    for r in rows:
        await store.read_ranges([(table["files"][r // per_file]["path"], (r % per_file) * size, size)])
    return (time.perf_counter() - t) / len(rows) * 1000

cache_ms = await ms_per_read()
t = time.perf_counter()
store.start_copies([f["path"] for f in table["files"]])
await store.copying
copy_s = time.perf_counter() - t
{"row_bytes": size, "reads": len(rows), "cache_api_ms": cache_ms, "copies": store.copies, "copy_s": copy_s,
 "opfs_ms": await ms_per_read()}
"""


def main() -> None:
    from playwright.sync_api import sync_playwright

    from webgemma_site.build import build_site
    from webgemma_site.serve import make_server

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--reads", type=int, default=300)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="webgemma-rows-"))
    try:
        build_site(a.model, work / "site")
        server = make_server(work / "site", "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(str(work / "profile"), executable_path=a.chromium,
                                                           args=["--no-sandbox", "--disable-background-networking"])
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/?selftest=1")
            page.wait_for_function("window.webgemmaExec", timeout=120_000)
            result = json.loads(page.evaluate("(code) => window.webgemmaExec(code)",
                                              CODE.replace("READS", str(a.reads))))
            context.close()
        server.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"| per-layer row ({result['row_bytes']} bytes), {result['reads']} reads | ms per read |\n|---|---:|\n"
          f"| Cache API (Blob slice) | {result['cache_api_ms']:.3f} |\n| OPFS copy via the worker | "
          f"{result['opfs_ms']:.3f} |\n\ncopies: {result['copies']}, made in {result['copy_s']:.2f} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
