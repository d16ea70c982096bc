// The WGSL kernels of the hand-written decode step (kernel_step.mjs; the plan that strings them together is
// py/webgemma/kernel_plan.py, whose UNIFORMS list each kernel's `U` fields in this order).
//
// Every kernel binds its uniforms at 0 and the activations at 1: one buffer of 32-bit words (`act`) holding every
// vector of the step, the per-step inputs and the outputs, addressed by word offsets from the plan; floats are
// stored as their bits (a packed int4 row must not pass through a float), the small float32 weights (norms, layer
// scalars) among them. Weights are onnxruntime's MatMulNBits layout: int4 blocks of 32 along K, 16 bytes each, the
// even element in the low nibble, zero point 8, one float32 scale per block.

const NONE = 0xffffffff;
const MAX_CHUNKS = 1024;  // attention chunks of 64 slots a head (kernel_plan.py MAX_SLOTS)
const MAX_STOPS = 8;  // kernel_plan.py MAX_STOPS

const ACT = /* wgsl */ `
@group(0) @binding(1) var<storage, read_write> act: array<u32>;
fn ld(i: u32) -> f32 { return bitcast<f32>(act[i]); }
fn st(i: u32, v: f32) { act[i] = bitcast<u32>(v); }
`;

// the matvec reads its input four words at a time (writable bindings of one buffer may not alias)
const ACT4 = /* wgsl */ `
@group(0) @binding(1) var<storage, read_write> act: array<vec4<u32>>;
fn word(i: u32) -> u32 { return act[i / 4u][i % 4u]; }
fn ld(i: u32) -> f32 { return bitcast<f32>(word(i)); }
fn st(i: u32, v: f32) { act[i / 4u][i % 4u] = bitcast<u32>(v); }
fn ld4(i: u32) -> vec4<f32> { return bitcast<vec4<f32>>(act[i / 4u]); }  // i: a multiple of 4
`;

// A reduction over a workgroup of 256 lanes (`combine` of two values): a tree in workgroup memory, or (SG, where the
// device has subgroups of consecutive invocations: kernel_step.mjs subgroupsUsable) each subgroup's by `sgOp`, then
// their results through workgroup memory. A kernel with SG has SG_ARGS among its main's parameters and starts with
// SG_INIT.
const reduction = (name, combine, sgOp, SG) => SG ? /* wgsl */ `fn ${name}(v: f32, t: u32) -> f32 {
  let s = ${sgOp}(v);
  if (t % sg_size == 0u) { red[t / sg_size] = s; }
  workgroupBarrier();
  var r = red[0];
  for (var i = 1u; i < 256u / sg_size; i++) { r = ${combine("r", "red[i]")}; }
  workgroupBarrier();
  return r;
}` : /* wgsl */ `fn ${name}(v: f32, t: u32) -> f32 {
  red[t] = v;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (t < s) { red[t] = ${combine("red[t]", "red[t + s]")}; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}`;

const common = (act = ACT, SG = 0) => /* wgsl */ `
const NONE = ${NONE}u;
${act}// tanh of a clamped argument: large ones overflow exp inside some tanh implementations
fn tanh_(x: f32) -> f32 { return tanh(clamp(x, -15.0, 15.0)); }
fn gelu(x: f32) -> f32 { return 0.5 * x * (1.0 + tanh_(0.7978845608 * (x + 0.044715 * x * x * x))); }
var<workgroup> red: array<f32, 256>;
${SG ? "var<private> sg_size: u32;" : ""}
${reduction("reduce_sum", (x, y) => `${x} + ${y}`, "subgroupAdd", SG)}
${reduction("reduce_max", (x, y) => `max(${x}, ${y})`, "subgroupMax", SG)}
`;
const enableSG = (SG) => SG ? "enable subgroups;\n" : "";

// 8 consecutive values (a, b) as a Q8 matvec reads them in place of one weight word's inputs: the even and the odd
// values as int8 packed in a word each (scale: their largest magnitude / 127), their sum times -8 (the weights' zero
// point, which the products then need not subtract) and the scale. A scale per 8 values: a producer whose workgroup
// holds 8 consecutive outputs (the gate·up matvec) can write it.
const QUANTIZE8 = /* wgsl */ `
fn quantize8(a: vec4<f32>, b: vec4<f32>) -> vec4<u32> {
  let m = max(abs(a), abs(b));
  let d = max(max(m.x, m.y), max(m.z, m.w)) / 127.0;
  let inv = select(0.0, 1.0 / d, d > 0.0);
  let qa = vec4<i32>(round(a * inv));
  let qb = vec4<i32>(round(b * inv));
  return vec4<u32>(pack4xI8(vec4<i32>(qa.x, qa.z, qb.x, qb.z)), pack4xI8(vec4<i32>(qa.y, qa.w, qb.y, qb.w)),
                   bitcast<u32>(-8 * dot(qa + qb, vec4<i32>(1))), bitcast<u32>(d));
}
`;
const SG_ARGS = (SG) => SG ? ", @builtin(subgroup_size) sg: u32" : "";
const SG_INIT = (SG) => SG ? "  sg_size = sg;\n" : "";

const range = (n) => Array.from({ length: n }, (_, i) => i);

