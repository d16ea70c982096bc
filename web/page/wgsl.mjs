// The WGSL kernels of the hand-written decode step (kernel_step.mjs; the plan that strings them together is
// py/webgemma/kernel_plan.py, whose UNIFORMS list each kernel's `U` fields in this order).
//
// Every kernel binds its uniforms at 0 and the activations at 1: one buffer of 32-bit words (`act`) holding every
// vector of the step, the per-step inputs and the outputs, addressed by word offsets from the plan; floats are
// stored as their bits (a packed int4 row must not pass through a float), the small float32 weights (norms, layer
// scalars) among them. Weights are onnxruntime's MatMulNBits layout: int4 blocks of 32 along K, 16 bytes each, the
// even element in the low nibble, zero point 8, one float32 scale per block.

const NONE = 0xffffffff;

const ACT = /* wgsl */ `
@group(0) @binding(1) var<storage, read_write> act: array<u32>;
fn ld(i: u32) -> f32 { return bitcast<f32>(act[i]); }
fn st(i: u32, v: f32) { act[i] = bitcast<u32>(v); }
`;

// the matvec reads its input four words at a time (writable bindings of one buffer may not alias)
const ACT4 = /* wgsl */ `
@group(0) @binding(1) var<storage, read_write> act: array<vec4<u32>>;
fn ld(i: u32) -> f32 { return bitcast<f32>(act[i / 4u][i % 4u]); }
fn st(i: u32, v: f32) { act[i / 4u][i % 4u] = bitcast<u32>(v); }
`;

const common = (act = ACT) => /* wgsl */ `
const NONE = ${NONE}u;
${act}// tanh of a clamped argument: large ones overflow exp inside some tanh implementations
fn tanh_(x: f32) -> f32 { return tanh(clamp(x, -15.0, 15.0)); }
fn gelu(x: f32) -> f32 { return 0.5 * x * (1.0 + tanh_(0.7978845608 * (x + 0.044715 * x * x * x))); }
var<workgroup> red: array<f32, 256>;
fn reduce_sum(v: f32, t: u32) -> f32 {
  red[t] = v;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (t < s) { red[t] += red[t + s]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}
fn reduce_max(v: f32, t: u32) -> f32 {
  red[t] = v;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (t < s) { red[t] = max(red[t], red[t + s]); }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}
`;

// The residual stream between two kernels, computed by every workgroup of the kernel that needs it:
//   h' = (h + rms_norm(branch) * w_branch) * scalar          (branch and scalar optional)
//   x  = rms_norm(h') * w_in                                  (or h' itself), left in xs
// Workgroup 0 writes h' to h_out, which must not be h: other workgroups are still reading h.
const PROLOGUE = /* wgsl */ `
var<workgroup> xs: array<vec4<f32>, 768>;
fn prologue(t: u32, first: bool) {
  let n = u.hidden;
  var inv_b = 0.0;
  if (u.branch != NONE) {
    var ss = 0.0;
    for (var k = t; k < n; k += 256u) { let b = ld(u.branch + k); ss += b * b; }
    inv_b = inverseSqrt(reduce_sum(ss, t) / f32(n) + u.eps);
  }
  var scale = 1.0;
  if (u.scalar != NONE) { scale = ld(u.scalar); }
  var ss = 0.0;
  for (var k = t; k < n; k += 256u) {
    var h = ld(u.res + k);
    if (u.branch != NONE) { h += ld(u.branch + k) * inv_b * ld(u.w_branch + k); }
    h *= scale;
    xs[k / 4u][k % 4u] = h;
    ss += h * h;
    if (first) { st(u.h_out + k, h); }
  }
  if (u.w_in != NONE) {
    let inv = inverseSqrt(reduce_sum(ss, t) / f32(n) + u.eps);
    for (var k = t; k < n; k += 256u) { xs[k / 4u][k % 4u] *= inv * ld(u.w_in + k); }
  }
  workgroupBarrier();
}
`;

