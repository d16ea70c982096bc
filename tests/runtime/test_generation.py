"""Streaming text generation on the built-in model (onnxruntime CPU): stop strings, stop ids, cancellation, and
streamed pieces that add up to the final text and never show a stop string or a broken character."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from webgemma.backends.ort_native import NativeBackend
from webgemma.engine import ROPE_AHEAD, ContextLimitError
from webgemma.generation import GenerationSettings
from webgemma.model import load_model
from webgemma.sampling import SamplingSettings
from webgemma.storage_local import LocalStore
from webgemma_export.export import export

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "It is a truth universally acknowledged"
GREEDY = SamplingSettings(temperature=0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export(ROOT / "models" / "tiny", tmp_path_factory.mktemp("gen") / "model", quant="int8", log=lambda _: None)


def generate(model_dir, settings, prompt=PROMPT, **load):
    async def run():
        model = await load_model(LocalStore(model_dir), lambda m: NativeBackend(model_dir, m), **load)
        pieces = []
        result = await model.generator.generate(model.encode_raw(prompt), settings, pieces.append)
        return model, result, pieces

    return asyncio.run(run())


def test_streamed_pieces_add_up_to_the_decoded_text(model_dir):
    model, result, pieces = generate(model_dir, GenerationSettings(max_new_tokens=40, sampling=GREEDY))
    assert "".join(pieces) == result.text == model.tokenizer.decode(result.output_ids)
    assert result.finish_reason == "max_new_tokens" and len(result.output_ids) == 40
    assert all("\ufffd" not in p for p in pieces)


def test_stop_string_cuts_the_text_and_is_never_streamed(model_dir):
    _, free, _ = generate(model_dir, GenerationSettings(max_new_tokens=40, sampling=GREEDY))
    stop = free.text[10:16]  # a string the model will write
    _, result, pieces = generate(model_dir, GenerationSettings(max_new_tokens=40, sampling=GREEDY, stop_strings=(stop,)))
    assert result.finish_reason == "stop_string"
    assert result.text == free.text[: free.text.index(stop)]
    assert "".join(pieces) == result.text and all(stop not in p for p in pieces)
    assert len(result.output_ids) < 40


def test_stop_token_ends_generation(model_dir):
    model, free, _ = generate(model_dir, GenerationSettings(max_new_tokens=20, sampling=GREEDY))
    model.generator.stop_token_ids = [free.output_ids[5]]

    async def again():
        return await model.generator.generate(model.encode_raw(PROMPT), GenerationSettings(max_new_tokens=20, sampling=GREEDY))

    result = asyncio.run(again())
    assert result.finish_reason == "stop" and result.output_ids == free.output_ids[: free.output_ids.index(free.output_ids[5]) + 1]


def test_cancel_stops_after_the_current_token(model_dir):
    async def run():
        model = await load_model(LocalStore(model_dir), lambda m: NativeBackend(model_dir, m))
        seen = []

        def on_text(piece):
            seen.append(piece)
            if len(seen) == 3:
                model.generator.cancel()

        return await model.generator.generate(model.encode_raw(PROMPT), GenerationSettings(max_new_tokens=200, sampling=GREEDY), on_text)

    result = asyncio.run(run())
    assert result.finish_reason == "cancelled" and len(result.output_ids) < 10


def test_prompt_longer_than_the_context_is_refused_with_a_message(model_dir):
    with pytest.raises(ContextLimitError, match="context holds 16"):
        generate(model_dir, GenerationSettings(max_new_tokens=4, sampling=GREEDY), prompt=PROMPT * 4, max_context=16)


def test_generation_stops_at_the_context_limit(model_dir):
    _, result, _ = generate(model_dir, GenerationSettings(max_new_tokens=100, sampling=GREEDY), max_context=24)
    assert result.finish_reason == "context" and len(result.prompt_ids) + len(result.output_ids) == 24


def count_tokens_fed(engine) -> list[int]:
    """The tokens of each graph run of the engine's from now on (filled in as it runs)."""
    fed, run_graph = [], engine.backend.run

    async def counted(feeds, host_outputs):
        fed.append(feeds[engine.io["inputs"]["input_ids"]].shape[1])
        return await run_graph(feeds, host_outputs)

    engine.backend.run = counted
    return fed


def test_warm_up_runs_a_throwaway_chunk_that_the_next_prompt_waits_for_and_never_sees(model_dir):
    settings = GenerationSettings(max_new_tokens=12, sampling=GREEDY)
    _, cold, _ = generate(model_dir, settings)

    async def run():
        model = await load_model(LocalStore(model_dir), lambda m: NativeBackend(model_dir, m), prefill_chunk=16)
        engine = model.engine
        fed = count_tokens_fed(engine)
        engine.warm_up()  # not awaited: the prompt waits for it
        result = await model.generator.generate(model.encode_raw(PROMPT), settings)
        await engine.rope_ahead
        return engine, fed, result

    engine, fed, warm = asyncio.run(run())
    assert fed[0] == 16 and engine.warming is None  # one full chunk, finished before the prompt's runs
    assert {r.count for r in engine.rope.values()} == {min(ROPE_AHEAD, engine.max_context)}  # then the RoPE rows
    assert warm.output_ids == cold.output_ids and warm.stats["reused_tokens"] == 0


def test_a_short_rest_of_a_prompt_joins_its_last_prefill_run(model_dir):
    # a run of a few tokens would cost a whole run's fixed time: up to 1.5 chunks go in one run
    async def runs(length: int) -> list[int]:
        model = await load_model(LocalStore(model_dir), lambda m: NativeBackend(model_dir, m), prefill_chunk=8)
        fed = count_tokens_fed(model.engine)
        ids = model.encode_raw(PROMPT * 8)[:length]
        assert len(ids) == length
        await model.engine.prefill(ids)
        return fed

    assert [asyncio.run(runs(n)) for n in (5, 12, 13, 20, 21)] == [[5], [12], [8, 5], [8, 12], [8, 8, 5]]


def test_a_failed_warm_up_warns_and_leaves_the_prompt_to_run(model_dir):
    settings = GenerationSettings(max_new_tokens=6, sampling=GREEDY)
    _, cold, _ = generate(model_dir, settings)

    async def run():
        model = await load_model(LocalStore(model_dir), lambda m: NativeBackend(model_dir, m), prefill_chunk=16)
        engine = model.engine
        run_graph, calls = engine.backend.run, []

        async def failing_once(feeds, host_outputs):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("device lost")
            return await run_graph(feeds, host_outputs)

        engine.backend.run = failing_once
        engine.warm_up()
        return await model.generator.generate(model.encode_raw(PROMPT), settings)

    with pytest.warns(RuntimeWarning, match="warm-up failed: device lost"):
        result = asyncio.run(run())
    assert result.output_ids == cold.output_ids
