"""The kernels of bench/kernel_bench.py in Chromium through onnxruntime-web's WebGPU EP, with and without graph
capture: R = 1 and R = 33 copies of a node, every input and output a fixed GPU buffer. Each measurement is BATCH
runs back to back, then one wait until the GPU is done (`onSubmittedWorkDone`), divided by BATCH: Chromium notices
finished work only every few milliseconds, so a single short run times that latency, not the GPU. (t33 - t1) / 32
is one more node's cost in the browser. --step MODEL adds the exported decode step itself (decoder_step.onnx,
caches of CONTEXT slots): ms per step.

    python bench/browser_kernel_bench.py SITE [--gpu] [--runs 10] [--batch 20] [--only NAME...]
                                              [--step MODEL_DIR [--context 4096]]

SITE is a folder written by `webgemma site` (its onnxruntime-web bundle is used). --gpu: Chromium from
$CHROMIUM with $CHROMIUM_GPU_FLAGS through cdp.py (../shared/gpu-browser); otherwise Debian's Chromium with
SwiftShader through Playwright (checks the harness, times nothing useful).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnx import TensorProto  # noqa: E402

from bench.kernel_bench import CASES, F32, I32, I64, model_bytes, sequence_values  # noqa: E402

TYPES = {F32: "float32", I32: "int32", I64: "int64", TensorProto.UINT8: "uint8"}

JS = """
const SIZES = {float32: 4, int32: 4, int64: 8, uint8: 1};
const ARRAYS = {float32: Float32Array, int32: Int32Array, int64: BigInt64Array, uint8: Uint8Array};
const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function timeCase(ort, c, copies, capture, runs, batch) {
  const session = await ort.InferenceSession.create(`kernels/${c.file[copies]}`, {
    executionProviders: [{name: 'webgpu'}], enableGraphCapture: capture,
    graphOptimizationLevel: 'disabled', preferredOutputLocation: 'gpu-buffer',
    externalData: (c.external || []).map((path) => ({path, data: `kernels/model/${path}`}))});
  const device = await ort.env.webgpu.device;
  const tensor = (type, dims, fill) => {
    const n = dims.reduce((a, b) => a * b, 1);
    const buffer = device.createBuffer({size: Math.max(16, Math.ceil(n * SIZES[type] / 16) * 16),
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST});
    if (fill !== undefined) {
      const data = new ARRAYS[type](Math.ceil(n * SIZES[type] / 4) * 4 / SIZES[type]).fill(type === 'int64' ? BigInt(fill) : fill);
      device.queue.writeBuffer(buffer, 0, data);
    }
    return ort.Tensor.fromGpuBuffer(buffer, {dataType: type, dims});
  };
  const feeds = {}, fetches = {};
  for (const [name, type, dims, fill] of c.inputs) feeds[name] = tensor(type, dims, fill);
  for (const [name, type, dims, alias] of c.outputs[copies]) fetches[name] = alias ? feeds[alias] : tensor(type, dims);
  await session.run(feeds, fetches);  // with capture: the recording run
  await device.queue.onSubmittedWorkDone();
  const times = [];
  for (let i = 0; i < runs; i++) {
    const t = performance.now();
    for (let j = 0; j < batch; j++) await session.run(feeds, fetches);
    await device.queue.onSubmittedWorkDone();
    times.push((performance.now() - t) / batch);
  }
  await session.release();
  return median(times);
}

