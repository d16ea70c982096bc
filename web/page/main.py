"""Page entry: PyScript runs this once Pyodide has loaded numpy, jinja2 and webgemma (see pyscript.json).

It boots, reports what it found, and in `?selftest=1` mode exposes a hook for the browser tests. The chat UI and
engine wiring plug in at `start()`. Model output is always written as text (textContent), never as HTML.
"""

import sys

import jinja2
import numpy as np
import webgemma
from webgemma import browser


async def environment() -> dict:
    """What this page runs on, for the status line, the tests and bug reports."""
    return {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "jinja2": jinja2.__version__,
        "webgemma": webgemma.__version__,
        "cross_origin_isolated": browser.cross_origin_isolated(),
        "webgpu": await browser.webgpu_adapter(),
    }


async def start(site: dict, env: dict) -> None:
    """The application proper (chat UI, engine) starts here."""
    gpu = env["webgpu"]
    where = f"WebGPU ({gpu['vendor']} {gpu['architecture']})".replace(" )", ")") if gpu else "wasm (no WebGPU)"
    browser.set_status(f"ready: Python {env['python']}, numpy {env['numpy']}, {where}")


async def main() -> None:
    try:
        site = await browser.fetch_json("site.json")
        env = await environment()
        if browser.query_params().get("selftest") == "1":
            browser.expose_selftest(globals())
            browser.set_global("webgemmaReady", {"site": site, **env})
        await start(site, env)
    except Exception as e:
        browser.set_status(f"error: {type(e).__name__}: {e}", error=True)
        raise


await main()  # noqa: F704 - PyScript runs this file with top-level await
