"""What one dispatch, one compute pass and one submit cost in Chromium's WebGPU, without onnxruntime-web, and the
bandwidth a plain WGSL kernel reaches: to tell the browser's fixed cost per kernel from the kernels' own time.

    python bench/webgpu_dispatch_bench.py [--gpu] [--runs 20] [--mib 1024]

Chains of N dependent dispatches (each adds 1 to the same small buffer, so the GPU must finish one before the
next) are recorded N ways: all in one pass and one submit, one pass per dispatch, a submit every 16 dispatches
(onnxruntime's default), a submit per dispatch; each timed until `onSubmittedWorkDone`. (t(N) - t(1)) / (N - 1)
is one more dispatch's cost. A read of a large buffer (vec4 loads, one sum per thread) and `copyBufferToBuffer`
give the bandwidth. --gpu: Chromium from $CHROMIUM with $CHROMIUM_GPU_FLAGS (../shared/gpu-browser); otherwise
Debian's Chromium with SwiftShader (checks the harness only).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
from pathlib import Path

JS = """
const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main(runs, mib) {
  const adapter = await navigator.gpu.requestAdapter({powerPreference: 'high-performance'});
  const device = await adapter.requestDevice({requiredLimits: {
    maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize, maxBufferSize: adapter.limits.maxBufferSize}});
  const info = adapter.info || {};
  const out = {adapter: {vendor: info.vendor, architecture: info.architecture, description: info.description,
                         features: [...adapter.features].sort()}, dispatch: [], bandwidth: [], errors: []};
  device.onuncapturederror = (e) => out.errors.push(e.error.message.slice(0, 300));
  const pipeline = (code) => device.createComputePipeline({layout: 'auto',
                                                           compute: {module: device.createShaderModule({code}), entryPoint: 'main'}});
  const time = async (record) => {
    const times = [];
    for (let i = 0; i < runs + 3; i++) {
      const t = performance.now();
      record();
      await device.queue.onSubmittedWorkDone();
      times.push(performance.now() - t);
    }
    return median(times.slice(3));
  };

  // dependent dispatches: one workgroup adds 1 to 64 floats
  const small = device.createBuffer({size: 256, usage: GPUBufferUsage.STORAGE});
  const add = pipeline(`@group(0) @binding(0) var<storage, read_write> x: array<f32>;
    @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) i: vec3u) { x[i.x] = x[i.x] + 1.0; }`);
  const addGroup = device.createBindGroup({layout: add.getBindGroupLayout(0), entries: [{binding: 0, resource: {buffer: small}}]});
  const ways = {
    'one pass, one submit': [Infinity, Infinity],
    'pass per dispatch, one submit': [1, Infinity],
    'submit every 16': [16, 16],
    'submit per dispatch': [1, 1],
  };
  for (const [way, [perPass, perSubmit]] of Object.entries(ways)) {
    const chain = (n) => () => {
      let encoder = device.createCommandEncoder(), pass = null, inPass = 0, inSubmit = 0;
      for (let i = 0; i < n; i++) {
        pass ??= encoder.beginComputePass();
        pass.setPipeline(add); pass.setBindGroup(0, addGroup); pass.dispatchWorkgroups(1);
        const last = i === n - 1, submit = ++inSubmit === perSubmit || last;
        if (++inPass === perPass || submit) { pass.end(); pass = null; inPass = 0; }
        if (submit) { device.queue.submit([encoder.finish()]); encoder = device.createCommandEncoder(); inSubmit = 0; }
      }
    };
    const one = await time(chain(1)), many = await time(chain(1001));
    out.dispatch.push({way, one_ms: one, many_ms: many, per_dispatch_us: (many - one) / 1000 * 1000});
  }

  // bandwidth: each thread sums 16 vec4s, strided so that a workgroup reads contiguous memory
  const bytes = Math.min(mib * 2 ** 20, device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize) & ~0xffff;
  const big = device.createBuffer({size: bytes, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC});
  const dst = device.createBuffer({size: bytes, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST});
  const sums = device.createBuffer({size: bytes / 16, usage: GPUBufferUsage.STORAGE});
  const read = pipeline(`@group(0) @binding(0) var<storage, read> x: array<vec4f>;
    @group(0) @binding(1) var<storage, read_write> y: array<f32>;
    @compute @workgroup_size(256) fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) n: vec3u) {
      let threads = n.x * n.y * 256u; let t = g.x + g.y * n.x * 256u; var s = vec4f(0.0);
      for (var k = 0u; k < 16u; k++) { s += x[t + k * threads]; }
      y[t] = s.x + s.y + s.z + s.w; }`);
  const readGroup = device.createBindGroup({layout: read.getBindGroupLayout(0),
                                            entries: [{binding: 0, resource: {buffer: big}}, {binding: 1, resource: {buffer: sums}}]});
  const groups = bytes / 16 / 16 / 256;
  const readMs = await time(() => {
    const e = device.createCommandEncoder(), p = e.beginComputePass();
    p.setPipeline(read); p.setBindGroup(0, readGroup); p.dispatchWorkgroups(Math.min(groups, 32768), Math.max(1, groups / 32768));
    p.end(); device.queue.submit([e.finish()]);
  });
  const copyMs = await time(() => {
    const e = device.createCommandEncoder(); e.copyBufferToBuffer(big, 0, dst, 0, bytes); device.queue.submit([e.finish()]);
  });
  out.bandwidth.push({what: 'WGSL read (vec4 loads)', bytes, ms: readMs, gb_s: bytes / readMs / 1e6});
  out.bandwidth.push({what: 'copyBufferToBuffer (read + write)', bytes, ms: copyMs, gb_s: 2 * bytes / copyMs / 1e6});
  return out;
}
const q = new URLSearchParams(location.search);
window.result = await main(Number(q.get('runs')), Number(q.get('mib')));
"""

PAGE = '<!doctype html><meta charset="utf-8"><title>dispatch</title><script type="module" src="dispatch.mjs"></script>'


def main() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.browser_kernel_bench import run_gpu, run_local
    from webgemma_site.serve import make_server

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--mib", type=int, default=1024, help="size of the buffer read for the bandwidth")
    p.add_argument("--timeout", type=float, default=300)
    a = p.parse_args()
    site = Path(tempfile.mkdtemp(prefix="webgemma-dispatch-"))
    (site / "dispatch.mjs").write_text(JS)
    (site / "index.html").write_text(PAGE)
    server = make_server(site, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = (run_gpu if a.gpu else run_local)(f"http://127.0.0.1:{server.server_address[1]}/index.html?runs={a.runs}&mib={a.mib}",
                                              a.timeout)
    finally:
        server.shutdown()
        shutil.rmtree(site)
    print(json.dumps(r["adapter"]))
    if r["errors"]:
        raise SystemExit(f"WebGPU errors (the timings are void): {r['errors'][:3]}")
    print(f"{'1,000 dependent dispatches':32s} {'1 ms':>8s} {'1,001 ms':>10s} {'per dispatch µs':>16s}")
    for d in r["dispatch"]:
        print(f"{d['way']:32s} {d['one_ms']:8.3f} {d['many_ms']:10.3f} {d['per_dispatch_us']:16.1f}")
    for b in r["bandwidth"]:
        print(f"{b['what']:36s} {b['bytes'] / 2**20:8.0f} MiB {b['ms']:8.3f} ms {b['gb_s']:8.1f} GB/s")


if __name__ == "__main__":
    main()