// The weight words one lane reads from one int4 row of source S: words lane, lane + LANES, ... (8 values each;
// neighbouring lanes read neighbouring words), PER of them, each with its block's scale (0 past the row's end).
// They are all fetched before anything else, so that their latencies overlap.
const fetchRow = (s, LANES, PER) => /* wgsl */ `
@group(0) @binding(${2 + 2 * s}) var<storage, read> q${s}: array<u32>;
@group(0) @binding(${3 + 2 * s}) var<storage, read> s${s}: array<f32>;
fn fetch${s}(row: u32, lane: u32) -> Words {
  let words = u.k / 8u;
  var r: Words;
${range(PER).map((i) => `  {
    let w = lane + ${i * LANES}u;
    let at = row * words + min(w, words - 1u);
    r.w[${i}] = q${s}[at];
    r.s[${i}] = select(0.0, s${s}[at / 4u], w < words);
  }`).join("\n")}
  return r;
}
`;

// MATVEC's input computed in each workgroup (RESIDUAL: its size): h' = h + rms_norm(branch) * w_branch into xs, each
// lane fetching its values first; workgroup `first` writes h' to h_out. Every lane of the workgroup calls it.
const residual = (K) => /* wgsl */ `
var<workgroup> xs: array<vec4<f32>, ${K / 4}>;
fn xin(i: u32) -> vec4<f32> { return xs[i]; }
fn residual(t: u32, first: bool) {
  var h: array<f32, ${Math.ceil(K / 256)}>;
  var b: array<f32, ${Math.ceil(K / 256)}>;
  var w: array<f32, ${Math.ceil(K / 256)}>;
${range(Math.ceil(K / 256)).map((i) => `  {
    let k = min(t + ${i * 256}u, ${K - 1}u);
    h[${i}] = ld(u.res + k);
    b[${i}] = ld(u.branch + k);
    w[${i}] = ld(u.w_branch + k);
  }`).join("\n")}
  var ss = 0.0;
${range(Math.ceil(K / 256)).map((i) => `  ss += select(0.0, b[${i}] * b[${i}], t + ${i * 256}u < ${K}u);`).join("\n")}
  let inv = inverseSqrt(reduce_sum(ss, t) / ${K}.0 + u.eps);
${range(Math.ceil(K / 256)).map((i) => `  if (t + ${i * 256}u < ${K}u) {
    let v = h[${i}] + b[${i}] * inv * w[${i}];
    xs[(t + ${i * 256}u) / 4u][(t + ${i * 256}u) % 4u] = v;
    if (first) { st(u.h_out + t + ${i * 256}u, v); }
  }`).join("\n")}
  workgroupBarrier();
}`;

// MATVEC's input computed in each workgroup (MERGE: {H, D, C}): the attention's output for H query heads of size D,
// ATTEND_MERGE's sums done again by every workgroup, where they are few: each head's C chunks (attend's parts and
// stats: the first ceil(act[used] / 64) of them are written, the others weigh 0) merged with the token's own key and
// value rows. Every lane fetches its parts first (a column of 4 values of every chunk); the lanes of a head (256 / H)
// add up its own score q·k. Every lane of the workgroup calls it.
const merge = ({ H, D, C }) => {
  const N = D / 4, G = 256 / H, P = Math.ceil(D / G);
  const cols = range(Math.ceil((H * N) / 256));
  return /* wgsl */ `
var<workgroup> xs: array<vec4<f32>, ${H * N}>;
var<workgroup> ms: array<f32, ${H * C}>;
var<workgroup> ls: array<f32, ${H * C}>;
var<workgroup> shares: array<f32, ${H * (C + 1)}>;  // a head's chunks' weights in its softmax, then its own row's
fn xin(i: u32) -> vec4<f32> { return xs[i]; }
fn merge(t: u32) {
  let per_kv = ${H}u / u.kv;
${cols.map((i) => `  let col${i} = min(t + ${256 * i}u, ${H * N - 1}u);
  let head${i} = col${i} / ${N}u;
${range(C).map((k) => `  let p${i}_${k} = ld4(u.parts + (head${i} * ${C}u + ${k}u) * ${D}u + 4u * (col${i} % ${N}u));`).join("\n")}
  let v${i} = ld4(u.vnew + head${i} / per_kv * ${D}u + 4u * (col${i} % ${N}u));`).join("\n")}
  let h = t / ${G}u;
  var own = 0.0;
  for (var i = 0u; i < ${P}u; i++) {
    let j = min((t % ${G}u) * ${P}u + i, ${D - 1}u);
    own += select(0.0, ld(u.q + h * ${D}u + j) * ld(u.knew + h / per_kv * ${D}u + j), (t % ${G}u) * ${P}u + i < ${D}u);
  }
  red[t] = own;
  let chunks = min(${C}u, (word(u.used) + 63u) / 64u);
  if (t < ${H * C}u) {
    ms[t] = select(-3.4e38, ld(u.stats + 2u * t), t % ${C}u < chunks);
    ls[t] = select(0.0, ld(u.stats + 2u * t + 1u), t % ${C}u < chunks);
  }
  for (var s = ${G / 2}u; s > 0u; s >>= 1u) {
    workgroupBarrier();
    if (t % ${G}u < s) { red[t] += red[t + s]; }
  }
  workgroupBarrier();
  if (t < ${H}u) {
    let score = red[t * ${G}u];
    var m = score;
    for (var k = 0u; k < ${C}u; k++) { m = max(m, ms[t * ${C}u + k]); }
    let e_own = exp(score - m);
    var total = e_own;
    for (var k = 0u; k < ${C}u; k++) {
      let e = exp(ms[t * ${C}u + k] - m);
      shares[t * ${C + 1}u + k] = e;
      total += ls[t * ${C}u + k] * e;
    }
    for (var k = 0u; k < ${C}u; k++) { shares[t * ${C + 1}u + k] /= total; }
    shares[t * ${C + 1}u + ${C}u] = e_own / total;
  }
  workgroupBarrier();
${cols.map((i) => `  if (t + ${256 * i}u < ${H * N}u) {
    let w = head${i} * ${C + 1}u;
    xs[col${i}] = ${range(C).map((k) => `shares[w + ${k}u] * p${i}_${k}`).join(" + ")} + shares[w + ${C}u] * v${i};
  }`).join("\n")}
  workgroupBarrier();
}`;
};

