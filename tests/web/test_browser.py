"""The page in headless Chromium, offline: boot, onnxruntime-web on WebGPU and wasm against onnxruntime CPU,
node placement, the Cache API model store, and the fallback to wasm without WebGPU."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from tiny_web_model import TABLE, cpu_reference, step_inputs
from web_pages import open_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

STEPS = 4

# Runs the KV-like graph for ARGS["steps"] with the cache fed back from device memory; returns the logits of every
# step, the final cache read back, and how the backend was chosen.
RUN_STEPS = """
import numpy as np
from webgemma.storage_web import WebModelStore
from webgemma.backends.ort_web import OrtWebBackend

store = WebModelStore(ARGS["model_url"])
await store.ensure(ARGS["files"])
backend = await OrtWebBackend.create(await store.read("decoder.onnx"),
                                     {"weights/decoder.bin": store.file("weights/decoder.bin")},
                                     host_outputs=["logits"], ep=ARGS["ep"], verbose_log=True,
                                     num_threads=ARGS["threads"])
past = np.zeros((1, 2, 0, 4), np.float32)
logits, kinds = [], []
for feeds in ARGS["steps"]:
    out = await backend.run({"past": past, "x": np.array(feeds["x"], np.float32), "a": np.array(feeds["a"], np.float32),
                             "pos": np.array(feeds["pos"], np.int64)}, ["logits"])
    backend.release(past)
    past = out["present"]
    logits.append(out["logits"].tolist())
    kinds.append([type(out["logits"]).__name__, type(past).__name__, getattr(past, "location", None)])
present = (await backend.to_numpy(past)).tolist()
backend.release(past)
{"name": backend.name, "notice": backend.notice, "logits": logits, "present": present, "kinds": kinds,
 "placement": backend.placement.counts, "nodes": backend.placement.nodes, "log_lines": len(backend.creation_log)}
"""


def run_steps(pp, model_folder, ep: str, threads: int | None = None) -> tuple[dict, list, np.ndarray]:
    folder, files = model_folder
    inputs = step_inputs(STEPS)
    result = pp.py(RUN_STEPS, model_url="model/", files=files, ep=ep, threads=threads,
                   steps=[{k: v.tolist() for k, v in step.items()} for step in inputs])
    ref_logits, ref_present = cpu_reference(folder, inputs)
    return result, ref_logits, ref_present


def test_boot_offline(checked_page):
    ready = checked_page.ready
    assert ready["python"].startswith("3.12.")
    assert ready["numpy"] == "2.0.2"
    assert ready["jinja2"] and ready["webgemma"]
    assert ready["cross_origin_isolated"] is True  # the site server sends COOP/COEP
    assert ready["webgpu"] and ready["webgpu"]["architecture"] == "swiftshader"
    assert checked_page.page.text_content("#status").startswith("ready")
    bad = [(u, s) for u, s in checked_page.traffic.responses if s is None or s >= 400]
    assert bad == [] and checked_page.traffic.failed == [], (bad, checked_page.traffic.failed)
    # jinja2 renders in the page (markupsafe's pure-Python escape) and the runtime wheel is importable
    assert checked_page.py("import jinja2; jinja2.Template('{{ x|e }}').render(x='<b>')") == "&lt;b&gt;"
    assert checked_page.py("import markupsafe; markupsafe._escape_inner.__module__") == "markupsafe._native"


def test_boot_error_is_shown_as_text(site, serve_dir, offline_context, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(site.root, broken, ignore=shutil.ignore_patterns("pyodide.asm.wasm", "model*"))
    served = serve_dir(broken)
    context, _ = offline_context(served.url)
    page = context.new_page()
    page.goto(served.url)
    page.wait_for_selector("#status.error", timeout=30_000)
    assert page.text_content("#status") == "error: could not load /pyodide/pyodide.asm.wasm (HTTP 404)"


@pytest.mark.parametrize("ep", ["webgpu", "wasm"])
def test_backend_matches_onnxruntime_cpu(checked_page, model_folder, ep):
    # the page is crossOriginIsolated: wasm runs with 2 threads (ORT's default would pick 1 on 2 cores)
    result, ref_logits, ref_present = run_steps(checked_page, model_folder, ep, threads=2)
    assert result["name"] == ep and result["notice"] is None
    for step, (got, want) in enumerate(zip(result["logits"], ref_logits, strict=True)):
        np.testing.assert_allclose(np.array(got), want, rtol=1e-5, atol=1e-5, err_msg=f"{ep} step {step}")
    np.testing.assert_array_equal(np.array(result["present"], np.float32), ref_present)
    location = "gpu-buffer" if ep == "webgpu" else "cpu"
    assert result["kinds"] == [["ndarray", "JsTensor", location]] * STEPS


def test_all_nodes_placed_on_webgpu(checked_page, model_folder):
    result, _, _ = run_steps(checked_page, model_folder, "webgpu")
    assert result["placement"] == {"WebGpuExecutionProvider": 7}, result["nodes"]


def test_placement_names_nodes_that_fall_back(checked_page):
    placement = checked_page.py("""
