"""Assembles a self-contained static site: the page, the vendored runtime, the runtime wheel and the model.

    build_site(model_dir, out_dir, pyodide="local", model_url=None) -> Path

Layout of `out_dir` (any static host serves it; `webgemma serve` adds COOP/COEP for wasm threads):

    index.html style.css boot.mjs main.py ort_bridge.mjs store_bridge.mjs    the page (web/page/)
    pyscript.json                                                             PyScript config (local interpreter)
    site.json                                                                 what main.py reads: model URL, paths
    pyodide/  vendor/pyscript/  vendor/ort/                                   see vendor.py
    model/                                                                    the model folder, unless model_url
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from . import vendor

PAGE = Path(__file__).resolve().parent / "page"
PAGE_FILES = ("index.html", "style.css", "boot.mjs", "main.py", "ort_bridge.mjs", "store_bridge.mjs")
MODEL_DIR = "model"


def build_site(model_dir: str | Path | None, out_dir: str | Path, pyodide: str = "local", model_url: str | None = None,
               *, node_modules: Path | None = None, numpy_source: Path | None = None) -> Path:
    """Writes the site into `out_dir` and returns it.

    model_dir: the exported model folder, copied to `out_dir/model/`; may be None when `model_url` is given.
    pyodide: "local" copies Pyodide and its packages (works offline); "cdn" loads them from jsDelivr.
    model_url: where the page fetches the model instead (absolute, or relative to the page); nothing is copied.
    out_dir is emptied first if it holds an earlier site (site.json); any other non-empty folder is refused.
    """
    out = Path(out_dir)
    _clean(out)
    if model_url is None:
        if model_dir is None or not Path(model_dir).is_dir():
            raise FileNotFoundError(f"model folder {model_dir} not found (or pass model_url)")
        shutil.copytree(model_dir, out / MODEL_DIR, ignore=shutil.ignore_patterns(".*", "__pycache__"))
        model_url = f"{MODEL_DIR}/"
    runtime = vendor.vendor_runtime(out, pyodide=pyodide, node_modules=node_modules, numpy_source=numpy_source)
    for name in PAGE_FILES:
        shutil.copyfile(PAGE / name, out / name)
    (out / "pyscript.json").write_text(json.dumps(pyscript_config(runtime), indent=1) + "\n")
    site = {
        "webgemma": runtime.runtime_wheel.split("-")[1],
        "model_url": model_url if model_url.endswith("/") else model_url + "/",
        "ort_url": f"{vendor.ORT_DIR}/",
        "pyodide": pyodide,
        "versions": {"pyodide": vendor.PYODIDE_VERSION, "pyscript": vendor.PYSCRIPT_VERSION,
                     "onnxruntime-web": vendor.ORT_WEB_VERSION},
    }
    (out / "site.json").write_text(json.dumps(site, indent=1) + "\n")
    (out / ".nojekyll").write_text("")  # GitHub Pages: serve the files as they are
    return out


def pyscript_config(runtime: vendor.Runtime) -> dict:
    return {
        # a local interpreter URL: without it PyScript fetches Pyodide from a CDN (and hangs offline)
        "interpreter": runtime.interpreter,
        "packages": runtime.packages,
        # load the packages straight from the lock file, without micropip (faster, nothing fetched from PyPI)
        "packages_cache": "passthrough",
    }


def _clean(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / "site.json").is_file():
            raise FileExistsError(f"{out} is not empty and holds no webgemma site: refusing to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