// y = W x for up to three int4 weights stacked along N (q, k, v), 256 / LANES rows per workgroup, each row's words
// spread over LANES lanes, PER words a lane (the plan picks LANES for the row length and the row count), x a vector
// of act. epi: 0 store, 1 gelu(W0 x) * (W1 x) (the MLP's gate and up, same rows), 2 gelu(W0 x) * act[aux + n] (the
// per-layer gate), 3 add to what is there (the lm_head's column chunks); then, with cap > 0, cap * tanh(y / cap)
// (the final logit softcap). A row's lanes add their sums through workgroup memory (SG 0) or, where the device has
// subgroups, by shuffles within the subgroup and workgroup memory only across subgroups (SG 1: a row's lanes are
// consecutive invocations, which kernel_step.mjs subgroupsUsable checks).
// RESIDUAL (the input's size): x is not read from act but computed by every workgroup, while its weight words load,
// as the NORM kernel's h' = h + rms_norm(branch) * w_branch (no scalar, no w_in), into workgroup memory; the first
// workgroup also writes it to h_out (the per-layer gate: one dispatch fewer a layer).
// MERGE ({H, D, C}): x is the attention's output, merged from its chunks by every workgroup (o_proj in layers whose
// attention has few chunks: the merge's dispatch saved).
// Q8: x is read as quantize8 writes it, a vec4 of words for each weight word, whose 8 products are then two
// dot4I8Packed of its nibbles: ~10 operations a word instead of ~36, and half the input's bytes.
// QOUT (the gate·up product, 8 rows or more a workgroup): y is written as quantize8 writes it, for a Q8 down.
const MATVEC = ({ LANES, PER, SG = 0, RESIDUAL = 0, MERGE = null, Q8 = 0, QOUT = 0 }) => /* wgsl */ `${enableSG(SG)}
struct U { k: u32, in_off: u32, n0: u32, n1: u32, n2: u32, out0: u32, out1: u32, out2: u32, epi: u32, aux: u32,
           cap: f32, res: u32, branch: u32, w_branch: u32, h_out: u32, eps: f32, q: u32, kv: u32, used: u32,
           parts: u32, stats: u32, knew: u32, vnew: u32, }
@group(0) @binding(0) var<uniform> u: U;
${common(ACT4, RESIDUAL ? SG : 0)}${QOUT ? `${QUANTIZE8}var<workgroup> ys: array<f32, ${256 / LANES}>;` : ""}
${RESIDUAL ? residual(RESIDUAL) : MERGE ? merge(MERGE) : `// four input values (in_off is a multiple of 4)
fn xin(i: u32) -> vec4<f32> { return bitcast<vec4<f32>>(act[u.in_off / 4u + i]); }`}
struct Words { w: array<u32, ${PER}>, s: array<f32, ${PER}>, }
${range(3).map((s) => fetchRow(s, LANES, PER)).join("")}
// low nibbles minus the zero point 8, without integer-to-float conversions (a quarter of the ALU rate): the nibble
// as the low mantissa bits of 2^23
fn nibbles(v: vec4<u32>) -> vec4<f32> { return bitcast<vec4<f32>>((v & vec4<u32>(15u)) | vec4<u32>(0x4b000000u)) - 8388616.0; }
fn dotWords(r: Words, lane: u32) -> f32 {
  let last = u.k / 8u - 1u;
  var acc = 0.0;
${Q8 ? range(PER).map((i) => `  {
    let x = act[u.in_off / 4u + min(lane + ${i * LANES}u, last)];
    let n = dot4I8Packed(r.w[${i}] & 0x0f0f0f0fu, x.x) + dot4I8Packed((r.w[${i}] >> 4u) & 0x0f0f0f0fu, x.y) + bitcast<i32>(x.z);
    acc += f32(n) * bitcast<f32>(x.w) * r.s[${i}];
  }`).join("\n") : range(PER).map((i) => `  {
    let w = min(lane + ${i * LANES}u, last);
    let packed = vec4<u32>(r.w[${i}]);
    let lo = nibbles(packed >> vec4<u32>(0u, 4u, 8u, 12u));
    let hi = nibbles(packed >> vec4<u32>(16u, 20u, 24u, 28u));
    acc += (dot(lo, xin(2u * w)) + dot(hi, xin(2u * w + 1u))) * r.s[${i}];
  }`).join("\n")}
  return acc;
}
var<workgroup> red2: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>${SG ? ", @builtin(subgroup_size) sg: u32, @builtin(subgroup_invocation_id) sid: u32" : ""}) {
${RESIDUAL ? SG_INIT(SG) : ""}  let wid = wg.x + wg.y * nwg.x;
  let lane = t % ${LANES}u;
  let g = wid * ${256 / LANES}u + t / ${LANES}u;
  let rows = select(u.n0 + u.n1 + u.n2, u.n0, u.epi == 1u);
  let row = min(g, rows - 1u);
  var a: Words;
  var b: Words;
  var out = 0u;
  if (u.epi == 1u) {
    a = fetch0(row, lane);
    b = fetch1(row, lane);
    out = u.out0 + row;
  } else if (row < u.n0) {
    a = fetch0(row, lane);
    out = u.out0 + row;
  } else if (row < u.n0 + u.n1) {
    a = fetch1(row - u.n0, lane);
    out = u.out1 + row - u.n0;
  } else {
    a = fetch2(row - u.n0 - u.n1, lane);
    out = u.out2 + row - u.n0 - u.n1;
  }
${RESIDUAL ? `  residual(t, wid == 0u);
` : ""}${MERGE ? `  merge(t);
` : ""}  var y = dotWords(a, lane);
  var y2 = 0.0;
  if (u.epi == 1u) { y2 = dotWords(b, lane); }
${SG ? `  for (var s = min(${LANES}u, sg) / 2u; s > 0u; s >>= 1u) {
    y += subgroupShuffleXor(y, s);
    if (u.epi == 1u) { y2 += subgroupShuffleXor(y2, s); }
  }
  if (${LANES}u > sg) {  // rows wider than the subgroup: each subgroup's sum through workgroup memory
    if (sid == 0u) {
      red[t / sg] = y;
      red2[t / sg] = y2;
    }
    workgroupBarrier();
    for (var i = 1u; i < ${LANES}u / sg; i++) {
      y += red[t / sg + i];
      y2 += red2[t / sg + i];
    }
  }` : `  red[t] = y;
  red2[t] = y2;
  for (var s = ${LANES / 2}u; s > 0u; s >>= 1u) {
    workgroupBarrier();
    if (lane < s) {
      red[t] += red[t + s];
      if (u.epi == 1u) { red2[t] += red2[t + s]; }
    }
  }
  y = red[t];
  y2 = red2[t];`}
${QOUT ? `  if (lane == 0u) { ys[t / ${LANES}u] = select(0.0, gelu(y) * y2, g < rows); }
  workgroupBarrier();
  if (t < ${256 / LANES / 8}u && wid * ${256 / LANES}u + 8u * t < rows) {
    act[u.out0 / 4u + wid * ${256 / LANES / 8}u + t] = quantize8(
      vec4<f32>(ys[8u * t], ys[8u * t + 1u], ys[8u * t + 2u], ys[8u * t + 3u]),
      vec4<f32>(ys[8u * t + 4u], ys[8u * t + 5u], ys[8u * t + 6u], ys[8u * t + 7u]));
  }` : `  if (lane != 0u || g >= rows) { return; }
  if (u.epi == 1u) { y = gelu(y) * y2; }
  if (u.epi == 2u) { y = gelu(y) * ld(u.aux + row); }
  if (u.epi == 3u) { y += ld(out); }
  if (u.cap > 0.0) { y = u.cap * tanh_(y / u.cap); }
  st(out, y);`}
}
`;

