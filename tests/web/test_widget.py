"""The documentation widget (<webgemma-chat>, web/widget/ + py/webgemma/widget.py) in Debian's Chromium, offline,
on the built-in model: the MkDocs and Sphinx examples built here by their own tools, the plain HTML example with
two boxes, a long page, a model and widget on another origin, a missing model, and WebGPU.

Before a reader starts a box, the widget's two small files are all that load; then one Pyodide and one copy of
each model serve every box on the page."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import pytest

from tests.support.warmth import stop_spin, wait_for_spin
from webgemma_site.build import build_site
from webgemma_site.serve import SiteHandler

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
TINY = REPO / "models" / "tiny"
WIDGET_FILES = {"widget.mjs", "widget.css"}
BEFORE_CLICK_LIMIT = 30_000  # bytes the widget may add to a page's first load
TIMEOUT_MS = 180_000
WASM_TOKENS, WEBGPU_TOKENS = 12, 3  # SwiftShader's WebGPU runs about a token a second
QUESTION = "Does the next section say how it is used?"


# ---------------------------------------------------------------- sites


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The built-in model exported to int4 (blocks of 16, which divide its hidden size), or a random tiny checkpoint
    while it is missing (being retrained)."""
    from webgemma_export.export import export

    base = tmp_path_factory.mktemp("widget-model")
    checkpoint = TINY
    if not (TINY / "config.json").is_file():
        from tests.support.checkpoints import make_checkpoint

        checkpoint = make_checkpoint(base / "checkpoint", kind="e2b")
    return export(checkpoint, base / "tiny-int4", quant="int4", log=lambda _: None)


def example(name: str, tmp: Path) -> Path:
    skip = shutil.ignore_patterns("webgemma", "site", "_build")  # what the builders write
    return Path(shutil.copytree(EXAMPLES / name, tmp / name, ignore=skip))


@pytest.fixture(scope="module")
def mkdocs_site(model, tmp_path_factory, serve_dir):
    src = example("mkdocs", tmp_path_factory.mktemp("mkdocs"))
    build_site(model, src / "docs" / "webgemma")
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(src / "mkdocs.yml"),
                    "-d", str(src / "site")], check=True)
    return serve_dir(src / "site")


@pytest.fixture(scope="module")
def sphinx_site(model, tmp_path_factory, serve_dir):
    src = example("sphinx", tmp_path_factory.mktemp("sphinx"))
    build_site(model, src / "_static" / "webgemma")
    subprocess.run([sys.executable, "-m", "sphinx", "-W", "-q", str(src), str(src / "_build" / "html")], check=True)
    return serve_dir(src / "_build" / "html")


LONG_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Persuasion</title>
<script type="module" src="webgemma/widget.mjs"></script></head>
<body><nav>Home · Novels</nav><main><h1>Persuasion (excerpt)</h1><pre id="text"></pre>
<webgemma-chat context="page" backend="wasm" temperature="0" max-new-tokens="8"></webgemma-chat></main>
<script>document.getElementById("text").textContent = TEXT;</script></body></html>"""

MISSING_MODEL_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>missing</title>
<script type="module" src="webgemma/widget.mjs"></script></head>
<body><webgemma-chat model="no-such-model/" backend="wasm"></webgemma-chat></body></html>"""


@pytest.fixture(scope="module")
def plain_site(model, tmp_path_factory, serve_dir):
    """The plain HTML example, plus a long page and a page whose model is missing."""
    src = example("plain-html", tmp_path_factory.mktemp("plain"))
    build_site(model, src / "webgemma")
    text = (REPO / "models" / "heldout.txt").read_text()
    (src / "long.html").write_text(LONG_PAGE.replace("TEXT", json.dumps(text).replace("</", "<\\/")))
    (src / "missing.html").write_text(MISSING_MODEL_PAGE)
    # a copy of the site that lost pyodide.asm.wasm
    shutil.copytree(src / "webgemma", src / "broken", ignore=shutil.ignore_patterns("pyodide.asm.wasm"))
    (src / "broken.html").write_text(MISSING_MODEL_PAGE.replace("webgemma/widget.mjs", "broken/widget.mjs"))
    return serve_dir(src)


# ---------------------------------------------------------------- driving the widget


def open_page(offline_context, site, path: str = ""):
    context, traffic = offline_context(site.url)
    page = context.new_page()
    page.goto(site.url + path)
    page.wait_for_load_state("networkidle")
    page.evaluate("""() => {
        window.replies = [];
        document.addEventListener("webgemma-reply", (e) => window.replies.push({box: [...document.querySelectorAll(
            "webgemma-chat")].indexOf(e.target), ...e.detail}));
    }""")
    return page, traffic


