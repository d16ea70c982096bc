"""The staged top-k (exporter/graph/top_k.py) on onnxruntime CPU against numpy's sort."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from webgemma_export.graph.top_k import top_k_graph


@pytest.mark.parametrize("n", [512, 4096, 262144])
def test_staged_top_k_equals_a_full_sort(n):
    logits = np.random.default_rng(n).standard_normal((1, n)).astype(np.float32)
    model = top_k_graph(n, 64)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values, ids = session.run(None, {"logits": logits})
    want = np.argsort(-logits[0], kind="stable")[:64]
    np.testing.assert_array_equal(ids[0], want)
    np.testing.assert_array_equal(values[0], logits[0, want])
    stages = sum(node.op_type == "TopK" for node in model.graph.node)
    assert stages == {512: 1, 4096: 2, 262144: 3}[n]  # rows of 2,048 until one row is left