// The residual stream between two layers' parts and the input of the next matvec, by one workgroup:
//   h' = (h + rms_norm(branch) * w_branch) * scalar          (branch and scalar optional), to h_out (not h)
//   x  = rms_norm(h') * w_in                                  (or h' itself), to out and/or, as quantize8 writes
//                                                             it (Q8 matvecs' input), to xq (either may be NONE)
// Each lane holds PER values (k = lane + 256 i) and fetches all it reads before any arithmetic, so that the loads'
// latencies overlap (a loop of loads waits for each in turn: E2B's norms took 1.8 of a step's 4.4 ms GPU).
const NORM = ({ PER, SG = 0 }) => /* wgsl */ `${enableSG(SG)}
struct U { hidden: u32, res: u32, branch: u32, w_branch: u32, scalar: u32, w_in: u32, h_out: u32, eps: f32, out: u32,
           xq: u32, }
@group(0) @binding(0) var<uniform> u: U;
${common(ACT, SG)}${QUANTIZE8}
var<workgroup> xs: array<vec4<f32>, ${PER * 64}>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32${SG_ARGS(SG)}) {
${SG_INIT(SG)}  let n = u.hidden;
  let has_branch = u.branch != NONE;
  let has_w = u.w_in != NONE;
  // absent operands read h's words instead (in bounds), their effect selected away below
  let branch = select(u.res, u.branch, has_branch);
  let w_branch = select(u.res, u.w_branch, has_branch);
  let w_in = select(u.res, u.w_in, has_w);
  var h: array<f32, ${PER}>;
  var b: array<f32, ${PER}>;
  var wb: array<f32, ${PER}>;
  var wi: array<f32, ${PER}>;
${range(PER).map((i) => `  {
    let k = min(t + ${i * 256}u, n - 1u);
    h[${i}] = ld(u.res + k);
    b[${i}] = ld(branch + k);
    wb[${i}] = ld(w_branch + k);
    wi[${i}] = ld(w_in + k);
  }`).join("\n")}
  let scale = select(1.0, ld(select(u.res, u.scalar, u.scalar != NONE)), u.scalar != NONE);
  var ss = 0.0;
${range(PER).map((i) => `  ss += select(0.0, b[${i}] * b[${i}], t + ${i * 256}u < n);`).join("\n")}
  let inv_b = select(0.0, inverseSqrt(reduce_sum(ss, t) / f32(n) + u.eps), has_branch);
  ss = 0.0;
${range(PER).map((i) => `  h[${i}] = (h[${i}] + b[${i}] * inv_b * wb[${i}]) * scale;
  ss += select(0.0, h[${i}] * h[${i}], t + ${i * 256}u < n);`).join("\n")}
  let inv = inverseSqrt(reduce_sum(ss, t) / f32(n) + u.eps);
${range(PER).map((i) => `  if (t + ${i * 256}u < n) {
    let x = select(h[${i}], h[${i}] * inv * wi[${i}], has_w);
    st(u.h_out + t + ${i * 256}u, h[${i}]);
    if (u.out != NONE) { st(u.out + t + ${i * 256}u, x); }
    xs[(t + ${i * 256}u) / 4u][t % 4u] = x;
  }`).join("\n")}
  if (u.xq != NONE) {  // x for Q8 matvecs: 8 values a lane
    workgroupBarrier();
    for (var w = t; w < n / 8u; w += 256u) {
      let e = quantize8(xs[2u * w], xs[2u * w + 1u]);
      for (var j = 0u; j < 4u; j++) { act[u.xq + 4u * w + j] = e[j]; }
    }
  }
}
`;

