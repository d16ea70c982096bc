// onnxruntime-web glue for py/browser.py: loading a bundle once, creating a session while recording ORT's log.
// Everything else (feeds, outputs, conversions) is done from Python.

import { openRowReader, workerClient } from "./store_bridge.mjs";

// ORT's wasm module binds console.log/error when it initialises, so a recorder must already sit in the console
// by then: this tap forwards every call and, while a session is being created, also keeps the line.
let recording = null;
for (const k of ["log", "info", "warn", "error", "debug"]) {
  const original = console[k].bind(console);
  console[k] = (...args) => {
    if (recording) recording.push(args.map(String).join(" "));
    original(...args);
  };
}

// wasm threads: onnxruntime's own default where the page is crossOriginIsolated, else 1 (no SharedArrayBuffer)
export const defaultThreads = () => crossOriginIsolated ? Math.min(4, Math.ceil(navigator.hardwareConcurrency / 2)) : 1;

const BUNDLES = { webgpu: "ort.webgpu.min.mjs", wasm: "ort.wasm.min.mjs" };
const bundles = new Map();

// One module instance per bundle ("webgpu" or "wasm", files under ortUrl); its env is set before its first session
// (wasm is initialised then), and the webgpu bundle is started (startWebGpu) before it is handed out. A bundle
// already loaded (startOrt) keeps the threads it was loaded with.
export function loadOrt(bundle, ortUrl, numThreads = defaultThreads()) {
  const url = ortUrl + BUNDLES[bundle];
  if (!bundles.has(url)) {
    const loaded = import(url).then((ort) => {
      ort.env.wasm.wasmPaths = ortUrl;
      ort.env.wasm.numThreads = numThreads;
      ort.env.wasm.proxy = false;
      return ort;
    });
    bundles.set(url, bundle === "webgpu" ? loaded.then((ort) => startWebGpu(ort, ortUrl)) : loaded);
  }
  return bundles.get(url);
}

// onnxruntime-web's WebGPU runtime (its wasm compiled and initialised, its device made) starts with its first
// session, here one over `start.onnx`, a one-node graph the site builder writes. That session is kept for the page's
// life: releasing onnxruntime's last session also drops its device, and the next session would make another, on
// which the weights uploaded before the model's session exists (webgemma.backends.ort_web) would be invalid.
let startSession = null;
async function startWebGpu(ort, ortUrl) {
  const t0 = performance.now();
  const model = new Uint8Array(await (await fetch(ortUrl + "start.onnx")).arrayBuffer());
  startSession = await ort.InferenceSession.create(model, { executionProviders: ["webgpu"] });
  globalThis.webgemmaOrtStart = [t0, performance.now()];  // for benchmarks: when it ran, ms since navigation
  return ort;
}

// Starts onnxruntime-web's WebGPU runtime while the page's Python boots, so that the model's load does not wait for
// it (~1 s). Without WebGPU it does nothing; a failure is reported when the model loads (loadOrt again).
export function startOrt(ortUrl) {
  if (navigator.gpu) loadOrt("webgpu", ortUrl).catch(() => {});
}

// Creates a session; with verbose, ORT's console output during creation comes back as `log` (node placement).
export async function createSession(ort, model, options, verbose) {
  const log = [];
  const level = ort.env.logLevel;
  if (verbose) {
    ort.env.logLevel = "verbose";
    recording = log;
  }
  try {
    const session = await ort.InferenceSession.create(model, options);
    return { session, log };
  } finally {
    if (verbose) {
      recording = null;
      ort.env.logLevel = level;
    }
  }
}

