"""The documentation widget's plain logic under CPython: its attributes, and fitting a page's text into the system
prompt of the built-in model (counted with its tokenizer, room left for the conversation and the reply). While
models/tiny is missing (being retrained), a random tiny checkpoint stands in."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from webgemma.widget import PAGE_INTRO, PageContext, WidgetOptions, clean_text, conversation_room, fit_page

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "models" / "tiny"
HELDOUT = REPO / "models" / "heldout.txt"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    pytest.importorskip("onnx")
    from webgemma.backends.ort_native import NativeBackend
    from webgemma.model import load_model
    from webgemma.storage_local import LocalStore
    from webgemma_export.export import export

    base = tmp_path_factory.mktemp("widget")
    checkpoint = TINY
    if not (TINY / "config.json").is_file():  # while the built-in model is being trained: a random one
        from tests.support.checkpoints import make_checkpoint

        checkpoint = make_checkpoint(base / "checkpoint", kind="e2b")
    folder = export(checkpoint, base / "tiny", quant="int4", block_size=16, log=lambda _: None)
    load = load_model(LocalStore(folder), lambda m: NativeBackend(folder, m))
    with ThreadPoolExecutor(1) as pool:  # a loop of its own: the browser tests' Playwright may hold this thread's
        return pool.submit(asyncio.run, load).result()


def attributes(**values):
    return lambda name: values.get(name.replace("-", "_"))


def test_options_from_attributes():
    assert WidgetOptions.from_attributes(attributes()) == WidgetOptions()
    assert WidgetOptions.from_attributes(attributes(context="")).context == "page"  # <webgemma-chat context>
    o = WidgetOptions.from_attributes(attributes(model=" m/ ", context="#api", backend="WASM", max_new_tokens="32",
                                                 context_tokens="100", temperature="0", top_p="0.5", seed="7"))
    assert (o.model, o.context, o.backend, o.max_new_tokens, o.context_tokens, o.temperature, o.top_p, o.seed) == \
        ("m/", "#api", "wasm", 32, 100, 0.0, 0.5, 7)
    for bad, name in ((dict(backend="gpu"), "backend"), (dict(max_new_tokens="many"), "max-new-tokens"),
                      (dict(max_new_tokens="0"), "max-new-tokens"), (dict(temperature="-1"), "temperature")):
        with pytest.raises(ValueError, match=name):
            WidgetOptions.from_attributes(attributes(**bad))


def test_settings_take_the_models_defaults_unless_given():
    defaults = {"temperature": 0.7, "top_p": 0.9, "top_k": 40}
    s = WidgetOptions().settings(defaults)
    assert (s.sampling.temperature, s.sampling.top_p, s.sampling.top_k, s.max_new_tokens) == (0.7, 0.9, 40, 256)
    s = WidgetOptions(temperature=0.0, max_new_tokens=9).settings(defaults)
    assert (s.sampling.temperature, s.max_new_tokens) == (0.0, 9)


def test_clean_text():
    assert clean_text("  a \t b  \n\n\n\n c\u00a0 d \n") == "a b\n\nc d"


def test_a_short_page_goes_in_whole(model):
    page = "The Foo API.\n\nfoo(x) returns the bar of x."
    ctx = fit_page(model.tokenizer, model.template, page, max_context=model.engine.max_context, max_new_tokens=64)
    total = len(model.tokenizer.encode(page, add_special_tokens=False))
    assert ctx == PageContext(PAGE_INTRO + page, total, total)
    assert ctx.note == f"Using the page's text ({total} tokens)."


def test_a_long_page_is_cut_to_leave_room_for_the_conversation_and_the_reply(model):
    page = HELDOUT.read_text()
    max_context, reply = model.engine.max_context, 200
    ctx = fit_page(model.tokenizer, model.template, page, max_context=max_context, max_new_tokens=reply)
    assert ctx.truncated and ctx.total == len(model.tokenizer.encode(clean_text(page), add_special_tokens=False))
    assert ctx.note == f"Using the first {ctx.used:,} of {ctx.total:,} tokens of the page."
    kept = ctx.system.removeprefix(PAGE_INTRO)
    assert clean_text(page).startswith(kept) and len(kept) > 1000
    # the system turn fills what the reply and the conversation leave of the context (re-encoding the cut text
    # may merge a token or two differently)
    system_turn = model.template.encode(model.tokenizer, [{"role": "system", "content": ctx.system}],
                                        add_generation_prompt=True)
    assert abs(len(system_turn) + reply + conversation_room(max_context) - max_context) <= 4


def test_a_page_limit_and_a_page_that_cannot_fit(model):
    page = HELDOUT.read_text()
    capped = fit_page(model.tokenizer, model.template, page, max_context=model.engine.max_context,
                      max_new_tokens=64, limit=50)
    assert capped.used == 50 and capped.note.startswith("Using the first 50 of ")
    none = fit_page(model.tokenizer, model.template, page, max_context=300, max_new_tokens=250, intro="Be brief.")
    assert none.used == 0 and none.system == "Be brief." and "do not fit" in none.note
    empty = fit_page(model.tokenizer, model.template, " \n ", max_context=2048, max_new_tokens=64)
    assert empty.total == 0 and "no text" in empty.note
