"""webgemma site builder: a static site (page + vendored Pyodide/PyScript/onnxruntime-web + runtime wheel + model)
and a localhost server for it. CPython only; the page's sources are in page/."""

from .build import build_site
from .serve import make_server, serve

__all__ = ["build_site", "make_server", "serve"]