// One row of a column chunk of the tied int4 embedding, for the token id at act[token], times `scale`.
const EMBED = /* wgsl */ `
struct U { token: u32, nb: u32, out: u32, scale: f32, }
@group(0) @binding(0) var<uniform> u: U;
${common()}
@group(0) @binding(2) var<storage, read> q: array<u32>;
@group(0) @binding(3) var<storage, read> s: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  let j = id.x;
  if (j >= u.nb * 32u) { return; }
  let block = act[u.token] * u.nb + j / 32u;
  let word = q[block * 4u + (j % 32u) / 8u];
  st(u.out + j, (f32((word >> (4u * (j % 8u))) & 15u) - 8.0) * s[block] * u.scale);
}
`;

// Per-layer inputs, a workgroup per layer: (rms_norm(proj * proj_scale) * w + dequantized table row) / sqrt(2).
const PER_LAYER = ({ SG = 0 }) => /* wgsl */ `${enableSG(SG)}
struct U { proj: u32, dim: u32, w: u32, rows: u32, scales: u32, out: u32, eps: f32, proj_scale: f32, }
@group(0) @binding(0) var<uniform> u: U;
${common(ACT, SG)}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3<u32>${SG_ARGS(SG)}) {
${SG_INIT(SG)}  let base = wg.x * u.dim;
  var ss = 0.0;
  for (var j = t; j < u.dim; j += 256u) { let x = ld(u.proj + base + j) * u.proj_scale; ss += x * x; }
  let inv = inverseSqrt(reduce_sum(ss, t) / f32(u.dim) + u.eps);
  for (var j = t; j < u.dim; j += 256u) {
    let i = base + j;
    let row = (f32((act[u.rows + i / 8u] >> (4u * (i % 8u))) & 15u) - 8.0) * ld(u.scales + i / 32u);
    st(u.out + i, (ld(u.proj + i) * u.proj_scale * inv * ld(u.w + j) + row) * 0.70710678118654752);
  }
}
`;

// The heads' norms and RoPE, then attention in chunks of 64 cache slots (flash-decoding), head size D, in one
// dispatch: a workgroup per chunk and query head, and (own: the layer has key and value projections) a last row of
// workgroups for the new key and value heads.
// - A query workgroup RMS-norms its head of q (times wq) and rotates it (rotate-half RoPE, the position's cos/sin);
//   chunk 0 writes it to qn, for the merge. Then the chunk's scores q·K[slot] + mask[slot] over the cache's first
//   act[used] slots (4 lanes a slot), their max m and sum l of exp(score - m), and the exp-weighted sum of V (each
//   lane one column of 4 values over D / 16 slots, 1024 / D groups of lanes summed at the end): acc[D] at parts,
//   [m, l] at stats, per head and chunk. Each lane fetches its D / 16 key vectors (and, for heads up to 256, its
//   D / 16 value vectors) before the query's norm, so that the loads' latencies overlap; slots past the used ones
//   are loaded too and weigh 0.
// - Key workgroup c < kv: k_src's head c normed (times wk) and rotated, to k_dst; value workgroup kv + c: v_src's
//   head c normed (Gemma's v_norm: no weight), to v_dst; both, while act[live] is set, into the caches' slot act[slot]
//   (of `slots`), which this step's mask hides: a chunk reading it meanwhile weighs the old row or the new one 0.
const attendValues = (D) => range(D / 16).map((j) =>
  `  let v${j} = values[(base + min(first + group * ${D / 16}u + ${j}u, u.slots - 1u)) * N + col];`).join("\n");
