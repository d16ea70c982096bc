// The decode step as hand-written WebGPU kernels (wgsl.mjs), run from a plan made in Python
// (py/webgemma/kernel_plan.py): every pipeline and bind group is made once, and a step is one block of inputs
// written into the activations buffer, the plan's dispatches (encoded during the step before) and one read-back of
// the top-k and the token sampled from them.
// Once the per-layer table is on the GPU (uploadTable), a step finds its token's row itself, so steps can follow each
// other without waiting for the page: each takes the token the step before sampled (`submit` with chained).
// It works on onnxruntime-web's device, over the weights uploaded for its sessions (ort_bridge.mjs uploadWeights).
//
// plan: {act_words, constants: [word offset, bytes], caches: {name: bytes}, dispatches: [[kernel, bindings,
// uniform (bytes), grid, the constants its WGSL is specialized for]], block: [word offset, words], output: [word offset, words],
// row: [per-layer row's word offset, its scales' word offset, data bytes, scales are float16], tail: the block's
// word from which it depends only on the position, table: [rows per table buffer, buffers]}

import { KERNELS } from "./wgsl.mjs";
import { countStepTimes, fillWeights, readStaging, storageBuffer } from "./ort_bridge.mjs";
import { readRow } from "./store_bridge.mjs";

const UNIFORM_STRIDE = 256;  // minUniformBufferOffsetAlignment's largest allowed value
// A step that waits for the one before goes in this many submits: the GPU starts on the first while Chromium turns
// the next into Vulkan commands (E2B on an H100: 99.7 tokens/s with 4, 75.3 with 1). A chained step, queued behind
// others, goes in one (295 tokens/s against 291 with 4; BENCHMARKS.md).
const SUBMITS = 4;
const STAGING = 4;  // read-back buffers: steps in flight at once, at most
const TRACED = 1024;  // steps whose times timeSteps keeps, at most

// an IEEE half (the table's block scales) as a number, exactly
function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 31;
  const fraction = h & 1023;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

function encodeDispatches(pass, dispatches) {
  for (const [pipeline, group, [x, y, z]] of dispatches) {
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(x, y, z);
  }
  pass.end();
}

// Whether the kernels may add by subgroup operations (kernel_plan's `subgroups`: the matvecs' shuffles, the
// reductions of wgsl.mjs): the device has subgroups, and they are runs of consecutive invocations of a 1-D
// workgroup, which WGSL does not promise.
export async function subgroupsUsable(ort) {
  const device = await ort.env.webgpu.device;
  if (!device.features.has("subgroups")) return false;
  device.pushErrorScope("validation");
  const module = device.createShaderModule({ code: `enable subgroups;
@group(0) @binding(0) var<storage, read_write> ok: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32, @builtin(subgroup_size) sg: u32, @builtin(subgroup_invocation_id) sid: u32) {
  let swapped = subgroupShuffleXor(t, 1u);
  ok[t] = select(0u, 1u, sg >= 4u && (sg & (sg - 1u)) == 0u && sid == t % sg && swapped == (t ^ 1u));
}` });
  const pipeline = device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" } });
  const ok = storageBuffer(device, 1024);
  const read = device.createBuffer({ size: 1024, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  try {
    const encoder = device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: ok } }] }));
    pass.dispatchWorkgroups(1);
    pass.end();
    encoder.copyBufferToBuffer(ok, 0, read, 0, 1024);
    device.queue.submit([encoder.finish()]);
    if (await device.popErrorScope()) return false;
    await read.mapAsync(GPUMapMode.READ);
    return new Uint32Array(read.getMappedRange()).every((v) => v === 1);
  } finally {
    ok.destroy();
    read.destroy();
  }
}

// buffers: the weight buffers ("file@offset" → GPUBuffer); weightKeys: {weight input name: "file@offset"}
export async function createKernelStep(ort, buffers, weightKeys, plan) {
  const device = await ort.env.webgpu.device;
  const step = new KernelStep(device, plan, ort);
  await step.build((name) => buffers.get(weightKeys[name]));
  return step;
}

