"""The hand-written decode step's plan (webgemma.kernel_plan) on real tiny exports: the uniforms it packs are the
WGSL kernels' structs field by field, every weight and constant it names is the step graph's, its regions of the
activation buffer do not overlap, and the per-step block holds the feeds where the kernels read them. Whether the
kernels compute the model is the page test's (`webgpu-capture`: the CLI's tokens in Chromium)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.support.checkpoints import make_checkpoint
from webgemma.kernel_plan import MAX_SLOTS, UNIFORMS, KernelPlanError, kernel_plan
from webgemma.manifest import parse_manifest
from webgemma.onnx_bytes import float_initializers, weights_as_inputs
from webgemma_export.export import export

WGSL = Path(__file__).parents[2] / "web" / "page" / "wgsl.mjs"
KERNEL_CONSTS = {"matvec": "MATVEC", "norm": "NORM", "embed": "EMBED", "per_layer": "PER_LAYER",
                 "attend": "ATTEND", "attend_merge": "ATTEND_MERGE", "top_k": "TOP_K", "sample": "SAMPLE",
                 "gather": "GATHER"}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("kernel-plan")
    out = {}
    for kind in ("e2b", "e4b"):
        checkpoint = make_checkpoint(base / f"checkpoint-{kind}", kind=kind)
        out[kind] = export(checkpoint, base / kind, quant="int4", log=lambda _: None)
    out["fp32"] = export(make_checkpoint(base / "checkpoint-fp32"), base / "fp32", quant="fp32", log=lambda _: None)
    return out


def plan_of(folder: Path, context: int = 64, **options):
    manifest = parse_manifest((folder / "manifest.json").read_text())
    step = (folder / manifest.decoder["step_graph"]["path"]).read_bytes()
    _, weights = weights_as_inputs(step)
    return manifest, weights, kernel_plan(manifest, weights, float_initializers(step), context, **options)


def test_uniforms_are_the_wgsl_structs_field_by_field():
    source = WGSL.read_text()
    for kernel, const in KERNEL_CONSTS.items():
        body = re.search(rf"const {const} = (?:\(\{{[^}}]*\}}\) => )?/\* wgsl \*/ `(.*?)\n`;", source, re.S)[1]
        struct = re.search(r"struct U \{(.*?)\}", body, re.S)[1]
        fields = [f.split(":")[0].strip() for f in struct.split(",") if f.strip()]
        assert fields == UNIFORMS[kernel], kernel
        assert re.search(rf"\b{kernel}: (\(\) => )?{const}\b", source), kernel


@pytest.mark.parametrize("kind", ["e2b", "e4b"])
def test_the_plan_names_the_step_graphs_weights_and_ten_dispatches_a_layer(exports, kind):
    manifest, weights, plan = plan_of(exports[kind], merge=False)
    names = {w.name for w in weights}
    used = {b[2:] for d in plan.dispatches for b in d.bindings if b.startswith("w:")}
    assert used == names  # every weight read, none invented
    layers = manifest.arch["num_hidden_layers"]
    labels = [d.label or d.kernel for d in plan.dispatches]
    first = labels.index("qkv") - 1
    layer = ["norm", "qkv", "attend", "attend_merge", "o_proj", "norm", "gate_up", "down", "ple_gate", "ple_proj"]
    assert labels[first:first + 10 * layers] == layer * layers
    # the per-layer gate computes the residual after the MLP itself, from the MLP's output
    gates = [d for d in plan.dispatches if d.label == "ple_gate"]
    assert {d.constants.get("RESIDUAL") for d in gates} == {manifest.arch["hidden_size"]}
    assert all(d.constants.get("RESIDUAL") is None for d in plan.dispatches if d.kernel == "matvec" and d.label != "ple_gate")
    assert labels[first + 10 * layers:] == ["norm", *["lm_head"] * labels.count("lm_head"), *["top_k"] * labels.count("top_k"),
                                            "sample"]
    assert labels[:labels.count("gather")] == ["gather"]  # the tiny table fits one buffer
    caches = {b[6:] for d in plan.dispatches for b in d.bindings if b.startswith("cache:")}
    assert caches == set(plan.caches)
    # the attention's row of key and value workgroups past the query heads writes every cache's rows
    heads = manifest.arch["num_attention_heads"]
    written = {b[6:] for d in plan.dispatches if d.kernel == "attend" and d.grid[1] > heads for b in d.bindings[1:]}
    assert written == set(plan.caches)
    for d in plan.dispatches:
        assert len(d.uniform) == 4 * len(UNIFORMS[d.kernel]) and all(g >= 1 for g in d.grid)


def test_regions_of_the_activation_buffer_do_not_overlap(exports):
    manifest, _, plan = plan_of(exports["e2b"])
    starts = list(plan.inputs.values()) + list(plan.rows.values())
    assert len(set(starts)) == len(starts)
    block_start, block_words = plan.block
    assert all(block_start <= at < block_start + block_words for at in plan.inputs.values())
    assert plan.constants[0] >= block_start + block_words and plan.output[0] + plan.output[1] <= plan.act_words
    assert all(at + 1 <= plan.act_words for at in plan.rows.values())


def test_the_step_block_holds_each_feed_where_the_kernels_read_it(exports):
    manifest, _, plan = plan_of(exports["e2b"])
    io = manifest.decoder
    rng = np.random.default_rng(0)
    feeds = {io["inputs"]["input_ids"]: np.array([[1234]], np.int64)}
    width = manifest.arch["num_hidden_layers"] * manifest.arch["hidden_size_per_layer_input"]
    feeds[io["inputs"]["per_layer_rows"]] = rng.integers(0, 256, (1, width // 2), dtype=np.uint8)
    feeds[io["inputs"]["per_layer_scales"]] = rng.random((1, width // 32), dtype=np.float32)
    for kind, names in io["rope"].items():
        half = manifest.arch["head_dim"][kind] // 2
        feeds[names["cos"]], feeds[names["sin"]] = rng.random((2, 1, half), dtype=np.float32)
    masks = io["step_graph"]["masks"]
    full = np.full((1, 64), -1e9, np.float32)
    full[0, :5] = 0
    ring = np.full((1, manifest.arch["sliding_window"]), -1e9, np.float32)
    ring[0, [0, 2, 3]] = 0  # slot 1 left the window
    feeds[masks["full_attention"]], feeds[masks["sliding_attention"]] = full, ring
    words = np.frombuffer(plan.pack(feeds), np.uint32)
    at = lambda name: plan.inputs[name] - plan.block[0]  # noqa: E731
    assert words[at(io["inputs"]["input_ids"])] == 1234
    rows = feeds[io["inputs"]["per_layer_rows"]].reshape(-1)
    assert words[at(io["inputs"]["per_layer_rows"]):][: rows.size // 4].view(np.uint8).tolist() == rows.tolist()
    for name in [io["inputs"]["per_layer_scales"], *(n for names in io["rope"].values() for n in names.values()), *masks.values()]:
        value = feeds[name].reshape(-1)
        assert np.array_equal(words[at(name):at(name) + value.size].view(np.float32), value), name
    assert words[at("used." + masks["full_attention"])] == 5  # slots 0..4 hold the earlier positions
    assert words[at("used." + masks["sliding_attention"])] == 4  # up to the last visible slot
    assert words[at("slot." + masks["full_attention"])] == 5  # the token's rows go to the next slot
    assert words[at("slot." + masks["sliding_attention"])] == 1  # ... or to the ring's slot leaving the window
    assert words[at("live")] == 1 and words[at("stops")] == 0  # no stop ids: sampling never clears live
    assert not words[at("sample"):at("sample") + 6].any()  # no sampling settings: greedy
    sample = np.array([0.25, 0.7, 40, 0.9, 0.05, 1.3], np.float32)
    words = np.frombuffer(plan.pack(feeds | {"sample": sample, "stops": np.array([1, 106])}), np.uint32)
    assert words[at("sample"):at("sample") + 6].view(np.float32).tolist() == sample.tolist()
    assert words[at("stops"):at("stops") + 3].tolist() == [2, 1, 106]
    # a chained step is given the block from `tail` on: everything but the token, live and the per-layer row
    assert at("live") < plan.tail and at(io["inputs"]["per_layer_scales"]) < plan.tail
    assert min(at(n) for n in plan.inputs if n not in ("live", *plan.row_feeds, io["inputs"]["input_ids"])) == plan.tail


def test_the_output_words_are_values_then_ids():
    from webgemma.kernel_plan import KernelPlan
    plan = KernelPlan(0, (0, b""), {}, [], {}, (0, 0), (0, 6), {}, k=2)
    data = np.array([1.5, -2.0], np.float32).tobytes() + np.array([7, 262143, 262143, 0], np.uint32).tobytes()
    values, ids = plan.read(data)
    assert values.tolist() == [1.5, -2.0] and ids.tolist() == [7, 262143] and ids.dtype == np.int64
    assert plan.sampled(data) == (262143, False)


def test_exports_the_kernels_do_not_read_are_refused_with_the_reason(exports):
    with pytest.raises(KernelPlanError, match="int4 weights in blocks of 32; this export is fp32"):
        plan_of(exports["fp32"])
    with pytest.raises(ValueError, match="lanes must be one of"):
        plan_of(exports["e2b"], lanes=12)
    with pytest.raises(KernelPlanError, match="context 65600: beyond what the kernels hold"):
        plan_of(exports["e2b"], context=MAX_SLOTS + 64)


def matvecs(plan):
    """[(dispatch, rows, input size)] of the plan's matvecs."""
    out = []
    for d in plan.dispatches:
        if d.kernel == "matvec":
            u = np.frombuffer(d.uniform, np.uint32)
            n = u[UNIFORMS["matvec"].index("n0"):][:3]
            rows = int(n[0] if u[UNIFORMS["matvec"].index("epi")] == 1 else n.sum())
            out.append((d, rows, int(u[UNIFORMS["matvec"].index("k")])))
    return out


