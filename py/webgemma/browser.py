"""The one module that touches JavaScript: the page, the Cache API and onnxruntime-web.

Callers get Python values back. JS objects that must stay in JS come wrapped: `CachedFile` (a Blob in the Cache
API), `JsTensor` (an onnxruntime-web tensor, possibly in GPU memory), `JsSession`. numpy ↔ JS conversion is the
private pair `_to_js_tensor` / `_to_numpy`.

Importing works under CPython (tests, tools); calling anything that needs the browser raises `BrowserOnly`.
The JS glue lives next to the page: ort_bridge.mjs and store_bridge.mjs (web/page/). The site's own files (that
glue, onnxruntime-web) resolve against the page's URL, or against `set_asset_base` for the documentation widget,
whose files lie beside its script on whatever page embeds it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np

IN_BROWSER = sys.platform == "emscripten"
if IN_BROWSER:
    import js
    from pyodide.code import eval_code_async, run_js
    from pyodide.ffi import JsException, create_proxy, to_js
else:  # CPython: importable, not callable
    js = None

    class JsException(Exception):  # noqa: N818 - mirrors pyodide.ffi.JsException
        pass


class BrowserOnly(RuntimeError):
    """Raised when a browser-only function is called outside Pyodide."""


def _need_browser() -> None:
    if not IN_BROWSER:
        raise BrowserOnly("this needs a browser page (Pyodide); CPython has the onnxruntime backend and a local store")


# ---------------------------------------------------------------- page


def set_status(text: str, *, error: bool = False) -> None:
    """The boot/status line (element #status). Text only, never HTML."""
    _need_browser()
    el = js.document.getElementById("status")
    if el is not None:
        el.textContent = text
        el.classList.toggle("error", error)


_notice_handler: Callable[[str], None] | None = None


def on_notice(handler: Callable[[str], None] | None) -> None:
    """Sends `show_notice` texts to `handler` instead of #notice (the documentation widget shows them itself and
    must not write into a host page's own #notice)."""
    global _notice_handler
    _notice_handler = handler


def show_notice(text: str) -> None:
    """A visible notice (element #notice), e.g. that the slow wasm backend is used; notices add up. Text only."""
    _need_browser()
    if _notice_handler is not None:
        _notice_handler(text)
        return
    el = js.document.getElementById("notice")
    if el is not None:
        el.textContent = text if el.hidden else f"{el.textContent}\n{text}"
        el.hidden = False


class Element:
    """A DOM element. Text always goes in as text (textContent), never as HTML: model output cannot inject markup."""

    _handlers: list[Any] = []  # proxies of event handlers, kept alive for the page's lifetime

    def __init__(self, el: Any) -> None:
        self._el = el

    @classmethod
    def by_id(cls, element_id: str) -> Element:
        _need_browser()
        el = js.document.getElementById(element_id)
        if el is None:
            raise LookupError(f"the page has no element #{element_id}")
        return cls(el)

    def add(self, tag: str, *, cls: str | None = None, text: str | None = None, **attrs: str) -> Element:
        """A new child element appended to this one."""
        el = js.document.createElement(tag)
        if cls:
            el.className = cls
        if text is not None:
            el.textContent = text
        for k, v in attrs.items():
            el.setAttribute(k.replace("_", "-"), v)
        self._el.appendChild(el)
        return Element(el)

    @property
    def text(self) -> str:
        return str(self._el.textContent or "")

    @text.setter
    def text(self, value: str) -> None:
        self._el.textContent = value

    def append_text(self, value: str) -> None:
        self._el.append(value)  # a text node: no parsing

    @property
    def value(self) -> str:
        return str(self._el.value)

    @value.setter
    def value(self, v: str) -> None:
        self._el.value = v

    @property
    def checked(self) -> bool:
        return bool(self._el.checked)

    @checked.setter
    def checked(self, v: bool) -> None:
        self._el.checked = v

    def set(self, **props: Any) -> None:
        """Plain DOM properties (disabled, hidden, max, ...)."""
        for k, v in props.items():
            setattr(self._el, k, v)

    def query(self, selector: str) -> Element | None:
        """The first descendant matching a CSS selector, or None."""
        el = self._el.querySelector(selector)
        return None if el is None else Element(el)

    def attribute(self, name: str) -> str | None:
        value = self._el.getAttribute(name)
        return None if value is None else str(value)

    def attr(self, name: str, value: str | None) -> None:
        if value is None:
            self._el.removeAttribute(name)
        else:
            self._el.setAttribute(name, value)

    def toggle_class(self, name: str, on: bool) -> None:
        self._el.classList.toggle(name, on)

    def clear(self) -> None:
        self._el.replaceChildren()

    def focus(self) -> None:
        self._el.focus()

    @property
    def has_focus(self) -> bool:
        return bool(self._el.matches(":focus"))

    def emit(self, event: str, detail: Any = None) -> None:
        """Dispatches a bubbling CustomEvent whose `detail` is `detail` as plain JS (JSON-like values only)."""
        init = {"bubbles": True, "composed": True, "detail": js.JSON.parse(json.dumps(detail))}
        self._el.dispatchEvent(js.CustomEvent.new(event, to_js(init, dict_converter=js.Object.fromEntries)))

    def submit(self) -> None:
        """Submits a form as the user would (its submit handlers run)."""
        self._el.requestSubmit()

    def scroll_into_view(self) -> None:
        self._el.scrollIntoView(to_js({"block": "end"}, dict_converter=js.Object.fromEntries))

    def on(self, event: str, handler: Callable[[Any], Any], *, prevent_default: bool = False) -> None:
        """Calls handler(event); a coroutine handler runs as a task (the page stays responsive), so the default
        action is prevented here, while the event is still being dispatched, when asked."""
        import asyncio
        import inspect

        def call(ev: Any) -> None:
            if prevent_default:
                ev.preventDefault()
            result = handler(ev)
            if inspect.isawaitable(result):
                asyncio.ensure_future(result)

        proxy = create_proxy(call)
        Element._handlers.append(proxy)
        self._el.addEventListener(event, proxy)


def page_url() -> str:
    _need_browser()
    return str(js.location.href)


def resolve_url(url: str, base: str | None = None) -> str:
    """`url` made absolute against `base` (default: the page's URL)."""
    _need_browser()
    return str(js.URL.new(url, base or js.document.baseURI).href)


_asset_base: str | None = None  # where the site's own files lie (JS bridges, vendor/ort/); None: beside the page


def set_asset_base(url: str) -> None:
    """Resolves the site's own files against `url` instead of the page: the documentation widget's files lie
    beside its script, on whatever page (and origin) embeds it."""
    global _asset_base
    _asset_base = resolve_url(url)


def asset_url(path: str) -> str:
    """A file of the webgemma site (bridge module, onnxruntime-web) as an absolute URL."""
    return resolve_url(path, _asset_base)


def page_text(selector: str | None = None) -> str:
    """The rendered text (innerText) of the element matching `selector`, or of the page's main content: its
    [role=main], else its first <article> (MkDocs Material, Docusaurus: <main> holds the sidebars too), else <main>,
    else <body>. Raises LookupError when nothing matches."""
    _need_browser()
    if selector:
        el = js.document.querySelector(selector)
        if el is None:
            raise LookupError(f"this page has no element matching {selector!r}")
    else:
        el = next((e for s in ("[role=main]", "article", "main", "body")
                   if (e := js.document.querySelector(s)) is not None), None)
    return "" if el is None else str(el.innerText or "")


def query_params() -> dict[str, str]:
    _need_browser()
    params = js.URLSearchParams.new(js.location.search)
    return {str(k): str(v) for k, v in params.entries()}


def memory_usage() -> dict:
    """What the page holds: the JS heap (Chrome's performance.memory) and Pyodide's wasm memory, in bytes."""
    _need_browser()
    import pyodide_js

    memory = getattr(js.performance, "memory", None)
    return {
        "js_heap_bytes": int(memory.usedJSHeapSize) if memory else None,
        "pyodide_wasm_bytes": int(pyodide_js._module.HEAPU8.byteLength),
    }


def cross_origin_isolated() -> bool:
    _need_browser()
    return bool(getattr(js, "crossOriginIsolated", False))


async def webgpu_adapter() -> dict | None:
    """What `navigator.gpu.requestAdapter()` gives, as a dict, or None where there is no WebGPU adapter."""
    _need_browser()
    gpu = getattr(js.navigator, "gpu", None)
    if gpu is None:
        return None
    try:
        adapter = await gpu.requestAdapter()
    except JsException:
        return None
    if adapter is None:
        return None
    info = getattr(adapter, "info", None)
    return {
        "vendor": str(getattr(info, "vendor", "") or ""),
        "architecture": str(getattr(info, "architecture", "") or ""),
        "features": sorted(str(f) for f in adapter.features.values()),
        "max_buffer_size": int(adapter.limits.maxBufferSize),
        "max_storage_buffer_binding_size": int(adapter.limits.maxStorageBufferBindingSize),
    }


async def fetch_bytes(url: str) -> bytes:
    """A file from the network (not the model cache); raises with the URL and HTTP status on failure."""
    _need_browser()
    response = await js.fetch(url, to_js({"cache": "no-cache"}, dict_converter=js.Object.fromEntries))
    if not response.ok:
        raise OSError(f"{url}: HTTP {response.status} {response.statusText}")
    return (await response.arrayBuffer()).to_bytes()


async def fetch_json(url: str) -> Any:
    return json.loads(await fetch_bytes(url))


def expose_selftest(namespace: dict) -> None:
    """Test hook (page opened with ?selftest=1): `await window.webgemmaExec(code)` runs Python `code` in
    `namespace` (top-level await allowed) and resolves to the JSON of its last expression."""
    _need_browser()

    async def run(code: str) -> str:
        return json.dumps(await eval_code_async(str(code), globals=namespace))

    js.window.webgemmaExec = create_proxy(run)


def page_time_ms() -> float:
    """Milliseconds since the page's navigation started (performance.now())."""
    return float(js.performance.now())


def get_global(name: str) -> Any:
    """window[name] as Python (JSON-like values), None when unset."""
    _need_browser()
    value = getattr(js.window, name, None)
    return None if value is None else json.loads(js.JSON.stringify(value))


def set_global(name: str, value: Any) -> None:
    """window[name] = value converted to plain JS (JSON-like values only)."""
    _need_browser()
    setattr(js.window, name, js.JSON.parse(json.dumps(value)))


_modules: dict[str, Any] = {}


async def _import(url: str) -> Any:
    """An ES module of the site (relative to its files, see `set_asset_base`), imported once."""
    url = asset_url(url)
    if url not in _modules:
        _modules[url] = await run_js("(url) => import(url)")(url)
    return _modules[url]


# ---------------------------------------------------------------- Cache API (store_bridge.mjs)

STORE_BRIDGE = "store_bridge.mjs"


class CachedFile:
    """A file held in the Cache API (verified, once a store has ensured it), read by byte range without loading it
    whole."""

    def __init__(self, blob: Any, name: str, verified: str = "") -> None:
        self._blob = blob
        self.name = name
        self.size = int(blob.size)
        self.verified = verified  # the sha256 recorded by `cache_mark_verified` when it was looked up, or ""

    async def read(self, start: int = 0, length: int | None = None) -> bytes:
        if length is None:
            length = self.size - start
        return (await self._blob.slice(*self._span(start, length)).arrayBuffer()).to_bytes()

    def _span(self, start: int, length: int) -> tuple[int, int]:
        if start < 0 or length < 0 or start + length > self.size:
            raise ValueError(f"{self.name}: bytes [{start}, {start + length}) outside the file's {self.size} bytes")
        return start, start + length


def _blob_spans(ranges: list[tuple[CachedFile, int, int]]) -> list[list]:
    """store_bridge.mjs readRanges' [blob, start, end] of (file, start, length) ranges."""
    return [[file._blob, *file._span(start, length)] for file, start, length in ranges]


async def read_ranges(ranges: list[tuple[CachedFile, int, int]]) -> bytes:
    """The bytes of many (file, start, length) ranges, concatenated, read in one call."""
    return (await (await _import(STORE_BRIDGE)).readRanges(to_js(_blob_spans(ranges)))).to_bytes()


class RowReader:
    """Byte ranges of cached files from their copies in the origin private file system (store_bridge.mjs
    openRowReader): a message to a worker instead of a Blob read per call."""

    def __init__(self, reader: Any) -> None:
        self._r = reader

    async def read(self, ranges: list[tuple[int, int, int]]) -> bytes:
        """The bytes of many (file index, start, length) ranges, concatenated; OSError where the worker fails."""
        try:
            return (await self._r.read(to_js([list(r) for r in ranges]))).to_bytes()
        except JsException as e:
            raise OSError(str(e)) from None

    def close(self) -> None:
        self._r.close()


def row_source(ranges: list[tuple[CachedFile, int, int]], reader: RowReader | None,
               copies: list[tuple[int, int, int]] | None) -> Any:
    """Where a JS caller (the kernel step) reads byte ranges itself (store_bridge.mjs readRow): the copies through
    `reader` where given, else the cached files."""
    return to_js({"reader": reader._r if reader else None, "copies": [list(c) for c in copies or []],
                  "blobs": _blob_spans(ranges)},
                 dict_converter=js.Object.fromEntries)


async def open_row_reader(cache: str, files: list[dict]) -> RowReader:
    """A RowReader over the cached files ({url, sha256, bytes} each), copied first where they have no copy yet.
    Raises OSError where the copies cannot be made or opened (no OPFS, too little storage)."""
    try:
        return RowReader(await (await _import(STORE_BRIDGE)).openRowReader(
            cache, to_js(files, dict_converter=js.Object.fromEntries)))
    except JsException as e:
        raise OSError(str(e)) from None


async def cache_mark_verified(cache: str, url: str, sha256: str) -> None:
    await (await _import(STORE_BRIDGE)).markVerified(cache, url, sha256)


async def cache_files(cache: str, urls: Mapping[str, str]) -> dict[str, CachedFile | None]:
    """The cached entry of each of {name: url}, by name (None where absent), looked up at once."""
    entries = await (await _import(STORE_BRIDGE)).cachedEntries(cache, to_js(list(urls.values())))
    return {name: None if e is None else CachedFile(e.blob, name, str(e.verified))
            for name, e in zip(urls, entries)}


async def cache_download(cache: str, url: str, on_bytes: Callable[[int], None], *, reload: bool = False) -> int:
    """Streams `url` into the cache; `on_bytes(n)` gets the running byte count. Raises OSError on HTTP errors."""
    bridge = await _import(STORE_BRIDGE)
    callback = create_proxy(lambda n: on_bytes(int(n)))
    try:
        return int(await bridge.download(cache, url, callback, reload))
    except JsException as e:
        raise OSError(f"{url}: {e}") from None
    finally:
        callback.destroy()


async def cache_sha256(cache: str, url: str) -> str | None:
    """Hex sha256 of a cached entry by crypto.subtle; None where crypto.subtle is missing (non-secure context)."""
    digest = await (await _import(STORE_BRIDGE)).sha256(cache, url)
    return None if digest is None else str(digest)


async def cache_delete(cache: str, url: str) -> bool:
    return bool(await (await _import(STORE_BRIDGE)).remove(cache, url))


async def cache_keys(cache: str) -> list[str]:
    return [str(u) for u in await (await _import(STORE_BRIDGE)).keys(cache)]


async def storage_estimate() -> dict:
    """{'usage', 'quota', 'persisted'} of this origin's storage (asks for persistent storage on the way)."""
    return (await (await _import(STORE_BRIDGE)).storageEstimate()).to_py()


# ---------------------------------------------------------------- onnxruntime-web (ort_bridge.mjs)

ORT_BRIDGE = "ort_bridge.mjs"
KERNEL_STEP = "kernel_step.mjs"

# numpy dtype → onnxruntime-web tensor type
_ORT_TYPES = {
    np.dtype(np.float32): "float32", np.dtype(np.float16): "float16", np.dtype(np.float64): "float64",
    np.dtype(np.int64): "int64", np.dtype(np.int32): "int32", np.dtype(np.int16): "int16", np.dtype(np.int8): "int8",
    np.dtype(np.uint64): "uint64", np.dtype(np.uint32): "uint32", np.dtype(np.uint16): "uint16",
    np.dtype(np.uint8): "uint8", np.dtype(np.bool_): "bool",
}
_NP_TYPES = {v: k for k, v in _ORT_TYPES.items()}


class JsTensor:
    """An onnxruntime-web tensor kept in JS: in GPU memory ('gpu-buffer') or on the wasm side ('cpu')."""

    __slots__ = ("_t", "shape", "dtype", "location")

    def __init__(self, t: Any) -> None:
        self._t = t
        self.shape = tuple(int(d) for d in t.dims)
        self.dtype = _NP_TYPES.get(str(t.type), np.dtype(object))
        self.location = str(t.location)

    def dispose(self) -> None:
        if self._t is not None:
            self._t.dispose()
            self._t = None

    def __repr__(self) -> str:
        return f"JsTensor({self.shape}, {self.dtype}, {self.location}{', disposed' if self._t is None else ''})"


class JsSession:
    """An onnxruntime-web InferenceSession with its input/output names and the log recorded at creation."""

    def __init__(self, ort: Any, session: Any, log: list[str]) -> None:
        self._ort = ort
        self._s = session
        self.input_names = [str(n) for n in session.inputNames]
        self.output_names = [str(n) for n in session.outputNames]
        self.log = log
        self.weights: Any = None  # WeightBuffers.feeds(...): inputs given to every run (the weights on WebGPU)

    async def run(self, feeds: dict[str, np.ndarray | JsTensor]) -> dict[str, JsTensor]:
        """Runs with numpy or JsTensor feeds (and `weights`); every output comes back as a JsTensor (read with
        `to_numpy`)."""
        js_feeds = js.Object.assign(js.Object.new(), self.weights) if self.weights else js.Object.new()
        for name, v in feeds.items():
            js.Reflect.set(js_feeds, name, v._t if isinstance(v, JsTensor) else _to_js_tensor(self._ort, v))
        results = await self._s.run(js_feeds)
        return {name: JsTensor(js.Reflect.get(results, name)) for name in self.output_names}

    async def release(self) -> None:
        if self._s is not None:
            await self._s.release()
            self._s = None


async def ort_load(bundle: str, ort_url: str, num_threads: int | None = None) -> Any:
    """The onnxruntime-web module of `bundle` ("webgpu" or "wasm"), its files under `ort_url` (a site folder, resolved
    absolute with `asset_url`); wasm threads `num_threads`, by default ort_bridge.mjs defaultThreads. The page may
    have started it already while booting (ort_bridge.mjs startOrt). The webgpu bundle comes with its device made
    (`ort.env.webgpu.device`), for buffers of ours that its sessions read."""
    _need_browser()
    bridge = await _import(ORT_BRIDGE)
    try:
        return await bridge.loadOrt(bundle, asset_url(ort_url), num_threads)
    except JsException as e:
        raise RuntimeError(f"onnxruntime-web ({bundle}) could not start: {e}") from None


async def ort_session(ort: Any, model: bytes, external_data: dict[str, CachedFile | bytes], options: dict,
                      *, verbose: bool = False) -> JsSession:
    """InferenceSession.create(model, options + externalData); raises RuntimeError with ORT's message."""
    bridge = await _import(ORT_BRIDGE)
    try:
        created = await bridge.createSession(ort, to_js(model), _session_options(options, external_data), verbose)
    except JsException as e:
        raise RuntimeError(f"onnxruntime-web could not create the session: {e}") from None
    log = [str(line) for line in created.log]
    return JsSession(ort, created.session, log)


def _session_options(options: dict, external_data: dict[str, CachedFile | bytes]) -> Any:
    opts = to_js(options, dict_converter=js.Object.fromEntries)
    files = js.Array.new()
    for path, data in external_data.items():
        blob = data._blob if isinstance(data, CachedFile) else to_js(data)
        files.push(to_js({"path": path, "data": blob}, dict_converter=js.Object.fromEntries))
    opts.externalData = files
    return opts


class WeightBuffers:
    """Weights uploaded to the GPU once (ort_bridge.mjs uploadWeights), fed to every session that names them."""

    def __init__(self, ort: Any, bridge: Any) -> None:
        self._ort, self._bridge = ort, bridge
        self._buffers = js.Map.new()
        self._filling: list[Any] = []  # promises of the bytes still being written

    @classmethod
    async def create(cls, ort: Any) -> WeightBuffers:
        return cls(ort, await _import(ORT_BRIDGE))

    async def upload(self, files: dict[str, CachedFile | bytes], weights: list, copies: dict | None = None) -> None:
        """Creates the buffers of the `weights` (webgemma.onnx_bytes.ExternalWeight) not uploaded yet and starts
        writing their bytes from `files` (path → file), or from their OPFS copies where `copies`
        (WebModelStore.copy_sources) has them all; `ready` waits for the bytes."""
        missing = sorted({w.location for w in weights} - set(files))
        if missing:
            raise ValueError(f"the graph's weights are in files the manifest does not list: {missing}")
        js_files = js.Map.new()
        for path, data in files.items():
            js_files.set(path, data._blob if isinstance(data, CachedFile) else to_js(data))
        try:
            started = await self._bridge.uploadWeights(self._ort, js_files,
                                                       to_js([[w.location, w.offset, w.length] for w in weights]),
                                                       self._buffers,
                                                       to_js(copies, dict_converter=js.Object.fromEntries))
        except JsException as e:
            raise RuntimeError(f"could not upload the weights to the GPU: {e}") from None
        self._filling.append(started.done)

    async def ready(self) -> None:
        """Waits until every weight's bytes are written."""
        while self._filling:
            try:
                await self._filling.pop()
            except JsException as e:
                raise RuntimeError(f"could not upload the weights to the GPU: {e}") from None

    def feeds(self, weights: list) -> Any:
        """{input name: onnxruntime-web tensor} for `weights`, as a JS object."""
        rows = [[w.name, w.location, w.offset, w.ort_type, list(w.dims)] for w in weights]
        return self._bridge.weightFeeds(self._ort, self._buffers, to_js(rows))

    def destroy(self) -> None:
        self._bridge.destroyBuffers(self._buffers)

    async def discard(self) -> None:
        """Destroys the buffers once their bytes are written (or failed to be): for a load that failed meanwhile."""
        try:
            await self.ready()
        except RuntimeError:
            pass
        self.destroy()


class JsStepSession:
    """The bridge's StepSession: a graph-captured session over fixed GPU buffers (see ort_bridge.mjs)."""

    def __init__(self, step: Any) -> None:
        self._s = step

    def copy(self, copies: list[tuple[str, int, JsTensor | str, int, int]]) -> None:
        """(cache name, byte offset, source: a tensor or one of the session's outputs by name, source byte offset,
        bytes)."""
        rows = [[dst, at, src._t.gpuBuffer if isinstance(src, JsTensor) else src, src_at, n]
                for dst, at, src, src_at, n in copies]
        self._s.copy(to_js(rows))

    async def run(self, feeds: dict[str, np.ndarray]) -> bytes:
        writes = js.Array.new()
        for name, a in feeds.items():
            a = np.ascontiguousarray(a)
            writes.push(to_js([name, _ORT_TYPES[a.dtype], list(a.shape), a.reshape(-1).view(np.uint8)]))
        return (await self._s.run(writes)).to_bytes()

    async def release(self) -> None:
        await self._s.release()


async def keep_gpu_warm(ort: Any, seconds: float) -> None:
    """One workgroup busy on onnxruntime-web's GPU device for `seconds` from now (0: stop): ort_bridge.mjs keepWarm."""
    (await _import(ORT_BRIDGE)).keepWarm(ort, seconds * 1000)


async def ort_step_session(ort: Any, model: bytes, weights: Any, options: dict, spec: dict) -> JsStepSession:
    """A StepSession (graph capture on) over `model`, whose weights are inputs fed with `weights`
    (WeightBuffers.feeds); `spec` names its fixed cache and output buffers."""
    bridge = await _import(ORT_BRIDGE)
    try:
        step = await bridge.createStepSession(ort, to_js(model), _session_options(options, {}),
                                              to_js(spec, dict_converter=js.Object.fromEntries), weights)
    except JsException as e:
        raise RuntimeError(f"onnxruntime-web could not create the step session: {e}") from None
    return JsStepSession(step)


class JsKernelStep(JsStepSession):
    """kernel_step.mjs's KernelStep: the decode step as hand-written kernels (webgemma.kernel_plan). Its copies come
    from a prefill's tensors only: it writes its own new rows into the caches."""

    async def run(self, block: bytes, row: Any = None) -> bytes:
        """row: where the step reads the token's per-layer row itself (`row_source`), when the block lacks it."""
        return await self._result(self._s.run(to_js(block), row))

    def submit(self, block: bytes, chained: bool) -> Awaitable[bytes]:
        """Queues a step now (the per-layer table on the GPU); await the result later. chained: its token is the one
        the step before sampled."""
        return self._result(self._s.submit(to_js(block), None, chained))

    @staticmethod
    async def _result(promise: Any) -> bytes:
        try:
            return (await promise).to_bytes()
        except JsException as e:
            raise RuntimeError(str(e)) from None

    def write(self, at: int, words: np.ndarray) -> None:
        self._s.write(at, to_js(np.ascontiguousarray(words, np.uint32)))

    def prefill_rows(self, ids: list[int]) -> tuple[JsTensor, JsTensor]:
        """A prefill chunk's per-layer rows from the table on the GPU: (int4 data, float32 scales) tensors."""
        rows, scales = self._s.prefillRows(to_js(np.asarray(ids, np.uint32)))
        return JsTensor(rows), JsTensor(scales)

    async def upload_table(self, files: list[tuple[CachedFile, int, int]], row_bytes: int) -> None:
        """The per-layer table onto the GPU: its (file, first row, rows). Raises RuntimeError where it cannot be."""
        try:
            await self._s.uploadTable(to_js([[f._blob, first, rows] for f, first, rows in files]), row_bytes)
        except JsException as e:
            raise RuntimeError(str(e)) from None

    def configure(self, *, time_steps: bool, encode_ahead: bool, submits: int | None) -> None:
        self._s.configure(to_js({"timeSteps": time_steps, "encodeAhead": encode_ahead, "submits": submits},
                                dict_converter=js.Object.fromEntries))

    async def profile(self, omit: list[list[int]]) -> dict | None:
        """GPU nanoseconds of the last step run again: kernel_step.mjs profile (None without timestamp queries)."""
        out = await self._s.profile(to_js(omit))
        return None if out is None else out.to_py()


async def subgroups_usable(ort: Any) -> bool:
    """Whether the kernels may use the WebGPU device's subgroups (kernel_step.mjs subgroupsUsable)."""
    return bool(await (await _import(KERNEL_STEP)).subgroupsUsable(ort))


async def kernel_step(ort: Any, weights: WeightBuffers, inputs: list, plan: Any) -> JsKernelStep:
    """The KernelStep of `plan` (webgemma.kernel_plan.KernelPlan) over the uploaded weights, named by the step graph's
    weight inputs (webgemma.onnx_bytes.ExternalWeight)."""
    module = await _import(KERNEL_STEP)
    keys = {w.name: f"{w.location}@{w.offset}" for w in inputs}
    js_plan = {"act_words": plan.act_words, "constants": [plan.constants[0], to_js(plan.constants[1])], "caches": plan.caches,
               "dispatches": [[d.kernel, d.bindings, to_js(d.uniform), list(d.grid), d.constants] for d in plan.dispatches],
               "block": list(plan.block), "output": list(plan.output), "row": list(plan.row), "tail": plan.tail,
               "table": list(plan.table)}
    try:
        step = await module.createKernelStep(ort, weights._buffers, to_js(keys, dict_converter=js.Object.fromEntries),
                                             to_js(js_plan, dict_converter=js.Object.fromEntries))
    except JsException as e:
        raise RuntimeError(f"the kernel step could not be created: {e}") from None
    return JsKernelStep(step)


async def to_numpy(t: JsTensor) -> np.ndarray:
    """Copies a tensor into numpy (downloading it from the GPU if it lives there)."""
    return _to_numpy(await (await _import(ORT_BRIDGE)).tensorBytes(t._t), t.shape, t.dtype)


def _to_js_tensor(ort: Any, a: np.ndarray) -> Any:
    a = np.ascontiguousarray(a)
    kind = _ORT_TYPES.get(a.dtype)
    if kind is None:
        raise TypeError(f"dtype {a.dtype} has no onnxruntime-web tensor type")
    flat = a.reshape(-1)
    if kind == "float16":
        flat = flat.view(np.uint16)
    elif kind == "bool":
        flat = flat.view(np.uint8)
    return ort.Tensor.new(kind, to_js(flat), to_js(list(a.shape)))


def _to_numpy(data: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """`data`: the tensor's bytes as a Uint8Array (see ort_bridge.tensorBytes)."""
    out = np.empty(shape, dtype)
    data.assign_to(out.reshape(-1).view(np.uint8))
    return out