from webgemma import browser
from webgemma.backends.ort_web import OrtWebBackend
backend = await OrtWebBackend.create(await browser.fetch_bytes("model/cpu_op.onnx"), ep="webgpu",
                                     host_outputs=["u", "r"], verbose_log=True)
p = backend.placement
{"all_on": p.all_on, "cpu": p.nodes.get("CPUExecutionProvider")}
""")
    assert placement == {"all_on": None, "cpu": ["Unique ()"]}


def test_staged_top_k_on_webgpu_equals_numpy(checked_page):
    # the exporter's top-k for Gemma's vocabulary: every node on WebGPU (graph capture needs it), numpy's order
    result = checked_page.py("""
import numpy as np
from webgemma import browser
from webgemma.backends.ort_web import OrtWebBackend
backend = await OrtWebBackend.create(await browser.fetch_bytes("model/top_k.onnx"), ep="webgpu",
                                     host_outputs=["top_values", "top_ids"], verbose_log=True)
logits = np.random.default_rng(7).standard_normal((1, 262144)).astype(np.float32)
out = await backend.run({"logits": logits}, ["top_values", "top_ids"])
want = np.argsort(-logits[0], kind="stable")[:64]
{"placement": backend.placement.counts, "nodes": backend.placement.nodes, "ids": out["top_ids"][0].tolist(), "want": want.tolist(),
 "values_equal": bool((out["top_values"][0] == logits[0, want]).all())}
""")
    assert list(result["placement"]) == ["WebGpuExecutionProvider"], result["nodes"]
    assert result["ids"] == result["want"] and result["values_equal"]


def test_optimizer_options_reach_ort(checked_page):
    applied = checked_page.py("""
from webgemma import browser
from webgemma.backends.ort_web import OrtWebBackend
model = await browser.fetch_bytes("model/decoder.onnx")
weights = await browser.fetch_bytes("model/weights/decoder.bin")  # external data as bytes, not a cached file
applied = {}
for name, options in [("all", {}), ("no_folding", {"disabled_optimizers": ["ConstantFolding"]}),
                      ("disabled", {"graph_optimization": "disabled"})]:
    backend = await OrtWebBackend.create(model, {"weights/decoder.bin": weights}, ep="wasm", verbose_log=True,
                                         **options)
    applied[name] = sorted({line.split("Applying graph transformer ")[1].split()[0]
                            for line in backend.creation_log if "Applying graph transformer" in line})
applied
""")
    assert "ConstantFolding" in applied["all"]
    assert "ConstantFolding" not in applied["no_folding"] and len(applied["no_folding"]) > 10
    assert applied["disabled"] == []


def test_run_rejects_bad_feeds(checked_page, model_folder):
    _, files = model_folder
    message = checked_page.py("""
import numpy as np
from webgemma.storage_web import WebModelStore
from webgemma.backends.ort_web import OrtWebBackend
store = WebModelStore("model/")
await store.ensure(ARGS["files"], reverify=False)
backend = await OrtWebBackend.create(await store.read("decoder.onnx"),
                                     {"weights/decoder.bin": store.file("weights/decoder.bin")}, ep="wasm")
errors = []
for feeds in [{"x": np.zeros((1, 2, 1, 4), np.float32)},
              {"past": np.zeros((1, 2, 0, 4), np.float32), "x": np.zeros((1, 2, 1, 4), np.float32),
               "a": np.zeros((1, 63), np.float32), "pos": np.zeros(1, np.int64)}]:
    try:
        await backend.run(feeds, ["logits"])
    except (ValueError, RuntimeError) as e:
        errors.append(str(e))
errors
""", files=files)
    assert "missing ['past', 'a', 'pos']" in message[0]
    assert "a: (1, 63) float32" in message[1]  # ORT's shape error comes back with the feeds' shapes


def test_numpy_js_conversions_round_trip(checked_page):
    result = checked_page.py("""