// A tensor's bytes as a Uint8Array (read back from the GPU if needed): Pyodide 0.27 cannot take a Float16Array,
// so no typed array of another kind crosses over to Python.
export async function tensorBytes(tensor) {
  const data = tensor.location === "cpu" ? tensor.data : await tensor.getData();
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

// A buffer a session can bind as an input or output, rounded up to whole 16-byte rows.
export const storageBuffer = (device, bytes) => device.createBuffer({
  size: Math.max(16, Math.ceil(bytes / 16) * 16),
  usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
});

// GPUs lower their clocks ~1.5 s after their last work and need ~0.3 s of work to raise them again: on an H200 a
// 512-token prefill took 60 ms back to back and 200 ms after 3 s idle, natively too (BENCHMARKS.md). While someone
// types a prompt (keepWarm on each keystroke, and when the pointer comes over its form), one workgroup spins, so
// that the prompt finds the clocks up; a prompt stops it (ms = 0) before its own work, which waits for at most
// SPIN_DEPTH spins. The GPU must stay busy, not just woken: one spin at a time, resubmitted once done, kept it 25%
// busy and its clock sank (1,980 → 1,260 MHz in 3 s); SPIN_DEPTH spins queued cover the ~2 ms each takes to come
// back to this thread.
const SPIN = `@group(0) @binding(0) var<storage, read_write> sink: array<f32, 64>;
@compute @workgroup_size(64) fn main(@builtin(local_invocation_index) i: u32) {
  var x = f32(i);
  for (var k = 0u; k < 262144u; k++) { x = fma(x, 0.9999, 1.0); }  // ~0.5 ms at an H200's full clock
  sink[i] = x;
}`;
const SPIN_DEPTH = 6;
export const warmth = { until: 0, spinning: null, dispatches: 0 };

export function keepWarm(ort, ms) {
  warmth.until = performance.now() + ms;
  // best effort: a spin that fails (the device lost) must not break the page; the prompt's own run reports that
  if (ms > 0) warmth.spinning ??= spin(ort).catch(() => {}).finally(() => { warmth.spinning = null; });
}

let spinner = null;  // {pipeline, group}: made once, reused by every later burst of typing

async function spin(ort) {
  const device = await ort.env.webgpu.device;
  if (!spinner) {
    const pipeline = await device.createComputePipelineAsync({
      layout: "auto", compute: { module: device.createShaderModule({ code: SPIN }), entryPoint: "main" },
    });
    const entries = [{ binding: 0, resource: { buffer: storageBuffer(device, 256) } }];
    spinner = { pipeline, group: device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries }) };
  }
  const queued = [];  // each spin's "done", oldest first
  while (performance.now() < warmth.until) {
    const encoder = device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    pass.setPipeline(spinner.pipeline);
    pass.setBindGroup(0, spinner.group);
    pass.dispatchWorkgroups(1);
    pass.end();
    device.queue.submit([encoder.finish()]);
    warmth.dispatches += 1;
    queued.push(device.queue.onSubmittedWorkDone());
    if (queued.length >= SPIN_DEPTH) await queued.shift();
  }
  await Promise.all(queued);
}

// Weights as graph inputs (webgemma.onnx_bytes): each is uploaded once and the same GPU buffer is fed to every
// session. weights: [[file, offset, length]]; files: Map path → Blob or bytes; buffers: "file@offset" → GPUBuffer,
// the map of earlier uploads, extended; copies: where the files may have copies in OPFS (fillWeights), or null. The
// buffers exist when this returns, so sessions can be created and run over them at once; their bytes follow (`done`).
export async function uploadWeights(ort, files, weights, buffers, copies = null) {
  const device = await ort.env.webgpu.device;
  const todo = new Map();  // path → [[offset, length, buffer]]
  for (const [path, offset, length] of weights) {
    const key = `${path}@${offset}`;
    if (buffers.has(key)) continue;
    if (offset % 4) throw new Error(`${path}: a weight starts at byte ${offset}, not a multiple of 4 (export it again)`);
    const buffer = storageBuffer(device, length);
    buffers.set(key, buffer);
    if (!todo.has(path)) todo.set(path, []);
    todo.get(path).push([offset, length, buffer]);
  }
  return { done: fillWeights(device, files, todo, copies) };  // wrapped: awaiting this call does not wait for the bytes
}

// Each file's bytes go into a staging buffer, from which the GPU copies them into the weights' buffers, in queue
// order before any later run (queue.writeBuffer was slower, BENCHMARKS.md). STAGING buffers, mapped for writing in
// turn, serve every file: one is filled while the GPU copies out of the others, and their memory (shared with the
// GPU process) is allocated and paged in once, not once per file. A worker reads the next READ_AHEAD files while
// this thread is busy creating sessions: with the one being copied, up to READ_AHEAD + 1 shard files in memory
// (320 MiB with the exporter's default 64 MiB shards). It reads them from their copies in OPFS where all exist
// (`copies`: {cacheName, files: {path: {url, sha256, bytes}}}, made after an earlier load by rows_worker.mjs), into
// buffers handed back and forth: 3–5 GB/s on an H200's host against 1.1–1.4 for a Blob from the Cache API, which
// bounded the upload's end (BENCHMARKS.md, nineteenth session). Otherwise, and for any file whose copy fails, from
// the Cache API.
const READ_AHEAD = 4;
const STAGING = 2;
const words = (bytes) => Math.ceil(bytes / 4) * 4;  // copies move whole 4-byte words

