"""A timing prototype: the exported decode step with each GroupQueryAttention replaced by plain operators over the
fixed caches, so that graph capture replays no indirect dispatch (onnxruntime's GQA switches to indirect dispatch
under capture, and Chromium validates every one of them: see BENCHMARKS.md). The step computes what the exported
one does (tests/exporter/test_explicit_attention.py), but no runtime drives it yet: the new key and value rows
become outputs ("new.N.key") that a runtime would copy into the caches' free slots, and a per-layer additive mask
input ("attn_mask.N", [1, slots]: 0 for a filled slot, -1e9 for an empty one) replaces the lengths.

    q [H, d] · K_cacheᵀ (Gemm transB) + mask ─┐
    q · k_new (Mul, ReduceSum) ────────────────┴ Concat → Softmax → [cache | self] → P·V_cache + p·v_new

    python bench/explicit_attention.py MODEL_DIR OUT_DIR      (one key/value head per layer, as E2B)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.model_variants import rewritten_copy  # noqa: E402


def rewrite(graph: onnx.GraphProto) -> None:
    consts, nodes, own = [], [], {}  # own: present key name → (past key, past value, new key, new value, mask)
    head_dim = {i.name: i.type.tensor_type.shape.dim[3].dim_value for i in graph.input if i.name.startswith("past_key_values.")}

    def const(name, value):
        consts.append(numpy_helper.from_array(np.asarray(value, np.int64), name))
        return name

    for n in graph.node:
        if n.op_type != "GroupQueryAttention":
            nodes.append(n)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if attrs["kv_num_heads"] != 1:
            raise SystemExit("the prototype handles one key/value head per layer")
        q, k, v, past_k, past_v = n.input[:5]
        out, present_k, present_v = n.output
        p, heads = n.name or out, attrs["num_heads"]
        layer = past_k.split(".")[1] if past_k.startswith("past_key_values.") else None
        if layer is None:  # a KV-shared layer reads its source layer's cache and new row
            past_k, past_v, k_new, v_new, mask = own[past_k]
        d = head_dim[past_k]  # static shapes only: graph capture refuses nodes placed on the CPU (Shape)
        if layer is not None:  # a cache-owning layer: its new row and mask
            mask = f"attn_mask.{layer}"
            graph.input.append(helper.make_tensor_value_info(mask, TensorProto.FLOAT, [1, f"past_sequence.{layer}"]))
            k_new, v_new = f"new.{layer}.key", f"new.{layer}.value"
            row = const(f"{p}/row", [1, d])
            nodes += [helper.make_node("Reshape", [k, row], [k_new]), helper.make_node("Reshape", [v, row], [v_new])]
            own[present_k] = (past_k, past_v, k_new, v_new, mask)
            graph.output.extend([helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, d]) for x in (k_new, v_new)])
        flat = const(f"{p}/flat", [-1, d])
        q2, kc, vc = f"{p}/q2", f"{p}/kc", f"{p}/vc"
        nodes += [helper.make_node("Reshape", [q, const(f"{p}/qshape", [heads, d])], [q2]),
                  helper.make_node("Reshape", [past_k, flat], [kc]), helper.make_node("Reshape", [past_v, flat], [vc]),
                  helper.make_node("Gemm", [q2, kc], [f"{p}/s"], transB=1),
                  helper.make_node("Add", [f"{p}/s", mask], [f"{p}/sm"]),
                  helper.make_node("Mul", [q2, k_new], [f"{p}/qk"]),
                  helper.make_node("ReduceSum", [f"{p}/qk", const(f"{p}/last", [-1])], [f"{p}/self"], keepdims=1),
                  helper.make_node("Concat", [f"{p}/sm", f"{p}/self"], [f"{p}/all"], axis=-1),
                  helper.make_node("Softmax", [f"{p}/all"], [f"{p}/prob"], axis=-1),
                  helper.make_node("Slice", [f"{p}/prob", const(f"{p}/zero", [0]), const(f"{p}/m1", [-1]), const(f"{p}/ax", [-1])], [f"{p}/pc"]),
                  helper.make_node("Slice", [f"{p}/prob", f"{p}/m1", const(f"{p}/end", [2**62]), f"{p}/ax"], [f"{p}/ps"]),
                  helper.make_node("Gemm", [f"{p}/pc", vc], [f"{p}/oc"]),
                  helper.make_node("Mul", [f"{p}/ps", v_new], [f"{p}/os"]),
                  helper.make_node("Add", [f"{p}/oc", f"{p}/os"], [f"{p}/o"]),
                  helper.make_node("Reshape", [f"{p}/o", const(f"{p}/oshape", [1, 1, -1])], [out])]
    kept = [o for o in graph.output if not o.name.startswith("present.")]
    del graph.output[:]
    graph.output.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(consts)


def with_explicit_attention(model_dir: Path, out: Path) -> Path:
    """A copy of the model folder (weights linked) whose step graph attends with plain operators."""
    return rewritten_copy(model_dir, out, ("step_graph",), rewrite)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("out", type=Path)
    a = p.parse_args()
    print(with_explicit_attention(a.model, a.out))


if __name__ == "__main__":
    main()