import numpy as np
from webgemma import browser
ort = await browser.ort_load("webgpu", "vendor/ort/", 1)
out = {}
for dtype in ["float32", "float16", "int64", "int32", "int8", "uint8", "bool"]:
    a = (np.arange(-6, 6).reshape(3, 4) * 1.5).astype(dtype)
    t = browser.JsTensor(browser._to_js_tensor(ort, a))
    back = await browser.to_numpy(t)
    out[dtype] = [str(back.dtype), list(back.shape), bool(np.array_equal(a, back))]
out
""")
    assert result == {d: [d, [3, 4], True] for d in result} and len(result) == 7


def test_onnxruntime_keeps_its_webgpu_device_across_sessions(checked_page):
    """The weights are uploaded to onnxruntime-web's device before the model's session exists: the device that
    ort_load hands out must be the one later sessions run on, even after every other session is released (onnxruntime
    drops its device with its last session: ort_bridge.mjs keeps the start session)."""
    result = checked_page.py("""
import js
from webgemma import browser
from webgemma.onnx_bytes import identity_model
ort = await browser.ort_load("webgpu", "vendor/ort/", 1)
device = ort.env.webgpu.device
lost = []
device.lost.then(lambda info: lost.append(str(info.message)))
for _ in range(2):
    session = await browser.ort_session(ort, identity_model(), {}, {"executionProviders": ["webgpu"]})
    await session.release()
await js.Promise.new(lambda resolve, reject: js.setTimeout(resolve, 100))
[device is not None and ort.env.webgpu.device == device, lost]
""")
    assert result == [True, []]


# ---------------------------------------------------------------- storage

ENSURE = """
from webgemma.storage_web import WebModelStore, ModelFileError
store = WebModelStore(ARGS["model_url"])
events = []
try:
    report = await store.ensure(ARGS["files"], events.append)
except ModelFileError as e:
    result = {"error": str(e), "files": e.files}
else:
    ranges = [(await store.read_range(ARGS["table"], start, n)).hex() for start, n in ARGS["ranges"]]
    batched = [b.hex() for b in await store.read_ranges([(ARGS["table"], start, n) for start, n in ARGS["ranges"]])]
    result = {"report": report.__dict__, "ranges": ranges, "batched": batched,
              "phases": sorted({e.phase for e in events}),
              "last": {p: [e.done, e.total, e.percent] for e in events for p in [e.phase]}}
