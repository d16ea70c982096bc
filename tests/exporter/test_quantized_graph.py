"""The int4/int8 graphs compute exactly the dequantized model.

The checkpoint's weights are first rounded to values that int4/int8 blocks represent exactly; exporting it
quantized must then give the logits of its fp32 export (only summation order differs). This checks the packing,
the shared embedding/lm_head buffer, the per-layer table rows and their on-device dequantization.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.support.checkpoints import make_checkpoint
from tests.support.reference import greedy_with_logits, open_engine
from webgemma_export.export import export
from webgemma_export.quantize import dequantize, quantize

BLOCK = 32
PROMPT = [2, 40, 77, 310, 12, 99, 5, 6, 300, 301, 302, 8]


def round_to_grid(checkpoint, bits: int, per_layer_scale: float) -> None:
    path = checkpoint / "model.safetensors"
    tensors = load_file(path)
    for name, t in tensors.items():
        if t.ndim != 2:
            continue
        w = t.float().numpy()
        if name.endswith("embed_tokens_per_layer.weight"):  # stored × sqrt(P) with float16 scales
            w = dequantize(*quantize(w * per_layer_scale, bits, BLOCK, np.float16), bits) / per_layer_scale
        else:
            w = dequantize(*quantize(w, bits, BLOCK), bits)
        tensors[name] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize("quant", ["int4", "int8"])
@pytest.mark.parametrize("kind", ["e2b", "e4b"])
def test_quantized_export_computes_the_dequantized_model(tmp_path, quant, kind):
    checkpoint = make_checkpoint(tmp_path / "checkpoint", kind=kind)
    round_to_grid(checkpoint, 4 if quant == "int4" else 8, per_layer_scale=8.0)  # sqrt(64), exact
    fp32 = greedy_with_logits(open_engine(export(checkpoint, tmp_path / "fp32", quant="fp32", log=lambda _: None)), PROMPT, 24)
    quantized = greedy_with_logits(open_engine(export(checkpoint, tmp_path / quant, quant=quant, log=lambda _: None)), PROMPT, 24)
    assert quantized[0] == fp32[0]
    # Only float summation order differs (MatMulNBits vs MatMul); a random 10-layer model amplifies that to
    # ~1e-4 of the logit range at worst, while a packing or scale error shows up as whole percents.
    for step, (got, want) in enumerate(zip(quantized[1], fp32[1])):
        assert np.abs(got - want).max() <= 1e-3 * (want.max() - want.min()), f"step {step}"
