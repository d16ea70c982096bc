"""A small fake model folder for the browser tests (the real manifest comes from the exporter).

    decoder.onnx + weights/decoder.bin   a KV-like graph: present = Concat(past, x) stays on the device and is fed
                                         back; logits = MatMulNBits(a, W) + 0.5·ReduceSum(present) + table[pos], read
                                         on the host; initializers are external data in a subfolder
    ple/table-00.bin                     3 MiB of random bytes: progress and byte-range reads
    cpu_op.onnx                          Unique + Relu: a graph with a node WebGPU has no kernel for
    top_k.onnx                           the exporter's staged top-64 of Gemma's 262,144 logits
    files.json                           [{path, bytes, sha256}] of the first three (what the store ensures)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from webgemma_export.graph.top_k import top_k_graph

K, N, BLOCK = 64, 32, 32  # MatMulNBits: a [1, K] · W [K, N], 4-bit, block 32
HEADS, HEAD_DIM = 2, 4  # the KV-like pair [1, HEADS, T, HEAD_DIM]
TABLE = "ple/table-00.bin"
VOCAB = 262144  # Gemma's: the top-k graph sorts in three stages


def decoder_graph(rng: np.random.Generator) -> onnx.ModelProto:
    n_blocks = K // BLOCK
    w_q = rng.integers(0, 256, size=(N, n_blocks, BLOCK // 2), dtype=np.uint8)  # [N, blocks, 16] packed nibbles
    w_scales = (rng.random(N * n_blocks, dtype=np.float32) * 0.1).astype(np.float32)  # [N·blocks]
    half = np.array(0.5, np.float32)
    pos_table = np.arange(16, dtype=np.float32) * 0.25  # [16]
    nodes = [
        helper.make_node("Concat", ["past", "x"], ["present"], axis=2),
        helper.make_node("MatMulNBits", ["a", "w_q", "w_scales"], ["h"], domain="com.microsoft",
                         K=K, N=N, bits=4, block_size=BLOCK),
        helper.make_node("ReduceSum", ["present"], ["kv_sum"], keepdims=0),
        helper.make_node("Mul", ["kv_sum", "half"], ["kv_half"]),
        helper.make_node("Gather", ["pos_table", "pos"], ["pos_f"], axis=0),  # int64 indices, like input_ids
        helper.make_node("Add", ["h", "kv_half"], ["h2"]),
        helper.make_node("Add", ["h2", "pos_f"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "kv_like",
        [helper.make_tensor_value_info("past", TensorProto.FLOAT, [1, HEADS, "past_len", HEAD_DIM]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, HEADS, 1, HEAD_DIM]),
         helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, K]),
         helper.make_tensor_value_info("pos", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, N]),
         helper.make_tensor_value_info("present", TensorProto.FLOAT, [1, HEADS, "total_len", HEAD_DIM])],
        [numpy_helper.from_array(w_q, "w_q"), numpy_helper.from_array(w_scales, "w_scales"),
         numpy_helper.from_array(half, "half"), numpy_helper.from_array(pos_table, "pos_table")],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=9)
    onnx.checker.check_model(model)
    return model


def cpu_op_graph() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Unique", ["x"], ["u"], sorted=1), helper.make_node("Relu", ["x"], ["r"])], "cpu_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6])],
        [helper.make_tensor_value_info("u", TensorProto.FLOAT, ["n"]),
         helper.make_tensor_value_info("r", TensorProto.FLOAT, [6])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def write_model_folder(folder: Path, seed: int = 0) -> list[dict]:
    """Writes the folder; returns its file list [{path, bytes, sha256}] (also written to files.json)."""
    rng = np.random.default_rng(seed)
    (folder / "weights").mkdir(parents=True, exist_ok=True)  # onnx writes external data only into existing folders
    onnx.save_model(decoder_graph(rng), folder / "decoder.onnx", save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights/decoder.bin", size_threshold=0)
    (folder / "ple").mkdir(exist_ok=True)
    (folder / TABLE).write_bytes(rng.integers(0, 256, size=3 << 20, dtype=np.uint8).tobytes())
    onnx.save_model(cpu_op_graph(), folder / "cpu_op.onnx")
    onnx.save_model(top_k_graph(VOCAB, 64), folder / "top_k.onnx")
    files = [file_entry(folder, p) for p in ("decoder.onnx", "weights/decoder.bin", TABLE)]
    (folder / "files.json").write_text(json.dumps(files, indent=1))
    return files


def file_entry(folder: Path, path: str) -> dict:
    data = (folder / path).read_bytes()
    return {"path": path, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def step_inputs(steps: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, HEADS, 1, HEAD_DIM)).astype(np.float32),
             "a": rng.standard_normal((1, K)).astype(np.float32),
             "pos": np.array([i], np.int64)} for i in range(steps)]


def cpu_reference(folder: Path, inputs: list[dict[str, np.ndarray]]) -> tuple[list[np.ndarray], np.ndarray]:
    """onnxruntime CPU in CPython: logits of every step and the final present, the cache fed back each step."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "decoder.onnx"), providers=["CPUExecutionProvider"])
    past = np.zeros((1, HEADS, 0, HEAD_DIM), np.float32)
    logits = []
    for feeds in inputs:
        out, past = session.run(["logits", "present"], {"past": past, **feeds})
        logits.append(out)
    return logits, past
