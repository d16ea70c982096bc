"""The step graph (fixed caches written in place, sliding rings) on onnxruntime's CPU EP, the reference for the
browser's graph-captured decoding: top-k scores equal transformers' logits, greedy tokens equal transformers'
choices, across prompts shorter and longer than the window (8), and a follow-up prompt fed step by step (while that
costs less than prefilling the conversation again)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.support.checkpoints import make_checkpoint
from tests.support.reference import open_engine, transformers_logits
from webgemma.sampling import SamplingSettings
from webgemma_export.export import export

CASES = [("e2b", "float32", "text", "resaved"), ("e4b", "bfloat16", "multimodal", "published")]
LONG = [2, 40, 77, 310, 12, 99, 5, 6, 300, 301, 302, 8, 15]
SHORT = [2, 40, 77]
STEPS = 24


@pytest.fixture(scope="module", params=CASES, ids=["-".join(c) for c in CASES])
def exported(request, tmp_path_factory):
    kind, dtype, layout, form = request.param
    base = tmp_path_factory.mktemp(f"step-{kind}")
    checkpoint = make_checkpoint(base / "checkpoint", kind=kind, dtype=dtype, layout=layout, config_form=form)
    return checkpoint, export(checkpoint, base / "model", quant="fp32", log=lambda _: None)


def step_engine(model, context: int = 64, prefill_chunk: int = 256, fill: bool = False):
    engine = open_engine(model, prefill_chunk, fill)
    engine.use_step_session(engine.backend.step_session(model, engine.manifest, context))
    asyncio.run(engine.record_step())  # as the browser does while loading: it must leave no trace
    return engine


def greedy_top_k(engine, prompt: list[int], steps: int):
    async def run():
        scores, _ = await engine.prefill(prompt, top_k=True)
        tokens, seen = [], []
        for _ in range(steps):
            seen.append(scores)
            tokens.append(int(scores.ids[np.argmax(scores.values)]))
            scores = await engine._run([tokens[-1]], top_k=True)
        return tokens, seen

    return asyncio.run(run())


@pytest.mark.parametrize("prompt", [LONG, SHORT], ids=["prompt-past-window", "prompt-within-window"])
@pytest.mark.parametrize("chunk,fill", [(256, False), (256, True), (5, True)],
                         ids=["prefill-graph", "fill-graph", "fill-graph-chunks-of-5"])
def test_step_decoding_matches_transformers(exported, prompt, chunk, fill):
    """With `fill` the prompt goes through the fill graph (the caches only) and the step session scores its last token
    again: the first token's scores too must be transformers'."""
    checkpoint, model = exported
    engine = step_engine(model, prefill_chunk=chunk, fill=fill)
    asyncio.run(engine.prefill(prompt, top_k=True))
    assert engine.on_static == fill  # the step session holds the cache once it scored the last token
    engine.reset()
    tokens, seen = greedy_top_k(engine, prompt, STEPS)
    assert engine.on_static and engine.timing["steps"] >= STEPS - 1
    reference = transformers_logits(checkpoint, prompt + tokens)[len(prompt) - 1 : len(prompt) - 1 + STEPS]
    for step, (scores, want) in enumerate(zip(seen, reference)):
        assert set(scores.ids.tolist()) == set(np.argsort(-want)[: len(scores.ids)].tolist()), f"step {step}: candidates"
        error = np.abs(scores.values - want[scores.ids]).max()
        assert error <= 1e-4 * (want.max() - want.min()), f"step {step}: max |Δlogit| {error:.3g}"
    assert tokens == [int(t) for t in reference.argmax(-1)]


def test_follow_up_prompt_goes_through_the_step_session(exported):
    _, model = exported
    engine = step_engine(model)
    tokens, _ = greedy_top_k(engine, LONG, 4)
    follow = LONG + tokens + [11, 12, 13]  # the cache holds the prompt and every token fed back
    scores, reused = asyncio.run(engine.prefill(follow, top_k=True))
    assert reused == len(LONG) + len(tokens) and engine.on_static
    fresh, _ = asyncio.run(open_engine(model).prefill(follow, top_k=True))
    assert scores.ids.tolist() == fresh.ids.tolist()
    assert np.abs(scores.values - fresh.values).max() < 1e-4


def test_a_follow_up_goes_through_the_steps_while_they_cost_less_than_prefilling_anew(exported):
    _, model = exported

    def follow_up(costs: tuple[float, float] | None):
        engine = step_engine(model)
        tokens, _ = greedy_top_k(engine, LONG, 4)
        if costs:
            engine.ms_per_step, engine.ms_per_prefilled_token = costs
        follow = LONG + tokens + list(range(100, 140))  # 57 tokens, 40 of them new: more than STEP_PREFILL_MAX
        return follow, *asyncio.run(engine.prefill(follow, top_k=True))

    assert follow_up(None)[2] == 0  # no costs measured yet: prefilled anew
    assert follow_up((1.0, 0.5))[2] == 0  # 40 steps cost 40 ms, prefilling all 57 tokens 28.5
    follow, scores, reused = follow_up((1.0, 1.0))  # 40 ms against 57
    assert reused == len(LONG) + 4
    fresh, _ = asyncio.run(open_engine(model).prefill(follow, top_k=True))
    assert scores.ids.tolist() == fresh.ids.tolist() and np.abs(scores.values - fresh.values).max() < 1e-4


@pytest.mark.parametrize("fill", [False, True], ids=["prefill-graph", "fill-graph"])
def test_generation_measures_the_costs_of_a_step_and_of_a_prefilled_token(exported, fill):
    _, model = exported
    engine = step_engine(model, prefill_chunk=8, fill=fill)
    asyncio.run(engine.generate(LONG, SamplingSettings(temperature=0), max_new_tokens=12, stop_ids=[]))
    assert engine.ms_per_step > 0 and engine.ms_per_prefilled_token > 0


def test_context_is_capped_by_the_fixed_caches(exported):
    _, model = exported
    assert step_engine(model, context=32).max_context == 32
