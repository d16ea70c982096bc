"""Weights moved to graph inputs (webgemma.onnx_bytes, what the browser does so two sessions share one GPU copy):
the moved tensors are exactly the onnx package's external initializers, declared as inputs of their shape, and the
graph fed them from the shard files computes what the original computes (onnxruntime's CPU EP)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import external_data_helper, helper

from tests.support.checkpoints import make_checkpoint
from tests.support.reference import greedy_with_logits, open_engine
from webgemma.backends.ort_native import NativeBackend
from webgemma.onnx_bytes import graph_output_names, identity_model, weights_as_inputs
from webgemma_export.export import export


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("onnx-bytes")
    return export(make_checkpoint(base / "checkpoint", kind="e2b"), base / "model", quant="int4", log=lambda _: None)


@pytest.mark.parametrize("graph", ["decoder.onnx", "decoder_step.onnx", "decoder_fill.onnx"])
def test_moved_weights_are_the_external_initializers(model_dir, graph):
    original = onnx.load(str(model_dir / graph), load_external_data=False)
    edited_bytes, weights = weights_as_inputs((model_dir / graph).read_bytes())
    external = [t for t in original.graph.initializer if external_data_helper.uses_external_data(t)]
    assert external, "the export has external weights"
    assert [(w.name, w.dtype, w.dims) for w in weights] == [(t.name, t.data_type, tuple(t.dims)) for t in external]
    for w, t in zip(weights, external):
        info = external_data_helper.ExternalDataInfo(t)
        assert (w.location, w.offset, w.length) == (info.location, info.offset, info.length)
    edited = onnx.load_from_string(edited_bytes)
    inputs = {i.name: i for i in edited.graph.input}
    for w in weights:
        declared = inputs[w.name].type.tensor_type
        assert declared.elem_type == w.dtype and tuple(d.dim_value for d in declared.shape.dim) == w.dims
    assert {t.name for t in edited.graph.initializer} == {t.name for t in original.graph.initializer} - set(inputs)
    assert graph_output_names(edited_bytes) == [o.name for o in original.graph.output]


class WeightsFedBackend(NativeBackend):
    """The decoder with its weights as inputs, fed from the shard files on every run."""

    def __init__(self, model_dir: Path, manifest):
        super().__init__(model_dir, manifest)
        model, weights = weights_as_inputs((model_dir / manifest.decoder["graph"]["path"]).read_bytes())
        options = self._ort.SessionOptions()
        options.log_severity_level = 3
        self.session = self._ort.InferenceSession(model, options, providers=["CPUExecutionProvider"],
                                                  disabled_optimizers=["ConstantFolding"])
        self.weights = {}
        for w in weights:
            dtype = helper.tensor_dtype_to_np_dtype(w.dtype)
            data = np.fromfile(model_dir / w.location, np.uint8, w.length, offset=w.offset)
            self.weights[w.name] = data.view(dtype).reshape(w.dims)

    async def run(self, feeds: dict, host_outputs: list[str]) -> dict:
        return await super().run(feeds | self.weights, host_outputs)


def test_graph_fed_its_weights_computes_the_same(model_dir):
    reference = open_engine(model_dir)
    fed = open_engine(model_dir)
    fed.backend = WeightsFedBackend(model_dir, fed.manifest)
    prompt = [2, 40, 77, 310, 12, 99]
    tokens, logits = greedy_with_logits(reference, prompt, 6)
    fed_tokens, fed_logits = greedy_with_logits(fed, prompt, 6)
    assert fed_tokens == tokens
    np.testing.assert_allclose(np.stack(fed_logits), np.stack(logits), rtol=1e-4, atol=1e-4)


def test_identity_model_is_a_valid_model_that_returns_its_input():
    """The model the page starts onnxruntime-web with (ort_bridge.mjs startOrt): the onnx checker accepts it and
    onnxruntime runs it."""
    import onnxruntime as ort

    model = identity_model()
    onnx.checker.check_model(onnx.load_from_string(model), full_check=True)
    x = np.array([2.5], np.float32)
    np.testing.assert_array_equal(ort.InferenceSession(model).run(["y"], {"x": x})[0], x)
