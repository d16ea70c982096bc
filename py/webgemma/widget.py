"""The documentation widget's controller: `<webgemma-chat>` boxes on any page. `widget.mjs` (web/widget/) draws a
box with a "Start the model" button and loads nothing else; when the reader starts one it boots Pyodide from the
files beside it and hands the box here:

    configure(base_url)          once per page: where the webgemma site's files lie (the folder of widget.mjs)
    create(host, box).start()    one box: build its chat UI, load or join its model, answer questions

Every box on a page shares one Pyodide and, per model URL, one loaded model (one engine, one KV cache): boxes
take turns generating and each keeps its own conversation. With `context="page"` or `context="#selector"` the
page's text goes into the system prompt, cut to fit the model's context. Model output is written as text, never
as HTML. The DOM is reached only through webgemma.browser; options and context fitting are plain Python and run
under CPython too (tests/runtime/test_widget_options.py).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import browser
from .backends.ort_web import OrtWebBackend
from .browser import Element
from .chat import split_thought
from .chat_template import ChatTemplate
from .engine import ContextLimitError
from .generation import GenerationSettings
from .model import Model
from .sampling import SamplingSettings
from .storage_web import Progress, describe_progress
from .tokenizer import Tokenizer
from .web_model import open_web_model

PAGE_INTRO = "Answer questions about this page. Its text follows.\n\n"
HINT = "Enter sends, Shift+Enter starts a new line, Escape stops."


# ---------------------------------------------------------------- options (the element's attributes)


@dataclass(frozen=True)
class WidgetOptions:
    """What a `<webgemma-chat>` element's attributes ask for (see examples/README.md)."""

    model: str | None = None  # model folder URL, relative to the page; None: the model of the widget's own site
    context: str | None = None  # "page", a CSS selector, or None (no page text)
    backend: str = "auto"  # auto | webgpu | wasm
    system: str | None = None  # system prompt (with a context: what comes before the page's text)
    max_new_tokens: int = 256
    context_tokens: int | None = None  # at most this many tokens of page text (default: as many as fit)
    temperature: float | None = None  # None: the model's generation defaults
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None

    @classmethod
    def from_attributes(cls, attribute: Callable[[str], str | None]) -> WidgetOptions:
        """Options from `attribute(name)` (the element's getAttribute); a malformed value raises ValueError
        naming the attribute."""

        def number(name: str, kind: type, low: float) -> Any:
            text = attribute(name)
            if text is None or not text.strip():
                return None
            try:
                value = kind(text)
            except ValueError:
                raise ValueError(f'attribute {name}="{text}" is not a {kind.__name__} number') from None
            if value < low:
                raise ValueError(f'attribute {name}="{text}" must be at least {low}')
            return value

        backend = (attribute("backend") or "auto").strip().lower()
        if backend not in ("auto", "webgpu", "wasm"):
            raise ValueError(f'attribute backend="{backend}" must be auto, webgpu or wasm')
        context = attribute("context")
        context = None if context is None else context.strip() or "page"  # a bare `context` means the page
        return cls(
            model=(attribute("model") or "").strip() or None,
            context=context,
            backend=backend,
            system=attribute("system") or None,
            max_new_tokens=number("max-new-tokens", int, 1) or cls.max_new_tokens,
            context_tokens=number("context-tokens", int, 0),
            temperature=number("temperature", float, 0),
            top_p=number("top-p", float, 0),
            top_k=number("top-k", int, 0),
            seed=number("seed", int, 0),
        )

    def settings(self, defaults: dict) -> GenerationSettings:
        """Generation settings: these options over the model's own defaults (manifest `generation`)."""

        def pick(mine: Any, key: str, fallback: Any) -> Any:
            return mine if mine is not None else defaults.get(key, fallback)

        sampling = SamplingSettings(temperature=pick(self.temperature, "temperature", 1.0),
                                    top_p=pick(self.top_p, "top_p", 0.95), top_k=pick(self.top_k, "top_k", 64),
                                    seed=self.seed)
        return GenerationSettings(max_new_tokens=self.max_new_tokens, sampling=sampling)


# ---------------------------------------------------------------- the page's text in the system prompt


@dataclass(frozen=True)
class PageContext:
    system: str  # the system prompt, page text included
    used: int  # tokens of the page's text in it
    total: int  # tokens of the page's whole text

    @property
    def truncated(self) -> bool:
        return self.used < self.total

    @property
    def note(self) -> str:
        if self.total == 0:
            return "This page has no text to read: answering without it."
        if self.used == 0:
            return f"The page's {self.total:,} tokens do not fit in the model's context: answering without them."
        if self.truncated:
            return f"Using the first {self.used:,} of {self.total:,} tokens of the page."
        return f"Using the page's text ({self.total:,} tokens)."


