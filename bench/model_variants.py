"""A copy of an exported model folder with rewritten graphs, for side-by-side benchmarks: MatMulNBits nodes with
another accuracy_level (4: int8 activations, onnxruntime's DP4A kernels), or one TopK over all the logits instead of
the exporter's staged top-k (webgemma_export.graph.top_k). Weights are hard links (onnxruntime refuses external
data outside the folder); the manifest's sizes and hashes follow the rewritten graphs, so the page accepts the copy.

    python bench/model_variants.py MODEL_DIR (--accuracy-level 4 | --single-top-k) [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from pathlib import Path


def with_accuracy_level(model_dir: Path, level: int, out: Path | None = None) -> Path:
    """A copy of `model_dir` whose MatMulNBits nodes (in the decoder, step and fill graphs) carry
    accuracy_level=`level`."""
    import onnx

    def edit(graph) -> None:
        for node in graph.node:
            if node.op_type == "MatMulNBits":
                kept = [a for a in node.attribute if a.name != "accuracy_level"]
                del node.attribute[:]
                node.attribute.extend(kept + [onnx.helper.make_attribute("accuracy_level", level)])

    return _copy_with(model_dir, edit, out or Path(tempfile.mkdtemp()) / f"{model_dir.name}-acc{level}")


def with_single_top_k(model_dir: Path, out: Path | None = None) -> Path:
    """A copy of `model_dir` whose graphs find their top-k with one TopK node (see `single_top_k`)."""
    return _copy_with(model_dir, single_top_k, out or Path(tempfile.mkdtemp()) / f"{model_dir.name}-single-top-k",
                      graphs=("graph", "step_graph"))  # the fill graph has no top-k


def single_top_k(graph) -> None:
    """Replaces the staged top-k (the nodes between the logits and the top-k outputs) with one TopK."""
    import onnx

    made_by = {o: n for n in graph.node for o in n.output}
    stages = [n for n in graph.node if n.op_type == "TopK"]
    logits = made_by[stages[0].input[0]].input[0]  # the first stage reshapes the logits into rows
    values = stages[-1].output[0]
    outputs, ids = {o.name for o in graph.output}, stages[-1].output[1]
    while ids not in outputs:  # the last stage's indices are mapped to token ids on their way out
        ids = next(n.output[0] for n in graph.node if ids in n.input)
    chain, todo = set(), [values, ids]
    while todo:
        node = made_by.get(todo.pop())
        if node is not None and id(node) not in chain and logits not in node.output:
            chain.add(id(node))
            todo += list(node.input)
    kept = [n for n in graph.node if id(n) not in chain]
    kept.append(onnx.helper.make_node("TopK", [logits, stages[-1].input[1]], [values, ids], name="/final/TopK_single",
                                      axis=-1, largest=1, sorted=1))
    del graph.node[:]
    graph.node.extend(kept)


def _copy_with(model_dir: Path, edit, out: Path, graphs=("graph", "step_graph", "fill_graph")) -> Path:
    """A copy of `model_dir` at `out` whose `graphs` (manifest keys) went through `edit(graph)`."""
    import onnx

    out.mkdir(parents=True)
    for f in model_dir.iterdir():
        os.link(f.resolve(), out / f.name)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    for key in graphs:
        entry = manifest["decoder"].get(key)
        if entry is None:
            continue
        model = onnx.load(str(model_dir / entry["path"]), load_external_data=False)
        edit(model.graph)
        data = model.SerializeToString()
        (out / entry["path"]).unlink()
        (out / entry["path"]).write_bytes(data)
        entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (out / "manifest.json").unlink()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--accuracy-level", type=int)
    kind.add_argument("--single-top-k", action="store_true")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    print(with_single_top_k(a.model, a.out) if a.single_top_k else with_accuracy_level(a.model, a.accuracy_level, a.out))


if __name__ == "__main__":
    main()
