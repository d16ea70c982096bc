"""bench/explicit_attention.py (the timing prototype of a step graph without GroupQueryAttention) computes the same
step as the exported graph: the same caches, lengths turned into masks, on onnxruntime's CPU EP."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from bench.explicit_attention import with_explicit_attention
from tests.support.checkpoints import make_checkpoint
from webgemma.manifest import parse_manifest
from webgemma.static_cache import length_feeds, step_caches
from webgemma_export.export import export

SLOTS, CACHED = 16, 5


def test_plain_operator_attention_equals_the_exported_step(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "checkpoint", kind="e2b", dtype="float32", layout="text", config_form="resaved")
    model = export(checkpoint, tmp_path / "model", quant="fp32", log=lambda _: None)
    variant = with_explicit_attention(model, tmp_path / "explicit")
    io = parse_manifest((model / "manifest.json").read_text()).decoder
    rng = np.random.default_rng(0)

    feeds = {}
    for c in step_caches(io, SLOTS):
        cache = rng.standard_normal(c["dims"]).astype(np.float32)
        cache[:, :, CACHED:] = 0  # slots past the cached positions are empty
        feeds[c["input"]] = cache
    window = max(c["window"] or 0 for c in io["cache"])
    assert CACHED < window  # every view sees the same CACHED positions
    feeds |= length_feeds(io, dict.fromkeys(io["kv_length"], CACHED + 1))

    def run(folder, extra):
        session = ort.InferenceSession(str(folder / io["step_graph"]["path"]))
        for i in session.get_inputs():
            if i.name not in feeds and i.name not in extra:
                shape = [d if isinstance(d, int) else 1 for d in i.shape]
                extra[i.name] = (np.array([[5]], np.int64) if i.name == io["inputs"]["input_ids"] else
                                 rng.integers(0, 200, shape).astype(np.uint8) if i.type == "tensor(uint8)" else
                                 rng.standard_normal(shape).astype(np.float32))
        names = {i.name for i in session.get_inputs()}
        return session.run([io["top_k"]["values"], io["top_k"]["ids"]], {k: v for k, v in (feeds | extra).items() if k in names})

    shared = {}  # token, per-layer rows and RoPE tables: the same random values for both graphs
    expected = run(model, shared)
    masks = {}
    for c in io["cache"]:
        mask = np.zeros((1, feeds[c["past_key"]].shape[2]), np.float32)
        mask[:, CACHED:] = -1e9
        masks[f"attn_mask.{c['layer']}"] = mask
    got = run(variant, shared | masks)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-4)
    assert (got[1] == expected[1]).all()