// todo: path → [[offset in the file, length, buffer, offset in the buffer (default 0)]]
export async function fillWeights(device, files, todo, copies = null) {
  if (!todo.size) return;  // e.g. the step graph's weights, all uploaded for the prefill graph
  const paths = [...todo.keys()];
  const reader = (copies && await copyReader(copies, paths)) || blobReader();
  globalThis.webgemmaUploadFrom ??= reader.from;  // for benchmarks: where the first upload (the decoder's) read
  const read = (path) => {
    const file = files.get(path);
    return file instanceof Blob ? reader.read(file, path) : Promise.resolve(file);
  };
  const size = words(Math.max(4, ...paths.map((path) => files.get(path).size ?? files.get(path).byteLength)));
  const staging = Array.from({ length: STAGING }, () => device.createBuffer({
    size, usage: GPUBufferUsage.MAP_WRITE | GPUBufferUsage.COPY_SRC, mappedAtCreation: true,
  }));
  const reads = paths.slice(0, READ_AHEAD).map(read);
  const maps = [];  // each staging buffer's map, asked for right after its copies are submitted
  // for benchmarks: [file, bytes, loop start, bytes here, staging mapped, copies submitted] (ms since navigation)
  const trace = (globalThis.webgemmaUploadTrace ??= []);
  try {
    for (let i = 0; i < paths.length; i++) {
      const t = [paths[i], 0, performance.now()];
      const data = await reads[i];
      t[1] = data.byteLength;
      t.push(performance.now());
      reads[i] = null;
      if (i + READ_AHEAD < paths.length) reads.push(read(paths[i + READ_AHEAD]));
      const from = staging[i % STAGING];
      if (i >= STAGING) await maps[i % STAGING];  // once the GPU has copied its last file out
      t.push(performance.now());
      const end = words(data.byteLength);
      const mapped = new Uint8Array(from.getMappedRange(0, end));
      mapped.set(data);
      mapped.fill(0, data.byteLength);  // the last word's spare bytes, as a fresh buffer has them
      from.unmap();
      reader.reuse?.(data);
      const encoder = device.createCommandEncoder();
      for (const [offset, length, buffer, at = 0] of todo.get(paths[i])) {
        // the exporter starts every tensor at a multiple of 64 bytes
        encoder.copyBufferToBuffer(from, offset, buffer, at, Math.min(words(length), end - offset));
      }
      device.queue.submit([encoder.finish()]);
      if (i + STAGING < paths.length) {
        maps[i % STAGING] = from.mapAsync(GPUMapMode.WRITE);
        maps[i % STAGING].catch(() => {});  // an upload that fails destroys its staging buffers while they map
      }
      trace.push([...t, performance.now()]);
    }
  } finally {
    reader.close();
    for (const buffer of staging) buffer.destroy();  // freed once the copies have run
  }
}

// Blob → Uint8Array of its bytes, read by blob_reader.mjs; a read that fails, or a worker that fails or stops
// answering (a 64 MiB file takes well under a second), rejects.
function blobReader() {
  const { ask, close } = workerClient(new URL("./blob_reader.mjs", import.meta.url), "the weights' reader");
  const read = (blob) => {
    const bytes = ask({ blob }, 60_000).then((b) => new Uint8Array(b));
    bytes.catch(() => {});  // reads ahead of a failed one are dropped, not reported as unhandled
    return bytes;
  };
  return { read, from: "blobs", close: () => close(new Error("the weights' reader was closed")) };
}

// The files' OPFS copies, read by rows_worker.mjs (openRowReader) into buffers that come back for the next file once
// their bytes are staged (`reuse`): fresh 64 MiB buffers read no faster than the Cache API. Null where a file has no
// copy yet (nothing is copied here: the store copies after loading); a read that fails goes to the Cache API.
async function copyReader({ cacheName, files }, paths) {
  let copies;
  try {
    copies = await openRowReader(cacheName, paths.map((path) => files[path]), false);
  } catch {
    return null;
  }
  let fallback = null;
  const size = Math.max(...paths.map((path) => files[path].bytes));
  const spare = [];
  const read = (blob, path) => {
    const bytes = copies.read([[paths.indexOf(path), 0, files[path].bytes]], spare.pop() ?? new ArrayBuffer(size))
      .catch(() => (fallback ??= blobReader()).read(blob));
    bytes.catch(() => {});
    return bytes;
  };
  // a fallback's bytes may be in a smaller buffer
  const reuse = (data) => { if (data.buffer.byteLength === size) spare.push(data.buffer); };
  return { read, reuse, from: "opfs", close: () => { copies.close(); fallback?.close(); } };
}

// weights: [[input name, file, offset, type, dims]] → {input name: tensor over its uploaded buffer}
export function weightFeeds(ort, buffers, weights) {
  const feeds = {};
  for (const [name, path, offset, dataType, dims] of weights) {
    feeds[name] = ort.Tensor.fromGpuBuffer(buffers.get(`${path}@${offset}`), { dataType, dims });
  }
  return feeds;
}

export function destroyBuffers(buffers) {
  for (const buffer of buffers.values()) buffer.destroy();
  buffers.clear();
}

