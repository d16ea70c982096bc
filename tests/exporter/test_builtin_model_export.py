"""The built-in model (models/tiny, trained here) exported: fp32 equals transformers, int8/int4 agree with fp32.

Random models have near-flat logits, so quantization quality is measured on this trained one, over held-out text
it never saw. The mean KL divergence is printed (run with -s to see it) and bounded loosely.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support.reference import greedy_with_logits, open_engine, transformers_logits
from webgemma.tokenizer import Tokenizer
from webgemma_export.export import export

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = ROOT / "models" / "tiny"
EVAL_TOKENS = 1000  # teacher-forced positions, well past the 64-token window


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    base = tmp_path_factory.mktemp("builtin")
    return {q: export(CHECKPOINT, base / q, quant=q, log=lambda _: None) for q in ("fp32", "int8", "int4")}


@pytest.fixture(scope="module")
def heldout_ids(exports):
    tokenizer = Tokenizer.from_bytes((exports["fp32"] / "tokenizer.bin").read_bytes())
    return tokenizer.encode((ROOT / "models" / "heldout.txt").read_text(), add_special_tokens=True)[: EVAL_TOKENS + 1]


def teacher_forced_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    """Next-token logits after each prefix of `ids`, one decode step per token (the graph returns the last)."""
    import asyncio

    engine = open_engine(model_dir)

    async def run():
        first, _ = await engine.prefill(ids[:1])
        return [first.values] + [(await engine._run([t])).values for t in ids[1:-1]]

    return np.stack(asyncio.run(run()))


def test_fp32_export_matches_transformers(exports, heldout_ids):
    prompt = heldout_ids[:80]
    tokens, logits = greedy_with_logits(open_engine(exports["fp32"]), prompt, 48)
    reference = transformers_logits(CHECKPOINT, prompt + tokens)[len(prompt) - 1 : len(prompt) - 1 + 48]
    for got, want in zip(logits, reference):
        assert np.abs(got - want).max() <= 1e-4 * (want.max() - want.min())
    assert tokens == [int(t) for t in reference.argmax(-1)]


@pytest.mark.parametrize("quant, min_agreement", [("int8", 0.97), ("int4", 0.90)])
def test_quantized_exports_agree_with_fp32(exports, heldout_ids, quant, min_agreement):
    reference = teacher_forced_logits(exports["fp32"], heldout_ids)
    quantized = teacher_forced_logits(exports[quant], heldout_ids)
    agreement = float(np.mean(reference.argmax(-1) == quantized.argmax(-1)))
    p, q = (np.exp(x - np.logaddexp.reduce(x, axis=-1, keepdims=True)) for x in (reference, quantized))
    kl = float(np.mean(np.sum(p * (np.log(p + 1e-30) - np.log(q + 1e-30)), axis=-1)))
    print(f"\n{quant}: top-1 agreement with fp32 {agreement:.1%} over {len(reference)} held-out tokens, mean KL {kl:.4f} nats")
    assert agreement >= min_agreement
    assert kl < 0.1
