"""The exported folder: manifest against its schema, files against their hashes, the graph's ops, cache wiring,
and size limits (no tensor larger than a shard or than WebGPU's default 128 MiB binding)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest

import webgemma
from tests.support.checkpoints import make_checkpoint
from tests.support.reference import greedy_with_logits, open_engine
from webgemma_export.export import export

# Ops whose onnxruntime-web WebGPU kernels the design relies on (DESIGN.md); the browser tests check placement.
WEBGPU_OPS = {
    "MatMulNBits", "MatMul", "Gemm", "GatherBlockQuantized", "Gather", "RotaryEmbedding", "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization", "Gelu", "Mul", "Add", "Sub", "Relu", "Div", "Tanh", "Reshape", "Slice", "Split",
    "Concat", "Cast", "TopK", "GatherElements", "Softmax", "ReduceSum", "Transpose",
}
SCHEMA = json.loads((Path(webgemma.__file__).parent / "manifest.schema.json").read_text())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("graph") / "checkpoint", kind="e2b", layout="multimodal")


@pytest.fixture(scope="module", params=["int4", "int8", "fp16", "fp32"])
def model(request, checkpoint):
    return export(checkpoint, checkpoint.parent / request.param, quant=request.param, log=lambda _: None)


def manifest_of(model: Path) -> dict:
    return json.loads((model / "manifest.json").read_text())


def test_manifest_follows_its_schema(model):
    jsonschema.validate(manifest_of(model), SCHEMA)


def test_every_file_matches_its_size_and_hash(model):
    m = manifest_of(model)
    listed = [m["decoder"]["graph"], m["decoder"]["step_graph"], m["decoder"]["fill_graph"], *m["decoder"]["external_data"],
              *m["per_layer_table"]["files"], m["tokenizer"]]
    for entry in listed:
        data = (model / entry["path"]).read_bytes()
        assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]
    assert sorted(p.name for p in model.iterdir()) == sorted([e["path"] for e in listed] + ["manifest.json"])


def test_graph_uses_only_webgpu_ops_and_caches_only_owning_layers(model):
    m = manifest_of(model)
    graph = onnx.load(model / "decoder.onnx", load_external_data=False).graph
    assert {n.op_type for n in graph.node} <= WEBGPU_OPS
    first_shared = m["architecture"]["num_hidden_layers"] - m["architecture"]["num_kv_shared_layers"]
    assert [c["layer"] for c in m["decoder"]["cache"]] == list(range(first_shared))
    cache_inputs = {i.name for i in graph.input if i.name.startswith("past_key_values.")}
    assert cache_inputs == {f"past_key_values.{i}.{p}" for i in range(first_shared) for p in ("key", "value")}
    assert {o.name for o in graph.output} == {"logits", "top_logits", "top_ids"} | {
        f"present.{i}.{p}" for i in range(first_shared) for p in ("key", "value")}


def test_step_graph_shares_the_weights_and_fixes_its_shapes(model):
    m = manifest_of(model)
    decoder = onnx.load(model / "decoder.onnx", load_external_data=False).graph
    step = onnx.load(model / "decoder_step.onnx", load_external_data=False).graph
    assert {n.op_type for n in step.node} <= WEBGPU_OPS
    # mask inputs instead of the positions the prefill graph builds its masks from
    positions = set(m["decoder"]["positions"].values())
    masks = m["decoder"]["step_graph"]["masks"]
    assert {i.name for i in step.input} == {i.name for i in decoder.input} - positions | set(masks.values())
    assert sorted(masks) == sorted(set(m["architecture"]["layer_types"]))
    assert {o.name for o in step.output} == {o.name for o in decoder.output} - {"logits"}
    ids = next(i for i in step.input if i.name == "input_ids")
    assert [d.dim_value for d in ids.type.tensor_type.shape.dim] == [1, 1]
    for o in step.output:  # the presents are the token's key/value rows
        if o.name.startswith("present."):
            assert o.type.tensor_type.shape.dim[2].dim_value == 1
    external = {t.name: list(t.external_data) for t in decoder.initializer if t.external_data}
    assert {t.name: list(t.external_data) for t in step.initializer if t.external_data} == external


def test_fill_graph_is_the_prefill_graph_cut_to_its_caches(model):
    """The same nodes, inputs and weights as far as the caches need them, and the same caches from a chunk."""
    import onnxruntime as ort

    m = manifest_of(model)
    decoder = onnx.load(model / "decoder.onnx", load_external_data=False).graph
    fill = onnx.load(model / m["decoder"]["fill_graph"]["path"], load_external_data=False).graph
    presents = [c[f"present_{part}"] for c in m["decoder"]["cache"] for part in ("key", "value")]
    assert [o.name for o in fill.output] == presents
    assert {n.name for n in fill.node} < {n.name for n in decoder.node}
    assert not [n.name for n in fill.node if "lm_head" in n.name or n.op_type == "TopK"]
    first_shared = m["architecture"]["num_hidden_layers"] - m["architecture"]["num_kv_shared_layers"]
    assert not [n.name for n in fill.node if n.name.startswith(f"/layers.{first_shared}/")]
    external = {t.name: list(t.external_data) for t in decoder.initializer if t.external_data}
    assert {t.name: list(t.external_data) for t in fill.initializer if t.external_data}.items() <= external.items()

    engine = open_engine(model)
    ids = [2, 40, 77, 310, 12, 99, 5]
    feeds = asyncio.run(engine._token_feeds(ids)) | engine._position_feeds(0, len(ids)) | engine.cache
    sessions = [ort.InferenceSession(str(model / name), providers=["CPUExecutionProvider"])
                for name in ("decoder.onnx", m["decoder"]["fill_graph"]["path"])]
    whole, cut = ({o.name: v for o, v in zip(s.get_outputs(), s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()}))}
                  for s in sessions)
    for name in presents:
        np.testing.assert_array_equal(cut[name], whole[name], err_msg=name)


def test_only_the_towers_are_skipped(model):
    skipped = manifest_of(model)["source"]["skipped_tensors"]
    assert skipped and all(name.startswith(("model.vision_tower.", "model.audio_tower.", "model.embed_vision.",
                                            "model.embed_audio.")) for name in skipped)


def test_tied_embedding_is_stored_once(model):
    m = manifest_of(model)
    graph = onnx.load(model / "decoder.onnx", load_external_data=False).graph
    embed = [t for t in graph.initializer if t.name.startswith("model.language_model.embed_tokens.")]
    length = sum(int(dict((e.key, e.value) for e in t.external_data)["length"]) for t in embed)
    vocab, hidden = m["architecture"]["vocab_size"], m["architecture"]["hidden_size"]
    per_value = {"int4": 0.5 + 4 / 32, "int8": 1 + 4 / 32, "fp16": 2, "fp32": 4}[m["quantization"]["weights"]]
    assert length == vocab * hidden * per_value


def test_exporter_does_not_import_torch(checkpoint, tmp_path):
    code = (f"import sys; from webgemma_export.export import export; "
            f"export({str(checkpoint)!r}, {str(tmp_path / 'out')!r}, quant='int4', log=lambda _: None); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("quant", ["fp32", "int4"])
def test_small_shards_split_every_large_tensor_and_compute_the_same(checkpoint, tmp_path, quant):
    """10 KiB shards force the tied embedding into column chunks, linears into row parts, the table into
    many files; the model must compute exactly what the unsplit export computes."""
    small = export(checkpoint, tmp_path / "small", quant=quant, shard_mb=0.01, log=lambda _: None)
    m = manifest_of(small)
    limit = int(0.01 * 2**20)
    graph = onnx.load(small / "decoder.onnx", load_external_data=False).graph
    lengths = [int(dict((e.key, e.value) for e in t.external_data)["length"]) for t in graph.initializer if t.external_data]
    assert max(lengths) <= limit
    assert all(f["bytes"] <= limit for f in m["decoder"]["external_data"] + m["per_layer_table"]["files"])
    assert len(m["per_layer_table"]["files"]) > 10
    assert any(".chunk" in t.name for t in graph.initializer) and any(".part" in t.name for t in graph.initializer)
    whole = export(checkpoint, tmp_path / "whole", quant=quant, log=lambda _: None)
    prompt = [2, 40, 77, 310, 12, 99, 5, 6, 300, 301, 302, 8]
    a, b = greedy_with_logits(open_engine(small), prompt, 16), greedy_with_logits(open_engine(whole), prompt, 16)
    assert a[0] == b[0]
    assert max(float(np.abs(x - y).max()) for x, y in zip(a[1], b[1])) < 1e-4


def test_unused_kv_tensors_of_shared_layers_are_skipped(checkpoint, tmp_path):
    """Published E2B/E4B checkpoints still carry k/v projections for KV-shared layers."""
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "checkpoint"
    shutil.copytree(checkpoint, copy)
    tensors = load_file(copy / "model.safetensors")
    extra = "model.language_model.layers.8.self_attn.k_proj.weight"
    tensors[extra] = tensors["model.language_model.layers.5.self_attn.k_proj.weight"].clone()
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    skipped = manifest_of(export(copy, tmp_path / "out", log=lambda _: None))["source"]["skipped_tensors"]
    assert "KV-shared" in skipped[extra] and "layer 5" in skipped[extra]