def conversation_room(max_context: int) -> int:
    """Tokens kept free for the conversation's own turns (questions and earlier answers)."""
    return min(max(max_context // 4, 128), 4096)


def clean_text(text: str) -> str:
    """innerText tidied: no trailing spaces, at most one empty line in a row."""
    lines = [re.sub(r"[ \t\u00a0]+", " ", line).strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def fit_page(tokenizer: Tokenizer, template: ChatTemplate, page_text: str, *, max_context: int, max_new_tokens: int,
             intro: str | None = None, limit: int | None = None) -> PageContext:
    """The system prompt `intro` + the page's text, cut (at a token boundary, counted with the model's tokenizer)
    so that the prompt leaves room for the reply (`max_new_tokens`) and the conversation (`conversation_room`);
    `limit` caps the page's tokens further."""
    intro = PAGE_INTRO if intro is None else intro.rstrip() + "\n\n"
    text = clean_text(page_text)
    ids = tokenizer.encode(text, add_special_tokens=False, parse_special=False) if text else []
    frame = len(template.encode(tokenizer, [{"role": "system", "content": intro}], add_generation_prompt=True))
    budget = max(0, max_context - max_new_tokens - conversation_room(max_context) - frame)
    if limit is not None:
        budget = min(budget, limit)
    used = min(len(ids), budget)
    if used < len(ids):
        text = tokenizer.decode(ids[:used]).rstrip() if used else ""
    return PageContext(intro + text if text else intro.rstrip(), used, len(ids))


# ---------------------------------------------------------------- one model per URL, shared by the boxes


class SharedModel:
    """One model URL's load, joined by every box that asks for it, and the turn lock of its one engine."""

    def __init__(self, url: str, backend: str) -> None:
        self.url = url
        self.listeners: set[Callable[[Progress], None]] = set()  # boxes following the download
        self.last_progress = None
        self.lock = asyncio.Lock()  # one generation at a time: one engine, one KV cache
        self.notices: list[str] = []
        self.task = asyncio.ensure_future(self._load(backend))

    def _progress(self, p: Progress) -> None:
        self.last_progress = p
        for listener in list(self.listeners):
            listener(p)

    async def _load(self, backend: str) -> tuple[Model, OrtWebBackend]:
        model, engine_backend, report = await open_web_model(self.url, ep=backend, on_progress=self._progress)
        if report.refetched:
            self.notices.append("Damaged model files were found in the browser's storage and downloaded again: "
                                f"{', '.join(report.refetched)}.")
        if engine_backend.notice:
            self.notices.append(engine_backend.notice)
        return model, engine_backend

    async def ready(self, on_progress: Callable[[Progress], None]) -> tuple[Model, OrtWebBackend]:
        """(Model, backend) once loaded; `on_progress` follows the download meanwhile."""
        self.listeners.add(on_progress)
        if self.last_progress is not None:
            on_progress(self.last_progress)
        try:
            return await asyncio.shield(self.task)
        finally:
            self.listeners.discard(on_progress)

    @property
    def failed(self) -> bool:
        return self.task.done() and (self.task.cancelled() or self.task.exception() is not None)


_models: dict[str, SharedModel] = {}


def shared_model(url: str, backend: str) -> SharedModel:
    """The load of `url` (absolute), started by the first box that asks; a failed load is tried again."""
    if url not in _models or _models[url].failed:
        _models[url] = SharedModel(url, backend)
    return _models[url]


def configure(base_url: str) -> None:
    """Called once by widget.mjs: the site's files lie under `base_url`; notices go to the boxes, not #notice."""
    browser.set_asset_base(base_url)
    browser.on_notice(lambda text: None)  # the boxes show their model's notices themselves


async def default_model_url() -> str:
    """The model of the site the widget came from (site.json's model_url, relative to the site)."""
    try:
        site = await browser.fetch_json(browser.asset_url("site.json"))
    except OSError as e:
        raise OSError(f"no model attribute, and the widget's site.json could not be read ({e})") from None
    return browser.resolve_url(site["model_url"], browser.asset_url("./"))


# ---------------------------------------------------------------- one box


class ChatBox:
    """One `<webgemma-chat>`: its UI inside the box drawn by widget.mjs, its conversation, its share of a model."""

    def __init__(self, host: Element, box: Element) -> None:
        self.host, self.box = host, box
        self.status = box.query(".status")
        self.start_button = box.query(".start")
        self.options = WidgetOptions()
        self.shared: SharedModel | None = None
        self.model = self.backend = self.chat = None
        self.context: PageContext | None = None
        self.busy = self.generating = self.stop_requested = False
        self.el: dict[str, Element] = {}

    # ---- UI

    def build(self) -> None:
        """The chat UI below the status line (once; a retry after an error reuses it)."""
        if self.el:
            return
        box = self.box
        el = self.el
        el["progress"] = box.add("div", cls="progress", hidden="")
        el["bar"] = el["progress"].add("progress", max="100", value="0", aria_label="Download")
        el["progress-text"] = el["progress"].add("span", cls="progress-text")
        el["notice"] = box.add("p", cls="notice", hidden="")
        el["note"] = box.add("p", cls="note", hidden="")
        el["log"] = box.add("div", cls="log", role="log", aria_live="polite", aria_label="Conversation", hidden="")
        el["form"] = form = box.add("form", cls="composer", hidden="", autocomplete="off")
        label = form.add("label", cls="visually-hidden", text="Message")
        label.set(htmlFor="prompt")
        el["prompt"] = form.add("textarea", id="prompt", rows="2", placeholder="Ask a question…",
                                aria_describedby="hint", disabled="")
        buttons = form.add("div", cls="buttons")
        el["send"] = buttons.add("button", type="submit", cls="send", text="Send", disabled="")
        el["stop"] = buttons.add("button", type="button", cls="stop", text="Stop", disabled="")
        el["new"] = buttons.add("button", type="button", cls="new", text="New chat", disabled="")
        el["hint"] = form.add("p", id="hint", cls="hint", text=HINT)
        el["stats"] = box.add("p", cls="stats", aria_live="off")
        form.on("submit", self.on_submit, prevent_default=True)
        el["prompt"].on("keydown", self.on_prompt_key)
        # the reader is about to ask: typing, pasting, or the pointer on its way to the prompt or to Send
        el["prompt"].on("input", self.on_near)
        form.on("pointerover", self.on_near)
        box.on("keydown", self.on_box_key)
        el["stop"].on("click", lambda _: self.stop())
        el["new"].on("click", lambda _: self.on_new_chat())

    def state(self, name: str) -> None:
        """data-state on the element: idle, starting, loading, ready, busy or error (for pages' CSS and tests)."""
        self.host.attr("data-state", name)

    def say(self, text: str, *, error: bool = False) -> None:
        self.status.text = text
        self.status.toggle_class("error", error)

    def show_progress(self, p: Progress) -> None:
        self.el["progress"].set(hidden=False)
        self.el["bar"].set(value=p.percent)
        self.el["progress-text"].text = describe_progress(p)
        self.say("Downloading the model…" if p.phase != "verify" else "Checking the model…")

    def fail(self, message: str) -> None:
        """An error the reader can see (never a blank box), with the start button back as "Try again"."""
        self.state("error")
        self.say(message, error=True)
        self.el["progress"].set(hidden=True)
        if self.start_button is not None:
            self.start_button.text = "Try again"
            self.start_button.attr("aria-disabled", None)
            self.start_button.set(hidden=False)

    # ---- loading

    async def start(self) -> None:
        self.state("loading")
        self.build()
        self.say("Loading the model…")
        try:
            self.options = WidgetOptions.from_attributes(self.host.attribute)
            url = browser.resolve_url(self.options.model) if self.options.model else await default_model_url()
            url = url if url.endswith("/") else url + "/"
            self.shared = shared_model(url, self.options.backend)
            self.model, self.backend = await self.shared.ready(self.show_progress)
            self.new_chat(focus=False)
        except Exception as e:  # every failure ends as text in the box
            self.fail(f"Could not start the model: {type(e).__name__}: {e}")
            return
        self.el["progress"].set(hidden=True)
        for notice in self.shared.notices:
            self.el["notice"].text = notice
            self.el["notice"].set(hidden=False)
        focus_here = self.start_button is not None and self.start_button.has_focus
        if self.start_button is not None:
            self.start_button.set(hidden=True)
        for name in ("log", "form"):
            self.el[name].set(hidden=False)
        self.enable(True)
        manifest = self.model.manifest.raw
        self.say(f"Ready: {manifest['source']['checkpoint']} ({manifest['quantization']['weights']}) on "
                 f"{self.backend.name}.")
        self.state("ready")
        if focus_here:
            self.el["prompt"].focus()

    def page_context(self) -> PageContext | None:
        if self.options.context is None:
            return None
        selector = None if self.options.context == "page" else self.options.context
        model = self.model
        return fit_page(model.tokenizer, model.template, browser.page_text(selector),
                        max_context=model.engine.max_context, max_new_tokens=self.options.max_new_tokens,
                        intro=self.options.system, limit=self.options.context_tokens)

    def new_chat(self, *, focus: bool = True) -> None:
        self.context = self.page_context()
        system = self.context.system if self.context else self.options.system
        self.chat = self.model.chat(system=system)
        if self.context:
            self.el["note"].text = self.context.note
            self.el["note"].set(hidden=False)
        if "log" in self.el:
            self.el["log"].clear()
            self.el["stats"].text = ""
        if focus:
            self.el["prompt"].focus()

    def on_new_chat(self) -> None:
        try:
            self.new_chat()
        except Exception as e:  # e.g. the context's element is gone from the page
            self.say(f"Could not start a new chat: {type(e).__name__}: {e}", error=True)
            return
        self.say("Ready.")

    # ---- asking

    def enable(self, ready: bool) -> None:
        self.busy = not ready
        self.el["prompt"].set(disabled=False)  # stays usable while busy: the next question can be typed
        self.el["send"].set(disabled=not ready)
        self.el["new"].set(disabled=not ready)
        self.el["stop"].set(disabled=ready)

    def on_prompt_key(self, event: Any) -> None:
        if event.key == "Enter" and not event.shiftKey and not event.isComposing:
            event.preventDefault()
            self.el["form"].submit()

    def on_near(self, _event: Any) -> None:
        if self.backend is not None and not self.shared.lock.locked():  # no box is generating
            asyncio.ensure_future(self.backend.keep_warm())

    def on_box_key(self, event: Any) -> None:
        if event.key == "Escape" and self.busy:
            event.preventDefault()
            self.stop()

    def stop(self) -> None:
        """Stops this box's generation (after the current token), or its turn if it is still waiting."""
        if not self.busy:
            return
        self.stop_requested = True
        if self.generating:
            self.model.generator.cancel()

    async def on_submit(self, _event: Any) -> None:
        text = self.el["prompt"].value
        if self.busy or self.model is None or not text.strip():
            return
        self.el["prompt"].value = ""
        await self.ask(text)

    def stream(self, reply: Element, piece: str) -> None:
        reply.append_text(piece)
        self.el["log"].set(scrollTop=1 << 30)  # the conversation scrolls, never the reader's page

    async def ask(self, text: str) -> None:
        log = self.el["log"]
        turn = log.add("div", cls="message user")
        turn.add("span", cls="visually-hidden", text="You: ")
        turn.add("span", cls="text", text=text)
        turn = log.add("div", cls="message model", aria_busy="true")
        turn.add("span", cls="visually-hidden", text="Model: ")
        reply = turn.add("span", cls="text")
        refocus = self.el["send"].has_focus
        self.enable(False)
        self.state("busy")
        self.stop_requested = False
        try:
            if self.shared.lock.locked():
                self.say("Waiting for another box on this page to finish…")
            async with self.shared.lock:
                if self.stop_requested:
                    reply.text = "(stopped before it began)"
                    return
                self.say("Writing…")
                self.generating = True
                settings = self.options.settings(self.model.manifest.raw.get("generation", {}))
                result = await self.chat.send(text, settings, lambda piece: self.stream(reply, piece))
        except ContextLimitError as e:
            reply.text = str(e)
            turn.toggle_class("failed", True)
            self.say("The conversation is too long for the model: start a new chat.")
            return
        except Exception as e:
            reply.text = f"Error: {type(e).__name__}: {e}"
            turn.toggle_class("failed", True)
            self.say(f"The model failed: {type(e).__name__}: {e}", error=True)
            return
        finally:
            self.generating = False
            turn.attr("aria-busy", None)
            self.enable(True)
            if self.host.attribute("data-state") == "busy":
                self.state("ready")
            if refocus:
                self.el["prompt"].focus()
        thought, answer = split_thought(result.text)
        reply.text = answer  # the streamed pieces become one text node
        s = result.stats
        stopped = result.finish_reason == "cancelled"
        self.el["stats"].text = (f"{len(result.output_ids)} tokens · {s['tokens_per_s']:.1f} tokens/s · "
                                 f"{self.backend.name}" + (" · stopped" if stopped else ""))
        self.say("Stopped." if stopped else "Ready.")
        self.el["log"].set(scrollTop=1 << 30)
        self.host.emit("webgemma-reply", {
            "text": answer, "thought": thought, "prompt_ids": result.prompt_ids, "output_ids": result.output_ids,
            "finish_reason": result.finish_reason, "backend": self.backend.name,
            "tokens_per_s": s["tokens_per_s"], "ttft_ms": s["ttft_ms"],
        })


def create(host: Any, box: Any) -> ChatBox:
    """Called by widget.mjs when the reader first starts a box; it then awaits `start()` (again after an error).
    `host` is the <webgemma-chat> element, `box` the container inside its shadow root."""
    return ChatBox(Element(host), Element(box))
