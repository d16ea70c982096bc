"""Plain WGSL kernels, without onnxruntime, in Chromium's WebGPU and natively (wgpu-native on Vulkan, the same
GPU): what one dispatch, one compute pass and one submit cost, the bandwidth a read kernel and a buffer copy
reach, and a plain int4 matrix-vector product at E2B's shapes. It tells the browser's own limits from
onnxruntime-web's kernels.

    python bench/webgpu_raw_bench.py [--gpu | --native] [--runs 20] [--mib 1024] [--quick]

Chains of dependent dispatches (each writes the buffer the next one reads, so the GPU finishes one before the
next) are timed until the GPU is done: (t(N + 1) - t(1)) / N is one more dispatch's cost. Chains are long (1,000
dispatches, 16 reads or copies of the large buffer) because Chromium reports finished work a few milliseconds late;
in Chromium one-pass chains are also timed by GPU timestamp queries. `add` is one workgroup;
`add, 6144 workgroups` is as wide as a decode step's matrix-vector products. The int4 product (one workgroup of
64 per output row, packed nibbles and one f32 scale per 32 weights, as MatMulNBits stores them) is checked
against the same sum computed on the CPU, then run over one weight copy (L2-resident) and over copies cycled past
the L2 cache (read from memory), the latter also from buffers of STORAGE usage alone (filled at creation):
whether the usage changes where the browser puts a buffer. The round trip is one dispatch and reading its result.

--gpu: Chromium from $CHROMIUM with $CHROMIUM_GPU_FLAGS (../shared/gpu-browser). --native: PyPI `wgpu`
(wgpu-native), the highest-performance adapter. Neither: Debian's Chromium with SwiftShader (checks the harness
only; --quick keeps it short).
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROWS = 6144  # width of the wide chain: the MLP's rows
MATVECS = [(1536, 6144), (6144, 1536), (1536, 2048), (1536, 131072)]  # (K, N): gate/up, down, q, half the lm_head
QUICK_MATVECS = [(1536, 2048)]
CHAIN = 1000  # extra dispatches in a chain
MATVEC_CHAIN = 1000
REPEATS = 16  # extra reads / copies of the large buffer

ADD = """@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3u) { x[g.x] = x[g.x] + 1.0; }"""

READ = """@group(0) @binding(0) var<storage, read> x: array<vec4f>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(256) fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) n: vec3u) {
  let threads = n.x * n.y * 256u; let t = g.x + g.y * n.x * 256u; var s = vec4f(0.0);
  for (var k = 0u; k < 16u; k++) { s += x[t + k * threads]; }  // a workgroup reads contiguous memory
  y[t] = s.x + s.y + s.z + s.w; }"""

MATVEC = """@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> scales: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<vec4f>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
const K: u32 = KKu;
var<workgroup> part: array<f32, 64>;
fn nibbles(q: u32) -> vec4f { return vec4f(vec4u(q, q >> 4u, q >> 8u, q >> 12u) & vec4u(15u)) - 8.0; }
@compute @workgroup_size(64) fn main(@builtin(workgroup_id) g: vec3u, @builtin(num_workgroups) n: vec3u,
                                     @builtin(local_invocation_index) t: u32) {
  let row = g.x + g.y * n.x;
  var s = 0.0;
  for (var i = t; i < K / 8u; i += 64u) {  // word i holds weights 8i..8i+7 of the row
    let q = w[row * (K / 8u) + i];
    s += scales[row * (K / 32u) + i / 4u] * (dot(nibbles(q), x[2u * i]) + dot(nibbles(q >> 16u), x[2u * i + 1u]));
  }
  part[t] = s;
  workgroupBarrier();
  for (var o = 32u; o > 0u; o >>= 1u) { if (t < o) { part[t] += part[t + o]; } workgroupBarrier(); }
  if (t == 0u) { y[row] = part[0]; } }"""

# (perPass, perSubmit) dispatches: how the chain is cut into passes and submits
CHAIN_WAYS = {"one pass, one submit": (None, None), "pass per dispatch, one submit": (1, None),
              "submit every 16": (16, 16), "submit per dispatch": (1, 1)}


@functools.cache
def words() -> np.ndarray:
    """The packed weights: 4 MiB of pseudo-random words, repeated over each weight buffer."""
    v, out = 12345, np.empty(1 << 20, np.uint32)
    for i in range(out.size):
        v = (v * 1103515245 + 12345) & 0xFFFFFFFF
        out[i] = v
    return out


def scales() -> np.ndarray:
    return (1 / (64 + np.arange(1 << 16) % 5)).astype(np.float32)


def matvec_x(k: int) -> np.ndarray:
    return ((np.arange(k) % 7 - 3) / 4).astype(np.float32)


def expected_rows(k: int, rows: int) -> np.ndarray:
    """y[0:rows] of the int4 product, on the CPU."""
    w, s = words(), scales()
    q = w[np.arange(rows * k // 8) % w.size].reshape(rows, k // 8)
    nib = ((q[:, :, None] >> (4 * np.arange(8, dtype=np.uint32))) & 15).reshape(rows, k).astype(np.float64) - 8
    sc = s[np.arange(rows * k // 32) % s.size].reshape(rows, k // 32).repeat(32, axis=1)
    return (sc * nib) @ matvec_x(k)


JS = """
const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main({runs, mib, matvecs, rows, chainLength, matvecChain, repeats, ways, wgsl, words, scales}) {
  const adapter = await navigator.gpu.requestAdapter({powerPreference: 'high-performance'});
  const stamps = adapter.features.has('timestamp-query');
  const device = await adapter.requestDevice({requiredFeatures: stamps ? ['timestamp-query'] : [], requiredLimits: {
    maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize, maxBufferSize: adapter.limits.maxBufferSize}});
  const info = adapter.info || {};
  const out = {adapter: {vendor: info.vendor, architecture: info.architecture, description: info.description,
                         features: [...adapter.features].sort()}, chains: [], bandwidth: [], matvec: [], errors: []};
  device.onuncapturederror = (e) => out.errors.push(e.error.message.slice(0, 300));
  const pipeline = (code) => device.createComputePipeline({layout: 'auto',
                                                           compute: {module: device.createShaderModule({code}), entryPoint: 'main'}});
  // storageOnly: STORAGE usage alone, filled through mappedAtCreation (does the usage change where it lives?)
  const buffer = (size, data, storageOnly = false) => {
    if (storageOnly) {
      const b = device.createBuffer({size, usage: GPUBufferUsage.STORAGE, mappedAtCreation: true});
      if (data) {
        const view = new data.constructor(b.getMappedRange());
        for (let o = 0; o < view.length; o += data.length) view.set(data.subarray(0, Math.min(data.length, view.length - o)), o);
      }
      b.unmap();
      return b;
    }
    const b = device.createBuffer({size, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC});
    if (data) for (let o = 0; o < size; o += data.byteLength) device.queue.writeBuffer(b, o, data, 0, Math.min(data.length, (size - o) / 4));
    return b;
  };
  const group = (pipe, buffers) => device.createBindGroup({layout: pipe.getBindGroupLayout(0),
                                                          entries: buffers.map((b, i) => ({binding: i, resource: {buffer: b}}))});
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
  // GPU time of a one-pass chain from timestamp queries: the wall clock waits for Chromium to notice the work is
  // done, which adds up to a few ms per wait (so chains are long, and one-pass chains are also timed here)
  const querySet = stamps && device.createQuerySet({type: 'timestamp', count: 2});
  const resolved = device.createBuffer({size: 16, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC});
  const stampsRead = device.createBuffer({size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST});
  const passTimes = {querySet, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1};
  // n dispatches of (pipe, groups[i % groups.length], size), cut into passes and submits
  const chain = (pipe, groups, size, perPass, perSubmit) => (n, stamp = false) => () => {
    let encoder = device.createCommandEncoder(), pass = null, inPass = 0, inSubmit = 0;
    for (let i = 0; i < n; i++) {
      pass ??= encoder.beginComputePass(stamp ? {timestampWrites: passTimes} : {});
      pass.setPipeline(pipe); pass.setBindGroup(0, groups[i % groups.length]); pass.dispatchWorkgroups(...size);
      const submit = ++inSubmit === perSubmit || i === n - 1;
      if (++inPass === perPass || submit) { pass.end(); pass = null; inPass = 0; }
      if (submit) {
        if (stamp) { encoder.resolveQuerySet(querySet, 0, 2, resolved, 0); encoder.copyBufferToBuffer(resolved, 0, stampsRead, 0, 16); }
        device.queue.submit([encoder.finish()]); encoder = device.createCommandEncoder(); inSubmit = 0;
      }
    }
  };
  const gpuMs = async (record) => {
    const times = [];
    for (let i = 0; i < runs + 3; i++) {
      record();
      await stampsRead.mapAsync(GPUMapMode.READ);
      const [begin, end] = new BigUint64Array(stampsRead.getMappedRange());
      times.push(Number(end - begin) / 1e6);
      stampsRead.unmap();
    }
    return median(times.slice(3));
  };
  // onePass: the chain is one compute pass, so its GPU time is measured too
  const perExtra = async (run, extra, onePass = true) => {
    const one = await time(run(1)), many = await time(run(extra + 1));
    const r = {one_ms: one, many_ms: many, per_dispatch_us: (many - one) / extra * 1000};
    if (stamps && onePass) r.gpu_us = (await gpuMs(run(extra + 1, true)) - await gpuMs(run(1, true))) / extra * 1000;
    return r;
  };

  const add = pipeline(wgsl.add);
  const smallBuffer = buffer(256), small = group(add, [smallBuffer]), wide = group(add, [buffer(rows * 64 * 4)]);
  for (const [way, [perPass, perSubmit]] of Object.entries(ways))
    out.chains.push({way: `add, ${way}`, ...await perExtra(chain(add, [small], [1], perPass, perSubmit), chainLength, !perPass && !perSubmit)});
  out.chains.push({way: `add, ${rows} workgroups, one pass`, ...await perExtra(chain(add, [wide], [rows], null, null), chainLength)});

  const bytes = Math.min(mib * 2 ** 20, device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize) & ~0xffff;
  const big = buffer(bytes), dst = buffer(bytes), sums = buffer(bytes / 16);
  const sum = pipeline(wgsl.read), groups = bytes / 16 / 16 / 256;
  const readSize = [Math.min(groups, 32768), Math.max(1, groups / 32768)];
  const bandwidth = (what, r, moved) => out.bandwidth.push({what, bytes, ms: r.per_dispatch_us / 1000, gb_s: moved / r.per_dispatch_us / 1e3,
                                                            gpu_gb_s: r.gpu_us && moved / r.gpu_us / 1e3});
  bandwidth('WGSL read (vec4 loads)', await perExtra(chain(sum, [group(sum, [big, sums])], readSize, null, null), repeats), bytes);
  const copies = (n) => () => {
    const e = device.createCommandEncoder();
    for (let i = 0; i < n; i++) e.copyBufferToBuffer(big, 0, dst, 0, bytes);
    device.queue.submit([e.finish()]);
  };
  bandwidth('copyBufferToBuffer (read + write)', await perExtra(copies, repeats, false), 2 * bytes);
  [big, dst].forEach((b) => b.destroy());
  const bigStorage = buffer(bytes, null, true);
  bandwidth('WGSL read, STORAGE-only buffer', await perExtra(chain(sum, [group(sum, [bigStorage, sums])], readSize, null, null), repeats), bytes);
  [bigStorage, sums].forEach((b) => b.destroy());

  // what reading a result costs: a one-workgroup dispatch, a copy to a mappable buffer, mapAsync
  const staging = device.createBuffer({size: 256, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST});
  const trips = [];
  for (let i = 0; i < runs + 3; i++) {
    const t = performance.now(), e = device.createCommandEncoder(), p = e.beginComputePass();
    p.setPipeline(add); p.setBindGroup(0, small); p.dispatchWorkgroups(1); p.end();
    e.copyBufferToBuffer(smallBuffer, 0, staging, 0, 256); device.queue.submit([e.finish()]);
    await staging.mapAsync(GPUMapMode.READ); staging.unmap();
    trips.push(performance.now() - t);
  }
  out.round_trip_ms = median(trips.slice(3));

  const w = new Uint32Array(words), s = new Float32Array(scales);
  const readBack = async (b, count) => {
    const staging = device.createBuffer({size: count * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST});
    const e = device.createCommandEncoder(); e.copyBufferToBuffer(b, 0, staging, 0, count * 4); device.queue.submit([e.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const values = [...new Float32Array(staging.getMappedRange())];
    staging.destroy();
    return values;
  };
  for (const [K, N, copies, xs] of matvecs) {
    const mv = pipeline(wgsl.matvec.replace('KK', K));
    const weightBytes = N * K / 2, scaleBytes = N * K / 32 * 4;
    const x = buffer(K * 4, new Float32Array(xs)), y = buffer(N * 4);
    for (const [where, n, storageOnly] of [['L2', 1, false], ['memory', copies, false], ['memory, STORAGE-only', copies, true]]) {
      const owned = [], groups = [];
      for (let c = 0; c < n; c++) {
        const [wb, sb] = [buffer(weightBytes, w, storageOnly), buffer(scaleBytes, s, storageOnly)];
        owned.push(wb, sb);
        groups.push(group(mv, [wb, sb, x, y]));
      }
      const r = await perExtra(chain(mv, groups, [Math.min(N, 32768), Math.ceil(N / 32768)], null, null), matvecChain);
      out.matvec.push({K, N, where, per_matvec_us: r.per_dispatch_us, gb_s: (weightBytes + scaleBytes) / r.per_dispatch_us / 1e3,
                       gpu_us: r.gpu_us, first_rows: await readBack(y, 4)});
      owned.forEach((b) => b.destroy());
    }
  }
  return out;
}
window.result = await main(await (await fetch('config.json')).json());
"""

PAGE = '<!doctype html><meta charset="utf-8"><title>raw WebGPU</title><script type="module" src="raw.mjs"></script>'


def matvec_plan(quick: bool) -> list[tuple[int, int, int]]:
    """(K, N, weight copies cycled to read from memory: 256 MiB or more, past the L2 cache)."""
    return [(k, n, 2 if quick else max(2, -(-256 * 2**20 // (n * k // 2)))) for k, n in (QUICK_MATVECS if quick else MATVECS)]


def run_browser(a) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.browser_kernel_bench import run_gpu, run_local
    from webgemma_site.serve import make_server

    site = Path(tempfile.mkdtemp(prefix="webgemma-raw-"))
    config = {"runs": a.runs, "mib": a.mib, "rows": ROWS, "chainLength": CHAIN, "matvecChain": 4 if a.quick else MATVEC_CHAIN, "repeats": REPEATS,
              "ways": CHAIN_WAYS, "wgsl": {"add": ADD, "read": READ, "matvec": MATVEC},
              "matvecs": [[k, n, c, matvec_x(k).tolist()] for k, n, c in matvec_plan(a.quick)],
              "words": words().tolist(), "scales": scales().tolist()}
    (site / "config.json").write_text(json.dumps(config))
    (site / "raw.mjs").write_text(JS)
    (site / "index.html").write_text(PAGE)
    server = make_server(site, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        return (run_gpu if a.gpu else run_local)(f"http://127.0.0.1:{server.server_address[1]}/index.html", a.timeout)
    finally:
        server.shutdown()
        shutil.rmtree(site)


def run_native(a) -> dict:
    """The same kernels and chains through wgpu-native."""
    import wgpu

    adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    device = adapter.request_device_sync(required_limits={
        "max-storage-buffer-binding-size": adapter.limits["max-storage-buffer-binding-size"],
        "max-buffer-size": adapter.limits["max-buffer-size"]})
    info = adapter.info
    out = {"adapter": {k: info.get(k) for k in ("vendor", "device", "description", "backend_type")},
           "chains": [], "bandwidth": [], "matvec": [], "errors": []}
    usage = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_DST | wgpu.BufferUsage.COPY_SRC
    probe = device.create_buffer(size=4, usage=wgpu.BufferUsage.COPY_DST | wgpu.BufferUsage.COPY_SRC)

    def pipeline(code):
        return device.create_compute_pipeline(layout="auto", compute={"module": device.create_shader_module(code=code),
                                                                      "entry_point": "main"})

    def buffer(size, data=None, storage_only=False):
        b = device.create_buffer(size=size, usage=wgpu.BufferUsage.STORAGE if storage_only else usage,
                                 mapped_at_creation=storage_only)
        if data is not None:
            raw = data.tobytes()
            for o in range(0, size, len(raw)):
                if storage_only:
                    b.write_mapped(raw[:size - o], o)
                else:
                    device.queue.write_buffer(b, o, raw[:size - o])
        if storage_only:
            b.unmap()
        return b

    def group(pipe, buffers):
        return device.create_bind_group(layout=pipe.get_bind_group_layout(0), entries=[
            {"binding": i, "resource": {"buffer": b, "offset": 0, "size": b.size}} for i, b in enumerate(buffers)])

    def time_(record):
        times = []
        for _ in range(a.runs + 3):
            t = time.perf_counter()
            record()
            device.queue.read_buffer(probe)  # waits for the queue: the same fixed cost for every chain length
            times.append(time.perf_counter() - t)
        return statistics.median(times[3:]) * 1000

    def chain(pipe, groups, size, per_pass, per_submit):
        def run(n):
            def record():
                encoder, p, in_pass, in_submit = device.create_command_encoder(), None, 0, 0
                for i in range(n):
                    p = p or encoder.begin_compute_pass()
                    p.set_pipeline(pipe)
                    p.set_bind_group(0, groups[i % len(groups)])
                    p.dispatch_workgroups(*size)
                    in_pass, in_submit = in_pass + 1, in_submit + 1
                    submit = in_submit == per_submit or i == n - 1
                    if in_pass == per_pass or submit:
                        p.end()
                        p, in_pass = None, 0
                    if submit:
                        device.queue.submit([encoder.finish()])
                        encoder, in_submit = device.create_command_encoder(), 0
            return record
        return run

    def per_extra(run, extra):
        one, many = time_(run(1)), time_(run(extra + 1))
        return {"one_ms": one, "many_ms": many, "per_dispatch_us": (many - one) / extra * 1000}

    add = pipeline(ADD)
    small, wide = group(add, [buffer(256)]), group(add, [buffer(ROWS * 64 * 4)])
    for way, (per_pass, per_submit) in CHAIN_WAYS.items():
        out["chains"].append({"way": f"add, {way}", **per_extra(chain(add, [small], (1,), per_pass, per_submit), CHAIN)})
    out["chains"].append({"way": f"add, {ROWS} workgroups, one pass", **per_extra(chain(add, [wide], (ROWS,), None, None), CHAIN)})

    size = min(a.mib * 2**20, device.limits["max-storage-buffer-binding-size"]) & ~0xFFFF
    big, dst, sums = buffer(size), buffer(size), buffer(size // 16)
    read, groups = pipeline(READ), size // 16 // 16 // 256
    read_size = (min(groups, 32768), max(1, groups // 32768))

    def bandwidth(what, r, moved):
        out["bandwidth"].append({"what": what, "bytes": size, "ms": r["per_dispatch_us"] / 1000,
                                 "gb_s": moved / r["per_dispatch_us"] / 1e3})

    def copies(n):
        def record():
            e = device.create_command_encoder()
            for _ in range(n):
                e.copy_buffer_to_buffer(big, 0, dst, 0, size)
            device.queue.submit([e.finish()])
        return record

    bandwidth("WGSL read (vec4 loads)", per_extra(chain(read, [group(read, [big, sums])], read_size, None, None), REPEATS), size)
    bandwidth("copy_buffer_to_buffer (read + write)", per_extra(copies, REPEATS), 2 * size)
    big.destroy()
    dst.destroy()
    big = buffer(size, storage_only=True)
    bandwidth("WGSL read, STORAGE-only buffer", per_extra(chain(read, [group(read, [big, sums])], read_size, None, None), REPEATS), size)
    big.destroy()
    sums.destroy()
    out["round_trip_ms"] = time_(chain(add, [small], (1,), None, None)(1))  # a dispatch, then a buffer read back

    w, s = words(), scales()
    for k, n, copies in matvec_plan(a.quick):
        mv = pipeline(MATVEC.replace("KK", str(k)))
        x, y = buffer(k * 4, matvec_x(k)), buffer(n * 4)
        for where, count, storage_only in (("L2", 1, False), ("memory", copies, False), ("memory, STORAGE-only", copies, True)):
            owned = [(buffer(n * k // 2, w, storage_only), buffer(n * k // 8, s, storage_only)) for _ in range(count)]
            groups = [group(mv, [wb, sb, x, y]) for wb, sb in owned]
            r = per_extra(chain(mv, groups, (min(n, 32768), -(-n // 32768)), None, None), 4 if a.quick else MATVEC_CHAIN)
            us = r["per_dispatch_us"]
            first = np.frombuffer(device.queue.read_buffer(y, 0, 16), np.float32).tolist()
            out["matvec"].append({"K": k, "N": n, "where": where, "per_matvec_us": us,
                                  "gb_s": (n * k // 2 + n * k // 8) / us / 1e3, "first_rows": first})
            for wb, sb in owned:
                wb.destroy()
                sb.destroy()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--gpu", action="store_true")
    where.add_argument("--native", action="store_true")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--mib", type=int, default=1024, help="size of the buffer read for the bandwidth")
    p.add_argument("--quick", action="store_true", help="one small matrix-vector shape, short chains (SwiftShader)")
    p.add_argument("--timeout", type=float, default=300)
    a = p.parse_args()
    r = run_native(a) if a.native else run_browser(a)
    print(json.dumps(r["adapter"]))
    for m in r["matvec"]:
        want = expected_rows(m["K"], 4)
        if not np.allclose(m["first_rows"], want, rtol=1e-3, atol=1e-3):
            r["errors"].append(f"matvec {m['K']}→{m['N']} ({m['where']}): {m['first_rows']} != {want.tolist()}")
    if r["errors"]:
        raise SystemExit(f"errors (the timings are void): {r['errors'][:3]}")
    gpu = lambda v, f: "" if v is None else f.format(v)  # noqa: E731 - GPU timestamps: Chromium only
    print(f"{'dependent dispatches':44s} {'1 ms':>8s} {'N+1 ms':>10s} {'per dispatch µs':>16s} {'GPU µs':>8s}")
    for d in r["chains"]:
        print(f"{d['way']:44s} {d['one_ms']:8.3f} {d['many_ms']:10.3f} {d['per_dispatch_us']:16.1f} {gpu(d.get('gpu_us'), '{:8.1f}')}")
    for b in r["bandwidth"]:
        print(f"{b['what']:44s} {b['bytes'] / 2**20:8.0f} MiB {b['ms']:8.3f} ms {b['gb_s']:8.1f} GB/s {gpu(b.get('gpu_gb_s'), 'GPU {:.1f} GB/s')}")
    print(f"round trip (a dispatch, then mapping its result): {r['round_trip_ms']:.3f} ms")
    print(f"{'int4 matvec K→N':16s} {'weights':>22s} {'µs':>9s} {'GB/s':>8s} {'GPU µs':>8s}")
    for m in r["matvec"]:
        print(f"{str(m['K']) + '→' + str(m['N']):16s} {m['where']:>22s} {m['per_matvec_us']:9.1f} {m['gb_s']:8.1f} "
              f"{gpu(m.get('gpu_us'), '{:8.1f}')}")


if __name__ == "__main__":
    main()
