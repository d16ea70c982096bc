"""The decode step as hand-written WebGPU kernels (web/page/wgsl.mjs), planned here, run by kernel_step.mjs.

The same maths as the exporter's step graph (exporter/graph/decoder.py), over the same uploaded weights and fixed
caches (webgemma.static_cache), in 9 or 10 dispatches per layer instead of ~30 onnxruntime nodes:

    norm     h' = (h + post_per_layer_input_norm(z)) * layer_scalar of the layer before; x = input_layernorm(h')
    qkv      q, k, v projections of x
    attend   q_norm / k_norm / v_norm per head, RoPE on q and k; per chunk of 64 cache slots: q·K + mask, their
             softmax's max and sum, the weighted sum of V
    merge    the chunks and the token's own key and value row, a workgroup per head and block of MERGE_COLUMNS
    o_proj   (where the chunks are few, MERGE_LOADS, each of its workgroups merges them itself: no merge dispatch)
    norm     h' = h + post_attention_layernorm(o); x = pre_feedforward_layernorm(h')
    gate_up  gelu(gate x) * up x
    down
    ple_gate h' = h + post_feedforward_layernorm(y) (in each workgroup; the first writes it),
             gelu(per_layer_input_gate h') * ple_i
    ple_proj z = per_layer_projection(...)

then the final norm, the tied lm_head by column chunk (softcap on the last), top-k in stages of 1,024 and the
next token sampled from the top-k (used when steps chain; see webgemma.engine). The attention kernel writes the
token's key and value rows straight into their cache slots (unless a stop token was sampled: `live`). Once the per-layer
table is on the GPU, `gather` dispatches first copy the token's row from it.

The matvecs after a norm, and down, read their inputs rounded to int8 by whoever wrote them (a scale for every 8
values: wgsl.mjs quantize8), four products a dot4I8Packed; the others read float32 (`q8`).

Every vector lives in one buffer of 32-bit words (`act`) at offsets fixed here; the per-step inputs (token id,
table row, RoPE row, masks, used slots) are written into it as one block per step. Only int4 exports with blocks of
32 (the exporter's default) are planned; anything else raises KernelPlanError and decodes through the step graph.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import numpy as np

from .manifest import Manifest
from .onnx_bytes import ExternalWeight
from .static_cache import step_caches

NONE = 0xFFFFFFFF
MATVEC_GROUPS = 528  # matvec workgroups wanted at least (4 per SM of an H100), by taking more lanes per row
MATVEC_WORDS = 8  # weight words a matvec lane reads at most (all at once: registers)
# the same for a matvec whose input is quantized (Q8: a word costs a quarter of the operations), for which fewer
# workgroups, each lane reading more words, came out faster (bench/matvec_bench.py on an H100; the gate·up product
# reads two sources: half the words each)
Q8_WORDS, Q8_GROUPS = 12, 264
LANES = (8, 16, 32, 64, 128, 256)
TOP_K_ROW = 1024  # candidates a top-k workgroup sorts in workgroup memory (2,048: 2.4× the compare steps in all)
ATTEND_CHUNK = 64  # cache slots per attention workgroup
MAX_SLOTS = ATTEND_CHUNK * 1024  # the merge's chunk weights in workgroup memory (wgsl.mjs MAX_CHUNKS)
# an o_proj lane's loads of the attention's chunk sums (vec4s) when its workgroup merges them itself (E2B's sliding
# layers: 8 chunks of 2 columns)
MERGE_LOADS = 16
# the merge's columns of 4 values a workgroup (a head's D / 4 in blocks): a long context's 64 chunks in 2 rounds of 32
# groups of lanes, not 32 rounds of 2 (E2B's global layers at 4,096 tokens)
MERGE_COLUMNS = 8
HEAD_DIMS = (16, 32, 64, 128, 256, 512)  # the attention's lanes: 4 a slot, a column of 4 values each
MAX_GROUPS = 65535  # workgroups along one grid dimension
MAX_STOPS = 8  # stop token ids the sampling kernel checks
TABLE_BINDINGS = 4  # per-layer table buffers one gather dispatch binds
# the sampling settings in the step's block, in this order (float32; temperature 0 is greedy, a penalty of 1 none)
SAMPLE_PARAMS = ("u", "temperature", "top_k", "top_p", "min_p", "repetition_penalty")

# each kernel's uniform struct U, field by field (wgsl.mjs); FLOATS are float32, the rest uint32
UNIFORMS = {
    "matvec": ["k", "in_off", "n0", "n1", "n2", "out0", "out1", "out2", "epi", "aux", "cap", "res", "branch", "w_branch",
               "h_out", "eps", "q", "kv", "used", "parts", "stats", "knew", "vnew"],
    "norm": ["hidden", "res", "branch", "w_branch", "scalar", "w_in", "h_out", "eps", "out", "xq"],
    "embed": ["token", "nb", "out", "scale"],
    "per_layer": ["proj", "dim", "w", "rows", "scales", "out", "eps", "proj_scale"],
    "attend": ["q", "qn", "heads", "kv", "wq", "k_src", "k_dst", "wk", "v_src", "v_dst", "cos", "sin", "eps",
               "slots", "slot", "live", "used", "mask", "parts", "stats"],
    "attend_merge": ["q", "heads", "kv", "used", "parts", "stats", "chunks", "knew", "vnew", "out"],
    "top_k": ["vals", "ids", "n", "row", "k", "out_vals", "out_ids"],
    "sample": ["out", "k", "token", "live", "seen", "params", "stops"],
    "gather": ["token", "per", "first", "row_words", "data_words", "scales", "rows", "out_scales", "f16"],
}
FLOATS = {"eps", "cap", "scale", "proj_scale"}
EPI_STORE, EPI_GELU_MUL, EPI_GELU_AUX, EPI_ADD = 0, 1, 2, 3


class KernelPlanError(ValueError):
    """The model cannot decode through the kernels (the message says why); the step graph still can."""


@dataclass(frozen=True)
class Dispatch:
    kernel: str
    bindings: list[str]  # bindings 1.. : "act", "none", "w:<weight input>", "cache:<cache input>"
    uniform: bytes
    grid: tuple[int, int, int]
    constants: dict = field(default_factory=dict)  # what its WGSL is specialized for (matvec: LANES, PER, MERGE;
    # attention: D; SG: sums by subgroups)
    label: str = ""  # what it computes, for profiles (qkv, attend, o_proj, gate_up, ...)


@dataclass
class KernelPlan:
    act_words: int
    constants: tuple[int, bytes]  # (word offset, float32 bytes): the norm weights and layer scalars, written once
    caches: dict[str, int]  # cache input name → bytes
    dispatches: list[Dispatch]
    # step feed name → word offset in act; "used.<mask input>" / "slot.<mask input>" → the used-slot count's / the
    # slot taking the token's key and value rows; "live", "sample", "stops" (see pack)
    inputs: dict[str, int]
    block: tuple[int, int]  # the per-step input block: (word offset, words)
    output: tuple[int, int]  # top-k values, ids (uint32), then the sampled token and live: (word offset, words)
    rows: dict[str, int] = field(default_factory=dict)  # the step's new key/value rows (present names) → word offset
    k: int = 64
    # where the per-layer row goes when the step reads it itself (kernel_step.mjs writeRow): its data's and its
    # scales' word offsets, the data's bytes, whether the table stores float16 scales; the two feeds it replaces
    row: tuple[int, int, int, bool] = (0, 0, 0, True)
    row_feeds: tuple[str, ...] = ()
    # the block from here on depends only on the position: a step whose token the last step sampled on the GPU
    # (its id, live flag and per-layer row already in act) is given only this part
    tail: int = 0
    seen: tuple[int, int] = (0, 0)  # the repetition penalty's bitset of seen token ids: (word offset, words)
    table: tuple[int, int] = (0, 0)  # the per-layer table on the GPU: (rows per buffer, buffers)

    @property
    def subgroups(self) -> bool:
        """Whether the kernels add by subgroup operations."""
        return any(d.constants.get("SG") for d in self.dispatches)

    @property
    def quantized(self) -> bool:
        """Whether matvecs read int8 inputs (q8)."""
        return any(d.constants.get("Q8") for d in self.dispatches)

    def pack(self, feeds: dict[str, np.ndarray]) -> bytes:
        """The per-step input block from the step feeds (webgemma.static_cache): every feed at its offset; for each
        mask the number of slots to attend over (up to its last visible one) and the slot taking the token's rows
        (its first hidden one: the next position, or the ring's slot leaving the window); live = 1 (the sampling
        kernel clears it after a stop token: later steps then write no cache rows); "sample": SAMPLE_PARAMS (absent:
        greedy); "stops": up to MAX_STOPS stop token ids. The per-layer row's feeds may be absent: the step then
        reads the row itself."""
        start, words = self.block
        block = np.zeros(words, np.uint32)
        block[self.inputs["live"] - start] = 1
        for name, at in self.inputs.items():
            if name == "live" or (name in self.row_feeds + ("sample", "stops") and name not in feeds):
                continue
            if name.startswith(("used.", "slot.")):
                mask = np.asarray(feeds[name[5:]]).reshape(-1)
                if name.startswith("used."):
                    visible = np.flatnonzero(mask == 0)
                    block[at - start] = visible[-1] + 1 if len(visible) else 0
                else:
                    block[at - start] = np.argmax(mask != 0)
                continue
            a = np.asarray(feeds[name])
            if name == "stops":
                if a.size > MAX_STOPS:
                    raise ValueError(f"{a.size} stop ids: the sampling kernel checks at most {MAX_STOPS}")
                a = np.concatenate([[a.size], a.reshape(-1)]).astype(np.uint32)
            raw = (a.astype(np.uint32) if a.dtype == np.int64 else a).tobytes()
            words_of = np.frombuffer(raw + b"\0" * (-len(raw) % 4), np.uint32)
            block[at - start : at - start + words_of.size] = words_of
        return block.tobytes()

    def read(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """(top values, their token ids as int64) from the output words."""
        return np.frombuffer(data, np.float32, self.k), np.frombuffer(data, np.uint32, self.k, 4 * self.k).astype(np.int64)

    def sampled(self, data: bytes) -> tuple[int, bool]:
        """(the token the step sampled, whether its steps still write cache rows: no stop token sampled yet)."""
        token, live = np.frombuffer(data, np.uint32, 2, 8 * self.k)
        return int(token), bool(live)


class _Words:
    """Word offsets in act, each region 16-byte aligned (vec4 reads)."""

    def __init__(self) -> None:
        self.size = 0

    def take(self, words: int) -> int:
        at = self.size
        self.size += -(-words // 4) * 4
        return at


def _uniform(kernel: str, **values) -> bytes:
    fields = UNIFORMS[kernel]
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"{kernel}: no uniform fields {sorted(unknown)}")
    return b"".join(struct.pack("<f" if f in FLOATS else "<I", values.get(f, 0)) for f in fields)


def _grid(groups: int) -> tuple[int, int, int]:
    return (groups, 1, 1) if groups <= MAX_GROUPS else (MAX_GROUPS, -(-groups // MAX_GROUPS), 1)


class _Weights:
    """The step graph's int4 weights by checkpoint name (the exporter's names: <name>[.partN|.chunkN].qweight)."""

    def __init__(self, weights: list[ExternalWeight]):
        self.by_name = {w.name: w for w in weights}
        embed = [n for n in self.by_name if n.endswith(".qweight") and "embed_tokens.weight" in n]
        if not embed:
            raise KernelPlanError("the step graph has no int4 embedding table (embed_tokens.weight.qweight)")
        self.prefix = embed[0][: embed[0].index("embed_tokens.weight")]

    def parts(self, relative: str, piece: str) -> list[tuple[str, str, int, int]]:
        """[(qweight input, scales input, rows, input size)] of a linear weight, in order."""
        base = self.prefix + relative
        if base + ".qweight" in self.by_name:
            names = [base]
        else:
            names = []
            while f"{base}.{piece}{len(names)}.qweight" in self.by_name:
                names.append(f"{base}.{piece}{len(names)}")
        if not names:
            raise KernelPlanError(f"the step graph has no int4 weight {base}")
        out = []
        for name in names:
            q = self.by_name[name + ".qweight"]
            if q.dtype != 2 or len(q.dims) != 3 or q.dims[2] != 16:
                raise KernelPlanError(f"{name}: not int4 in blocks of 32 ({q.dims}); the kernels read only those")
            out.append((name + ".qweight", name + ".scales", q.dims[0], q.dims[1] * 32))
        return out

def kernel_plan(manifest: Manifest, weights: list[ExternalWeight], floats: dict[str, np.ndarray],
                context: int, lanes: int | None = None, table_buffer_bytes: int = 2**31,
                subgroups: bool = False, merge: bool = True, q8: bool = True) -> KernelPlan:
    """The kernels' plan for the step graph whose external weights are `weights` and whose float32 constants are
    `floats` (webgemma.onnx_bytes), with caches of `context` slots for the global layers. lanes: every matvec's
    lanes per row (8 to 256, a power of two; tests), instead of the choice by size. table_buffer_bytes: the largest
    buffer the per-layer table may take on the GPU (the device's storage binding limit). subgroups: the device
    has subgroups of consecutive invocations (kernel_step.mjs subgroupsUsable): the matvecs add their lanes' sums
    by shuffles, the norms, the attention, its merge and the per-layer inputs reduce by subgroup operations. merge:
    o_proj merges the attention's chunks itself where they are few (False: always the merge's own dispatch). q8:
    the matvecs after a norm (q, k, v; gate and up; the lm_head), and down where gate·up's workgroups hold 8 rows or
    more, read their input quantized to int8 in groups of 8 (wgsl.mjs quantize8), written so by its producer (False:
    float32 inputs, as the step graph computes)."""
    if lanes not in (None, *LANES):
        raise ValueError(f"lanes must be one of {LANES}, not {lanes}")
    arch, io = manifest.arch, manifest.decoder
    if manifest.raw["quantization"]["weights"] != "int4" or manifest.raw["quantization"]["block_size"] != 32:
        raise KernelPlanError("the kernels read int4 weights in blocks of 32; this export is "
                              f"{manifest.raw['quantization']['weights']}")
    if manifest.table["format"] != "int4" or manifest.table.get("block_size", 32) != 32:
        raise KernelPlanError(f"the kernels read an int4 per-layer table; this one is {manifest.table['format']}")
    hidden, layers, heads = arch["hidden_size"], arch["num_hidden_layers"], arch["num_attention_heads"]
    types, dims, kvs = arch["layer_types"], arch["head_dim"], arch["num_key_value_heads"]
    per_layer, vocab = arch["hidden_size_per_layer_input"], arch["vocab_size"]
    eps = float(arch.get("rms_norm_eps", 1e-6))  # exports before the field: Gemma 4's value
    cap = arch["final_logit_softcapping"] or 0.0
    if any(d not in HEAD_DIMS for d in dims.values()) or context > MAX_SLOTS:
        raise KernelPlanError(f"head sizes {dims} / context {context}: beyond what the kernels hold (heads of "
                              f"{HEAD_DIMS}, context ≤ {MAX_SLOTS})")
    w = _Weights(weights)
    act = _Words()
    # the per-step input block first, then the constants, the outputs and the vectors
    inputs: dict[str, int] = {}
    names = io["inputs"]
    inputs[names["input_ids"]] = act.take(2)
    inputs["live"] = inputs[names["input_ids"]] + 1
    inputs[names["per_layer_rows"]] = act.take(layers * per_layer // 8)
    inputs[names["per_layer_scales"]] = act.take(layers * per_layer // 32)
    tail = act.size
    caches = {c["input"]: c["dims"] for c in step_caches(io, context)}
    masks = io["step_graph"]["masks"]
    slots = {}
    for kind in sorted(set(types)):
        inputs[io["rope"][kind]["cos"]] = act.take(dims[kind] // 2)
        inputs[io["rope"][kind]["sin"]] = act.take(dims[kind] // 2)
        own = next(c for c in io["cache"] if c["type"] == kind)
        slots[kind] = caches[own["past_key"]][2]
        inputs[masks[kind]] = act.take(slots[kind])
        inputs["used." + masks[kind]] = act.take(1)
        inputs["slot." + masks[kind]] = act.take(1)
    inputs["sample"] = act.take(len(SAMPLE_PARAMS))
    inputs["stops"] = act.take(1 + MAX_STOPS)
    block = (0, act.size)
    constants: list[np.ndarray] = []
    at_constant: dict[str, int] = {}
    for name, value in sorted(floats.items()):
        if name.startswith(w.prefix):  # the checkpoint's tensors (the graph's other constants are its own)
            at_constant[name] = act.take(value.size)
            constants.append(np.pad(np.asarray(value, np.float32).reshape(-1), (0, -value.size % 4)))
    constants_at = block[1]

    def param(relative: str) -> int:
        if w.prefix + relative not in at_constant:
            raise KernelPlanError(f"the step graph has no float32 constant {w.prefix + relative}")
        return at_constant[w.prefix + relative]

    k = io["top_k"]["k"]
    if k > 256:
        raise KernelPlanError(f"top-{k}: the sampling kernel takes at most 256 candidates (a lane each)")
    output = act.take(2 * k + 2)
    seen = act.take(-(-vocab // 32))
    h = [act.take(hidden), act.take(hidden)]  # the residual stream, ping-pong (a norm reads one, writes the other)
    d_max = max(dims.values())
    x, q, qn, attn, o, y, z = (act.take(n) for n in (hidden, *[heads * d_max] * 3, hidden, hidden, hidden))
    xq = act.take(hidden // 2)  # x as quantize8 writes it: 4 words for 8 values
    k_raw, v_raw = act.take(max(kvs.values()) * d_max), act.take(max(kvs.values()) * d_max)
    inner_size = max(p[2] for i in range(layers) for p in w.parts(f"layers.{i}.mlp.gate_proj.weight", "part"))
    inner, inner_q = act.take(inner_size), act.take(inner_size // 2)
    gate = act.take(per_layer)
    proj, ple = act.take(layers * per_layer), act.take(layers * per_layer)
    chunks_max = max(_attend_chunks(slots[kind], kvs[kind]) for kind in slots)
    parts, stats = act.take(heads * chunks_max * d_max), act.take(heads * chunks_max * 2)
    logits = act.take(vocab)
    rows: dict[str, int] = {}
    for c in io["cache"]:
        rows[c["present_key"]] = act.take(c["num_key_value_heads"] * c["head_dim"])
        rows[c["present_value"]] = act.take(c["num_key_value_heads"] * c["head_dim"])

    plan: list[Dispatch] = []
    sg = {"SG": int(subgroups)}  # the reductions over a workgroup by subgroup operations (wgsl.mjs reduction)
    norm_per = {"PER": -(-hidden // 256)} | sg  # the norm's values a lane holds

    def constants_of(k_in: int, rows_: int, quantized: bool, epi: int = EPI_STORE, merged: bool = False) -> dict:
        """A matvec's (matvec_constants): a merging one takes the fewest lanes a row (fewest workgroups repeating the
        merge)."""
        if quantized:
            words = Q8_WORDS // (2 if epi == EPI_GELU_MUL else 1)
            return matvec_constants(k_in, rows_, lanes, subgroups, Q8_GROUPS, words) | {"Q8": 1}
        return matvec_constants(k_in, rows_, lanes, subgroups, groups=0 if merged else MATVEC_GROUPS)

    def matvec(label: str, sources, k_in: int, outs: list[int], *, norm: dict | None = None, in_off: int = 0,
               epi: int = EPI_STORE, aux: int = 0, cap_: float = 0.0, residual: dict | None = None,
               merged: tuple[dict, dict] | None = None, quantized: bool = False, q_out: bool = False) -> None:
        """sources: [(qweight, scales, rows, input size)], at most 3 (the rest in further dispatches). norm: a norm
        dispatch's fields before it (the NORM kernel), whose x is the input. residual: the input is h' = res +
        rms_norm(branch) * w_branch, computed inside the matvec (wgsl.mjs MATVEC's RESIDUAL), written to h_out.
        merged: (the attention merge's fields, its sizes): the input is the attention's output, merged from its
        chunks inside the matvec (MATVEC's MERGE), by as few workgroups as the lanes allow (each repeats it).
        quantized: the input is quantize8's (MATVEC's Q8; the norm's xq). q_out: the gate·up product written as
        quantize8 writes it (QOUT)."""
        if norm is not None:
            plan.append(Dispatch("norm", ["act"], _uniform("norm", hidden=hidden, eps=eps, out=NONE if quantized else x,
                                                           xq=xq if quantized else NONE, **(
                {"branch": NONE, "scalar": NONE, "w_in": NONE} | norm)), (1, 1, 1), norm_per, "norm"))
            in_off = xq if quantized else x
        for first in range(0, len(sources), 3):
            group, group_outs = sources[first:first + 3], outs[first:first + 3]
            if any(s[3] != k_in for s in group):
                raise KernelPlanError(f"{group[0][0]}: input size {group[0][3]}, the plan gives {k_in}")
            n = [s[2] for s in group] + [0] * (3 - len(group))
            o = group_outs + [0] * (3 - len(group))
            binding = ["act"] + [f"w:{name}" for s in group for name in s[:2]] + ["none", "none"] * (3 - len(group))
            rows_ = n[0] if epi == EPI_GELU_MUL else sum(n)
            constants = constants_of(k_in, rows_, quantized, epi, merged is not None)
            constants |= ({"RESIDUAL": k_in} if residual else {}) | ({"MERGE": merged[1]} if merged else {})
            constants |= {"QOUT": 1} if q_out else {}
            plan.append(Dispatch("matvec", binding, _uniform(
                "matvec", k=k_in, in_off=in_off, n0=n[0], n1=n[1], n2=n[2], out0=o[0], out1=o[1], out2=o[2], epi=epi,
                aux=aux, cap=cap_, **(residual or {}), **(merged[0] if merged else {})),
                _grid(-(-rows_ * constants["LANES"] // 256)), constants, label))

    def offsets(sources, at: int) -> list[int]:
        """Output offsets of stacked parts of one linear starting at `at`."""
        out = []
        for s in sources:
            out.append(at)
            at += s[2]
        return out

    table = _gather(plan, manifest.table, inputs, names, table_buffer_bytes)
    # embedding (tied table, column chunks) and the per-layer inputs
    chunks = sorted(((n, wt) for n, wt in w.by_name.items() if n.startswith(w.prefix + "embed_tokens.weight")
                     and n.endswith(".qweight")), key=lambda item: _chunk_index(item[0]))
    col = 0
    embed = []
    for name, wt in chunks:
        nb = wt.dims[1]
        plan.append(Dispatch("embed", ["act", "w:" + name, "w:" + name.removesuffix(".qweight") + ".scales"],
                             _uniform("embed", token=inputs[names["input_ids"]], nb=nb, out=h[0] + col,
                                      scale=hidden ** 0.5), _grid(-(-nb * 32 // 256))))
        embed.append((name, name.removesuffix(".qweight") + ".scales", wt.dims[0], nb * 32, col))
        col += nb * 32
    if col != hidden:
        raise KernelPlanError(f"the embedding chunks cover {col} of {hidden} columns")
    src = w.parts("per_layer_model_projection.weight", "part")
    matvec("per_layer_proj", src, hidden, offsets(src, proj), in_off=h[0])
    plan.append(Dispatch("per_layer", ["act"], _uniform(
        "per_layer", proj=proj, dim=per_layer, w=param("per_layer_projection_norm.weight"),
        rows=inputs[names["per_layer_rows"]], scales=inputs[names["per_layer_scales"]], out=ple, eps=eps,
        proj_scale=hidden ** -0.5), (layers, 1, 1), sg))

    cur = 0  # which h holds the residual stream
    finish = {}  # the previous layer's per-layer residual, applied by the next layer's first norm
    source_cache = {c["layer"]: c for c in io["cache"]}
    for i in range(layers):
        kind, d, kv = types[i], dims[types[i]], kvs[types[i]]
        pre = f"layers.{i}."
        src_layer = arch["kv_source"][i]
        own = src_layer == i
        cache = source_cache[src_layer]
        sources = w.parts(pre + "self_attn.q_proj.weight", "part")
        outs = offsets(sources, q)
        if own:
            ks, vs = w.parts(pre + "self_attn.k_proj.weight", "part"), w.parts(pre + "self_attn.v_proj.weight", "part")
            sources, outs = sources + ks + vs, outs + offsets(ks, k_raw) + offsets(vs, v_raw)
        matvec("qkv", sources, hidden, outs, quantized=q8, norm=finish | {
            "res": h[cur], "h_out": h[1 - cur], "w_in": param(pre + "input_layernorm.weight")})
        cur = 1 - cur
        # a KV-shared layer binds its source's caches too, but has no key and value workgroups to write rows
        # (writable bindings may not alias); a row of the grid past the query heads has them
        view = {"heads": heads, "kv": kv, "used": inputs["used." + masks[kind]]}
        chunks = _attend_chunks(slots[kind], kv if own else 0)
        plan.append(Dispatch("attend", ["act", "cache:" + cache["past_key"], "cache:" + cache["past_value"]], _uniform(
            "attend", **view, q=q, qn=qn, wq=param(pre + "self_attn.q_norm.weight"), k_src=k_raw,
            k_dst=rows[cache["present_key"]], wk=param(pre + "self_attn.k_norm.weight") if own else NONE, v_src=v_raw,
            v_dst=rows[cache["present_value"]], cos=inputs[io["rope"][kind]["cos"]], sin=inputs[io["rope"][kind]["sin"]],
            eps=eps, slots=slots[kind], slot=inputs["slot." + masks[kind]], live=inputs["live"], mask=inputs[masks[kind]],
            parts=parts, stats=stats), (chunks, heads + int(own), 1), {"D": d} | sg))
        fields = dict(q=qn, kv=kv, used=view["used"], parts=parts, stats=stats, knew=rows[cache["present_key"]],
                      vnew=rows[cache["present_value"]])
        src = w.parts(pre + "self_attn.o_proj.weight", "part")
        if merge and _merged_in_o_proj(heads, d, chunks):
            matvec("merge_o_proj", src, heads * d, offsets(src, o), merged=(fields, {"H": heads, "D": d, "C": chunks}))
        else:
            cols = min(d // 4, MERGE_COLUMNS)
            plan.append(Dispatch("attend_merge", ["act"], _uniform(
                "attend_merge", heads=heads, chunks=chunks, out=attn, **fields), (heads, d // 4 // cols, 1),
                {"D": d, "COLS": cols} | sg))
            matvec("o_proj", src, heads * d, offsets(src, o), in_off=attn)
        gate_up = w.parts(pre + "mlp.gate_proj.weight", "part") + w.parts(pre + "mlp.up_proj.weight", "part")
        if len(gate_up) != 2:
            raise KernelPlanError(f"layer {i}: the MLP's gate and up weights are split in parts")
        # down reads gate·up's product quantized where each of its workgroups holds whole groups of 8 rows
        q_out = q8 and (256 // constants_of(hidden, gate_up[0][2], True, EPI_GELU_MUL)["LANES"]) % 8 == 0
        matvec("gate_up", gate_up, hidden, [inner_q if q_out else inner, 0], epi=EPI_GELU_MUL, quantized=q8,
               q_out=q_out, norm={"res": h[cur], "h_out": h[1 - cur], "branch": o,
                                  "w_branch": param(pre + "post_attention_layernorm.weight"),
                                  "w_in": param(pre + "pre_feedforward_layernorm.weight")})
        cur = 1 - cur
        src = w.parts(pre + "mlp.down_proj.weight", "part")
        matvec("down", src, gate_up[0][2], offsets(src, y), in_off=inner_q if q_out else inner, quantized=q_out)
        src = w.parts(pre + "per_layer_input_gate.weight", "part")
        if len(src) != 1:
            raise KernelPlanError(f"layer {i}: the per-layer gate is split in parts")
        matvec("ple_gate", src, hidden, [gate], epi=EPI_GELU_AUX, aux=ple + i * per_layer, residual={
            "res": h[cur], "h_out": h[1 - cur], "branch": y, "w_branch": param(pre + "post_feedforward_layernorm.weight"),
            "eps": eps})
        cur = 1 - cur
        src = w.parts(pre + "per_layer_projection.weight", "part")
        matvec("ple_proj", src, per_layer, offsets(src, z), in_off=gate)
        finish = {"branch": z, "w_branch": param(pre + "post_per_layer_input_norm.weight"),
                  "scalar": param(pre + "layer_scalar")}

    final = finish | {"res": h[cur], "h_out": h[1 - cur], "w_in": param("norm.weight")}
    for c, (qw, sw, n, width, col) in enumerate(embed):  # the final norm before the first column chunk
        matvec("lm_head", [(qw, sw, n, width)], width, [logits], norm=None if c else final,
               in_off=xq + col // 2 if q8 else x + col, quantized=q8, epi=EPI_ADD if c else EPI_STORE,
               cap_=cap if c == len(embed) - 1 else 0.0)
    _top_k(plan, act, logits, vocab, k, output)
    plan.append(Dispatch("sample", ["act"], _uniform(
        "sample", out=output, k=k, token=inputs[names["input_ids"]], live=inputs["live"], seen=seen,
        params=inputs["sample"], stops=inputs["stops"]), (1, 1, 1)))
    row_feeds = (names["per_layer_rows"], names["per_layer_scales"])
    row = (inputs[row_feeds[0]], inputs[row_feeds[1]], manifest.table["data_bytes"],
           manifest.table["scales_dtype"] == "float16")
    return KernelPlan(act.size, (constants_at, np.concatenate(constants).tobytes()),
                      {name: 4 * math.prod(dims_) for name, dims_ in caches.items()}, plan, inputs, block,
                      (output, 2 * k + 2), rows, k, row, row_feeds, tail, (seen, -(-vocab // 32)), table)


def _gather(plan: list[Dispatch], table: dict, inputs: dict, names: dict, buffer_bytes: int) -> tuple[int, int]:
    """The dispatches that copy the token's per-layer row from the table on the GPU (kernel_step.mjs uploadTable:
    buffers of `per` rows, bound as "table:<i>") into the step's inputs, scales widened to float32; run only once
    the table is there (a step otherwise gets the row in its block). Returns (per, buffers)."""
    row_bytes, data_bytes = table["row_bytes"], table["data_bytes"]
    if row_bytes % 4 or data_bytes % 4:
        raise KernelPlanError(f"per-layer rows of {row_bytes} bytes ({data_bytes} of data): not whole 32-bit words")
    per = min(buffer_bytes // row_bytes, table["rows"])
    buffers = -(-table["rows"] // per)
    f16 = table["scales_dtype"] == "float16"
    scales = (row_bytes - data_bytes) // (2 if f16 else 4)
    for first in range(0, buffers, TABLE_BINDINGS):
        bound = [f"table:{i}" for i in range(first, min(first + TABLE_BINDINGS, buffers))]
        plan.append(Dispatch("gather", ["act", *bound] + ["none"] * (TABLE_BINDINGS - len(bound)), _uniform(
            "gather", token=inputs[names["input_ids"]], per=per, first=first, row_words=row_bytes // 4,
            data_words=data_bytes // 4, scales=scales, rows=inputs[names["per_layer_rows"]],
            out_scales=inputs[names["per_layer_scales"]], f16=int(f16)), (1, 1, 1), {"BUFFERS": TABLE_BINDINGS},
            label="gather"))
    return per, buffers


def matvec_constants(k: int, rows: int, lanes: int | None = None, subgroups: bool = False,
                     groups: int = MATVEC_GROUPS, most: int = MATVEC_WORDS) -> dict:
    """What the matvec kernel (wgsl.mjs MATVEC) over `rows` rows of `k` int4 weights is specialized for: LANES a
    row (by default by size: `most` words a lane at most, at least `groups` workgroups where it can), PER words a
    lane, SG: subgroup sums."""
    lanes = lanes or _lanes(k // 8, rows, groups, most)
    return {"LANES": lanes, "PER": -(-k // 8 // lanes), "SG": int(subgroups)}


def _lanes(words: int, rows: int, groups: int, most: int) -> int:
    """Lanes per row of a matvec over rows of `words` weight words: enough that each reads at most `most`, then
    more while workgroups are fewer than `groups` and lanes read more than one word (a row's loads then go out in
    parallel)."""
    lanes = next((n for n in LANES if -(-words // n) <= most), LANES[-1])
    while lanes < LANES[-1] and words > lanes and -(-rows * lanes // 256) < groups:
        lanes *= 2
    return lanes


def _merged_in_o_proj(heads: int, d: int, chunks: int) -> bool:
    """Whether o_proj's workgroups merge the attention's chunks themselves (wgsl.mjs MATVEC's MERGE: the heads share
    the workgroup's 256 lanes evenly), with few loads."""
    return 256 % heads == 0 and -(-heads * d // 1024) * chunks <= MERGE_LOADS


def _attend_chunks(slots: int, kv: int) -> int:
    """The attention's grid width: its chunks of the cache, and at least one workgroup for each of `kv` new key and
    value heads (0: a KV-shared layer)."""
    return max(-(-slots // ATTEND_CHUNK), 2 * kv)


def _chunk_index(name: str) -> int:
    part = name.removesuffix(".qweight").rsplit(".", 1)[-1]
    return int(part.removeprefix("chunk")) if part.startswith("chunk") else 0


def _top_k(plan: list[Dispatch], act: _Words, vals: int, n: int, k: int, output: int) -> None:
    """Top-k in stages: rows of TOP_K_ROW keep their best k until one row is left (as exporter/graph/top_k.py)."""
    ids = NONE
    while True:
        groups = -(-n // TOP_K_ROW)
        last = groups == 1
        out = output if last else act.take(2 * groups * k)
        out_ids = output + k if last else out + groups * k
        size = 1 << (min(TOP_K_ROW, n) - 1).bit_length()  # the row's candidates, to a power of two
        plan.append(Dispatch("top_k", ["act"], _uniform(
            "top_k", vals=vals, ids=ids, n=n, row=TOP_K_ROW, k=k, out_vals=out, out_ids=out_ids), _grid(groups),
            {"SIZE": max(size, k)}))
        if last:
            return
        vals, ids, n = out, out_ids, groups * k