const PROLOGUE_FIELDS = `hidden: u32, res: u32, branch: u32, w_branch: u32, scalar: u32, w_in: u32, h_out: u32, eps: f32,`;

// One int4 row of source S times the input: lane l of the row's LANES takes words l, l + LANES, ... (8 values
// each), so the lanes read neighbouring weights and neighbouring inputs.
const dotRow = (s) => /* wgsl */ `
@group(0) @binding(${2 + 2 * s}) var<storage, read> q${s}: array<u32>;
@group(0) @binding(${3 + 2 * s}) var<storage, read> s${s}: array<f32>;
fn dot${s}(row: u32, lane: u32) -> f32 {
  let words = u.k / 8u;
  var acc = 0.0;
  for (var w = lane; w < words; w += LANES) {
    let word = q${s}[row * words + w];
    let lo = vec4<f32>((vec4<u32>(word) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u)) - 8.0;
    let hi = vec4<f32>((vec4<u32>(word) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u)) - 8.0;
    acc += (dot(lo, xin(2u * w)) + dot(hi, xin(2u * w + 1u))) * s${s}[(row * words + w) / 4u];
  }
  return acc;
}
`;

// y = W x for up to three int4 weights stacked along N (q, k, v), 256 / LANES rows per workgroup (the plan takes
// more lanes per row where rows are few, so that enough workgroups run). The input is the
// prologue's x (PRO) or a vector of act. epi: 0 store, 1 gelu(W0 x) * (W1 x) (the MLP's gate and up, same rows),
// 2 gelu(W0 x) * act[aux + n] (the per-layer gate), 3 add to what is there (the lm_head's column chunks);
// then, with cap > 0, cap * tanh(y / cap) (the final logit softcap).
const MATVEC = /* wgsl */ `
struct U { ${PROLOGUE_FIELDS} k: u32, in_off: u32, n0: u32, n1: u32, n2: u32, out0: u32, out1: u32, out2: u32,
           epi: u32, aux: u32, cap: f32, }
@group(0) @binding(0) var<uniform> u: U;
${common(ACT4)}
${PROLOGUE}
override PRO: bool;
override LANES: u32;
// four input values (in_off is a multiple of 4)
fn xin(i: u32) -> vec4<f32> { if (PRO) { return xs[i]; } return bitcast<vec4<f32>>(act[u.in_off / 4u + i]); }
${dotRow(0)}${dotRow(1)}${dotRow(2)}
var<workgroup> red2: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let wid = wg.x + wg.y * nwg.x;
  if (PRO) { prologue(t, wid == 0u); }
  let lane = t % LANES;
  let g = wid * (256u / LANES) + t / LANES;
  let rows = select(u.n0 + u.n1 + u.n2, u.n0, u.epi == 1u);
  var a = 0.0;
  var b = 0.0;
  var out = 0u;
  if (g < rows) {
    if (u.epi == 1u) {
      a = dot0(g, lane);
      b = dot1(g, lane);
      out = u.out0 + g;
    } else if (g < u.n0) {
      a = dot0(g, lane);
      out = u.out0 + g;
    } else if (g < u.n0 + u.n1) {
      a = dot1(g - u.n0, lane);
      out = u.out1 + g - u.n0;
    } else {
      a = dot2(g - u.n0 - u.n1, lane);
      out = u.out2 + g - u.n0 - u.n1;
    }
  }
  red[t] = a;
  red2[t] = b;
  for (var s = LANES / 2u; s > 0u; s >>= 1u) {
    workgroupBarrier();
    if (lane < s) {
      red[t] += red[t + s];
      red2[t] += red2[t + s];
    }
  }
  if (lane != 0u || g >= rows) { return; }
  var y = red[t];
  let y2 = red2[t];
  if (u.epi == 1u) { y = gelu(y) * y2; }
  if (u.epi == 2u) { y = gelu(y) * ld(u.aux + g); }
  if (u.epi == 3u) { y += ld(out); }
  if (u.cap > 0.0) { y = u.cap * tanh_(y / u.cap); }
  st(out, y);
}
`;

