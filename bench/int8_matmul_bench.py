"""A prefill-shaped matmul on the tensor cores from WGSL: the exporter's int4 weights (MatMulNBits layout: blocks of
32 along K, a float32 scale each, zero point 8) times activations quantized to int8 (a scale per row and block of
32), through Chromium's `chromium-experimental-subgroup-matrix` (i8 × i8 → i32, 16×16×32: one K step is one int4
block). Each workgroup computes a 64 × 64 tile of the output: per block of K it unpacks the weights' nibbles to
bytes in workgroup memory, multiplies 16×16 tiles on the tensor cores, and adds each i32 tile, times its row's and
column's scales, to float32 sums (a block's scales differ, so the i32 sums cannot run over blocks). The nibbles go
in as 0..15 (the zero point comes off through the rows' block sums) and in the order an unpack with two masks gives
(0, 2, 4, 6, 1, 3, 5, 7 of every 8); the activations are packed in that order too.

Each shape is timed by GPU timestamps over a chain of dispatches in one pass, the weights (quantized by the exporter)
cycled over copies past the L2 cache, and six rows of the output are checked against the exporter's dequantized
weights times the quantized activations (numpy, float64).

    python bench/int8_matmul_bench.py [--rows 512] [--results out.json]

Chromium from $CHROMIUM with $CHROMIUM_GPU_FLAGS (../shared/gpu-browser); the adapter must offer the feature
(an NVIDIA H100 in Chromium 156 does; SwiftShader does not).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "py"), str(ROOT / "web")]

from bench.matvec_bench import PASS_TIMER, recorded_run  # noqa: E402
from webgemma_export.quantize import dequantize, quantize  # noqa: E402

# (name, K, N): E2B's matmuls (gate alone, as bench/kernel_bench.py times onnxruntime's; gate and up side by side)
SHAPES = [("e2b gate", 1536, 6144), ("e2b qkv", 1536, 2560), ("e2b o_proj", 2048, 1536), ("e2b gate_up", 1536, 12288),
          ("e2b down", 6144, 1536), ("e2b gate_up wide", 1536, 24576), ("e2b down wide", 12288, 1536)]

WGSL = """
enable subgroups;
enable chromium_experimental_subgroup_matrix;
struct U { m: u32, n: u32, k: u32, }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> a: array<u32>;       // int8 activations, [m][k], 4 a word
@group(0) @binding(2) var<storage, read> a_scale: array<f32>; // [m][k / 32]
@group(0) @binding(3) var<storage, read> a_sum: array<i32>;   // [m][k / 32]: the block's int8 values summed
@group(0) @binding(4) var<storage, read> q: array<u32>;       // int4 weights, [n][k / 8] words
@group(0) @binding(5) var<storage, read> s: array<f32>;       // [n][k / 32]
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
var<workgroup> ta: array<i32, 512>;   // 64 rows × 32 int8
var<workgroup> tw: array<i32, 512>;   // 64 columns × 32 int8 (the nibbles)
var<workgroup> tr: array<i32, 4096>;  // a subgroup's two 16×16 i32 tiles
var<workgroup> row_scale: array<f32, 64>;
var<workgroup> row_sum: array<f32, 64>;
var<workgroup> col_scale: array<f32, 64>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3<u32>,
        @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
  let row0 = wg.y * 64u;
  let col0 = wg.x * 64u;
  let blocks = u.k / 32u;
  // subgroup sg: rows 16 (sg % 4) .. +16, columns 32 (sg / 4) .. +32 (two 16×16 tiles)
  let tm = sg % 4u;
  let tn = (sg / 4u) * 2u;
  var acc: array<f32, 16>;
  // a block's global words, fetched into registers one block ahead, so that their latency overlaps the block before
  var pa: array<u32, 2>;
  var pw = 0u;
  var ps = vec3<f32>(0.0);
  for (var b = 0u; b <= blocks; b++) {
    if (b > 0u) {  // block b - 1 into workgroup memory
      ta[t] = bitcast<i32>(pa[0]);
      ta[t + 256u] = bitcast<i32>(pa[1]);
      tw[(t / 4u) * 8u + (t % 4u) * 2u] = bitcast<i32>(pw & 0x0f0f0f0fu);  // nibbles → bytes
      tw[(t / 4u) * 8u + (t % 4u) * 2u + 1u] = bitcast<i32>((pw >> 4u) & 0x0f0f0f0fu);
      if (t < 64u) {
        row_scale[t] = ps.x;
        row_sum[t] = ps.y;
        col_scale[t] = ps.z;
      }
    }
    workgroupBarrier();
    if (b < blocks) {  // block b's words: 64 rows × 8 words of activations, 64 columns × 4 words of nibbles
      for (var h = 0u; h < 2u; h++) {
        let i = t + 256u * h;
        pa[h] = a[min(row0 + i / 8u, u.m - 1u) * (u.k / 4u) + b * 8u + i % 8u];
      }
      pw = q[min(col0 + t / 4u, u.n - 1u) * (u.k / 8u) + b * 4u + t % 4u];
      if (t < 64u) {
        let r = min(row0 + t, u.m - 1u);
        ps = vec3<f32>(a_scale[r * blocks + b], f32(a_sum[r * blocks + b]) * 8.0, s[min(col0 + t, u.n - 1u) * blocks + b]);
      }
    }
    if (b == 0u) { continue; }
    let left = subgroupMatrixLoad<subgroup_matrix_left<i8, 32, 16>>(&ta, tm * 16u * 32u, false, 32u);
    for (var j = 0u; j < 2u; j++) {
      let right = subgroupMatrixLoad<subgroup_matrix_right<i8, 16, 32>>(&tw, (tn + j) * 16u * 32u, true, 32u);
      subgroupMatrixStore(&tr, sg * 512u + j * 256u, subgroupMatrixMultiply<i32>(left, right), false, 16u);
    }
    workgroupBarrier();
    for (var j = 0u; j < 2u; j++) {
      let c = (tn + j) * 16u + lane % 16u;
      for (var i = 0u; i < 8u; i++) {
        let r = tm * 16u + 2u * i + lane / 16u;
        acc[j * 8u + i] += (f32(tr[sg * 512u + j * 256u + 32u * i + lane]) - row_sum[r]) * row_scale[r] * col_scale[c];
      }
    }
    workgroupBarrier();
  }
  for (var j = 0u; j < 2u; j++) {
    for (var i = 0u; i < 8u; i++) {
      let r = row0 + tm * 16u + 2u * i + lane / 16u;
      let c = col0 + (tn + j) * 16u + lane % 16u;
      if (r < u.m && c < u.n) { out[r * u.n + c] = acc[j * 8u + i]; }
    }
  }
}
"""

JS = """
const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const bin = async (name, Type) => new Type(await (await fetch(name)).arrayBuffer());