window.runKernels = async (cases, runs, batch) => {
  const ort = await import('./vendor/ort/ort.webgpu.min.mjs');
  ort.env.wasm.wasmPaths = new URL('./vendor/ort/', location.href).href;
  const out = [];
  for (const c of cases) {
    for (const capture of [false, true]) {
      try {
        const one = await timeCase(ort, c, 1, capture, runs, batch);
        if (!c.file[33]) { out.push({name: c.name, capture, one_ms: one}); continue; }  // the decode step: one graph
        const many = await timeCase(ort, c, 33, capture, runs, batch);
        out.push({name: c.name, capture, one_ms: one, many_ms: many, per_node_us: (many - one) / 32 * 1000});
      } catch (e) {
        out.push({name: c.name, capture, error: String(e).slice(0, 300)});
      }
    }
  }
  return out;
};
"""

PAGE = """<!doctype html><meta charset="utf-8"><title>kernels</title>
<script type="module">
import './kernels.mjs';
const q = new URLSearchParams(location.search);
const cases = await (await fetch('kernels/cases.json')).json();
window.result = await window.runKernels(cases, Number(q.get('runs')), Number(q.get('batch')));
</script>"""


def write_cases(site: Path, only: list[str], step: tuple[Path, int] | None = None) -> None:
    """kernels.html, kernels.mjs and kernels/ (the models and cases.json) in the site."""
    folder = site / "kernels"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    cases = []
    for i, (name, build) in enumerate(CASES.items()):
        if only and name not in only:
            continue
        case = {"name": name, "file": {}, "outputs": {}}
        for copies in (1, 33):
            built = build(copies)
            (folder / f"{i}-{copies}.onnx").write_bytes(model_bytes(built))
            case["file"][copies] = f"{i}-{copies}.onnx"
            _, _, ins, outs = built
            fills = sequence_values(ins) if "sl" in ins else {}
            case["inputs"] = [[n, TYPES[t], s, fills.get(n, 1)] for n, (t, s) in ins.items()]
            case["outputs"][copies] = [[n, "float32", v[1], v[0]] if isinstance(v[0], str) else [n, TYPES[v[0]], v[1], None]
                                       for n, v in outs.items()]
        cases.append(case)
    (folder / "cases.json").write_text(json.dumps(cases + ([step_case(site, *step)] if step else [])))
    (site / "kernels.mjs").write_text(JS)
    (site / "kernels.html").write_text(PAGE)


def step_case(site: Path, model: Path, context: int) -> dict:
    """The exported decode step as a case (linked into the site as kernels/model): caches as the step session
    makes them (webgemma.static_cache). The step reads every slot whatever the mask says, so its cost does not
    depend on how many positions are cached."""
    import onnx

    from webgemma.manifest import FULL, parse_manifest
    from webgemma.static_cache import step_caches

    (site / "kernels" / "model").symlink_to(model.resolve())
    io = parse_manifest((model / "manifest.json").read_text()).decoder
    graph = onnx.load(str(model / io["step_graph"]["path"]), load_external_data=False).graph
    caches = {c["input"]: c for c in step_caches(io, context)}
    window = max(c["window"] or 0 for c in io["cache"])
    masks = {name: (context if kind == FULL else window) for kind, name in io["step_graph"]["masks"].items()}
    inputs = []
    for i in graph.input:
        if i.name in caches:
            inputs.append([i.name, "float32", caches[i.name]["dims"], 0])
        elif i.name in masks:
            inputs.append([i.name, "float32", [1, masks[i.name]], 0])
        else:  # input_ids, per-layer rows and scales, RoPE tables: one token's worth
            dims = [d.dim_value or 1 for d in i.type.tensor_type.shape.dim]
            inputs.append([i.name, TYPES[i.type.tensor_type.elem_type], dims, 2 if i.name == io["inputs"]["input_ids"] else 0])
    outputs = [[o.name, TYPES[o.type.tensor_type.elem_type], [d.dim_value for d in o.type.tensor_type.shape.dim], None]
               for o in graph.output]
    return {"name": f"decode step ({model.name}, {context} slots)", "file": {1: f"model/{io['step_graph']['path']}"},
            "inputs": inputs, "outputs": {1: outputs}, "external": [f["path"] for f in io["external_data"]]}


def run_gpu(url: str, timeout: float) -> list:
    port = 9334
    profile = Path("/tmp/chromium-profile-kernels")
    shutil.rmtree(profile, ignore_errors=True)
    chromium = subprocess.Popen([os.environ["CHROMIUM"], *os.environ["CHROMIUM_GPU_FLAGS"].split(),
                                 f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cdp = Path(__file__).resolve().parents[1] / ".gpu" / "tools" / "cdp.py"
        out = subprocess.run([sys.executable, str(cdp), str(port), url.replace("&", "%26"), "--timeout", str(timeout)],
                             capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith(("[", "{"))]
        if not lines:
            raise SystemExit(f"no result: {out.stderr[-2000:]}")
        return json.loads(lines[-1])
    finally:
        chromium.terminate()


def run_local(url: str, timeout: float) -> list:
    from playwright.sync_api import sync_playwright

    from tests.conftest import CHROMIUM, CHROMIUM_FLAGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.on("pageerror", lambda e: print("page error:", e, file=sys.stderr))
        page.goto(url)
        page.wait_for_function("window.result", timeout=timeout * 1000)
        result = page.evaluate("window.result")
        browser.close()
    return result


def main() -> None:
    from webgemma_site.serve import make_server

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("site", type=Path)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--batch", type=int, default=20, help="runs back to back per measurement")
    p.add_argument("--step", type=Path, help="an exported model folder: time its decode step too")
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--only", nargs="*", default=[])
    p.add_argument("--timeout", type=float, default=400)
    a = p.parse_args()
    write_cases(a.site, a.only, (a.step, a.context) if a.step else None)
    server = make_server(a.site, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/kernels.html?runs={a.runs}&batch={a.batch}"
    try:
        results = (run_gpu if a.gpu else run_local)(url, a.timeout)
    finally:
        server.shutdown()
    print(f"{'kernel':44s} {'capture':>8s} {'1 node ms':>10s} {'33 nodes ms':>12s} {'per node µs':>12s}")
    for r in results:
        if "error" in r:
            print(f"{r['name']:44s} {r['capture']!s:>8s} failed: {r['error'][:150]}")
        elif "many_ms" not in r:
            print(f"{r['name']:44s} {r['capture']!s:>8s} {r['one_ms']:10.3f} ms per step")
        else:
            print(f"{r['name']:44s} {r['capture']!s:>8s} {r['one_ms']:10.3f} {r['many_ms']:12.3f} {r['per_node_us']:12.1f}")


if __name__ == "__main__":
    main()