result
"""

RANGES = [(0, 16), (12340, 10), ((3 << 20) - 7, 7)]


def ensure(pp, files, model_url="model/"):
    return pp.py(ENSURE, model_url=model_url, files=files, table=TABLE, ranges=RANGES)


def test_store_downloads_once_verifies_and_repairs(site, model_folder, offline_context):
    folder, files = model_folder
    table = (folder / TABLE).read_bytes()
    pp = open_page(offline_context, site)
    traffic = pp.traffic

    first = ensure(pp, files)
    total = sum(f["bytes"] for f in files)
    assert first["report"]["downloaded"] == [f["path"] for f in files]
    assert first["report"]["refetched"] == []
    assert first["report"]["verified_bytes"] == total
    assert first["phases"] == ["download", "verify"]
    assert first["last"]["download"] == [total, total, 100.0]
    assert first["ranges"] == first["batched"] == [table[s:s + n].hex() for s, n in RANGES]
    assert all(traffic.count(f"model/{f['path']}") == 1 for f in files)

    pp.reload()  # a second visit: everything comes from the cache, and is verified again
    before = len(traffic.requests)
    second = ensure(pp, files)
    assert second["report"]["downloaded"] == [] and second["report"]["refetched"] == []
    assert second["report"]["verified_bytes"] == total
    assert [u for u in traffic.requests[before:] if "/model/" in u] == []

    # a cached shard damaged in place (same size): named, deleted, fetched again once
    pp.page.evaluate("""async ([url, size]) => {
        const cache = await caches.open("webgemma-model");
        const bytes = new Uint8Array(size); bytes[0] = 1;
        await cache.put(url, new Response(bytes));
    }""", [site.url + "model/" + TABLE, len(table)])
    third = ensure(pp, files)
    assert third["report"]["refetched"] == [TABLE] and third["report"]["downloaded"] == []
    assert third["phases"] == ["refetch", "verify"]
    assert traffic.count(f"model/{TABLE}") == 2
    assert third["ranges"] == [table[s:s + n].hex() for s, n in RANGES]

    # a file outside the list (the manifest) is read network-first, from the cache when the network fails
    read_manifest = ('from webgemma.storage_web import WebModelStore\n'
                     '(await WebModelStore("model/").read("files.json")).decode()')
    assert pp.py(read_manifest) == (folder / "files.json").read_text()
    pp.page.route("**/model/files.json", lambda route: route.abort())
    assert pp.py(read_manifest) == (folder / "files.json").read_text()


COPIES = ENSURE + """
store.start_copies([ARGS["table"]])
await store.copying
result["copies"] = store.copies
result["from_copies"] = [b.hex() for b in await store.read_ranges([(ARGS["table"], s, n) for s, n in ARGS["ranges"]])]
again = WebModelStore(ARGS["model_url"])  # a second store (another visit) opens the copies made by the first
await again.ensure(ARGS["files"], reverify=False)
again.start_copies([ARGS["table"]])
await again.copying
result["again"] = [again.copies, (await again.read_ranges([(ARGS["table"], 5, 3)]))[0].hex()]
again._copies[0].close()  # as if its worker had died: the Cache API serves the ranges, the store says why
result["after_failure"] = [(await again.read_ranges([(ARGS["table"], 5, 3)]))[0].hex(), again.copies]
# a JS reader of ranges (the kernel step's row): from the copies, and from the Cache API once the reader is closed
from webgemma import browser
bridge = await browser._import(browser.STORE_BRIDGE)
source = store.range_source([(ARGS["table"], 7, 4)])
result["js_reads"] = [(await bridge.readRow(source)).to_bytes().hex()]
store._copies[0].close()
result["js_reads"].append((await bridge.readRow(source)).to_bytes().hex())
result
"""


def test_store_reads_ranges_from_copies_in_opfs(site, model_folder, offline_context):
    folder, files = model_folder
    table = (folder / TABLE).read_bytes()
    result = open_page(offline_context, site).py(COPIES, model_url="model/", files=files, table=TABLE, ranges=RANGES)
    assert result["copies"] == "opfs"
    assert result["from_copies"] == [table[s:s + n].hex() for s, n in RANGES]
    assert result["again"] == ["opfs", table[5:8].hex()]
    assert result["after_failure"] == [table[5:8].hex(), "none (OPFS: Error: the row reader was closed)"]
    assert result["js_reads"] == [table[7:11].hex()] * 2


def test_store_names_a_file_damaged_on_the_server(site, model_folder, offline_context):
    _, files = model_folder
    pp = open_page(offline_context, site)
    result = pp.py(ENSURE + """
from webgemma.backends.ort_web import OrtWebBackend
result["cached"] = await store.forget()
result""", model_url="model-bad/", files=files, table=TABLE, ranges=RANGES)
    assert result["files"] == [TABLE]
    assert TABLE in result["error"] and "sha256" in result["error"]
    assert pp.traffic.count(f"model-bad/{TABLE}") == 2  # the first download and one retry, no more
    assert result["cached"] == 2  # the damaged file was not kept; the good ones were

    missing = pp.py(ENSURE, model_url="model/", files=[{"path": "absent.bin", "bytes": 1, "sha256": "0" * 64}],
                    table=TABLE, ranges=[])
    assert missing["files"] == ["absent.bin"] and "HTTP 404" in missing["error"]


def test_plain_static_host_without_webgpu_runs_on_wasm(plain_site, model_folder, offline_context):
    """A host without COOP/COEP (python -m http.server) and a browser without WebGPU: the page still boots and the
    backend falls back to single-threaded wasm, saying so on the page."""
    pp = open_page(offline_context, plain_site, init_script="delete Navigator.prototype.gpu;")
    assert pp.ready["cross_origin_isolated"] is False and pp.ready["webgpu"] is None
    result, ref_logits, _ = run_steps(pp, model_folder, "auto")
    assert result["name"] == "wasm"
    assert "WebGPU is not available" in result["notice"]
    notice = pp.page.locator("#notice")
    assert notice.is_visible() and "wasm" in notice.text_content()
    np.testing.assert_allclose(np.array(result["logits"][-1]), ref_logits[-1], rtol=1e-5, atol=1e-5)
    assert pp.page.evaluate("import('/ort_bridge.mjs').then((m) => m.defaultThreads())") == 1
