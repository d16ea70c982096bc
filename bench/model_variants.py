"""Copies of an exported model folder with rewritten graphs, for side-by-side benchmarks: here MatMulNBits with
another accuracy_level (4: int8 activations, onnxruntime's DP4A kernels). Weights are hard links (onnxruntime
refuses external data outside the folder); the manifest's sizes and hashes follow the rewritten graphs, so the
page accepts the copy.

    python bench/model_variants.py MODEL_DIR --accuracy-level 4 [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def rewritten_copy(model_dir: Path, out: Path, graphs: tuple[str, ...], rewrite: Callable[[Any], None]) -> Path:
    """A copy of `model_dir` whose decoder graphs named by `graphs` ("graph", "step_graph") are rewritten in place by
    `rewrite(onnx GraphProto)`; the other files are hard links."""
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
        rewrite(model.graph)
        data = model.SerializeToString()
        (out / entry["path"]).unlink()
        (out / entry["path"]).write_bytes(data)
        entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (out / "manifest.json").unlink()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def with_accuracy_level(model_dir: Path, level: int, out: Path | None = None) -> Path:
    import onnx

    def set_level(graph) -> None:
        for node in graph.node:
            if node.op_type == "MatMulNBits":
                kept = [a for a in node.attribute if a.name != "accuracy_level"]
                del node.attribute[:]
                node.attribute.extend(kept + [onnx.helper.make_attribute("accuracy_level", level)])

    out = out or Path(tempfile.mkdtemp()) / f"{model_dir.name}-acc{level}"
    return rewritten_copy(model_dir, out, ("graph", "step_graph"), set_level)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("--accuracy-level", type=int, required=True)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    print(with_accuracy_level(a.model, a.accuracy_level, a.out))


if __name__ == "__main__":
    main()
