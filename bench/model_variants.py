"""A copy of an exported model folder whose MatMulNBits nodes carry another accuracy_level (4: int8 activations,
onnxruntime's DP4A kernels), for side-by-side benchmarks. Weights are hard links (onnxruntime
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
from pathlib import Path


def with_accuracy_level(model_dir: Path, level: int, out: Path | None = None) -> Path:
    """A copy of `model_dir` whose MatMulNBits nodes (in the decoder and step graphs) carry accuracy_level=`level`."""
    import onnx

    out = out or Path(tempfile.mkdtemp()) / f"{model_dir.name}-acc{level}"
    out.mkdir(parents=True)
    for f in model_dir.iterdir():
        os.link(f.resolve(), out / f.name)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    for key in ("graph", "step_graph"):
        entry = manifest["decoder"].get(key)
        if entry is None:
            continue
        model = onnx.load(str(model_dir / entry["path"]), load_external_data=False)
        for node in model.graph.node:
            if node.op_type == "MatMulNBits":
                kept = [a for a in node.attribute if a.name != "accuracy_level"]
                del node.attribute[:]
                node.attribute.extend(kept + [onnx.helper.make_attribute("accuracy_level", level)])
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
    p.add_argument("--accuracy-level", type=int, required=True)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    print(with_accuracy_level(a.model, a.accuracy_level, a.out))


if __name__ == "__main__":
    main()
