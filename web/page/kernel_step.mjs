// The decode step as hand-written WebGPU kernels (wgsl.mjs), run from a plan made in Python
// (py/webgemma/kernel_plan.py): every pipeline and bind group is made once, and a step is one block of inputs
// written into the activations buffer, one compute pass of the plan's dispatches (encoded during the step before)
// and one read-back of the top-k.
// It works on onnxruntime-web's device, over the weights uploaded for its sessions (ort_bridge.mjs uploadWeights).
//
// plan: {act_words, constants: [word offset, bytes], caches: {name: bytes}, dispatches: [[kernel, bindings,
// uniform (bytes), grid, the constants its WGSL is specialized for]], block: [word offset, words], output: [word offset, words],
// rows: {new row name: word offset}, row: [per-layer row's word offset, its scales' word offset, data bytes, scales
// are float16]}

import { KERNELS } from "./wgsl.mjs";
import { countStepTimes, readStaging, storageBuffer } from "./ort_bridge.mjs";
import { readRow } from "./store_bridge.mjs";

const UNIFORM_STRIDE = 256;  // minUniformBufferOffsetAlignment's largest allowed value
// A step's pass goes in this many submits: the GPU starts on the first while Chromium turns the next into Vulkan
// commands (E2B on an H100: 99.7 tokens/s with 4, 75.3 with 1, BENCHMARKS.md)
const SUBMITS = 4;

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

// buffers: the weight buffers ("file@offset" → GPUBuffer); weightKeys: {weight input name: "file@offset"}
export async function createKernelStep(ort, buffers, weightKeys, plan) {
  const device = await ort.env.webgpu.device;
  const step = new KernelStep(device, plan);
  await step.build((name) => buffers.get(weightKeys[name]));
  return step;
}

class KernelStep {
  constructor(device, plan) {
    this.device = device;
    this.plan = plan;
    this.act = storageBuffer(device, plan.act_words * 4);
    device.queue.writeBuffer(this.act, plan.constants[0] * 4, plan.constants[1]);
    this.none = storageBuffer(device, 16);
    this.caches = new Map(Object.entries(plan.caches).map(([name, bytes]) => [name, storageBuffer(device, bytes)]));
    this.uniforms = device.createBuffer({
      size: UNIFORM_STRIDE * plan.dispatches.length, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    plan.dispatches.forEach(([, , uniform], i) => device.queue.writeBuffer(this.uniforms, i * UNIFORM_STRIDE, uniform));
    const [, outWords] = plan.output;
    this.staging = device.createBuffer({ size: outWords * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    this.pending = [];  // copies out of act, done at the start of the next step
    this.runs = 0;
    this.stamps = null;
    this.configure({});  // encodeAhead, submits, ahead: the next step's command buffers
  }

  async build(weight) {
    const resolve = (ref) => {
      if (ref === "act") return this.act;
      if (ref === "none") return this.none;
      const buffer = ref.startsWith("w:") ? weight(ref.slice(2)) : this.caches.get(ref.slice(6));
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
    this.dispatches = this.plan.dispatches.map(([kernel, bindings, , grid, constants], i) => {
      const pipeline = pipelines.get(key(kernel, constants));
      const entries = [{ binding: 0, resource: { buffer: this.uniforms, offset: i * UNIFORM_STRIDE, size: UNIFORM_STRIDE } },
        ...bindings.map((ref, j) => ({ binding: j + 1, resource: { buffer: resolve(ref) } }))];
      return [pipeline, this.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries }), grid];
    });
    const error = await this.device.popErrorScope();
    if (error) throw new Error(`the kernel step could not be built: ${error.message}`);
  }

  // copies: [[dst cache, dstOffset, src (a GPUBuffer, or the name of one of the step's new rows), srcOffset, bytes]]
  // Copies of the step's own rows wait for the next step's commands; any other copy goes now, after them.
  copy(copies) {
    const rows = this.plan.rows;
    const resolved = copies.map(([dst, dstOffset, src, srcOffset, bytes]) => typeof src === "string"
      ? [dst, dstOffset, this.act, rows[src] * 4 + srcOffset, bytes, true]
      : [dst, dstOffset, src, srcOffset, bytes, false]);
    if (resolved.every((c) => c[5])) {
      this.pending.push(...resolved);
      return;
    }
    const encoder = this.device.createCommandEncoder();
    this.encodeCopies(encoder, [...this.pending.splice(0), ...resolved]);
    this.device.queue.submit([encoder.finish()]);
  }

  encodeCopies(encoder, copies) {
    for (const [dst, dstOffset, src, srcOffset, bytes] of copies) {
      encoder.copyBufferToBuffer(src, srcOffset, this.caches.get(dst), dstOffset, bytes);
    }
  }

  // For benchmarks. timeSteps: each step between GPU timestamps (the start of its first pass, the end of its last),
  // its time added to webgemmaStepTimes.gpu_ms (where the device has timestamp queries). encodeAhead: encode a step's commands during the step before (its
  // inputs go into act by writeBuffer, so its commands do not depend on them), so that Chromium's GPU process
  // checks them while the GPU works. submits: the pass in that many submits (SUBMITS).
  configure({ timeSteps = false, encodeAhead = true, submits = SUBMITS }) {
    this.encodeAhead = encodeAhead;
    this.submits = submits;
    this.ahead = null;  // the next step's command buffers (encoded as configured before)
    if (timeSteps && !this.stamps && this.device.features.has("timestamp-query")) {
      this.stamps = {
        querySet: this.device.createQuerySet({ type: "timestamp", count: 2 }),
        resolved: this.device.createBuffer({ size: 16, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC }),
        read: this.device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST }),
      };
    }
  }

  // A step's command buffers: its dispatches in `submits` passes (the first and last with the timestamps), then the
  // copy of its output into the staging buffer.
  encode() {
    const stamps = this.stamps;
    const per = Math.ceil(this.dispatches.length / this.submits);
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
        const [outAt, outWords] = this.plan.output;
        encoder.copyBufferToBuffer(this.act, outAt * 4, this.staging, 0, outWords * 4);
        if (stamps) {
          encoder.resolveQuerySet(stamps.querySet, 0, 2, stamps.resolved, 0);
          encoder.copyBufferToBuffer(stamps.resolved, 0, stamps.read, 0, 16);
        }
      }
      commands.push(encoder.finish());
    }
    return commands;
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
  // block lacks it (store_bridge.mjs readRow) → the output words' bytes (top-k values, ids)
  async run(block, row) {
    const checked = this.runs++ < 2;  // the first runs (the rehearsal while loading) report any WebGPU error
    if (checked) this.device.pushErrorScope("validation");
    const t0 = performance.now();
    const commands = this.ahead ?? this.encode();
    this.ahead = null;
    const [blockAt] = this.plan.block;
    this.device.queue.writeBuffer(this.act, blockAt * 4, block);
    if (row) this.writeRow(await readRow(row));
    if (this.pending.length) {  // the last step's rows into their slots, before this step writes new ones
      const encoder = this.device.createCommandEncoder();
      this.encodeCopies(encoder, this.pending.splice(0));
      this.device.queue.submit([encoder.finish()]);
    }
    for (const command of commands) this.device.queue.submit([command]);
    if (this.encodeAhead) this.ahead = this.encode();
    const t1 = performance.now();
    const error = checked && await this.device.popErrorScope();
    if (error) throw new Error(`the kernel step failed on the GPU: ${error.message}`);
    const [bytes, times] = await Promise.all([readStaging(this.staging), this.stamps && readStaging(this.stamps.read)]);
    countStepTimes(0, t1 - t0, performance.now() - t1);  // the block's write is queued with the pass
    if (times) {
      const ns = new BigInt64Array(times.buffer);
      globalThis.webgemmaStepTimes.gpu_ms = (globalThis.webgemmaStepTimes.gpu_ms ?? 0) + Number(ns[1] - ns[0]) / 1e6;
    }
    return bytes;
  }