const ATTEND = ({ D, SG = 0 }) => /* wgsl */ `${enableSG(SG)}
struct U { q: u32, qn: u32, heads: u32, kv: u32, wq: u32, k_src: u32, k_dst: u32, wk: u32, v_src: u32, v_dst: u32,
           cos: u32, sin: u32, eps: f32, slots: u32, slot: u32, live: u32, used: u32, mask: u32, parts: u32,
           stats: u32, }
@group(0) @binding(0) var<uniform> u: U;
${common(ACT4, SG)}
@group(0) @binding(2) var<storage, read_write> keys: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> values: array<vec4<f32>>;
const D = ${D}u;
const N = ${D / 4}u;  // vec4s a row
const R = ${Math.ceil(D / 256)}u;  // a head's values a lane holds: t, t + 256, ...
var<workgroup> xs: array<f32, D>;
var<workgroup> qs: array<vec4<f32>, N>;
var<workgroup> ps: array<f32, 64>;
var<workgroup> sums: array<vec4<f32>, 256>;
var<workgroup> used_: u32;
// The head vector at src RMS-normed (times w unless NONE) and, with rope, rotated: lane t's values t, t + 256, ...
// Every lane of the workgroup calls it.
fn head(src: u32, w: u32, rope: bool, t: u32) -> array<f32, R> {
  var x: array<f32, R>;
  var wv: array<f32, R>;
  var c: array<f32, R>;
  var s: array<f32, R>;
  for (var i = 0u; i < R; i++) {
    let j = min(t + 256u * i, D - 1u);
    x[i] = ld(src + j);
    wv[i] = ld(select(src, w, w != NONE) + j);
    c[i] = ld(u.cos + j % (D / 2u));
    s[i] = ld(u.sin + j % (D / 2u));
  }
  var ss = 0.0;
  for (var i = 0u; i < R; i++) { ss += select(0.0, x[i] * x[i], t + 256u * i < D); }
  let inv = inverseSqrt(reduce_sum(ss, t) / f32(D) + u.eps);
  for (var i = 0u; i < R; i++) {
    x[i] *= inv * select(1.0, wv[i], w != NONE);
    if (t + 256u * i < D) { xs[t + 256u * i] = x[i]; }
  }
  workgroupBarrier();
  var y: array<f32, R>;
  for (var i = 0u; i < R; i++) {
    let j = min(t + 256u * i, D - 1u);
    let other = xs[(j + D / 2u) % D];
    y[i] = select(x[i], select(x[i] * c[i] + other * s[i], x[i] * c[i] - other * s[i], j < D / 2u), rope);
  }
  workgroupBarrier();
  return y;
}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>${SG_ARGS(SG)}) {
${SG_INIT(SG)}  if (wg.y == u.heads) {  // the new key and value heads
    if (wg.x >= 2u * u.kv) { return; }
    let v = wg.x >= u.kv;
    let c = wg.x % u.kv;
    let y = head(select(u.k_src, u.v_src, v) + c * D, select(u.wk, NONE, v), !v, t);
    let dst = select(u.k_dst, u.v_dst, v) + c * D;
    let cached = (c * u.slots + word(u.slot)) * D;
    for (var i = 0u; i < R; i++) {
      let j = t + 256u * i;
      if (j >= D) { continue; }
      st(dst + j, y[i]);
      if (word(u.live) != 0u && v) { values[(cached + j) / 4u][j % 4u] = y[i]; }
      if (word(u.live) != 0u && !v) { keys[(cached + j) / 4u][j % 4u] = y[i]; }
    }
    return;
  }
  let h = wg.y;
  let c = h / (u.heads / u.kv);
  if (t == 0u) { used_ = word(u.used); }
  let used = workgroupUniformLoad(&used_);
  let first = wg.x * 64u;
  if (first >= used && wg.x != 0u) { return; }  // chunk 0 writes the query even with nothing cached
  let base = c * u.slots;
  let row = (base + min(first + t / 4u, u.slots - 1u)) * N + t % 4u;
  let col = t % N;
  let group = t / N;
${range(D / 16).map((j) => `  let k${j} = keys[row + ${4 * j}u];`).join("\n")}
${D <= 256 ? attendValues(D) : ""}
  let y = head(u.q + h * D, u.wq, true, t);
  for (var i = 0u; i < R; i++) {
    let j = t + 256u * i;
    if (j >= D) { continue; }
    qs[j / 4u][j % 4u] = y[i];
    if (wg.x == 0u) { st(u.qn + h * D + j, y[i]); }
  }
  workgroupBarrier();
  if (first >= used) { return; }
  var dot_ = 0.0;
${range(D / 16).map((j) => `  dot_ += dot(qs[${4 * j}u + t % 4u], k${j});`).join("\n")}
  red[t] = dot_;
  workgroupBarrier();
  var score = -3.4e38;
  if (t < 64u && first + t < used) {
    score = red[4u * t] + red[4u * t + 1u] + red[4u * t + 2u] + red[4u * t + 3u] + ld(u.mask + first + t);
  }
  workgroupBarrier();
  let m = reduce_max(score, t);
  var p = 0.0;
  if (t < 64u && first + t < used) { p = exp(score - m); }
  if (t < 64u) { ps[t] = p; }
  let l = reduce_sum(p, t);
${D <= 256 ? "" : attendValues(D)}
  var sum = vec4<f32>(0.0);
${range(D / 16).map((j) => `  sum += ps[group * ${D / 16}u + ${j}u] * v${j};`).join("\n")}
  sums[t] = sum;
  workgroupBarrier();
  if (group == 0u) {
    for (var g = 1u; g < ${1024 / D}u; g++) { sum += sums[g * N + col]; }
    act[(u.parts + (h * nwg.x + wg.x) * D) / 4u + col] = bitcast<vec4<u32>>(sum);
  }
  if (t == 0u) {
    st(u.stats + 2u * (h * nwg.x + wg.x), m);
    st(u.stats + 2u * (h * nwg.x + wg.x) + 1u, l);
  }
}
`;

