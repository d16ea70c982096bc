"""Cost of single decode-step kernels at Gemma 4 E2B shapes, through native Dawn (onnxruntime-ep-webgpu); the same
graphs run in Chromium with graph capture through bench/browser_kernel_bench.py.

For each kernel, a graph with R independent copies of the node on the same inputs is run; the time per run
(BATCH runs, then one output read back: the WebGPU EP's run returns once its work is submitted, reading waits for
the GPU) for R = 1 and R = 33 gives the cost of one more node: (t33 - t1) / 32. Natively that is the kernel's GPU
time plus onnxruntime's CPU cost per node (graph capture refuses values bound from Python).

    python bench/kernel_bench.py [--runs 10] [--only NAME...] [--ep-option KEY=VALUE...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

H, FF, VOCAB, HEADS = 1536, 6144, 262144, 8
F32, I32, I64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64
BATCH = 10  # runs per measurement, then one read-back (the same for R = 1 and 33: it cancels in the difference)


def matmul_nbits(k: int, n: int, copies: int, block: int = 32, accuracy_level: int = 0, rows: int = 1):
    """`rows` tokens at once: 1 in a decode step, the chunk's length in a prefill."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.integers(0, 255, (n, k // block, block // 2), dtype=np.uint8), "w"),
             numpy_helper.from_array(rng.random((n * k // block,), dtype=np.float32) * 0.01, "s")]
    nodes = [helper.make_node("MatMulNBits", ["x", "w", "s"], [f"y{i}"], domain="com.microsoft", K=k, N=n, bits=4,
                              block_size=block, accuracy_level=accuracy_level) for i in range(copies)]
    return nodes, inits, {"x": (F32, [1, rows, k])}, {f"y{i}": (F32, [1, rows, n]) for i in range(copies)}


def top_k(copies: int):
    nodes = [helper.make_node("TopK", ["x", "k"], [f"v{i}", f"i{i}"], axis=-1, largest=1, sorted=1) for i in range(copies)]
    outs = {f"v{i}": (F32, [1, 64]) for i in range(copies)} | {f"i{i}": (I64, [1, 64]) for i in range(copies)}
    return nodes, [numpy_helper.from_array(np.array([64], np.int64), "k")], {"x": (F32, [1, VOCAB])}, outs


def top_k_staged(copies: int):
    """The exporter's top 64 (webgemma_export.graph.top_k: rows of 2,048, then the rows' winners)."""
    from webgemma_export.graph.builder import GraphBuilder
    from webgemma_export.graph.top_k import top_k as staged

    g, outs = GraphBuilder("bench"), {}
    for i in range(copies):
        with g.scope(f"copy{i}"):
            values, ids = staged(g, "x", VOCAB, 64)
        outs[values], outs[ids] = (F32, [1, 64]), (I64, [1, 64])
    return g.nodes, g.constants, {"x": (F32, [1, VOCAB])}, outs


def arg_max(copies: int):
    nodes = [helper.make_node("ArgMax", ["x"], [f"i{i}"], axis=-1, keepdims=1) for i in range(copies)]
    return nodes, [], {"x": (F32, [1, VOCAB])}, {f"i{i}": (I64, [1, 1]) for i in range(copies)}


def gqa(head: int, past: int, copies: int, rows: int = 1, window: int = -1):
    """Attention of `rows` new positions after `past` cached ones. One row (decode): the cache is one buffer written
    in place (as in the step graph). More (a prefill chunk, as in the prefill graph): the present is past + rows."""
    cache = [1, 1, past + 64 if rows == 1 else past, head]
    ins = {"q": (F32, [1, rows, HEADS * head]), "k": (F32, [1, rows, head]), "v": (F32, [1, rows, head]),
           "pk": (F32, cache), "pv": (F32, cache), "sl": (I32, [1]), "tl": (I32, [])}
    nodes, outs = [], {}
    for i in range(copies):
        nodes.append(helper.make_node("GroupQueryAttention", ["q", "k", "v", "pk", "pv", "sl", "tl"],
                                      [f"y{i}", f"pk{i}", f"pv{i}"], domain="com.microsoft", num_heads=HEADS,
                                      kv_num_heads=1, scale=1.0, local_window_size=window))
        outs[f"y{i}"] = (F32, [1, rows, HEADS * head])
        for name in ("pk", "pv"):
            outs[f"{name}{i}"] = (name, cache) if rows == 1 else (F32, [1, 1, past + rows, head])  # decode: in place
    return nodes, [], ins, outs


def model_bytes(build) -> bytes:
    nodes, inits, ins, outs = build
    declared = {n: (v if isinstance(v[0], int) else (F32, v[1])) for n, v in outs.items()}
    graph = helper.make_graph(nodes, "bench", [helper.make_tensor_value_info(n, t, s) for n, (t, s) in ins.items()],
                              [helper.make_tensor_value_info(n, t, s) for n, (t, s) in declared.items()], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model.SerializeToString()


def add(copies: int):
    """The smallest kernel: what one more dispatch costs."""
    nodes = [helper.make_node("Add", ["x", "x"], [f"y{i}"]) for i in range(copies)]
    return nodes, [], {"x": (F32, [1, 1, H])}, {f"y{i}": (F32, [1, 1, H]) for i in range(copies)}


def sequence_values(ins: dict) -> dict[str, int]:
    """seqlens_k and total_sequence_length for the new rows after the cache's `past` positions (see gqa)."""
    rows = ins["q"][1][1]
    total = (ins["pk"][1][2] - 64 if rows == 1 else ins["pk"][1][2]) + rows
    return {"sl": total - 1, "tl": total}


CASES = {
    "Add 1536": add,
    "MatMulNBits int4 1536→6144": lambda r: matmul_nbits(H, FF, r),
    "MatMulNBits int4 6144→1536": lambda r: matmul_nbits(FF, H, r),
    # what the exporter could choose instead: int8 activations (accuracy_level 4: the DP4A kernel), larger blocks
    "MatMulNBits int4 1536→6144, accuracy_level 4": lambda r: matmul_nbits(H, FF, r, accuracy_level=4),
    "MatMulNBits int4 6144→1536, accuracy_level 4": lambda r: matmul_nbits(FF, H, r, accuracy_level=4),
    "MatMulNBits int4 1536→6144, block 128": lambda r: matmul_nbits(H, FF, r, block=128),
    "MatMulNBits int4 1536→6144, block 128, accuracy_level 4": lambda r: matmul_nbits(H, FF, r, block=128, accuracy_level=4),
    "MatMulNBits int4 1536→2048 (q)": lambda r: matmul_nbits(H, 2048, r),
    # the tied lm_head is exported as two MatMulNBits of 131072 rows (a binding holds at most 128 MiB)
    "MatMulNBits int4 1536→131072 (lm_head half)": lambda r: matmul_nbits(H, VOCAB // 2, r),
    # prefill: a 512-token chunk (the page's default), where most of a prompt's time goes
    "MatMulNBits int4 1536→6144, 512 rows": lambda r: matmul_nbits(H, FF, r, rows=512),
    "MatMulNBits int4 6144→1536, 512 rows": lambda r: matmul_nbits(FF, H, r, rows=512),
    "MatMulNBits int4 1536→6144, 512 rows, accuracy_level 4": lambda r: matmul_nbits(H, FF, r, accuracy_level=4, rows=512),
    "TopK 64 of 262144": top_k,
    "TopK 64 of 262144, staged (the exporter's)": top_k_staged,
    "ArgMax of 262144": arg_max,
    "GQA decode head 256, 512 past": lambda r: gqa(256, 512, r),
    "GQA decode head 512, 4096 past": lambda r: gqa(512, 4096, r),
    # prefill attention as the exporter wrote it until the thirteenth session (E2B's sliding and global heads): a
    # 512-row chunk, alone and after a window of cache, and a 2,048-row one (33 copies of larger ones exhaust memory)
    "GQA prefill head 256, 512 rows, window 512": lambda r: gqa(256, 0, r, rows=512, window=512),
    "GQA prefill head 512, 512 rows": lambda r: gqa(512, 0, r, rows=512),
    "GQA prefill head 256, 512 rows after 512, window 512": lambda r: gqa(256, 512, r, rows=512, window=512),
    "GQA prefill head 256, 2048 rows, window 512": lambda r: gqa(256, 0, r, rows=2048, window=512),
}


def timed(build, runs: int, ep_options: dict[str, str]) -> float:
    import onnxruntime as ort

    from webgemma.backends.ort_native import _webgpu_device

    nodes, inits, ins, outs = build
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_provider_for_devices([_webgpu_device(ort)], ep_options)
    session = ort.InferenceSession(model_bytes(build), options)
    binding = session.io_binding()
    types = {F32: np.float32, I32: np.int32, I64: np.int64}
    bound = {}
    for name, (t, shape) in ins.items():
        value = np.ones(shape, types[t])
        if name in ("sl", "tl"):  # the token goes after `past` cached positions
            v = sequence_values(ins)[name]
            value = np.array([v] if name == "sl" else v, np.int32)
        bound[name] = ort.OrtValue.ortvalue_from_numpy(value, "webgpu", 0)
        binding.bind_ortvalue_input(name, bound[name])
    for name, v in outs.items():
        if isinstance(v[0], str):
            binding.bind_ortvalue_output(name, bound[v[0]])
        else:
            binding.bind_output(name, "webgpu")
    session.run_with_iobinding(binding)  # capture wants outputs this session allocated: keep the first run's
    for name, value in zip([o.name for o in session.get_outputs()], binding.get_outputs()):
        if not isinstance(outs[name][0], str):
            binding.bind_ortvalue_output(name, value)
    first = binding.get_outputs()[0]
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(BATCH):
            session.run_with_iobinding(binding)
        first.numpy()  # the WebGPU EP's runs return once submitted: reading a result waits for the GPU
        times.append((time.perf_counter() - t) / BATCH)
    return statistics.median(times[2:]) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--only", nargs="*", default=[])
    p.add_argument("--ep-option", nargs="*", default=[], metavar="KEY=VALUE",
                   help="WebGPU EP options, e.g. enableRobustness=1 (the EP's context keeps the first session's)")
    a = p.parse_args()
    ep_options = dict(kv.split("=", 1) for kv in a.ep_option)
    print(f"{'kernel':44s} {'1 node ms':>10s} {'33 nodes ms':>12s} {'per node µs':>12s}")
    for name, build in CASES.items():
        if a.only and name not in a.only:
            continue
        try:
            one, many = timed(build(1), a.runs, ep_options), timed(build(33), a.runs, ep_options)
        except Exception as e:  # noqa: BLE001 - report what onnxruntime said for this case
            print(f"{name:44s} failed: {str(e).splitlines()[0][:150]}")
            continue
        print(f"{name:44s} {one:10.3f} {many:12.3f} {(many - one) / 32 * 1000:12.1f}", flush=True)


if __name__ == "__main__":
    main()