// A MAP_READ buffer's bytes, copied out once the queue's work before this call is done.
export async function readStaging(staging) {
  await staging.mapAsync(GPUMapMode.READ);
  const bytes = new Uint8Array(staging.getMappedRange().slice(0));
  staging.unmap();
  return bytes;
}

// Where a decode step's time goes, for benchmarks (globalThis.webgemmaStepTimes, the page's `step_times`): writing
// its inputs, running it (JS and onnxruntime's CPU side), waiting for the result, in milliseconds.
export function countStepTimes(write, run, read) {
  const times = (globalThis.webgemmaStepTimes ??= { runs: 0, write_ms: 0, run_ms: 0, read_ms: 0 });
  times.runs += 1;
  times.write_ms += write;
  times.run_ms += run;
  times.read_ms += read;
}

// Step decoding under graph capture (webgemma.static_cache): onnxruntime records the step graph's GPU commands
// once and replays them, so every input and output must be the same GPU buffer on every run. The graph reads the
// caches; its new key/value rows stay on the GPU and are copied into their slots (`copy`); the other inputs are
// rewritten with writeBuffer before each run; the top-k candidates come back through one staging buffer.
const SIZES = { float32: 4, int64: 8, int32: 4, uint8: 1 };
const byteSize = (type, dims) => dims.reduce((a, b) => a * b, 1) * SIZES[type];

export async function createStepSession(ort, model, options, spec, weights) {
  const session = await ort.InferenceSession.create(model, { ...options, enableGraphCapture: true });
  return new StepSession(ort, session, await ort.env.webgpu.device, spec, weights);
}

class StepSession {
  // spec.caches: [{input, type, dims}]; spec.rows: [{name, type, dims}], outputs kept on the GPU;
  // spec.outputs: [{name, type, dims}], read back in this order; weights: {input name: tensor} (uploadWeights,
  // shared with other sessions). The other inputs get their buffers on the first run, from what it writes.
  constructor(ort, session, device, spec, weights) {
    this.ort = ort;
    this.session = session;
    this.device = device;
    this.buffers = new Map();
    this.feeds = { ...weights };
    this.fetches = {};
    for (const { input, type, dims } of spec.caches) this.feeds[input] = this.tensor(input, type, dims);
    for (const { name, type, dims } of [...spec.rows, ...spec.outputs]) this.fetches[name] = this.tensor(name, type, dims);
    this.read = spec.outputs.map(({ name, type, dims }) => [name, byteSize(type, dims)]);
    this.staging = device.createBuffer({
      size: this.read.reduce((sum, [, bytes]) => sum + bytes, 0),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
  }

  tensor(name, type, dims) {
    const buffer = storageBuffer(this.device, byteSize(type, dims));
    this.buffers.set(name, buffer);
    return this.ort.Tensor.fromGpuBuffer(buffer, { dataType: type, dims });
  }

  // copies: [[dst cache, dstOffset, src (a GPUBuffer, or the name of one of this session's outputs), srcOffset, bytes]]
  copy(copies) {
    const encoder = this.device.createCommandEncoder();
    for (const [dst, dstOffset, src, srcOffset, bytes] of copies) {
      const from = typeof src === 'string' ? this.buffers.get(src) : src;
      encoder.copyBufferToBuffer(from, srcOffset, this.buffers.get(dst), dstOffset, bytes);
    }
    this.device.queue.submit([encoder.finish()]);
  }

  // writes: [[input name, type, dims, Uint8Array]], every input but the caches → the outputs' bytes, concatenated
  async run(writes) {
    const t0 = performance.now();
    for (const [name, type, dims, data] of writes) {
      if (!this.buffers.has(name)) this.feeds[name] = this.tensor(name, type, dims);
      const padded = data.byteLength % 4 ? new Uint8Array(Math.ceil(data.byteLength / 4) * 4) : data;
      if (padded !== data) padded.set(data);
      this.device.queue.writeBuffer(this.buffers.get(name), 0, padded);
    }
    const t1 = performance.now();
    await this.session.run(this.feeds, this.fetches);
    const t2 = performance.now();
    const encoder = this.device.createCommandEncoder();
    let offset = 0;
    for (const [name, bytes] of this.read) {
      encoder.copyBufferToBuffer(this.buffers.get(name), 0, this.staging, offset, bytes);
      offset += bytes;
    }
    this.device.queue.submit([encoder.finish()]);
    const bytes = await readStaging(this.staging);
    countStepTimes(t1 - t0, t2 - t1, performance.now() - t2);  // session.run is the replay
    return bytes;
  }

  async release() {
    await this.session.release();
    for (const buffer of new Set(this.buffers.values())) buffer.destroy();
    this.staging.destroy();
  }
}
