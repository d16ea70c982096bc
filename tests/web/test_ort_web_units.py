"""The browser backend's pure-Python parts, under CPython: graph outputs from ONNX bytes, placement log parsing,
and that the browser-only modules import without a browser."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_web_model import cpu_op_graph, decoder_graph
from webgemma import browser
from webgemma.backends.ort_web import Placement
from webgemma.onnx_bytes import graph_output_names
from webgemma.storage_web import ModelFile, Progress


def test_graph_output_names_from_protobuf():
    model = decoder_graph(np.random.default_rng(0))
    assert graph_output_names(model.SerializeToString()) == ["logits", "present"]
    assert graph_output_names(cpu_op_graph().SerializeToString()) == ["u", "r"]


def test_graph_output_names_skips_large_initializers():
    big = numpy_helper.from_array(np.ones((512, 512), np.float32), "w")  # 1 MiB raw_data inside the proto
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y.out/0"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512])],
                              [helper.make_tensor_value_info("y.out/0", TensorProto.FLOAT, [1, 512])], [big])
    assert graph_output_names(helper.make_model(graph).SerializeToString()) == ["y.out/0"]
    with pytest.raises(ValueError, match="not an ONNX model"):
        graph_output_names(b"\x0a\x02hi")


def test_placement_from_verbose_log():
    prefix = "2026-11-26 09:05:51.48 [V:onnxruntime:, session_state.cc:1383 VerifyEachNodeIsAssignedToAnEp]"
    spread = Placement.from_log([
        f"{prefix} Node placements",
        f"{prefix}  Node(s) placed on [WebGpuExecutionProvider]. Number of nodes: 2",
        f"{prefix}   Relu ()", f"{prefix}   MemcpyFromHost (Memcpy)",
        f"{prefix}  Node(s) placed on [CPUExecutionProvider]. Number of nodes: 1",
        f"{prefix}   Unique (u0)",
        "[W:onnxruntime:, session_state.cc:1397 VerifyEachNodeIsAssignedToAnEp] Some nodes were not assigned",
    ])
    assert spread.all_on is None
    assert spread.counts == {"WebGpuExecutionProvider": 2, "CPUExecutionProvider": 1}
    assert spread.nodes["CPUExecutionProvider"] == ["Unique (u0)"]
    single = Placement.from_log([f"{prefix}  All nodes placed on [WebGpuExecutionProvider]. Number of nodes: 5"])
    assert single.all_on == "WebGpuExecutionProvider" and single.counts == {"WebGpuExecutionProvider": 5}
    assert Placement.from_log(["nothing"]).all_on is None


def test_browser_modules_import_under_cpython():
    assert browser.IN_BROWSER is False
    with pytest.raises(browser.BrowserOnly):
        browser.set_status("x")
    assert ModelFile.of({"path": "a.bin", "bytes": 3, "sha256": "AB"}) == ModelFile("a.bin", 3, "ab")
    assert Progress("download", "a.bin", 50, 200, 1.0, 3.0).percent == 25.0