RECORD_TEXTS = """() => {  // window.shown: every status and progress text the first box shows, in order
    const root = document.querySelector("webgemma-chat").shadowRoot;
    window.shown = [];
    new MutationObserver(() => {
        for (const el of root.querySelectorAll(".status, .progress-text")) {
            if (el.textContent && !window.shown.includes(el.textContent)) window.shown.push(el.textContent);
        }
    }).observe(root, {subtree: true, childList: true, characterData: true});
}"""


def configure(page, **attributes) -> None:
    """Sets attributes on every box (read when the box starts): wasm and greedy decoding for the tests."""
    page.evaluate("""(attrs) => document.querySelectorAll("webgemma-chat").forEach(
        (el) => Object.entries(attrs).forEach(([k, v]) => el.setAttribute(k, v)))""",
                  {k.replace("_", "-"): str(v) for k, v in attributes.items()})


def start(page, box: int = 0) -> None:
    page.locator("webgemma-chat").nth(box).locator("button.start").click()


def wait_state(page, box: int, *states: str) -> str:
    page.wait_for_function("([i, states]) => states.includes(document.querySelectorAll('webgemma-chat')[i]"
                           "?.dataset.state)", arg=[box, list(states)], timeout=TIMEOUT_MS)
    return page.evaluate("i => document.querySelectorAll('webgemma-chat')[i].dataset.state", box)


def ready(page, box: int = 0) -> None:
    state = wait_state(page, box, "ready", "error")
    assert state == "ready", page.locator("webgemma-chat").nth(box).locator(".status").text_content()


def ask(page, box: int, text: str) -> None:
    prompt = page.locator("webgemma-chat").nth(box).locator("textarea")
    prompt.fill(text)
    prompt.press("Enter")


def replies(page, count: int) -> list[dict]:
    page.wait_for_function("n => window.replies.length >= n", arg=count, timeout=TIMEOUT_MS)
    return page.evaluate("window.replies")


