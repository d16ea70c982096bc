"""Can onnxruntime-web (the vendored version) decode with graph capture and a KV cache written in place?

Runs six decode steps of one GroupQueryAttention node (8 heads, 1 KV head) in headless Chromium, with every input
in a GPU buffer that is rewritten between steps (`writeBuffer`), the cache as fixed [1, 1, MAX, D] buffers fed as
`past_*` and passed as the `present_*` outputs (so GQA writes into them in place), and compares each step with
plain attention in numpy. Prints the error per step, or the error onnxruntime-web raised.

    python bench/ort_web_capture_probe.py [--capture] [--head-dim 256] [--window -1]

Measured 2026-11-26 (onnxruntime-web 1.30.0, Chromium 156, SwiftShader), with the site's patched bundle (see
webgemma_site.vendor.keep_captured_buffers) and the EP named by an object (named by a string, the EP never gets
its enableGraphCapture option and nothing is captured): the in-place cache is right with and without --capture
(errors ~1e-6); with --capture and a window that cuts keys (--window 3) the output is wrong (errors ~4), so the
step graph runs its sliding layers as rings without GQA's window.
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HEADS, KV_HEADS, MAX, STEPS = 8, 1, 16, 6

JS = """async ([model, steps, heads, kvHeads, dim, max, capture]) => {
  const ort = await import('./vendor/ort/ort.webgpu.min.mjs');
  ort.env.wasm.wasmPaths = new URL('./vendor/ort/', location.href).href;
  const bytes = Uint8Array.from(atob(model), c => c.charCodeAt(0));
  const session = await ort.InferenceSession.create(bytes, {executionProviders: [{name: 'webgpu'}],
      enableGraphCapture: capture, preferredOutputLocation: 'gpu-buffer'});
  const device = await ort.env.webgpu.device;
  const buffer = n => device.createBuffer({size: Math.max(16, n * 4),
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST});
  const b = {q: buffer(heads * dim), k: buffer(kvHeads * dim), v: buffer(kvHeads * dim), sl: buffer(1), tl: buffer(1),
             y: buffer(heads * dim), pk: buffer(kvHeads * max * dim), pv: buffer(kvHeads * max * dim)};
  const t = (name, type, dims) => ort.Tensor.fromGpuBuffer(b[name], {dataType: type, dims});
  const cache = [1, kvHeads, max, dim];
  const feeds = {q: t('q', 'float32', [1, 1, heads * dim]), k: t('k', 'float32', [1, 1, kvHeads * dim]),
                 v: t('v', 'float32', [1, 1, kvHeads * dim]), pk: t('pk', 'float32', cache), pv: t('pv', 'float32', cache),
                 sl: t('sl', 'int32', [1]), tl: t('tl', 'int32', [])};
  const fetches = {y: t('y', 'float32', [1, 1, heads * dim]), pk_out: t('pk', 'float32', cache), pv_out: t('pv', 'float32', cache)};
  const out = [];
  for (let i = 0; i < steps.length; i++) {
    for (const name of ['q', 'k', 'v']) device.queue.writeBuffer(b[name], 0, new Float32Array(steps[i][name]));
    device.queue.writeBuffer(b.sl, 0, new Int32Array([i]));
    device.queue.writeBuffer(b.tl, 0, new Int32Array([i + 1]));
    await session.run(feeds, fetches);
    const read = device.createBuffer({size: heads * dim * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST});
    const encoder = device.createCommandEncoder();
    encoder.copyBufferToBuffer(b.y, 0, read, 0, heads * dim * 4);
    device.queue.submit([encoder.finish()]);
    await read.mapAsync(GPUMapMode.READ);
    out.push(Array.from(new Float32Array(read.getMappedRange().slice(0))));
  }
  return out;
}"""


def gqa_model(head_dim: int, window: int) -> bytes:
    f, i = TensorProto.FLOAT, TensorProto.INT32

    def value(name, elem, shape):
        return helper.make_tensor_value_info(name, elem, shape)

    cache = [1, KV_HEADS, MAX, head_dim]
    node = helper.make_node("GroupQueryAttention", ["q", "k", "v", "pk", "pv", "sl", "tl"], ["y", "pk_out", "pv_out"],
                            domain="com.microsoft", num_heads=HEADS, kv_num_heads=KV_HEADS, scale=1.0, local_window_size=window)
    graph = helper.make_graph([node], "gqa", [
        value("q", f, [1, 1, HEADS * head_dim]), value("k", f, [1, 1, KV_HEADS * head_dim]),
        value("v", f, [1, 1, KV_HEADS * head_dim]), value("pk", f, cache), value("pv", f, cache),
        value("sl", i, [1]), value("tl", i, [])],
        [value("y", f, [1, 1, HEADS * head_dim]), value("pk_out", f, cache), value("pv_out", f, cache)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model.SerializeToString()


def reference(steps: list[dict], head_dim: int, window: int) -> list[np.ndarray]:
    out = []
    for t, step in enumerate(steps):
        first = 0 if window < 0 else max(0, t - window + 1)
        keys = np.array([s["k"] for s in steps[first : t + 1]])
        values = np.array([s["v"] for s in steps[first : t + 1]])
        q = np.array(step["q"]).reshape(HEADS, head_dim)
        scores = q @ keys.T  # one KV head shared by all query heads
        p = np.exp(scores - scores.max(-1, keepdims=True))
        out.append(((p / p.sum(-1, keepdims=True)) @ values).reshape(-1))
    return out


def main() -> None:
    from playwright.sync_api import sync_playwright

    from webgemma_site.build import build_site
    from webgemma_site.serve import make_server

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--capture", action="store_true")
    p.add_argument("--head-dim", type=int, default=256)
    p.add_argument("--window", type=int, default=-1)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    steps = [{n: rng.standard_normal(size).astype(np.float32).tolist()
              for n, size in (("q", HEADS * a.head_dim), ("k", KV_HEADS * a.head_dim), ("v", KV_HEADS * a.head_dim))}
             for _ in range(STEPS)]
    site = build_site(None, Path(tempfile.mkdtemp()) / "site", model_url="model/")
    server = make_server(site, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    model = base64.b64encode(gqa_model(a.head_dim, a.window)).decode()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--enable-unsafe-webgpu"])
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/?selftest=1")
        page.wait_for_function("window.webgemmaReady", timeout=120_000)
        try:
            got = page.evaluate(JS, [model, steps, HEADS, KV_HEADS, a.head_dim, MAX, a.capture])
        except Exception as e:  # noqa: BLE001 - the probe reports what onnxruntime-web said
            print(f"capture={a.capture}: onnxruntime-web failed: {str(e).splitlines()[0]}")
        else:
            for t, (g, r) in enumerate(zip(got, reference(steps, a.head_dim, a.window))):
                print(f"capture={a.capture} step {t}: max |error| {np.abs(np.array(g) - r).max():.2e}")
        browser.close()
    server.shutdown()


if __name__ == "__main__":
    main()
