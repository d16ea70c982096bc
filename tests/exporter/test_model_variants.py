"""bench/model_variants.py: the accuracy_level copy of an exported model is one the runtime accepts (sizes and
hashes follow the rewritten graphs, weights shared) and computes the same model with int8 activations."""

from __future__ import annotations

import asyncio
import hashlib
import json

import numpy as np
import onnx

from bench.model_variants import with_accuracy_level
from tests.support.checkpoints import make_checkpoint
from tests.support.reference import open_engine
from webgemma_export.export import export


def test_accuracy_level_copy_is_valid_and_close(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "checkpoint", kind="e2b", dtype="float32", layout="text", config_form="resaved")
    model = export(checkpoint, tmp_path / "model", quant="int4", log=lambda _: None)
    copy = with_accuracy_level(model, 4, tmp_path / "acc4")

    manifest = json.loads((copy / "manifest.json").read_text())
    for entry in (manifest["decoder"][key] for key in ("graph", "step_graph", "fill_graph")):
        data = (copy / entry["path"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"])
        nodes = [n for n in onnx.load_from_string(data).graph.node if n.op_type == "MatMulNBits"]
        assert nodes and all({a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}["accuracy_level"] == 4 for n in nodes)
    for f in manifest["decoder"]["external_data"]:
        assert (copy / f["path"]).stat().st_ino == (model / f["path"]).stat().st_ino  # linked, not copied

    async def logits(folder):
        scores, _ = await open_engine(folder).prefill([2, 40, 77, 310, 12, 99])
        return scores.values

    base, int8 = asyncio.run(logits(model)), asyncio.run(logits(copy))
    assert not np.array_equal(base, int8)  # the int8-activation kernels ran
    assert np.corrcoef(base, int8)[0, 1] > 0.98  # the same model, rounded


def test_single_top_k_replaces_the_stages_and_finds_the_same_ids():
    import onnxruntime as ort

    from bench.model_variants import single_top_k
    from webgemma_export.graph.top_k import top_k_graph

    model = top_k_graph(262144, 64)
    staged = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    single_top_k(model.graph)
    assert [n.op_type for n in model.graph.node] == ["TopK"]
    single = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = np.random.default_rng(3).standard_normal((1, 262144)).astype(np.float32)
    for got, want in zip(single.run(None, {"logits": logits}), staged.run(None, {"logits": logits}), strict=True):
        np.testing.assert_array_equal(got, want)
