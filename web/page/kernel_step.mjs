// The decode step as hand-written WebGPU kernels (wgsl.mjs), run from a plan made in Python
// (py/webgemma/kernel_plan.py): every pipeline and bind group is made once, and a step is one block of inputs
// written into the activations buffer, one compute pass of the plan's dispatches and one read-back of the top-k.
// It works on onnxruntime-web's device, over the weights uploaded for its sessions (ort_bridge.mjs uploadWeights).
//
// plan: {act_words, constants: [word offset, bytes], caches: {name: bytes}, dispatches: [[kernel, bindings,
// uniform (bytes), grid, override constants]], block: [word offset, words], output: [word offset, words],
// rows: {new row name: word offset}}

import { KERNELS } from "./wgsl.mjs";
import { countStepTimes, readStaging, storageBuffer } from "./ort_bridge.mjs";

const UNIFORM_STRIDE = 256;  // minUniformBufferOffsetAlignment's largest allowed value

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
      const module = this.device.createShaderModule({ code: KERNELS[kernel], label: kernel });
      pipelines.set(key(kernel, constants), this.device.createComputePipelineAsync({
        layout: "auto", compute: { module, entryPoint: "main", constants }, label: kernel,
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

  // block: the step's inputs (Uint8Array, KernelPlan.pack) → the output words' bytes (top-k values, ids)
  async run(block) {
    const checked = this.runs++ < 2;  // the first runs (the rehearsal while loading) report any WebGPU error
    if (checked) this.device.pushErrorScope("validation");
    const t0 = performance.now();
    const [blockAt] = this.plan.block;
    this.device.queue.writeBuffer(this.act, blockAt * 4, block);
    const encoder = this.device.createCommandEncoder();
    this.encodeCopies(encoder, this.pending.splice(0));
    const pass = encoder.beginComputePass();
    for (const [pipeline, group, [x, y, z]] of this.dispatches) {
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(x, y, z);
    }
    pass.end();
    const [outAt, outWords] = this.plan.output;
    encoder.copyBufferToBuffer(this.act, outAt * 4, this.staging, 0, outWords * 4);
    this.device.queue.submit([encoder.finish()]);
    const t1 = performance.now();
    const error = checked && await this.device.popErrorScope();
    if (error) throw new Error(`the kernel step failed on the GPU: ${error.message}`);
    const bytes = await readStaging(this.staging);
    countStepTimes(0, t1 - t0, performance.now() - t1);  // the block's write is queued with the pass
    return bytes;
  }

  // For benchmarks: the last step's dispatches again, each in its own pass between GPU timestamps → the GPU
  // nanoseconds of each (null where the device has no timestamp queries). The step's state is not kept.
  async profile() {
    if (!this.device.features.has("timestamp-query")) return null;
    const n = this.dispatches.length;
    const querySet = this.device.createQuerySet({ type: "timestamp", count: 2 * n });
    const resolved = this.device.createBuffer({ size: 16 * n, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
    const read = this.device.createBuffer({ size: 16 * n, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const encoder = this.device.createCommandEncoder();
    this.dispatches.forEach(([pipeline, group, [x, y, z]], i) => {
      const pass = encoder.beginComputePass({
        timestampWrites: { querySet, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 },
      });
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(x, y, z);
      pass.end();
    });
    encoder.resolveQuerySet(querySet, 0, 2 * n, resolved, 0);
    encoder.copyBufferToBuffer(resolved, 0, read, 0, 16 * n);
    this.device.queue.submit([encoder.finish()]);
    const stamps = new BigInt64Array((await readStaging(read)).buffer);
    const ns = Array.from({ length: n }, (_, i) => Number(stamps[2 * i + 1] - stamps[2 * i]));
    for (const b of [resolved, read]) b.destroy();
    querySet.destroy();
    return ns;
  }

  async release() {
    for (const buffer of [this.act, this.none, this.uniforms, this.staging, ...this.caches.values()]) {
      buffer.destroy();
    }
  }
}