  // For benchmarks: the last step's dispatches again, each in its own pass between GPU timestamps, then all of them
  // in one pass as a step runs → the GPU nanoseconds of each, then of the whole step (null where the device has no
  // timestamp queries). The step's state is not kept.
  async profile() {
    if (!this.device.features.has("timestamp-query")) return null;
    const n = this.dispatches.length;
    const querySet = this.device.createQuerySet({ type: "timestamp", count: 2 * (n + 1) });
    const bytes = 16 * (n + 1);
    const resolved = this.device.createBuffer({ size: bytes, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
    const read = this.device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const encoder = this.device.createCommandEncoder();
    const timed = (i, dispatches) => {
      const pass = encoder.beginComputePass({
        timestampWrites: { querySet, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 },
      });
      encodeDispatches(pass, dispatches);
    };
    this.dispatches.forEach((dispatch, i) => timed(i, [dispatch]));
    timed(n, this.dispatches);
    encoder.resolveQuerySet(querySet, 0, 2 * (n + 1), resolved, 0);
    encoder.copyBufferToBuffer(resolved, 0, read, 0, bytes);
    this.device.queue.submit([encoder.finish()]);
    const stamps = new BigInt64Array((await readStaging(read)).buffer);
    const ns = Array.from({ length: n + 1 }, (_, i) => Number(stamps[2 * i + 1] - stamps[2 * i]));
    for (const b of [resolved, read]) b.destroy();
    querySet.destroy();
    return ns;
  }

  async release() {
    for (const buffer of [this.act, this.none, this.uniforms, this.staging, ...this.caches.values()]) {
      buffer.destroy();
    }
    if (this.stamps) {
      this.stamps.querySet.destroy();
      this.stamps.resolved.destroy();
      this.stamps.read.destroy();
    }
  }
}
