"""GroupQueryAttention on the WebGPU kernels vs onnxruntime's CPU kernel, natively through Dawn
(`onnxruntime-ep-webgpu`): which prefill lengths, head sizes and windows are computed right.

On Chromium's SwiftShader adapter, onnxruntime-web 1.30 is wrong from 32 query tokens up for head sizes ≤ 256
whenever the window does not clip keys (webgemma.backends.Backend.causal_prefill_limit). This prints the same
table for the GPU at hand:  python bench/webgpu_gqa_check.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HEADS, KV_HEADS = 8, 1


def gqa_model(head_dim: int, window: int) -> bytes:
    def value(name, elem, shape):
        return helper.make_tensor_value_info(name, elem, shape)

    node = helper.make_node("GroupQueryAttention", ["q", "k", "v", "pk", "pv", "sl", "tl"], ["y", "pk_out", "pv_out"],
                            domain="com.microsoft", num_heads=HEADS, kv_num_heads=KV_HEADS, scale=1.0,
                            local_window_size=window)
    f = TensorProto.FLOAT
    graph = helper.make_graph([node], "gqa", [
        value("q", f, [1, None, HEADS * head_dim]), value("k", f, [1, None, KV_HEADS * head_dim]),
        value("v", f, [1, None, KV_HEADS * head_dim]), value("pk", f, [1, KV_HEADS, None, head_dim]),
        value("pv", f, [1, KV_HEADS, None, head_dim]), value("sl", TensorProto.INT32, [1]),
        value("tl", TensorProto.INT32, [])],
        [value("y", f, None), value("pk_out", f, [1, KV_HEADS, "t", head_dim]), value("pv_out", f, [1, KV_HEADS, "t", head_dim])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model.SerializeToString()


def main() -> None:
    from webgemma.backends.ort_native import _webgpu_device

    rng = np.random.default_rng(0)
    webgpu = ort.SessionOptions()
    webgpu.add_provider_for_devices([_webgpu_device(ort)], {})
    print(f"{'head':>5} {'window':>7} {'past':>5} {'new':>5}  max |WebGPU - CPU|")
    for head_dim in (256, 512):
        for window in (-1, 512):
            model = gqa_model(head_dim, window)
            cpu = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
            gpu = ort.InferenceSession(model, webgpu)
            for past, new in ((0, 16), (0, 31), (0, 32), (0, 33), (0, 200), (600, 64), (40, 1)):
                feeds = {
                    "q": rng.standard_normal((1, new, HEADS * head_dim), np.float32),
                    "k": rng.standard_normal((1, new, KV_HEADS * head_dim), np.float32),
                    "v": rng.standard_normal((1, new, KV_HEADS * head_dim), np.float32),
                    "pk": rng.standard_normal((1, KV_HEADS, past, head_dim), np.float32),
                    "pv": rng.standard_normal((1, KV_HEADS, past, head_dim), np.float32),
                    "sl": np.array([past + new - 1], np.int32), "tl": np.array(past + new, np.int32),
                }
                error = np.abs(gpu.run(["y"], feeds)[0] - cpu.run(["y"], feeds)[0]).max()
                print(f"{head_dim:5} {window:7} {past:5} {new:5}  {error:.2e}{'   WRONG' if error > 1e-3 else ''}")


if __name__ == "__main__":
    main()