// The chunks merged with the token's own key and value row: softmax over every score, times V. A workgroup per
// query head and block of COLS columns of 4 values (each computes the head's softmax weights); each lane one column
// over the chunks g, g + G, ... (G = 256 / COLS groups of lanes: a long context's many chunks in few rounds).
const ATTEND_MERGE = ({ D, COLS, SG = 0 }) => /* wgsl */ `${enableSG(SG)}
struct U { q: u32, heads: u32, kv: u32, used: u32, parts: u32, stats: u32, chunks: u32, knew: u32, vnew: u32, out: u32, }
@group(0) @binding(0) var<uniform> u: U;
${common(ACT4, SG)}
const N = ${D / 4}u;
const W = ${COLS}u;
const G = ${256 / COLS}u;
var<workgroup> weights: array<f32, ${MAX_CHUNKS}>;
var<workgroup> sums: array<vec4<f32>, 256>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3<u32>${SG_ARGS(SG)}) {
${SG_INIT(SG)}  let h = wg.x;
  let c = h / (u.heads / u.kv);
  var own = 0.0;
  if (t < N) { own = dot(ld4(u.q + h * ${D}u + 4u * t), ld4(u.knew + c * ${D}u + 4u * t)); }
  own = reduce_sum(own, t);
  let chunks = min(u.chunks, (word(u.used) + 63u) / 64u);
  let stats = u.stats + 2u * h * u.chunks;
  var m = own;
  for (var k = t; k < chunks; k += 256u) { m = max(m, ld(stats + 2u * k)); }
  m = reduce_max(m, t);
  var total = 0.0;
  for (var k = t; k < chunks; k += 256u) {
    let e = exp(ld(stats + 2u * k) - m);
    weights[k] = e;
    total += ld(stats + 2u * k + 1u) * e;
  }
  total = reduce_sum(total, t) + exp(own - m);
  let col = wg.y * W + t % W;
  let group = t / W;
  var sum = vec4<f32>(0.0);
  for (var k = group; k < chunks; k += G) { sum += weights[k] * ld4(u.parts + (h * u.chunks + k) * ${D}u + 4u * col); }
  sums[t] = sum;
  workgroupBarrier();
  if (group == 0u) {
    for (var g = 1u; g < G; g++) { sum += sums[g * W + t]; }
    sum += exp(own - m) * ld4(u.vnew + c * ${D}u + 4u * col);
    act[(u.out + h * ${D}u) / 4u + col] = bitcast<vec4<u32>>(sum / total);
  }
}
`;

// One stage of top-k: each workgroup sorts a row of at most SIZE (a power of two) candidates (bitonic, in
// workgroup memory; larger value first, then smaller id) and keeps its best k. ids NONE: a candidate's id is its
// index. Each lane fetches its candidates first (all loads in flight at once).
const TOP_K = ({ SIZE }) => /* wgsl */ `
struct U { vals: u32, ids: u32, n: u32, row: u32, k: u32, out_vals: u32, out_ids: u32, }
@group(0) @binding(0) var<uniform> u: U;
${common()}
var<workgroup> sv: array<f32, ${SIZE}>;
var<workgroup> si: array<u32, ${SIZE}>;
fn before(av: f32, ai: u32, bv: f32, bi: u32) -> bool { return av > bv || (av == bv && ai < bi); }
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3<u32>) {
  let base = wg.x * u.row;
  let has_ids = u.ids != NONE;
  let ids = select(u.vals, u.ids, has_ids);  // read in bounds either way
${range(Math.ceil(SIZE / 256)).map((m) => `  if (t + ${m * 256}u < ${SIZE}u) {
    let i = t + ${m * 256}u;
    let c = min(base + i, u.n - 1u);
    let ok = i < u.row && base + i < u.n;
    let value = ld(u.vals + c);
    let id = select(base + i, act[ids + c], has_ids);
    sv[i] = select(-3.4e38, value, ok);
    si[i] = select(NONE, id, ok);
  }`).join("\n")}
  for (var k = 2u; k <= ${SIZE}u; k <<= 1u) {
    for (var j = k >> 1u; j > 0u; j >>= 1u) {
      workgroupBarrier();
      for (var i = t; i < ${SIZE}u; i += 256u) {
        let l = i ^ j;
        if (l > i) {
          let swap = select(before(sv[i], si[i], sv[l], si[l]), before(sv[l], si[l], sv[i], si[i]), (i & k) == 0u);
          if (swap) {
            let v = sv[i]; sv[i] = sv[l]; sv[l] = v;
            let d = si[i]; si[i] = si[l]; si[l] = d;
          }
        }
      }
    }
  }
  workgroupBarrier();
  for (var i = t; i < u.k; i += 256u) {
    st(u.out_vals + wg.x * u.k + i, sv[i]);
    act[u.out_ids + wg.x * u.k + i] = si[i];
  }
}
`;

