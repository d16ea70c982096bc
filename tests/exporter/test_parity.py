"""fp32 export vs transformers (PyTorch, CPU): logits at every step and greedy tokens, across the sliding window."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.checkpoints import make_checkpoint
from tests.support.reference import generate_greedy, greedy_with_logits, open_engine, transformers_logits
from webgemma_export.export import export

# (kind, checkpoint dtype, layout, config form, files): each feature of the loader appears at least once
CASES = [
    ("e2b", "float32", "text", "resaved", "single"),
    ("e2b", "bfloat16", "multimodal", "published", "sharded"),
    ("e4b", "bfloat16", "text", "published", "single"),
    ("e4b", "float32", "multimodal", "resaved", "sharded"),
]
PROMPT = [2, 40, 77, 310, 12, 99, 5, 6, 300, 301, 302, 8, 15]  # longer than the window (8): prefill crosses it
STEPS = 48


@pytest.fixture(scope="module", params=CASES, ids=["-".join(c) for c in CASES])
def exported(request, tmp_path_factory):
    kind, dtype, layout, form, files = request.param
    base = tmp_path_factory.mktemp(f"{kind}-{dtype}-{layout}")
    checkpoint = make_checkpoint(base / "checkpoint", kind=kind, dtype=dtype, layout=layout, config_form=form,
                                 max_shard_size="60KB" if files == "sharded" else None)
    assert (checkpoint / "model.safetensors.index.json").is_file() == (files == "sharded")
    return checkpoint, export(checkpoint, base / "model", quant="fp32", log=lambda _: None)


def test_logits_and_greedy_tokens_match_transformers(exported):
    checkpoint, model = exported
    tokens, logits = greedy_with_logits(open_engine(model), PROMPT, STEPS)
    reference = transformers_logits(checkpoint, PROMPT + tokens)[len(PROMPT) - 1 : len(PROMPT) - 1 + STEPS]
    for step, (got, want) in enumerate(zip(logits, reference)):
        error = np.abs(got - want).max()
        assert error <= 1e-4 * (want.max() - want.min()), f"step {step}: max |Δlogit| {error:.3g}"
    # transformers' greedy choice at every step, given the same prefix, is our token: its greedy run is ours
    assert tokens == [int(t) for t in reference.argmax(-1)]
    assert len(set(tokens)) > 8, "a degenerate generation would prove little"


def test_engine_generate_is_the_greedy_loop(exported):
    _, model = exported
    assert generate_greedy(open_engine(model), PROMPT, 20) == greedy_with_logits(open_engine(model), PROMPT, 20)[0]


@pytest.mark.parametrize("chunk", [1, 5])
def test_chunked_prefill_equals_one_shot(exported, chunk):
    _, model = exported
    one_shot = greedy_with_logits(open_engine(model), PROMPT, 12)
    chunked = greedy_with_logits(open_engine(model, prefill_chunk=chunk), PROMPT, 12)
    assert chunked[0] == one_shot[0]
    assert max(np.abs(a - b).max() for a, b in zip(chunked[1], one_shot[1])) < 1e-4


def test_prefill_reads_the_next_chunks_rows_while_a_chunk_runs(exported):
    import asyncio

    _, model = exported
    engine = open_engine(model, prefill_chunk=5)
    reads, read = [], engine.rows.store.read_ranges

    async def spy(ranges):
        reads.append((len(engine.tokens), len(ranges)))  # tokens cached when the read starts, rows read
        return await read(ranges)

    engine.rows.store.read_ranges = spy
    asyncio.run(engine.prefill(PROMPT))  # 13 distinct tokens: chunks of 5, 5, 3
    assert reads == [(0, 5), (0, 5), (5, 3)]


def test_follow_up_prompt_reuses_the_cache(exported):
    import asyncio

    _, model = exported
    engine = open_engine(model)
    asyncio.run(engine.prefill(PROMPT))
    longer = PROMPT + [11, 12, 13]
    logits, reused = asyncio.run(engine.prefill(longer))
    assert reused == len(PROMPT)
    fresh, fresh_reused = asyncio.run(open_engine(model).prefill(longer))
    assert fresh_reused == 0
    assert np.abs(logits.values - fresh.values).max() < 1e-4
    _, reused = asyncio.run(engine.prefill([2, 9, 9]))  # a different conversation starts over
    assert reused == 0