def test_o_proj_merges_the_attention_chunks_itself_where_they_are_few(exports):
    """Where a layer's attention has few chunks of the cache, o_proj's workgroups merge them (one dispatch fewer),
    over the fields the merge's own dispatch reads, with the fewest lanes a row (each workgroup repeats the merge);
    a global layer over a long context keeps the merge's dispatch."""
    from webgemma.kernel_plan import ATTEND_CHUNK, MERGE_COLUMNS, MERGE_LOADS
    manifest, _, separate = plan_of(exports["e2b"], context=4096, merge=False)
    _, _, plan = plan_of(exports["e2b"], context=4096)
    arch = manifest.arch
    heads, layers = arch["num_attention_heads"], arch["num_hidden_layers"]
    merges = [d for d in separate.dispatches if d.kernel == "attend_merge"]
    assert len(merges) == layers
    merging = [d for d in plan.dispatches if "MERGE" in d.constants or d.kernel == "attend_merge"]  # a layer each
    merged = [(d, a) for d, a in zip(merging, merges) if d.kernel == "matvec"]
    global_layers = arch["layer_types"].count("full_attention")
    assert (len(merging), len(merged)) == (layers, layers - global_layers)  # 4,096 slots: 64 chunks in a global one
    assert len(plan.dispatches) == len(separate.dispatches) - len(merged)
    for d, a in merged:
        m = dict(zip(UNIFORMS["matvec"], np.frombuffer(d.uniform, np.uint32).tolist()))
        a = dict(zip(UNIFORMS["attend_merge"], np.frombuffer(a.uniform, np.uint32).tolist()))
        fields = ("q", "kv", "used", "parts", "stats", "knew", "vnew")
        assert {f: m[f] for f in fields} == {f: a[f] for f in fields}
        assert d.constants["MERGE"] == {"H": heads, "D": m["k"] // heads, "C": a["chunks"]}
        assert d.constants["PER"] * 2 > 8 or d.constants["LANES"] == 8  # half the lanes would read too many words
        assert -(-m["k"] // 1024) * a["chunks"] <= MERGE_LOADS
    for d in [d for d in merging if d.kernel == "attend_merge"]:  # the global layers': blocks of a head's columns
        size = d.constants["D"] // 4
        assert d.grid == (heads, size // min(size, MERGE_COLUMNS), 1) and d.constants["COLS"] == min(size, MERGE_COLUMNS)
    # over a short context every layer's attention has few chunks
    _, _, short = plan_of(exports["e2b"], context=4 * ATTEND_CHUNK)
    assert not [d for d in short.dispatches if d.kernel == "attend_merge"]


def test_matvecs_after_a_norm_read_its_x_quantized_and_down_reads_gate_up_s_product_so(exports):
    """By default each norm writes its x only as quantize8 does, and the matvecs that read it (q, k and v; gate and
    up; the lm_head's column chunks, each from its own columns) are Q8 there; gate·up writes its product so where
    each of its workgroups holds whole groups of 8 rows, and down then reads it. q8=False: float32 throughout."""
    from webgemma.kernel_plan import NONE
    _, _, plan = plan_of(exports["e2b"])
    _, _, plain = plan_of(exports["e2b"], q8=False)

    def field(d, name):
        return int(np.frombuffer(d.uniform, np.uint32)[UNIFORMS[d.kernel].index(name)])

    norms = [d for d in plan.dispatches if d.kernel == "norm"]
    assert {field(d, "out") for d in norms} == {NONE} and len({field(d, "xq") for d in norms}) == 1
    xq = field(norms[0], "xq")
    quantized = [d for d in plan.dispatches if d.constants.get("Q8")]
    lm_head = [d for d in quantized if d.label == "lm_head"]
    assert {d.label for d in quantized} == {"qkv", "gate_up", "down", "lm_head"}
    assert [field(d, "in_off") for d in quantized if d.label != "down"] == (
        [xq] * (len(quantized) - len(lm_head) - sum(d.label == "down" for d in quantized))
        + [xq + sum(field(e, "k") for e in lm_head[:i]) // 2 for i in range(len(lm_head))])
    labels = [d.label for d in plan.dispatches]
    ups = [i for i, label in enumerate(labels) if label == "gate_up"]
    assert ups
    for i in ups:
        up, down = plan.dispatches[i], plan.dispatches[i + 1]
        whole = (256 // up.constants["LANES"]) % 8 == 0
        assert bool(up.constants.get("QOUT")) == bool(down.constants.get("Q8")) == whole
        if whole:
            assert field(up, "out0") == field(down, "in_off")
    assert any(plan.dispatches[i].constants.get("QOUT") for i in ups)  # the tiny E2B's gate·up: 8 lanes a row
    assert not [d for d in plain.dispatches if d.constants.get("Q8") or d.constants.get("QOUT")]
    assert {field(d, "xq") for d in plain.dispatches if d.kernel == "norm"} == {NONE}
    assert NONE not in {field(d, "out") for d in plain.dispatches if d.kernel == "norm"}


@pytest.mark.parametrize("lanes", [8, 64, 256])
def test_lanes_set_the_rows_per_workgroup_and_the_words_a_lane_reads(exports, lanes):
    _, _, plan = plan_of(exports["e2b"], lanes=lanes)
    for d, rows, k in matvecs(plan):
        assert d.constants["LANES"] == lanes and d.constants["PER"] == -(-k // 8 // lanes)
        assert d.grid[0] * d.grid[1] == -(-rows * lanes // 256)


@pytest.mark.parametrize("subgroups", [False, True])
def test_the_kernels_add_by_subgroups_where_the_device_allows(exports, subgroups):
    _, _, plan = plan_of(exports["e2b"], context=4096, subgroups=subgroups)  # global layers keep the merge
    assert plan.subgroups == subgroups
    assert {d.constants["SG"] for d, _, _ in matvecs(plan)} == {int(subgroups)}
    reducing = [d for d in plan.dispatches if d.kernel in ("norm", "per_layer", "attend", "attend_merge")]
    assert {d.kernel for d in reducing} == {"norm", "per_layer", "attend", "attend_merge"}
    assert {d.constants["SG"] for d in reducing} == {int(subgroups)}


@pytest.mark.parametrize("rule", ["float32", "q8"])
def test_lanes_chosen_by_size_read_a_few_words_each_and_spread_small_matvecs(rule):
    from webgemma.kernel_plan import MATVEC_GROUPS, MATVEC_WORDS, Q8_GROUPS, Q8_WORDS, _lanes
    most, groups = (MATVEC_WORDS, MATVEC_GROUPS) if rule == "float32" else (Q8_WORDS, Q8_GROUPS)
    for k, rows in [(1536, 2560), (1536, 12288), (2048, 1536), (12288, 1536), (256, 1536), (1536, 262144), (96, 64)]:
        lanes = _lanes(k // 8, rows, groups, most)
        words = -(-k // 8 // lanes)
        assert words <= most, (k, rows)
        # few workgroups only where no more lanes can help: every lane already reads one word, or 256 lanes a row
        assert -(-rows * lanes // 256) >= groups or words == 1 or lanes == 256, (k, rows)
        assert words > 1 or lanes == 8 or k // 8 > lanes // 2, (k, rows)  # not twice the lanes a row needs


def test_the_table_is_cut_into_buffers_the_device_can_bind(exports):
    manifest = parse_manifest((exports["e2b"] / "manifest.json").read_text())
    table = manifest.table
    per = -(-table["rows"] // 9)
    _, _, plan = plan_of(exports["e2b"], table_buffer_bytes=per * table["row_bytes"] + 3)
    assert plan.table == (per, 9)
    gathers = [d for d in plan.dispatches if d.kernel == "gather"]
    assert [np.frombuffer(d.uniform, np.uint32)[UNIFORMS["gather"].index("first")] for d in gathers] == [0, 4, 8]
    bound = [b for d in gathers for b in d.bindings[1:] if b != "none"]
    assert bound == [f"table:{i}" for i in range(9)]


def test_top_k_stages_sort_rows_no_larger_than_their_candidates(exports):
    from webgemma.kernel_plan import TOP_K_ROW
    manifest, _, plan = plan_of(exports["e2b"])
    n, k = manifest.arch["vocab_size"], plan.k
    stages = [d for d in plan.dispatches if d.kernel == "top_k"]
    for d in stages:
        u = dict(zip(UNIFORMS["top_k"], np.frombuffer(d.uniform, np.uint32)))
        assert u["n"] == n and d.grid[0] * d.grid[1] == -(-n // TOP_K_ROW)
        assert d.constants["SIZE"] == max(k, 1 << (min(TOP_K_ROW, n) - 1).bit_length())
        n = -(-n // TOP_K_ROW) * k
    assert n == k * 1 and stages[-1].grid == (1, 1, 1)