class KernelStep {
  constructor(device, plan, ort) {
    this.device = device;
    this.plan = plan;
    this.ort = ort;
    this.act = storageBuffer(device, plan.act_words * 4);
    device.queue.writeBuffer(this.act, plan.constants[0] * 4, plan.constants[1]);
    this.none = storageBuffer(device, 16);
    this.caches = new Map(Object.entries(plan.caches).map(([name, bytes]) => [name, storageBuffer(device, bytes)]));
    this.uniforms = device.createBuffer({
      size: UNIFORM_STRIDE * plan.dispatches.length, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    plan.dispatches.forEach(([, , uniform], i) => device.queue.writeBuffer(this.uniforms, i * UNIFORM_STRIDE, uniform));
    this.outBytes = plan.output[1] * 4;
    // each step's output, then its two timestamps (configure's timeSteps)
    this.staging = Array.from({ length: STAGING }, () => device.createBuffer({
      size: this.outBytes + 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    }));
    this.sent = 0;  // steps submitted: the next one reads back through staging[sent % STAGING]
    this.runs = 0;
    this.table = null;  // the per-layer table's buffers, once uploaded
    this.prefill = null;  // prefillRows' buffers
    this.stamps = null;
    this.configure({});  // encodeAhead, submits, ahead: the next step's command buffers
  }

  async build(weight) {
    this.resolve = (ref) => {
      if (ref === "act") return this.act;
      if (ref === "none") return this.none;
      const buffer = ref.startsWith("w:") ? weight(ref.slice(2)) : ref.startsWith("table:") ? this.table?.[+ref.slice(6)]
        : this.caches.get(ref.slice(6));
      if (!buffer) throw new Error(`the kernel step needs ${ref}, which was not uploaded`);
      return buffer;
    };
    this.device.pushErrorScope("validation");
    const pipelines = new Map();
    const key = (kernel, constants) => `${kernel}/${JSON.stringify(constants)}`;
    for (const [kernel, , , , constants] of this.plan.dispatches) {
      if (pipelines.has(key(kernel, constants))) continue;
      const module = this.device.createShaderModule({ code: KERNELS[kernel](constants), label: kernel });
      pipelines.set(key(kernel, constants), this.device.createComputePipelineAsync({
        layout: "auto", compute: { module, entryPoint: "main" }, label: kernel,
      }).catch(async (e) => {
        const info = await module.getCompilationInfo();
        throw new Error(`kernel ${kernel}: ${e.message} ${info.messages.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`).join("; ")}`);
      }));
    }
    for (const [k, promise] of pipelines) pipelines.set(k, await promise);
    this.pipelines = this.plan.dispatches.map(([kernel, , , , constants]) => pipelines.get(key(kernel, constants)));
    this.bind();
    const error = await this.device.popErrorScope();
    if (error) throw new Error(`the kernel step could not be built: ${error.message}`);
  }

  // The dispatches' bind groups: the gather dispatches only once the table is on the GPU (until then a step's block
  // brings its row).
  bind() {
    this.indices = [];  // the plan index of each dispatch bound
    this.dispatches = this.plan.dispatches.flatMap(([kernel, , , grid], i) => {
      if (kernel === "gather" && !this.table) return [];
      this.indices.push(i);
      return [[this.pipelines[i], this.bindGroup(i, this.uniforms, i * UNIFORM_STRIDE), grid]];
    });
    this.ahead = null;
  }

  // Plan dispatch i's bind group: its uniforms at `offset` of `uniforms`, `act` for its "act" binding.
  bindGroup(i, uniforms, offset, act = this.act) {
    const entries = [{ binding: 0, resource: { buffer: uniforms, offset, size: UNIFORM_STRIDE } },
      ...this.plan.dispatches[i][1].map((ref, j) => ({ binding: j + 1, resource: { buffer: ref === "act" ? act : this.resolve(ref) } }))];
    return this.device.createBindGroup({ layout: this.pipelines[i].getBindGroupLayout(0), entries });
  }

  // The per-layer table onto the GPU, in buffers of plan.table[0] rows. files: [[Blob, first row, rows]]; rowBytes:
  // a row's bytes. Throws where the device cannot hold it (nothing is kept then).
  async uploadTable(files, rowBytes) {
    const [per, count] = this.plan.table;
    const rows = files.reduce((n, [, , r]) => n + r, 0);
    const limit = Math.min(this.device.limits.maxStorageBufferBindingSize, this.device.limits.maxBufferSize);
    if (Math.min(per, rows) * rowBytes > limit) {
      throw new Error(`the per-layer table takes buffers of ${Math.min(per, rows) * rowBytes} bytes; this device binds at most ${limit}`);
    }
    this.device.pushErrorScope("out-of-memory");
    const buffers = Array.from({ length: count }, (_, b) => storageBuffer(this.device, Math.min(per, rows - b * per) * rowBytes));
    const error = await this.device.popErrorScope();
    if (error) {
      for (const buffer of buffers) buffer.destroy();
      throw new Error(`the per-layer table does not fit on the GPU: ${error.message}`);
    }
    const todo = new Map();  // each file's rows, cut where a buffer ends
    files.forEach(([, first, n], f) => {
      const pieces = [];
      for (let row = first; row < first + n; row = (Math.floor(row / per) + 1) * per) {
        const end = Math.min(first + n, (Math.floor(row / per) + 1) * per);
        pieces.push([(row - first) * rowBytes, (end - row) * rowBytes, buffers[Math.floor(row / per)], (row % per) * rowBytes]);
      }
      todo.set(f, pieces);
    });
    try {
      await fillWeights(this.device, new Map(files.map(([blob], f) => [f, blob])), todo);
    } catch (e) {
      for (const buffer of buffers) buffer.destroy();
      throw e;
    }
    this.table = buffers;
    this.bind();
    this.runs = 0;  // the next runs, with the gather dispatches, report any WebGPU error
  }

  // A prefill chunk's per-layer rows from the table on the GPU, as onnxruntime tensors shaped as PerLayerRows.feeds
  // gives them from storage (int4 data uint8 [n, data bytes], scales float32 [n, scales]): the plan's gather
  // dispatches with a workgroup row per token, over a buffer of their own (the token ids, then the rows and the
  // scales), copied into the tensors' buffers. Every chunk reuses the buffers: its gather is queued after the run
  // that read the chunk before. ids: Uint32Array.
  prefillRows(ids) {
    const n = ids.length;
    if (!this.prefill || this.prefill.capacity < n) this.allocPrefill(n);
    const { buffer, rowsAt, scalesAt, dataBytes, scales, out, groups } = this.prefill;
    this.device.queue.writeBuffer(buffer, 0, ids);
    const encoder = this.device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    for (const [pipeline, group] of groups) {
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(1, n, 1);
    }
    pass.end();
    encoder.copyBufferToBuffer(buffer, rowsAt * 4, out.rows, 0, n * dataBytes);
    encoder.copyBufferToBuffer(buffer, scalesAt * 4, out.scales, 0, n * scales * 4);
    this.device.queue.submit([encoder.finish()]);
    return [this.ort.Tensor.fromGpuBuffer(out.rows, { dataType: "uint8", dims: [n, dataBytes] }),
            this.ort.Tensor.fromGpuBuffer(out.scales, { dataType: "float32", dims: [n, scales] })];
  }

  // prefillRows' buffers for up to `capacity` tokens, and the gather dispatches' uniforms and bind groups over them
  allocPrefill(capacity) {
    this.releasePrefill();
    const gathers = this.plan.dispatches.map((d, i) => [d, i]).filter(([[kernel]]) => kernel === "gather");
    // the gather's uniforms: token, per, first, row_words, data_words, scales, rows, out_scales, f16
    const uniformOf = ([, , uniform]) => new Uint32Array(Uint8Array.from(uniform).buffer);
    const [, , , , dataWords, scales] = uniformOf(gathers[0][0]);
    const rowsAt = Math.ceil(capacity / 4) * 4;  // word offsets: the ids first
    const scalesAt = rowsAt + capacity * dataWords;
    const buffer = storageBuffer(this.device, (scalesAt + capacity * scales) * 4);
    const uniforms = this.device.createBuffer({
      size: UNIFORM_STRIDE * gathers.length, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    const groups = gathers.map(([dispatch, i], g) => {
      const words = uniformOf(dispatch);
      [words[0], words[6], words[7]] = [0, rowsAt, scalesAt];
      this.device.queue.writeBuffer(uniforms, g * UNIFORM_STRIDE, words);
      return [this.pipelines[i], this.bindGroup(i, uniforms, g * UNIFORM_STRIDE, buffer)];
    });
    const out = { rows: storageBuffer(this.device, capacity * dataWords * 4), scales: storageBuffer(this.device, capacity * scales * 4) };
    this.prefill = { capacity, buffer, uniforms, rowsAt, scalesAt, dataBytes: dataWords * 4, scales, out, groups };
  }

  releasePrefill() {
    if (!this.prefill) return;
    for (const b of [this.prefill.buffer, this.prefill.uniforms, this.prefill.out.rows, this.prefill.out.scales]) b.destroy();
    this.prefill = null;
  }

  // copies (of a prefill's caches into the step's): [[dst cache, dstOffset, src GPUBuffer, srcOffset, bytes]]
  copy(copies) {
    const encoder = this.device.createCommandEncoder();
    for (const [dst, dstOffset, src, srcOffset, bytes] of copies) {
      encoder.copyBufferToBuffer(src, srcOffset, this.caches.get(dst), dstOffset, bytes);
    }
    this.device.queue.submit([encoder.finish()]);
  }

  // For benchmarks. timeSteps: each step between GPU timestamps (the start of its first pass, the end of its last),
  // its time added to webgemmaStepTimes.gpu_ms and its times to webgemmaStepTimes.trace (where the device has
  // timestamp queries). encodeAhead: encode a step's commands during the step before (its
  // inputs go into act by writeBuffer, so its commands do not depend on them), so that Chromium's GPU process
  // checks them while the GPU works. submits: an unchained step's pass in that many submits (SUBMITS).
  configure({ timeSteps = false, encodeAhead = true, submits = SUBMITS }) {
    this.encodeAhead = encodeAhead;
    this.submits = submits;
    this.ahead = null;  // the next step's command buffers (encoded as configured before)
    if (timeSteps && !this.stamps && this.device.features.has("timestamp-query")) {
      this.stamps = {
        querySet: this.device.createQuerySet({ type: "timestamp", count: 2 }),
        resolved: this.device.createBuffer({ size: 16, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC }),
      };
    }
  }

  // A step's command buffers: its dispatches in `passes` passes (the first and last with the timestamps), then the
  // copy of its output (and timestamps) into the staging buffer `staging`.
  encode(staging, passes) {
    const stamps = this.stamps;
    const per = Math.ceil(this.dispatches.length / passes);
    const commands = [];
    for (let first = 0; first < this.dispatches.length; first += per) {
      const last = first + per >= this.dispatches.length;
      const encoder = this.device.createCommandEncoder();
      const pass = encoder.beginComputePass(stamps && (first === 0 || last) ? {
        timestampWrites: {
          querySet: stamps.querySet, ...(first === 0 && { beginningOfPassWriteIndex: 0 }), ...(last && { endOfPassWriteIndex: 1 }),
        },
      } : undefined);
      encodeDispatches(pass, this.dispatches.slice(first, first + per));
      if (last) {
        encoder.copyBufferToBuffer(this.act, this.plan.output[0] * 4, this.staging[staging], 0, this.outBytes);
        if (stamps) {
          encoder.resolveQuerySet(stamps.querySet, 0, 2, stamps.resolved, 0);
          encoder.copyBufferToBuffer(stamps.resolved, 0, this.staging[staging], this.outBytes, 16);
        }
      }
      commands.push(encoder.finish());
    }
    return { staging, passes, commands };
  }

  // The token's per-layer row as stored (int4 data, then float16 or float32 block scales) into the step's inputs,
  // where KernelPlan.pack puts it: the data as it is, the scales as float32.
  writeRow(raw) {
    const [rowsAt, scalesAt, dataBytes, f16] = this.plan.row;
    this.device.queue.writeBuffer(this.act, rowsAt * 4, raw, 0, dataBytes);
    const scales = raw.subarray(dataBytes);
    const f32 = f16 ? Float32Array.from(new Uint16Array(scales.buffer, scales.byteOffset, scales.byteLength / 2), halfToFloat)
      : new Float32Array(scales.slice().buffer);
    this.device.queue.writeBuffer(this.act, scalesAt * 4, f32);
  }

  // block: the step's inputs (Uint8Array, KernelPlan.pack); row: where to read the token's per-layer row when the
  // block lacks it and the table is not on the GPU (store_bridge.mjs readRow) → the output words' bytes
  async run(block, row) {
    return this.submit(block, row && !this.table ? await readRow(row) : null, false);
  }

  // Queues a step without waiting for the ones before; resolves to its output words' bytes (top-k values, ids,
  // the sampled token, live). chained: the step's token is the one the step before sampled (its block's tail only
  // is written); otherwise `raw` is its per-layer row, where the block lacks it. At most STAGING steps in flight.
  submit(block, raw, chained) {
    const checked = this.runs++ < 2;  // the first runs (the rehearsal while loading) report any WebGPU error
    if (checked) this.device.pushErrorScope("validation");
    const t0 = performance.now();
    const staging = this.sent++ % STAGING;
    const passes = chained ? 1 : this.submits;
    const ahead = this.ahead;
    const { commands } = ahead?.staging === staging && ahead.passes === passes ? ahead : this.encode(staging, passes);
    this.ahead = null;
    const [blockAt] = this.plan.block;
    const from = chained ? (this.plan.tail - blockAt) * 4 : 0;
    this.device.queue.writeBuffer(this.act, blockAt * 4 + from, block, from);
    if (raw) this.writeRow(raw);
    for (const command of commands) this.device.queue.submit([command]);
    if (this.encodeAhead) this.ahead = this.encode(this.sent % STAGING, passes);  // the next step likely chains as this one
    const t1 = performance.now();
    const error = checked && this.device.popErrorScope();
    return this.read(staging, error, t0, t1);
  }

  async read(staging, error, t0, t1) {
    const failed = error && await error;
    if (failed) throw new Error(`the kernel step failed on the GPU: ${failed.message}`);
    const data = await readStaging(this.staging[staging]);
    const t2 = performance.now();
    countStepTimes(0, t1 - t0, t2 - t1);  // the block's write is queued with the pass
    if (this.stamps) {
      const ns = new BigInt64Array(data.buffer, this.outBytes, 2);
      const times = globalThis.webgemmaStepTimes;
      times.gpu_ms = (times.gpu_ms ?? 0) + Number(ns[1] - ns[0]) / 1e6;
      // each step's submit (start, end) and read-back on the page's clock, its pass's start and end on the GPU's
      // (ms): the GPU's idle time between steps, and whether the next step had been submitted by then
      times.trace ??= [];
      if (times.trace.length < TRACED) times.trace.push([t0, t1, t2, Number(ns[0]) / 1e6, Number(ns[1]) / 1e6]);
    }
    return data.subarray(0, this.outBytes);
  }

  // Words into act at a word offset (the repetition penalty's bitset of seen tokens), in queue order.
  write(at, words) {
    this.device.queue.writeBuffer(this.act, at * 4, words);
  }

  // For benchmarks: the last step's dispatches again, each in its own pass between GPU timestamps, then all of them
  // in one pass as a step runs, then that pass without each group of `omit` (lists of plan dispatch indices) →
  // {indices: the plan index of each dispatch timed alone, alone, step, without} in GPU nanoseconds (null where the
  // device has no timestamp queries). A pass without a group computes garbage: only its time counts. The step's
  // state is not kept.
  async profile(omit) {
    if (!this.device.features.has("timestamp-query")) return null;
    const n = this.dispatches.length;
    const passes = [...this.dispatches.map((d) => [d]), this.dispatches,
      ...omit.map((group) => this.dispatches.filter((_, i) => !group.includes(this.indices[i])))];
    const querySet = this.device.createQuerySet({ type: "timestamp", count: 2 * passes.length });
    const bytes = 16 * passes.length;
    const resolved = this.device.createBuffer({ size: bytes, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
    const read = this.device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const encoder = this.device.createCommandEncoder();
    passes.forEach((dispatches, i) => {
      const pass = encoder.beginComputePass({
        timestampWrites: { querySet, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 },
      });
      encodeDispatches(pass, dispatches);
    });
    encoder.resolveQuerySet(querySet, 0, 2 * passes.length, resolved, 0);
    encoder.copyBufferToBuffer(resolved, 0, read, 0, bytes);
    this.device.queue.submit([encoder.finish()]);
    const stamps = new BigInt64Array((await readStaging(read)).buffer);
    const ns = passes.map((_, i) => Number(stamps[2 * i + 1] - stamps[2 * i]));
    for (const b of [resolved, read]) b.destroy();
    querySet.destroy();
    return { indices: this.indices, alone: ns.slice(0, n), step: ns[n], without: ns.slice(n + 1) };
  }

  async release() {
    this.releasePrefill();
    for (const buffer of [this.act, this.none, this.uniforms, ...this.staging, ...this.caches.values(), ...this.table ?? []]) {
      buffer.destroy();
    }
    if (this.stamps) {
      this.stamps.querySet.destroy();
      this.stamps.resolved.destroy();
    }
  }
}
