"""The decode step's own int4 matvec kernel (web/page/wgsl.mjs MATVEC), alone, at E2B's and E4B's shapes, in every
variant it has: lanes per row, sums through workgroup memory or by subgroups (SG), float32 or int8 inputs (Q8). Each
variant is timed by GPU timestamps over a chain of dependent dispatches in one compute pass (as in the step: every
matvec reads and writes the one activation buffer), the weights cycled over copies past the L2 cache, and its first
and last rows are checked against the same product computed here.

    python bench/matvec_bench.py [--gpu] [--quick] [--results out.json]

--gpu: Chromium from $CHROMIUM with $CHROMIUM_GPU_FLAGS (../shared/gpu-browser). Without it: Debian's Chromium on
SwiftShader (checks the harness and every variant's result only; --quick keeps it short).
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

from webgemma.kernel_plan import EPI_GELU_MUL, EPI_STORE, LANES, _uniform, matvec_constants  # noqa: E402

# (name, K, rows of each source, epi); the lm_head is one column chunk of the tied embedding
SHAPES = [
    ("e2b qkv", 1536, (2048, 256, 256), EPI_STORE), ("e2b o_proj", 2048, (1536,), EPI_STORE),
    ("e2b gate_up", 1536, (6144, 6144), EPI_GELU_MUL), ("e2b gate_up wide", 1536, (12288, 12288), EPI_GELU_MUL),
    ("e2b down", 6144, (1536,), EPI_STORE), ("e2b down wide", 12288, (1536,), EPI_STORE),
    ("e2b ple_gate", 1536, (256,), EPI_STORE), ("e2b ple_proj", 256, (1536,), EPI_STORE),
    ("e2b lm_head chunk", 768, (262144,), EPI_STORE),
    ("e4b qkv", 2560, (2048, 512, 512), EPI_STORE), ("e4b o_proj", 2048, (2560,), EPI_STORE),
    ("e4b gate_up", 2560, (10240, 10240), EPI_GELU_MUL), ("e4b down", 10240, (2560,), EPI_STORE),
]
QUICK_SHAPES = [("qkv", 256, (64, 32, 32), EPI_STORE), ("gate_up", 256, (96, 96), EPI_GELU_MUL),
                ("down", 1024, (64,), EPI_STORE)]
PATTERN_WORDS = 1 << 20  # the weight words, repeated over every weight buffer
PATTERN_SCALES = 1 << 16
MAX_PER = 16  # lanes that would read more weight words than this each are not tried

# For the benches that time one kernel alone: GPU ms of n dispatches of `pipe` in one compute pass, the bind groups in
# turn, by timestamp queries.
PASS_TIMER = """
function passTimer(device) {
  const querySet = device.createQuerySet({ type: "timestamp", count: 2 });
  const resolved = device.createBuffer({ size: 16, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
  const stamps = device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  return async (pipe, groups, grid, n) => {
    const e = device.createCommandEncoder();
    const p = e.beginComputePass({ timestampWrites: { querySet, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 } });
    p.setPipeline(pipe);
    for (let i = 0; i < n; i++) { p.setBindGroup(0, groups[i % groups.length]); p.dispatchWorkgroups(...grid); }
    p.end();
    e.resolveQuerySet(querySet, 0, 2, resolved, 0);
    e.copyBufferToBuffer(resolved, 0, stamps, 0, 16);
    device.queue.submit([e.finish()]);
    await stamps.mapAsync(GPUMapMode.READ);
    const [begin, end] = new BigUint64Array(stamps.getMappedRange());
    stamps.unmap();
    return Number(end - begin) / 1e6;
  };
}
"""

JS = """
import { KERNELS } from "./wgsl.mjs";
const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main() {
  const cfg = await (await fetch("config.json")).json();
  const words = new Uint32Array(await (await fetch("words.bin")).arrayBuffer());
  const scales = new Float32Array(await (await fetch("scales.bin")).arrayBuffer());
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  const features = ["timestamp-query", "subgroups"].filter((f) => adapter.features.has(f));
  const device = await adapter.requestDevice({ requiredFeatures: features, requiredLimits: {
    maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize, maxBufferSize: adapter.limits.maxBufferSize } });
  const out = { adapter: { description: adapter.info.description, architecture: adapter.info.architecture,
                           subgroups: [adapter.info.subgroupMinSize, adapter.info.subgroupMaxSize], features }, shapes: [], errors: [] };
  device.onuncapturederror = (e) => out.errors.push(e.error.message.slice(0, 300));
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
  const filled = (bytes, pattern) => {
    const b = device.createBuffer({ size: bytes, usage });
    for (let o = 0; o < bytes; o += pattern.byteLength) device.queue.writeBuffer(b, o, pattern, 0, Math.min(pattern.length, (bytes - o) / 4));
    return b;
  };
  const none = device.createBuffer({ size: 16, usage });
  const passMs = passTimer(device);  // over the weight copies in turn
  const readAct = async (act, ranges) => {
    const bytes = ranges.reduce((s, [, n]) => s + 4 * n, 0);
    const staging = device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const e = device.createCommandEncoder();
    let at = 0;
    for (const [off, n] of ranges) { e.copyBufferToBuffer(act, 4 * off, staging, at, 4 * n); at += 4 * n; }
    device.queue.submit([e.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const values = [...new Float32Array(staging.getMappedRange())];
    staging.destroy();
    return values;
  };
  for (const shape of cfg.shapes) {
    const act = device.createBuffer({ size: 4 * shape.act_words, usage });
    device.queue.writeBuffer(act, 0, new Float32Array(shape.x));
    device.queue.writeBuffer(act, 4 * shape.xq_at, new Uint32Array(shape.xq));
    const uniformOf = (words) => {
      const b = device.createBuffer({ size: Math.ceil(words.length / 4) * 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
      device.queue.writeBuffer(b, 0, new Uint32Array(words));
      return b;
    };
    const uniforms = [uniformOf(shape.uniform), uniformOf(shape.uniform_q8)];
    const weights = Array.from({ length: shape.copies }, () => shape.rows.map((n) => [
      filled(n * shape.k / 2, words), filled(n * shape.k / 32 * 4, scales)]));
    const result = { name: shape.name, k: shape.k, rows: shape.rows, bytes: shape.bytes, variants: [] };
    for (const v of shape.variants) {
      if (v.SG && !features.includes("subgroups")) continue;
      const r = { ...v };
      try {
        device.pushErrorScope("validation");
        const module = device.createShaderModule({ code: KERNELS.matvec(v) });
        const pipe = await device.createComputePipelineAsync({ layout: "auto", compute: { module, entryPoint: "main" } });
        const groups = weights.map((w) => device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [
          uniforms[v.Q8 ? 1 : 0], act, ...[0, 1, 2].flatMap((s) => w[s] ?? [none, none])].map((buffer, binding) => ({ binding, resource: { buffer } })) }));
        const grid = v.grid;
        const one = [], many = [];
        for (let i = 0; i < cfg.runs + 2; i++) {
          one.push(await passMs(pipe, groups, grid, 1));
          many.push(await passMs(pipe, groups, grid, cfg.chain + 1));
        }
        r.us = (median(many.slice(2)) - median(one.slice(2))) / cfg.chain * 1000;
        r.values = await readAct(act, shape.check);
        const error = await device.popErrorScope();
        if (error) throw new Error(error.message);
      } catch (e) {
        r.error = String(e.message || e).slice(0, 500);
      }
      result.variants.push(r);
    }
    out.shapes.push(result);
    act.destroy();
    weights.flat(2).forEach((b) => b.destroy());
  }
  return out;
}
window.result = await main();
""" + PASS_TIMER

PAGE = '<!doctype html><meta charset="utf-8"><title>matvec</title><script type="module" src="bench.mjs"></script>'


def patterns() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return (rng.integers(0, 2**32, PATTERN_WORDS, dtype=np.uint64).astype(np.uint32),
            rng.uniform(0.005, 0.02, PATTERN_SCALES).astype(np.float32))


def x_values(k: int) -> np.ndarray:
    return ((np.arange(k) % 13 - 6) / 8).astype(np.float32)


def quantized(x: np.ndarray) -> np.ndarray:
    """x as wgsl.mjs quantize8 writes it for a Q8 matvec, as uint32 words: per 8 values, the even and the odd ones as
    packed int8 (scale: their largest magnitude / 127), their sum times -8 and the scale."""
    groups = x.reshape(-1, 8).astype(np.float32)
    d = np.abs(groups).max(axis=1, keepdims=True) / np.float32(127)
    q = np.where(d > 0, np.round(groups / np.where(d > 0, d, 1)), 0).astype(np.int8)
    out = np.empty((q.shape[0], 4), np.uint32)
    out[:, 0] = q[:, 0::2].copy().view(np.uint32).reshape(-1)
    out[:, 1] = q[:, 1::2].copy().view(np.uint32).reshape(-1)
    out[:, 2] = (-8 * q.astype(np.int32).sum(axis=1)).astype(np.int32).view(np.uint32)
    out[:, 3] = d.reshape(-1).view(np.uint32)
    return out.reshape(-1)


def dequantized(words: np.ndarray) -> np.ndarray:
    """The values a Q8 matvec multiplies by: quantized(x)'s int8 values times their scales."""
    w = words.reshape(-1, 4)
    q = np.empty((w.shape[0], 8), np.float64)
    q[:, 0::2] = w[:, 0].copy().view(np.int8).reshape(-1, 4)
    q[:, 1::2] = w[:, 1].copy().view(np.int8).reshape(-1, 4)
    return (q * w[:, 3].view(np.float32)[:, None]).reshape(-1)


def expected(k: int, n: int, rows: list[int], x: np.ndarray | None = None) -> np.ndarray:
    """Rows of one source's product W x (x_values by default), from the repeated patterns."""
    x = x_values(k) if x is None else x
    w, s = patterns()
    out = []
    for r in rows:
        q = w[(r * k // 8 + np.arange(k // 8)) % w.size]
        nib = ((q[:, None] >> (4 * np.arange(8, dtype=np.uint32))) & 15).reshape(-1).astype(np.float64) - 8
        out.append((nib * np.repeat(s[(r * k // 32 + np.arange(k // 32)) % s.size], 32)) @ x)
    return np.array(out)


def gelu(v: np.ndarray) -> np.ndarray:
    return 0.5 * v * (1 + np.tanh(0.7978845608 * (v + 0.044715 * v**3)))


def variants(k: int, rows: int) -> list[dict]:
    plan = matvec_constants(k, rows, subgroups=True)
    out = []
    for lanes in LANES:
        if -(-k // 8 // lanes) <= MAX_PER and lanes <= max(8, k // 8) or lanes == plan["LANES"]:
            for sg in (False, True):
                for q8 in (0, 1):
                    c = matvec_constants(k, rows, lanes, sg)
                    groups = -(-rows * lanes // 256)
                    out.append(c | {"Q8": q8, "grid": [min(groups, 65535), -(-groups // 65535), 1],
                                    "plan": c == plan and not q8})
    return out


def config(quick: bool) -> dict:
    shapes = []
    for name, k, rows, epi in QUICK_SHAPES if quick else SHAPES:
        x_words = -(-k // 4) * 4
        outs, at = [], x_words
        for n in rows:
            outs.append(at)
            at += -(-n // 4) * 4
        n = rows[0] if epi == EPI_GELU_MUL else sum(rows)
        padded = [*rows, 0, 0][:3]

        def uniform(in_off: int) -> list[int]:
            return np.frombuffer(_uniform("matvec", k=k, in_off=in_off, n0=padded[0], n1=padded[1], n2=padded[2],
                                          out0=outs[0], out1=outs[1] if len(outs) > 1 else 0,
                                          out2=outs[2] if len(outs) > 2 else 0, epi=epi), np.uint32).tolist()
        xq = quantized(x_values(k))
        bytes_ = sum(r * k // 2 + r * k // 8 for r in rows)
        shapes.append({"name": name, "k": k, "rows": list(rows), "epi": epi, "bytes": bytes_, "act_words": at + xq.size,
                       "x": x_values(k).tolist(), "uniform": uniform(0), "uniform_q8": uniform(at),
                       "xq": xq.tolist(), "xq_at": at,
                       "copies": 1 if quick else max(2, -(-256 * 2**20 // bytes_)),
                       "check": [[o, 1] for o, r in zip(outs, rows) for o in (o, o + r - 1)][:2 if epi else None],
                       "variants": variants(k, n)})
    return {"runs": 1 if quick else 7, "chain": 2 if quick else 100, "shapes": shapes}


def want(shape: dict, q8: bool = False) -> np.ndarray:
    k, rows = shape["k"], shape["rows"]
    x = dequantized(np.asarray(shape["xq"], np.uint32)) if q8 else None
    if shape["epi"] == EPI_GELU_MUL:  # gate and up: the same pattern, so the same products
        y = expected(k, rows[0], [0, rows[0] - 1], x)
        return gelu(y) * y
    return np.concatenate([expected(k, n, [0, n - 1], x) for n in rows])


def run(a, open_page=None) -> dict:
    """The variants' results, checked. open_page(url, timeout): window.result of the page at url (default: a
    Chromium of its own, see browser_kernel_bench)."""
    from bench.browser_kernel_bench import run_gpu, run_local
    from webgemma_site.serve import make_server

    site = Path(tempfile.mkdtemp(prefix="webgemma-matvec-"))
    cfg = config(a.quick)
    w, s = patterns()
    (site / "words.bin").write_bytes(w.tobytes())
    (site / "scales.bin").write_bytes(s.tobytes())
    (site / "config.json").write_text(json.dumps(cfg))
    (site / "bench.mjs").write_text(JS)
    (site / "index.html").write_text(PAGE)
    shutil.copy(ROOT / "web" / "page" / "wgsl.mjs", site / "wgsl.mjs")
    server = make_server(site, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = (open_page or (run_gpu if a.gpu else run_local))(f"http://127.0.0.1:{server.server_address[1]}/index.html",
                                                                 a.timeout)
    finally:
        server.shutdown()
        shutil.rmtree(site)
    for shape, spec in zip(result["shapes"], cfg["shapes"]):
        for v in shape["variants"]:
            target = want(spec, v["Q8"])
            if "error" not in v and not np.allclose(v["values"], target, rtol=1e-4, atol=1e-4):
                v["error"] = f"wrong result {v['values']} != {target.tolist()}"
    return result


def recorded_run(run, a) -> dict:
    """run(a)'s results, written to a.results (JSON) when given; the adapter printed."""
    r = run(a)
    if a.results:
        a.results.write_text(json.dumps(r, indent=1))
    print(json.dumps(r["adapter"]))
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--quick", action="store_true", help="small shapes, short chains (SwiftShader)")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--top", type=int, default=6, help="the fastest variants shown per shape")
    p.add_argument("--results", type=Path, help="write the raw results here (JSON)")
    a = p.parse_args()
    r = recorded_run(run, a)
    print(f"{'shape':18s} {'MB':>6s} {'variant':34s} {'µs':>8s} {'GB/s':>7s}")
    failed = [f"{s['name']} {v}" for s in r["shapes"] for v in s["variants"] if "error" in v]
    for s in r["shapes"]:
        timed = sorted((v for v in s["variants"] if "error" not in v), key=lambda v: v["us"])
        for rank, v in enumerate(timed):
            if rank < a.top or v["plan"]:
                name = (f"lanes {v['LANES']} per {v['PER']}{' subgroups' if v['SG'] else ''}{' q8' if v['Q8'] else ''}"
                        f"{' (plan)' if v['plan'] else ''}")
                print(f"{s['name']:18s} {s['bytes'] / 1e6:6.1f} {name:34s} {v['us']:8.1f} {s['bytes'] / v['us'] / 1e3:7.0f}")
    if r["errors"] or failed:
        raise SystemExit(f"errors (the timings are void): {(r['errors'] + failed)[:5]}")


if __name__ == "__main__":
    main()
