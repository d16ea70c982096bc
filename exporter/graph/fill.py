"""The fill graph: the prefill graph cut to what its caches need.

Where a decode step scores a token by itself (the page's kernels), a prompt only has to reach the cache, and the
step scores its last token. The prefill graph would still run its KV-shared layers (E2B: 20 of 35), the lm_head and
the top-k for one position each chunk, about half of its dispatches, and read its logits back.
"""

from __future__ import annotations

import onnx


def fill_graph(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    """A copy of `model` that computes only `outputs` (the caches): the nodes they need, the inputs and initializers
    those read (the same external data)."""
    needed, nodes = set(outputs), []
    for node in reversed(model.graph.node):  # nodes are stored in topological order
        if needed.intersection(node.output):
            nodes.append(node)
            needed.update(name for name in node.input if name)
    whole = model.graph
    fill = onnx.ModelProto()
    fill.CopyFrom(model)
    g = fill.graph
    g.name += "_fill"
    for field, keep in (("node", nodes[::-1]), ("output", [o for o in whole.output if o.name in outputs]),
                        ("input", [i for i in whole.input if i.name in needed]),
                        ("initializer", [t for t in whole.initializer if t.name in needed]),
                        ("value_info", [v for v in whole.value_info if v.name in needed])):
        g.ClearField(field)
        getattr(g, field).extend(keep)  # copies `model`'s messages
    return fill