// The prologue alone, by one workgroup: writes h' to h_out and x to out (the final norm before the lm_head).
const NORM = /* wgsl */ `
struct U { ${PROLOGUE_FIELDS} out: u32, }
@group(0) @binding(0) var<uniform> u: U;
${common()}
${PROLOGUE}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32) {
  prologue(t, true);
  for (var k = t; k < u.hidden; k += 256u) { st(u.out + k, xs[k / 4u][k % 4u]); }
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
const PER_LAYER = /* wgsl */ `
struct U { proj: u32, dim: u32, w: u32, rows: u32, scales: u32, out: u32, eps: f32, proj_scale: f32, }
@group(0) @binding(0) var<uniform> u: U;
${common()}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3<u32>) {
  let base = wg.x * u.dim;
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

// A workgroup per head: RMSNorm over the head (w NONE: unscaled, Gemma's v_norm), then rotate-half RoPE with the
// position's cos/sin (rope false for values). Query heads in place; the new key/value rows from k_src/v_src to
// k_dst/v_dst (own = 1; a KV-shared layer has none).
const HEADS = /* wgsl */ `
struct U { q: u32, heads: u32, d: u32, wq: u32, k_src: u32, k_dst: u32, wk: u32, v_src: u32, v_dst: u32, kv: u32,
           cos: u32, sin: u32, eps: f32, }
@group(0) @binding(0) var<uniform> u: U;
${common()}
var<workgroup> xs: array<f32, 512>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3<u32>) {
  let d = u.d;
  var src = u.q + wg.x * d;
  var dst = src;
  var w = u.wq;
  var rope = true;
  if (wg.x >= u.heads + u.kv) {
    src = u.v_src + (wg.x - u.heads - u.kv) * d;
    dst = u.v_dst + (wg.x - u.heads - u.kv) * d;
    w = NONE;
    rope = false;
  } else if (wg.x >= u.heads) {
    src = u.k_src + (wg.x - u.heads) * d;
    dst = u.k_dst + (wg.x - u.heads) * d;
    w = u.wk;
  }
  var ss = 0.0;
  for (var j = t; j < d; j += 256u) { let x = ld(src + j); xs[j] = x; ss += x * x; }
  let inv = inverseSqrt(reduce_sum(ss, t) / f32(d) + u.eps);
  for (var j = t; j < d; j += 256u) {
    var y = xs[j] * inv;
    if (w != NONE) { y *= ld(w + j); }
    if (rope) {
      let half = d / 2u;
      let jj = j % half;
      var other = xs[(j + half) % d] * inv;
      if (w != NONE) { other *= ld(w + (j + half) % d); }
      let c = ld(u.cos + jj);
      let s = ld(u.sin + jj);
      y = select(y * c + other * s, y * c - other * s, j < half);
    }
    st(dst + j, y);
  }
}
`;

// Attention in chunks of 64 slots (flash-decoding), a workgroup per chunk and query head: the chunk's scores
// q·K[slot] + mask[slot] over the cache's first act[used] slots, their max m, sum l of exp(score - m) and the
// exp-weighted sum of V, written as [m, l, acc[d]] per chunk and head for attend_merge.
const ATTEND_PART = /* wgsl */ `
struct U { q: u32, heads: u32, kv: u32, d: u32, slots: u32, used: u32, mask: u32, parts: u32, }
@group(0) @binding(0) var<uniform> u: U;
${common()}
@group(0) @binding(2) var<storage, read> keys: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> values: array<f32>;
var<workgroup> qs: array<vec4<f32>, 128>;
var<workgroup> ps: array<f32, 64>;
var<workgroup> used_: u32;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let h = wg.y;
  let c = h / (u.heads / u.kv);
  let n = u.d / 4u;
  for (var i = t; i < n; i += 256u) {
    let at = u.q + h * u.d + 4u * i;
    qs[i] = vec4<f32>(ld(at), ld(at + 1u), ld(at + 2u), ld(at + 3u));
  }
  if (t == 0u) { used_ = act[u.used]; }
  let used = workgroupUniformLoad(&used_);
  let first = wg.x * 64u;
  let out = u.parts + (h * nwg.x + wg.x) * (u.d + 2u);
  if (first >= used) { return; }
  let slot = first + t / 4u;
  var acc = 0.0;
  if (slot < used) {
    let row = (c * u.slots + slot) * n;
    for (var i = t % 4u; i < n; i += 4u) { acc += dot(qs[i], keys[row + i]); }
  }
  red[t] = acc;
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
  let count = min(64u, used - first);
  for (var j = t; j < u.d; j += 256u) {
    var sum = 0.0;
    for (var s = 0u; s < count; s++) { sum += ps[s] * values[(c * u.slots + first + s) * u.d + j]; }
    st(out + 2u + j, sum);
  }
  if (t == 0u) {
    st(out, m);
    st(out + 1u, l);
  }
}
`;

// The chunks' parts merged with the token's own key and value row: softmax over every score, times V.
const ATTEND_MERGE = /* wgsl */ `
struct U { q: u32, heads: u32, kv: u32, d: u32, used: u32, parts: u32, chunks: u32, knew: u32, vnew: u32, out: u32, }
@group(0) @binding(0) var<uniform> u: U;
${common()}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3<u32>) {
  let h = wg.x;
  let c = h / (u.heads / u.kv);
  var own = 0.0;
  for (var j = t; j < u.d; j += 256u) { own += ld(u.q + h * u.d + j) * ld(u.knew + c * u.d + j); }
  own = reduce_sum(own, t);
  let chunks = min(u.chunks, (act[u.used] + 63u) / 64u);
  let base = u.parts + h * u.chunks * (u.d + 2u);
  var m = own;
  for (var k = 0u; k < chunks; k++) { m = max(m, ld(base + k * (u.d + 2u))); }
  var total = exp(own - m);
  for (var k = 0u; k < chunks; k++) {
    let at = base + k * (u.d + 2u);
    total += ld(at + 1u) * exp(ld(at) - m);
  }
  for (var j = t; j < u.d; j += 256u) {
    var sum = exp(own - m) * ld(u.vnew + c * u.d + j);
    for (var k = 0u; k < chunks; k++) {
      let at = base + k * (u.d + 2u);
      sum += ld(at + 2u + j) * exp(ld(at) - m);
    }
    st(u.out + h * u.d + j, sum / total);
  }
}
`;

// One stage of top-k: each workgroup sorts a row of at most 2,048 candidates (bitonic, in workgroup memory;
// larger value first, then smaller id) and keeps its best k. ids NONE: a candidate's id is its index.
const TOP_K = /* wgsl */ `
struct U { vals: u32, ids: u32, n: u32, row: u32, k: u32, out_vals: u32, out_ids: u32, }
@group(0) @binding(0) var<uniform> u: U;
${common()}
var<workgroup> sv: array<f32, 2048>;
var<workgroup> si: array<u32, 2048>;
fn before(av: f32, ai: u32, bv: f32, bi: u32) -> bool { return av > bv || (av == bv && ai < bi); }
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3<u32>) {
  let base = wg.x * u.row;
  for (var i = t; i < 2048u; i += 256u) {
    if (i < u.row && base + i < u.n) {
      sv[i] = ld(u.vals + base + i);
      si[i] = base + i;
      if (u.ids != NONE) { si[i] = act[u.ids + base + i]; }
    } else {
      sv[i] = -3.4e38;
      si[i] = NONE;
    }
  }
  for (var k = 2u; k <= 2048u; k <<= 1u) {
    for (var j = k >> 1u; j > 0u; j >>= 1u) {
      workgroupBarrier();
      for (var i = t; i < 2048u; i += 256u) {
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

export const KERNELS = {
  matvec: MATVEC, norm: NORM, embed: EMBED, per_layer: PER_LAYER, heads: HEADS, attend_part: ATTEND_PART,
  attend_merge: ATTEND_MERGE, top_k: TOP_K,
};