async function main() {
  const cfg = await (await fetch("config.json")).json();
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  const out = { adapter: { description: adapter.info.description, features: [...adapter.features].sort(),
                           configs: [...(adapter.info.subgroupMatrixConfigs ?? [])].map((c) =>
                             `${c.componentType}→${c.resultComponentType} ${c.M}×${c.N}×${c.K}`) }, shapes: [], errors: [] };
  if (!adapter.features.has("chromium-experimental-subgroup-matrix")) {
    out.errors.push("the adapter has no chromium-experimental-subgroup-matrix");
    return out;
  }
  const device = await adapter.requestDevice({
    requiredFeatures: ["timestamp-query", "subgroups", "chromium-experimental-subgroup-matrix"],
    requiredLimits: { maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
                      maxBufferSize: adapter.limits.maxBufferSize,
                      maxComputeWorkgroupStorageSize: adapter.limits.maxComputeWorkgroupStorageSize } });
  device.onuncapturederror = (e) => out.errors.push(e.error.message.slice(0, 500));
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
  const buffer = (data) => {
    const b = device.createBuffer({ size: Math.max(16, Math.ceil(data.byteLength / 16) * 16), usage });
    device.queue.writeBuffer(b, 0, data);
    return b;
  };
  const module = device.createShaderModule({ code: cfg.wgsl });
  const info = await module.getCompilationInfo();
  for (const m of info.messages) if (m.type === "error") out.errors.push(`WGSL ${m.lineNum}:${m.linePos} ${m.message}`);
  const pipe = await device.createComputePipelineAsync({ layout: "auto", compute: { module, entryPoint: "main" } });
  const passMs = passTimer(device);
  for (const shape of cfg.shapes) {
    const [m, n, k] = [cfg.rows, shape.n, shape.k];
    const uniform = device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    device.queue.writeBuffer(uniform, 0, new Uint32Array([m, n, k, 0]));
    const acts = [await bin(shape.files.a, Uint32Array), await bin(shape.files.a_scale, Float32Array),
                  await bin(shape.files.a_sum, Int32Array)].map(buffer);
    const q = await bin(shape.files.q, Uint32Array), s = await bin(shape.files.s, Float32Array);
    const weights = Array.from({ length: shape.copies }, () => [buffer(q), buffer(s)]);
    const result = device.createBuffer({ size: 4 * m * n, usage });
    const groups = weights.map((w) => device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [
      uniform, ...acts, ...w, result].map((b, binding) => ({ binding, resource: { buffer: b } })) }));
    const grid = [Math.ceil(n / 64), Math.ceil(m / 64), 1];
    const one = [], many = [];
    for (let i = 0; i < cfg.runs + 2; i++) {
      one.push(await passMs(pipe, groups.slice(0, 1), grid, 1));
      many.push(await passMs(pipe, groups, grid, cfg.chain + 1));
    }
    const staging = device.createBuffer({ size: 4 * n * cfg.check.length, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const e = device.createCommandEncoder();
    cfg.check.forEach((row, i) => e.copyBufferToBuffer(result, 4 * n * row, staging, 4 * n * i, 4 * n));
    device.queue.submit([e.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const values = [...new Float32Array(staging.getMappedRange())];
    staging.destroy();
    out.shapes.push({ name: shape.name, m, n, k, us: (median(many.slice(2)) - median(one.slice(2))) / cfg.chain * 1000,
                      one_us: median(one.slice(2)) * 1000, values });
    [...acts, ...weights.flat(), result, uniform].forEach((b) => b.destroy());
  }
  return out;
}
window.result = await main();
""" + PASS_TIMER

PAGE = '<!doctype html><meta charset="utf-8"><title>int8 matmul</title><script type="module" src="bench.mjs"></script>'


def quantized_activations(m: int, k: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int8 values [m][k], scales [m][k/32], block sums [m][k/32]) of random float activations."""
    x = rng.standard_normal((m, k)).astype(np.float32)
    blocks = x.reshape(m, k // 32, 32)
    scale = np.maximum(np.abs(blocks).max(axis=2), 1e-8) / 127
    a = np.clip(np.rint(blocks / scale[..., None]), -127, 127).astype(np.int8)
    return a.reshape(m, k), scale.astype(np.float32), a.sum(axis=2, dtype=np.int32)


def unpack_order(v: np.ndarray) -> np.ndarray:
    """Values along K in the order the kernel's two-mask unpack gives: 0, 2, 4, 6, 1, 3, 5, 7 of every 8."""
    return v.reshape(*v.shape[:-1], -1, 4, 2).swapaxes(-1, -2).reshape(v.shape)


def shape_files(site: Path, name: str, k: int, n: int, m: int, rows: list[int], rng) -> tuple[dict, np.ndarray]:
    """The inputs of one shape written into the site (the weights quantized by the exporter); returns their file
    names and the expected output's `rows`: the exporter's dequantized weights times the activations' int8 values
    times their scales, in float64."""
    a, a_scale, a_sum = quantized_activations(m, k, rng)
    q, s = quantize(rng.standard_normal((n, k)).astype(np.float32), 4, 32)
    stem = name.replace(" ", "_")
    files = {part: f"{stem}.{part}.bin" for part in ("a", "a_scale", "a_sum", "q", "s")}
    for part, data in (("a", unpack_order(a)), ("a_scale", a_scale), ("a_sum", a_sum), ("q", q), ("s", s)):
        (site / files[part]).write_bytes(np.ascontiguousarray(data).tobytes())
    x = a[rows].astype(np.float64) * np.repeat(a_scale[rows], 32, axis=1)
    return files, x @ dequantize(q, s, 4).astype(np.float64).T


def checked_rows(m: int) -> list[int]:
    """Output rows read back: each of a tile's four 16-row strips, odd and even rows, a second row tile, the last."""
    return sorted({0, 21, 42, 63, min(97, m - 1), m - 1})


def run(a) -> dict:
    from bench.browser_kernel_bench import run_gpu
    from webgemma_site.serve import make_server

    site = Path(tempfile.mkdtemp(prefix="webgemma-int8-"))
    rng = np.random.default_rng(3)
    shapes, wants, check = [], [], checked_rows(a.rows)
    for name, k, n in SHAPES[: a.shapes]:
        files, want = shape_files(site, name, k, n, a.rows, check, rng)
        weight_bytes = n * k // 2 + n * k // 8
        shapes.append({"name": name, "k": k, "n": n, "files": files, "copies": max(2, -(-256 * 2**20 // weight_bytes))})
        wants.append(want)
    (site / "config.json").write_text(json.dumps({"rows": a.rows, "runs": 7, "chain": 20, "shapes": shapes, "wgsl": WGSL,
                                                  "check": check}))
    (site / "bench.mjs").write_text(JS)
    (site / "index.html").write_text(PAGE)
    server = make_server(site, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = run_gpu(f"http://127.0.0.1:{server.server_address[1]}/index.html", a.timeout)
        for shape, want in zip(result["shapes"], wants):
            error = np.abs(np.reshape(shape.pop("values"), want.shape) - want).max() / np.abs(want).max()
            shape["max_error"] = float(error)
            if not error < 1e-5:
                result["errors"].append(f"{shape['name']}: wrong result (largest error {error:.2e} of the largest value)")
    finally:
        server.shutdown()
        shutil.rmtree(site)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=512, help="the activations' rows (a prefill chunk's tokens)")
    p.add_argument("--shapes", type=int, default=len(SHAPES), help="only the first N shapes")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--results", type=Path, help="write the raw results here (JSON)")
    r = recorded_run(run, p.parse_args())
    print(f"{'shape':18s} {'M×N×K':>18s} {'µs':>8s} {'TOPS':>7s} {'error':>9s}")
    for s in r["shapes"]:
        print(f"{s['name']:18s} {s['m']:>5d}×{s['n']:>5d}×{s['k']:>5d} {s['us']:8.1f} "
              f"{2 * s['m'] * s['n'] * s['k'] / s['us'] / 1e6:7.1f} {s.get('max_error', float('nan')):9.1e}")
    if r["errors"]:
        raise SystemExit(f"errors (the timings are void): {r['errors'][:5]}")


if __name__ == "__main__":
    main()