def cli(model: Path, prompt: str, tokens: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "webgemma.cli", "generate", str(model), prompt, "--temperature", "0",
                          "--max-new-tokens", str(tokens), "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def native_model(folder: Path):
    """The model on onnxruntime (CPU), loaded in a thread of its own: Playwright's loop runs in this one."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from webgemma.backends.ort_native import NativeBackend
    from webgemma.model import load_model
    from webgemma.storage_local import LocalStore

    load = load_model(LocalStore(folder), lambda m: NativeBackend(folder, m))
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, load).result()


def bytes_loaded(page) -> dict[str, int]:
    """URL → bytes transferred (headers and body), from the page's resource timing."""
    return page.evaluate("""() => Object.fromEntries(performance.getEntriesByType("resource")
        .map((e) => [e.name.split("?")[0], e.transferSize]))""")


def widget_requests(traffic, prefix: str) -> list[str]:
    return [u.split("?")[0].removeprefix(prefix) for u in traffic.requests if u.startswith(prefix)]


# ---------------------------------------------------------------- tests


def test_the_site_carries_the_widget(model, tmp_path):
    site = build_site(model, tmp_path / "site")
    assert all((site / name).is_file() for name in WIDGET_FILES)
    assert sum((site / name).stat().st_size for name in WIDGET_FILES) < 12_000


def test_mkdocs_page_loads_only_the_widget_until_started_then_answers(mkdocs_site, model, offline_context):
    page, traffic = open_page(offline_context, mkdocs_site)
    assets = mkdocs_site.url + "webgemma/"
    assert page.locator("webgemma-chat button.start").text_content() == "Start the model"
    before = widget_requests(traffic, assets)
    assert sorted(before) == sorted(WIDGET_FILES), before  # no Pyodide, no onnxruntime, no model
    sizes = {url: n for url, n in bytes_loaded(page).items() if url.startswith(assets)}
    assert len(sizes) == 2 and 0 < sum(sizes.values()) < BEFORE_CLICK_LIMIT, sizes

    configure(page, backend="wasm", temperature=0, max_new_tokens=WASM_TOKENS)
    page.evaluate(RECORD_TEXTS)
    start(page)
    ready(page)
    texts = page.evaluate("window.shown")
    assert "Loading Python…" in texts and any(t.startswith("Loading numpy, jinja2, webgemma") for t in texts)
    manifest = json.loads((model / "manifest.json").read_text())
    assert any(t.startswith(f"downloading {manifest['decoder']['graph']['path']}: 0.0 of ") and "MiB (0%)" in t
               for t in texts), texts
    assert texts[-1].startswith("Ready: ")
    # typed key by key: the MkDocs theme's shortcuts ("s" search, "n" next page) must not see these keys
    page.locator("webgemma-chat textarea").click()
    page.keyboard.type(QUESTION)
    page.keyboard.press("Enter")
    reply = replies(page, 1)[0]
    expected = cli(model, QUESTION, WASM_TOKENS)
    assert (reply["prompt_ids"], reply["output_ids"], reply["text"]) == \
        (expected["prompt_ids"], expected["output_ids"], expected["text"])
    box = page.locator("webgemma-chat")
    assert box.locator(".message.model .text").text_content() == expected["text"]
    assert "tokens/s · wasm" in box.locator(".stats").text_content()
    assert traffic.count("webgemma/pyodide/pyodide.asm.wasm") == 1


def test_sphinx_page_by_keyboard_alone(sphinx_site, offline_context):
    page, _ = open_page(offline_context, sphinx_site)
    configure(page, backend="wasm", temperature=0, max_new_tokens=1000)
    focused = "() => document.activeElement?.shadowRoot?.activeElement?.className ?? ''"
    for _ in range(60):  # Tab through the page's links to the widget's button
        page.keyboard.press("Tab")
        if page.evaluate(focused) == "start":
            break
    else:
        pytest.fail("Tab never reached the widget's start button")
    page.keyboard.press("Enter")
    ready(page)
    assert page.evaluate("() => document.activeElement.shadowRoot.activeElement.tagName") == "TEXTAREA"
    box = page.locator("webgemma-chat")
    assert box.locator(".note").text_content().startswith("Using the page's text (")
    page.keyboard.type("Who keeps the light?")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("And when?")
    page.keyboard.press("Enter")
    assert box.locator(".message.user .text").text_content() == "Who keeps the light?\nAnd when?"
    page.wait_for_function("""() => document.querySelector("webgemma-chat").shadowRoot
        .querySelector(".message.model .text").textContent.length > 10""", timeout=TIMEOUT_MS)
    page.keyboard.press("Escape")
    reply = replies(page, 1)[0]
    assert reply["finish_reason"] == "cancelled" and len(reply["output_ids"]) < 1000
    assert "stopped" in box.locator(".stats").text_content()
    assert wait_state(page, 0, "ready") == "ready"
    # the prompt held the page's text (the system turn), counted by the note
    assert len(reply["prompt_ids"]) > 60


def test_two_boxes_share_one_pyodide_and_one_model(plain_site, model, offline_context):
    page, traffic = open_page(offline_context, plain_site)
    configure(page, backend="wasm", temperature=0, max_new_tokens=WASM_TOKENS)
    start(page, 0)
    start(page, 1)  # while the first is still booting
    ready(page, 0)
    ready(page, 1)
    ask(page, 0, "Hello there")
    ask(page, 1, "What does beam return?")  # waits for the first box's turn
    got = sorted(replies(page, 2), key=lambda r: r["box"])
    expected = cli(model, "Hello there", WASM_TOKENS)
    assert (got[0]["prompt_ids"], got[0]["output_ids"]) == (expected["prompt_ids"], expected["output_ids"])
    assert got[1]["output_ids"] and len(got[1]["prompt_ids"]) > 100  # the page's text, not the other conversation
    assert traffic.count("webgemma/pyodide/pyodide.asm.wasm") == 1
    manifest = json.loads((model / "manifest.json").read_text())
    for f in manifest["decoder"]["external_data"] + manifest["per_layer_table"]["files"]:
        assert traffic.count("webgemma/model/" + f["path"]) == 1, f["path"]
    assert traffic.count("webgemma/vendor/ort/ort-wasm-simd-threaded.wasm") == 1
    # each box keeps its own conversation: a second turn in the first box does not see the second box's
    ask(page, 0, "And then?")
    second = replies(page, 3)[2]
    assert second["box"] == 0 and second["prompt_ids"][:len(expected["prompt_ids"])] == expected["prompt_ids"]


def test_a_long_page_is_cut_with_a_note(plain_site, model, offline_context):
    from webgemma.widget import fit_page

    page, _ = open_page(offline_context, plain_site, "long.html")
    start(page)
    ready(page)
    note = page.locator("webgemma-chat .note").text_content()
    # the same cut as CPython's, on the page's text as the browser renders it
    text = page.evaluate("document.querySelector('main').innerText")
    m = native_model(model)
    ctx = fit_page(m.tokenizer, m.template, text, max_context=m.engine.max_context, max_new_tokens=8)
    assert ctx.truncated and note == f"Using the first {ctx.used:,} of {ctx.total:,} tokens of the page."
    ask(page, 0, "Who is Anne?")
    reply = replies(page, 1)[0]
    assert reply["output_ids"] and len(reply["prompt_ids"]) < m.engine.max_context - 8


def test_a_missing_model_is_reported_in_the_box(plain_site, offline_context):
    page, _ = open_page(offline_context, plain_site, "missing.html")
    start(page)
    assert wait_state(page, 0, "ready", "error") == "error"
    box = page.locator("webgemma-chat")
    status = box.locator(".status").text_content()
    assert "Could not start the model" in status and "no-such-model/manifest.json" in status and "404" in status
    assert box.locator("button.start").text_content() == "Try again"


def test_a_missing_runtime_file_is_reported_in_the_box(plain_site, offline_context):
    page, _ = open_page(offline_context, plain_site, "broken.html")
    start(page)
    assert wait_state(page, 0, "ready", "error") == "error"
    status = page.locator("webgemma-chat .status").text_content()
    wasm = f"{plain_site.url}broken/pyodide/pyodide.asm.wasm"
    assert status == f"Could not start the model: could not load {wasm} (HTTP 404)"
    assert page.locator("webgemma-chat button.start").text_content() == "Try again"


class CorsHandler(SiteHandler):
    """A model host for pages on other origins: CORS for every file, CORP cross-origin for pages under COEP."""

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Cross-Origin-Resource-Policy", "cross-origin")
        self.send_header("Cache-Control", "no-cache")
        http.server.SimpleHTTPRequestHandler.end_headers(self)


EIGHT_CORES = "Object.defineProperty(Navigator.prototype, 'hardwareConcurrency', {get: () => 8});"

CROSS_ORIGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>docs</title>
<script type="module" src="ASSETS/widget.mjs"></script></head>
<body><main><p>foo(x) returns the bar of x.</p>
<webgemma-chat model="ASSETS/model/" context="page" backend="wasm" temperature="0" max-new-tokens="4"></webgemma-chat>
</main></body></html>"""


@pytest.fixture
def cross_origin(model, tmp_path, serve_dir):
    """(docs site, assets URL): the webgemma site with its model on one localhost port, a docs page under
    COOP/COEP on another (another origin)."""
    assets = build_site(model, tmp_path / "assets")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(CorsHandler, directory=str(assets)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    assets_url = f"http://127.0.0.1:{server.server_address[1]}/"
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.html").write_text(CROSS_ORIGIN_PAGE.replace("ASSETS/", assets_url))
    yield serve_dir(docs), assets_url
    server.shutdown()
    server.server_close()


def test_widget_and_model_on_another_origin(cross_origin, chromium):
    from tests.conftest import open_offline_context

    docs, assets = cross_origin
    # both localhost origins and nothing else; 8 cores claimed, so that onnxruntime-web runs its wasm on 4 threads,
    # whose workers it must start from the other origin's files
    context, traffic = open_offline_context(chromium, "http://127.0.0.1:", EIGHT_CORES)
    try:
        page = context.new_page()
        page.goto(docs.url)
        page.wait_for_load_state("networkidle")
        assert page.evaluate("crossOriginIsolated")  # the docs page runs under COEP: require-corp
        assert sorted(widget_requests(traffic, assets)) == sorted(WIDGET_FILES)
        page.evaluate("window.replies = []; document.addEventListener('webgemma-reply', e => replies.push(e.detail))")
        start(page)
        ready(page)
        ask(page, 0, "What does foo return?")
        assert replies(page, 1)[0]["output_ids"]
        # onnxruntime-web's wasm threads: workers started from blob copies of the other origin's module
        workers = [w.url for w in page.workers]
        assert len(workers) >= 3 and all(u.startswith(f"blob:{docs.url.rstrip('/')}") for u in workers), workers
        loaded = widget_requests(traffic, assets)
        assert "pyodide/pyodide.asm.wasm" in loaded and "model/manifest.json" in loaded
        assert not [u for u in traffic.requests if u.startswith(docs.url) and u != docs.url]  # all from the assets host
    finally:
        context.close()
    assert traffic.external == []


def test_webgpu_generation_through_the_widget(plain_site, model, offline_context):
    page, _ = open_page(offline_context, plain_site)
    configure(page, backend="webgpu", temperature=0, max_new_tokens=WEBGPU_TOKENS)
    start(page)
    ready(page)
    assets = "document.querySelector('script[src$=\"widget.mjs\"]').src.replace('widget.mjs', '')"
    bridge = f"import({assets} + 'ort_bridge.mjs')"
    page.locator("webgemma-chat form textarea").hover()  # the pointer on its way keeps the GPU's clocks up
    wait_for_spin(page, bridge)
    spun = stop_spin(page, bridge)
    page.locator("webgemma-chat textarea").press_sequentially("Hi")  # and so do keystrokes
    wait_for_spin(page, bridge, since=spun)
    ask(page, 0, "Hello there")
    reply = replies(page, 1)[0]
    expected = cli(model, "Hello there", WEBGPU_TOKENS)
    assert reply["backend"] == "webgpu"
    assert (reply["prompt_ids"], reply["output_ids"]) == (expected["prompt_ids"], expected["output_ids"])
