"""The best k logits and their token ids, found in stages.

onnxruntime's WebGPU TopK sorts a row longer than 2,048 values in global memory, one dispatch per bitonic step:
171 dispatches (0.9–1.8 ms a token on H100s) for Gemma's 262,144 logits. A row of up to 2,048 values is sorted in
one dispatch. So the logits are cut into rows of 2,048, each row keeps its best k, and the survivors are cut again
until one row is left: the overall best k are always among each row's best k.

The survivors' token ids travel as float32 (exact below 2**24): onnxruntime-web 1.30 runs int64 Add, Cast from
int64 and Gather of int64 data on the CPU, which would split the graph and stop its capture; TopK's int64 indices
only index gathers.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .builder import GraphBuilder

ROW = 2048  # longest row onnxruntime-web sorts in workgroup memory


def top_k(g: GraphBuilder, logits: str, n: int, k: int) -> tuple[str, str]:
    """(values, int64 ids) of the `k` largest of `logits` [1, n], sorted, as one TopK gives them."""
    if n >= 1 << 24:
        raise ValueError(f"{n} logits: token ids would not be exact as float32")
    values, ids = logits, None  # ids: each survivor's token id (None: its position is its id)
    while n > ROW and n % ROW == 0 and k < ROW:
        rows = n // ROW
        best, at = g.op("TopK", [g.op("Reshape", [values, g.const([rows, ROW])]), g.const([k])], 2,
                        axis=-1, largest=1, sorted=1)
        if ids is None:  # column from a table, plus the row's first position
            found = g.op("Add", [g.op("Gather", [g.const(np.arange(ROW), np.float32), at]),
                                 g.const(np.arange(rows).reshape(rows, 1) * ROW, np.float32)])
        else:
            found = g.op("GatherElements", [g.op("Reshape", [ids, g.const([rows, ROW])]), at], axis=1)
        flat = g.const([1, rows * k])
        values, ids, n = g.op("Reshape", [best, flat]), g.op("Reshape", [found, flat]), rows * k
    best, at = g.op("TopK", [values, g.const([k])], 2, axis=-1, largest=1, sorted=1)
    if ids is None:
        return best, at
    return best, g.op("Cast", [g.op("GatherElements", [ids, at], axis=1)], to=TensorProto.INT64)


def top_k_graph(n: int, k: int):
    """`top_k` alone, logits [1, n] → top_values, top_ids: for tests and the kernel benchmarks."""
    g = GraphBuilder("top_k")
    values, ids = top_k(g, g.input("logits", np.float32, [1, n]), n, k)
    g.output(values, "top_values", np.float32, [1, k])
    g.output(ids, "top_ids", np.int64, [1, k])
    return g.model()
