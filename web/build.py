"""Assembles a self-contained static site: the page, the vendored runtime, the runtime wheel and the model.

    build_site(model_dir, out_dir, pyodide="local", model_url=None) -> Path
    check_site(out_dir)                                           raises SiteError listing what is wrong

Layout of `out_dir` (any static host serves it; `webgemma serve` adds COOP/COEP for wasm threads):

    index.html style.css boot.mjs main.py ort_bridge.mjs store_bridge.mjs    the page (web/page/)
    rows_worker.mjs blob_reader.mjs                                           its workers (storage reads)
    kernel_step.mjs wgsl.mjs                                                  the decode step's own kernels
    widget.mjs widget.css                                                     <webgemma-chat> for any page (web/widget/)
    pyscript.json                                                             PyScript config (local interpreter)
    site.json                                                                 what main.py reads: model URL, paths
    pyodide/  vendor/pyscript/  vendor/ort/                                   see vendor.py
    vendor/ort/start.onnx                                                     a one-node model: the page starts
                                                                              onnxruntime-web with it while booting
    model/                                                                    the model folder, unless model_url
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from webgemma.onnx_bytes import identity_model

from . import vendor

PAGE = Path(__file__).resolve().parent / "page"
PAGE_FILES = ("index.html", "style.css", "boot.mjs", "main.py", "ort_bridge.mjs", "store_bridge.mjs", "rows_worker.mjs",
              "blob_reader.mjs", "kernel_step.mjs", "wgsl.mjs")
# Always written (10 KB): any page, on any origin, embeds the model with <script type="module" src=".../widget.mjs">
WIDGET = Path(__file__).resolve().parent / "widget"
WIDGET_FILES = ("widget.mjs", "widget.css")
MODEL_DIR = "model"
ORT_START = "start.onnx"  # ort_bridge.mjs startOrt


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
    (out / vendor.ORT_DIR / ORT_START).write_bytes(identity_model())
    for name in PAGE_FILES:
        shutil.copyfile(PAGE / name, out / name)
    for name in WIDGET_FILES:
        shutil.copyfile(WIDGET / name, out / name)
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


def check_site(site_dir: str | Path) -> None:
    """Raises SiteError naming every problem of a built site: missing page or runtime files, vendored wheels that
    fail their lock's sha256, model files that fail the manifest's size or sha256."""
    import hashlib

    from webgemma.manifest import parse_manifest

    site = Path(site_dir)
    expected = (*PAGE_FILES, *WIDGET_FILES, "pyscript.json", "site.json")
    problems = [f"missing {name}" for name in expected if not (site / name).is_file()]
    config = json.loads((site / "site.json").read_text()) if (site / "site.json").is_file() else {}
    if config.get("pyodide") == "local":
        lock = json.loads((site / vendor.PYODIDE_DIR / "pyodide-lock.json").read_text())
        for name in vendor.PYODIDE_CORE:
            if not (site / vendor.PYODIDE_DIR / name).is_file():
                problems.append(f"missing {vendor.PYODIDE_DIR}/{name}")
        for package in lock["packages"].values():
            wheel = site / vendor.PYODIDE_DIR / package["file_name"]
            if not wheel.is_file() or hashlib.sha256(wheel.read_bytes()).hexdigest() != package["sha256"]:
                problems.append(f"{vendor.PYODIDE_DIR}/{package['file_name']} is missing or fails its sha256")
    for files in [*vendor.ORT_BUNDLES.values(), [ORT_START]]:
        problems += [f"missing {vendor.ORT_DIR}/{f}" for f in files if not (site / vendor.ORT_DIR / f).is_file()]
    model = site / MODEL_DIR
    if config.get("model_url") == f"{MODEL_DIR}/":
        try:
            manifest = parse_manifest((model / "manifest.json").read_bytes())
        except (OSError, ValueError) as e:
            problems.append(f"{MODEL_DIR}/manifest.json: {e}")
        else:
            for f in manifest.files():
                path = model / f["path"]
                if not path.is_file() or path.stat().st_size != f["bytes"]:
                    problems.append(f"{MODEL_DIR}/{f['path']} is missing or has the wrong size")
                elif hashlib.sha256(path.read_bytes()).hexdigest() != f["sha256"]:
                    problems.append(f"{MODEL_DIR}/{f['path']} fails its sha256")
    if problems:
        raise SiteError(f"{site} is not a complete webgemma site:\n  " + "\n  ".join(problems))


class SiteError(ValueError):
    """A built site that would not work; the message lists what is wrong."""


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