// The next token from the top-k (values at out, ids after them), as webgemma.sampling.Sampler picks it from the same
// candidates: a repetition penalty on ids in the `seen` bitset, then greedy (temperature 0) or temperature, top-k,
// top-p, min-p and the draw u in [0, 1) over the candidates' cumulative probabilities in their order; params holds
// u, temperature, top_k, top_p, min_p, penalty (sampling.py's order; zeros: greedy). The token goes to act[token]
// (the next step's input), out[2k] and `seen`; a stop id among the `stops` (count, ids) clears act[live], copied
// to out[2k + 1]. No barrier depends on a setting (read from storage, not uniform): both picks are computed.
const SAMPLE = /* wgsl */ `
struct U { out: u32, k: u32, token: u32, live: u32, seen: u32, params: u32, stops: u32, }
@group(0) @binding(0) var<uniform> u: U;
${common()}
var<workgroup> xs: array<f32, 256>;
var<workgroup> ranks: array<u32, 256>;
fn rank_of(x: f32, t: u32) -> u32 {  // place in descending order, ties by index
  var r = 0u;
  for (var j = 0u; j < u.k; j++) { r += u32(xs[j] > x || (xs[j] == x && j < t)); }
  return r;
}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32) {
  let draw = ld(u.params);
  let temperature = ld(u.params + 1u);
  let top_k = u32(ld(u.params + 2u));
  let top_p = ld(u.params + 3u);
  let min_p = ld(u.params + 4u);
  let penalty = ld(u.params + 5u);
  let on = t < u.k;
  var id = 0u;
  var x = -3.4e38;
  if (on) {
    id = act[u.out + u.k + t];
    x = ld(u.out + t);
    if (penalty > 0.0 && penalty != 1.0 && ((act[u.seen + id / 32u] >> (id % 32u)) & 1u) == 1u) {
      x = select(x * penalty, x / penalty, x > 0.0);
    }
    x /= select(temperature, 1.0, temperature <= 0.0);
  }
  xs[t] = x;
  workgroupBarrier();
  let rank = rank_of(x, t);
  let greedy = u32(reduce_sum(select(0.0, f32(t), on && rank == 0u), t));
  if (on) { xs[rank] = x; }  // sorted: the top_k-th value
  workgroupBarrier();
  let kth = xs[max(min(top_k, u.k), 1u) - 1u];
  let keep = on && (top_k == 0u || top_k >= u.k || x >= kth);
  let m = reduce_max(select(-3.4e38, x, keep), t);
  var p = select(0.0, exp(x - m), keep);
  p /= reduce_sum(p, t);
  xs[t] = p;
  workgroupBarrier();
  ranks[t] = rank_of(p, t);
  workgroupBarrier();
  var before = 0.0;  // the mass of the likelier candidates
  for (var j = 0u; j < u.k; j++) { before += select(0.0, xs[j], ranks[j] < ranks[t]); }
  p = select(0.0, p, top_p >= 1.0 || before < top_p);
  let most = reduce_max(p, t);
  p = select(p, 0.0, min_p > 0.0 && p < min_p * most);
  workgroupBarrier();
  xs[t] = p;
  workgroupBarrier();
  var cdf = 0.0;
  for (var j = 0u; j <= t && j < u.k; j++) { cdf += xs[j]; }
  let total = reduce_sum(p, t);
  let below = reduce_sum(select(0.0, 1.0, on && cdf / total <= draw), t);
  let pick = select(min(u32(below), u.k - 1u), greedy, temperature <= 0.0);
  if (t == 0u) {
    let token = act[u.out + u.k + pick];
    act[u.token] = token;
    act[u.out + 2u * u.k] = token;
    act[u.seen + token / 32u] |= 1u << (token % 32u);
    for (var i = 0u; i < min(act[u.stops], ${MAX_STOPS}u); i++) {
      if (act[u.stops + 1u + i] == token) { act[u.live] = 0u; }
    }
    act[u.out + 2u * u.k + 1u] = act[u.live];
  }
}
`;

// The token's per-layer row from the table on the GPU (kernel_step.mjs uploadTable: buffers of `per` rows; this
// dispatch binds buffers first.. first + BUFFERS - 1) into the step's inputs, as kernel_step.mjs writeRow would:
// the int4 words as they are, the block scales as float32. Workgroup row y takes token act[token + y] to rows +
// y * data_words and out_scales + y * scales (a prefill chunk's rows: kernel_step.mjs prefillRows).
const GATHER = ({ BUFFERS }) => /* wgsl */ `
struct U { token: u32, per: u32, first: u32, row_words: u32, data_words: u32, scales: u32, rows: u32, out_scales: u32,
           f16: u32, }
@group(0) @binding(0) var<uniform> u: U;
${common()}
${range(BUFFERS).map((b) => `@group(0) @binding(${2 + b}) var<storage, read> table${b}: array<u32>;`).join("\n")}
fn word(b: u32, i: u32) -> u32 {
${range(BUFFERS).map((b) => `  if (b == ${b}u) { return table${b}[i]; }`).join("\n")}
  return 0u;
}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3<u32>) {
  let token = act[u.token + wg.y];
  let b = token / u.per - u.first;  // wraps around below first
  if (b >= ${BUFFERS}u) { return; }
  let base = (token % u.per) * u.row_words;
  let rows = u.rows + wg.y * u.data_words;
  let scales = u.out_scales + wg.y * u.scales;
  for (var i = t; i < u.data_words; i += 256u) { act[rows + i] = word(b, base + i); }
  for (var i = t; i < u.scales; i += 256u) {
    let w = word(b, base + u.data_words + select(i, i / 2u, u.f16 == 1u));
    st(scales + i, select(bitcast<f32>(w), unpack2x16float(w)[i % 2u], u.f16 == 1u));
  }
}
`;

// kernel name → its WGSL source for the plan's constants (Dispatch.constants: sizes the code is specialized for)
export const KERNELS = {
  matvec: MATVEC, norm: NORM, embed: () => EMBED, per_layer: PER_LAYER,
  attend: ATTEND, attend_merge: ATTEND_MERGE, top_k: TOP_K, sample: () => SAMPLE, gather: GATHER,
};
