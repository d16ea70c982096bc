"""Page entry: PyScript runs this once Pyodide has loaded numpy, jinja2 and webgemma (see pyscript.json).

It loads the model (download progress, sha256 checks, WebGPU or wasm), then runs the chat. Model output is always
written as text (textContent / text nodes), never as HTML.

URL parameters, for tests and benchmarks: model=URL prompt=TEXT max_new_tokens=N temperature=T top_p=P top_k=K
min_p=M repetition_penalty=R seed=S raw=1 system=TEXT thinking=1 autorun=1 backend=webgpu|wasm max_context=N verify=1 (hash cached files again)
verbose=1 (record onnxruntime's node placement) prefill_chunk=N; for benchmarks prompt_tokens=N (a synthetic raw
prompt of N token ids), ignore_stop=1 (generate max_new_tokens whatever is sampled), stop_ids=A,B (these stop token
ids instead of the model's), then=TEXT (after the first reply, generate again from the prompt, the reply and TEXT:
a follow-up that reuses the cache; its tokens in `then_output_ids`, its prompt's length and time to first token in
`then_prompt_tokens` and `then_ttft_ms`), capture=0 (decode without the graph-captured
step session), step=graph (decode through the graph-captured step graph, not the hand-written WebGPU kernels of
webgemma.kernel_plan), kernel_lanes=8|16|...|256 (every kernel matvec's lanes per row), kernel_subgroups=0 (the
kernels add through workgroup memory, not by subgroup operations, where the device has subgroups), kernel_merge=0
(the attention's merge always its own dispatch, not done by o_proj's workgroups where its chunks are few), kernel_q8=0
(the matvecs' inputs float32, not quantized to int8 by their producers), scores=1 (each output token's scores, the
top-k values and ids it was sampled from or all the logits, in `scores`), profile=1 (the
kernels' GPU time by kind in `kernel_profile_ms`, and each step's in `step_times.gpu_ms`, its times in
`step_times.trace`), encode_ahead=0 (encode each kernel step's commands once its inputs are known, not during the step
before), submits=N (an unchained kernel step's pass in N submits; 4 by default, chained steps go in one),
repeat=N (with prompt_tokens: N prompts of that length one after another, the later ones' stats in `repeats`),
grow=N (each repeat N tokens longer than the one before), gap_ms=N (wait N ms before each repeat), think_ms=N (wait
N ms after loading before the prompt, as a reader typing it would), typing=1 (keystrokes every 200 ms while waiting
think_ms or gap_ms), near_ms=N (the pointer over the prompt's form for the last N ms of think_ms or gap_ms),
wait_copies=1 (the copies in OPFS of the per-layer table and the decoder's shards ready before the prompt; `copies`
says where rows were read, `upload_from` where this load's upload read the shards: "opfs" or "blobs"),
wait_table=1 (the kernels' per-layer table on the GPU before the prompt, so that their steps chain; `table` says where it is), chain=N (N kernel steps, at
most 4, queued at once, each sampling the next one's token on the GPU; 0: one at a time, sampled in Python), gpu_table=0 (the
kernels read each step's per-layer row from storage, never from the GPU), ort_start=0 (onnxruntime-web starts when
the model loads, not while Python boots: boot.mjs), warm=0 (no throwaway prefill run after loading: the first prompt
builds onnxruntime-web's pipelines itself), fill=0 (with the kernels, prompts through the whole prefill graph, not
through the graph cut to the caches with the last token through a kernel step). With autorun the page generates once and sets
window.webgemmaResult = {output_ids, text, backend, ttft_ms, tokens_per_s, prefill_tokens_per_s, load_ms (from
Python's start), ready_ms (from the navigation), ort_start_ms ([start, end] of onnxruntime-web's start while booting),
upload_trace (per weights file: [path, bytes, and when the upload's loop started it, had its bytes, had a staging
buffer, had submitted its copies]), long_tasks ([start, duration] of the main thread's long tasks), ...}
(or {error} when it cannot).
"""

import asyncio
import sys
import time

import jinja2
import numpy as np
import webgemma
from webgemma import browser
from webgemma.browser import Element
from webgemma.chat import split_thought
from webgemma.engine import ContextLimitError
from webgemma.generation import GenerationSettings
from webgemma.sampling import SamplingSettings
from webgemma.storage_web import describe_progress
from webgemma.web_model import open_web_model


async def environment() -> dict:
    """What this page runs on, for the status line, the tests and bug reports."""
    return {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "jinja2": jinja2.__version__,
        "webgemma": webgemma.__version__,
        "cross_origin_isolated": browser.cross_origin_isolated(),
        "webgpu": await browser.webgpu_adapter(),
    }


class ChatPage:
    """The chat UI over one loaded model: a conversation, a composer, a stop button, settings and statistics."""

    def __init__(self, model, backend, params: dict):
        self.model, self.backend, self.params = model, backend, params
        self.el = {name: Element.by_id(name) for name in (
            "app", "conversation", "composer", "prompt", "send", "stop", "new-chat", "stats", "system", "thinking",
            "temperature", "top-p", "max-tokens")}
        defaults = model.manifest.raw.get("generation", {})
        self.el["temperature"].value = str(params.get("temperature", defaults.get("temperature", 1.0)))
        self.el["top-p"].value = str(params.get("top_p", defaults.get("top_p", 0.95)))
        self.el["max-tokens"].value = str(params.get("max_new_tokens", 512))
        self.el["system"].value = params.get("system", "")
        self.el["thinking"].checked = params.get("thinking") == "1"
        self.chat = None
        self.busy = False
        self.el["composer"].on("submit", self.on_submit, prevent_default=True)
        self.el["prompt"].on("keydown", self.on_key)
        # the reader is about to send: typing, pasting, or the pointer on its way to the prompt or to Send
        self.el["prompt"].on("input", self.on_near)
        self.el["composer"].on("pointerover", self.on_near)
        self.el["stop"].on("click", lambda _: model.generator.cancel())
        self.el["new-chat"].on("click", lambda _: self.new_chat())

    def settings(self) -> GenerationSettings:
        p = self.params
        sampling = SamplingSettings(
            temperature=float(self.el["temperature"].value), top_p=float(self.el["top-p"].value),
            top_k=int(p.get("top_k", 64)), min_p=float(p.get("min_p", 0)),
            repetition_penalty=float(p.get("repetition_penalty", 1)), seed=int(p["seed"]) if "seed" in p else None)
        return GenerationSettings(max_new_tokens=int(self.el["max-tokens"].value), sampling=sampling)

    def new_chat(self) -> None:
        self.chat = None
        self.el["conversation"].clear()
        self.el["stats"].text = ""
        self.el["prompt"].focus()

    def current_chat(self):
        system, thinking = self.el["system"].value.strip() or None, self.el["thinking"].checked
        if self.chat is None:
            self.chat = self.model.chat(system=system, thinking=thinking)
        self.chat.thinking = thinking  # settings apply from the next turn; the engine re-reads what changed
        if system is not None:
            if self.chat.messages and self.chat.messages[0]["role"] == "system":
                self.chat.messages[0]["content"] = system
            else:
                self.chat.messages.insert(0, {"role": "system", "content": system})
        elif self.chat.messages and self.chat.messages[0]["role"] == "system":
            self.chat.messages.pop(0)
        return self.chat

    def enable(self, ready: bool) -> None:
        self.busy = not ready
        for name in ("prompt", "send", "new-chat"):
            self.el[name].set(disabled=not ready)
        self.el["stop"].set(disabled=ready)

    def on_key(self, event) -> None:
        if event.key == "Enter" and not event.shiftKey and not event.isComposing:
            event.preventDefault()
            self.el["composer"].submit()

    def on_near(self, _event) -> None:
        if not self.busy:
            asyncio.ensure_future(self.backend.keep_warm())

    async def on_submit(self, _event) -> None:
        text = self.el["prompt"].value
        if self.busy or not text.strip():
            return
        self.el["prompt"].value = ""
        await self.ask(text, raw=False)
        self.el["prompt"].focus()

    async def ask(self, text: str, raw: bool):
        """Shows the prompt and streams the reply; returns the GenerationResult (None if it failed)."""
        conversation = self.el["conversation"]
        conversation.add("div", cls="message user", text=text)
        bubble = conversation.add("div", cls="message model")
        self.enable(False)
        try:
            if raw:
                result = await self.model.generator.generate(self.model.encode_raw(text), self.settings(), bubble.append_text)
            else:
                result = await self.current_chat().send(text, self.settings(), bubble.append_text)
        except ContextLimitError as e:
            bubble.text = str(e)
            bubble.toggle_class("failed", True)
            return e
        finally:
            self.enable(True)
        # the streamed pieces become one text node (a long reply would otherwise be thousands of them)
        thought, answer = split_thought(result.text)
        bubble.clear()
        if thought:
            bubble.add("span", cls="thought", text=thought)
        bubble.append_text(answer)
        s = result.stats
        self.el["stats"].text = (f"{len(result.output_ids)} tokens · {s['tokens_per_s']:.1f} tokens/s · first token "
                                 f"{s['ttft_ms']:.0f} ms · prompt {s['prefill_tokens_per_s']:.0f} tokens/s · {self.backend.name}"
                                 + (" · stopped" if result.finish_reason == "cancelled" else ""))
        bubble.scroll_into_view()
        return result


def synthetic_prompt(model, length: int, variant: int = 0) -> list[int]:
    """<bos> and `length - 1` deterministic ordinary token ids over the model's whole vocabulary (the benchmarks'
    random-weight models have a small tokenizer; their table rows must spread like a real prompt's): prompts of an
    exact length for benchmarks. Another `variant` has other tokens."""
    first = len(model.tokenizer.special_ids)
    span = int(model.manifest.arch["vocab_size"]) - first
    return [model.tokenizer.token_to_id("<bos>")] + [first + (i * 7919 + variant * 104729) % span for i in range(length - 1)]


async def pause(page: ChatPage, params: dict, ms: int) -> None:
    """Waits `ms` as a reader would before sending: with typing=1 a keystroke every 200 ms; with near_ms=N the
    pointer over the prompt's form for the last N ms (ChatPage.on_near: keeps the GPU warm as keystrokes do)."""
    near = min(ms, int(params.get("near_ms", 0))) / 1000
    end = time.perf_counter() + ms / 1000
    while (left := end - time.perf_counter()) > 0:
        if params.get("typing") == "1" or (near and left <= near):
            await page.backend.keep_warm()
        wake = left - near if left > near else left  # the pointer's arrival, then the end
        await asyncio.sleep(min(wake, 0.2))


async def autorun(page: ChatPage, params: dict, load_phases: dict, step: str, ready_ms: float) -> None:
    await pause(page, params, int(params.get("think_ms", 0)))
    store = page.model.engine.rows.store
    if params.get("wait_copies") == "1" and store.copying:
        await store.copying
    static = page.model.engine.static
    t_table = time.perf_counter()
    if params.get("wait_table") == "1" and static and static.session.uploading:
        await static.session.uploading
    table_wait_ms = (time.perf_counter() - t_table) * 1000
    if "chain" in params:
        page.model.engine.chain_depth = int(params["chain"])
    if static and step == "kernels":
        static.session.configure(time_steps=params.get("profile") == "1", encode_ahead=params.get("encode_ahead") != "0",
                                 submits=int(params["submits"]) if "submits" in params else None)
    page.model.engine.keep_scores = params.get("scores") == "1"
    if params.get("ignore_stop") == "1":
        page.model.generator.stop_token_ids = []
    if "stop_ids" in params:
        page.model.generator.stop_token_ids = [int(i) for i in params["stop_ids"].split(",")]
    if "prompt_tokens" in params:
        model, ids = page.model, synthetic_prompt(page.model, int(params["prompt_tokens"]))
        outcome = await model.generator.generate(ids, page.settings())
    else:
        outcome = await page.ask(params.get("prompt", ""), raw=params.get("raw") == "1")
    if isinstance(outcome, Exception):
        browser.set_global("webgemmaResult", {"error": str(outcome), "backend": page.backend.name})
        return
    s = outcome.stats
    repeats = []  # the same length again (or longer), other tokens: what the first prompt paid once (e.g. pipelines)
    for variant in range(1, int(params.get("repeat", 1)) if "prompt_tokens" in params else 0):
        await pause(page, params, int(params.get("gap_ms", 0)))
        again_ids = synthetic_prompt(model, len(ids) + variant * int(params.get("grow", 0)), variant)
        again = await model.generator.generate(again_ids, page.settings())
        repeats.append({k: again.stats[k] for k in ("ttft_ms", "tokens_per_s", "prefill_tokens_per_s", "prefill_ms")}
                       | {"prompt_tokens": len(again_ids)})
    then = {}
    if "then" in params:
        ids = outcome.prompt_ids + outcome.output_ids + page.model.tokenizer.encode(params["then"], add_special_tokens=False)
        again = await page.model.generator.generate(ids, page.settings())
        then = {"then_output_ids": again.output_ids, "then_prompt_tokens": len(ids), "then_ttft_ms": again.stats["ttft_ms"],
                "then_reused_tokens": again.stats["reused_tokens"], "then_prefill_ms": again.stats["prefill_ms"]}
    profile = await static.session.profile() if static and params.get("profile") == "1" else None
    browser.set_global("webgemmaResult", {
        "prompt_ids": outcome.prompt_ids, "output_ids": outcome.output_ids, "text": outcome.text,
        "finish_reason": outcome.finish_reason, "backend": page.backend.name, "ttft_ms": s["ttft_ms"],
        "tokens_per_s": s["tokens_per_s"], "prefill_tokens_per_s": s["prefill_tokens_per_s"],
        "load_ms": load_phases["total"], "load_phases_ms": load_phases, "prefill_ms": s["prefill_ms"],
        "memory": browser.memory_usage(), "ms_per_step": s["ms_per_step"], "graph_capture": s["graph_capture"],
        "step_times": browser.get_global("webgemmaStepTimes"), "repeats": repeats, "step": step,
        "kernel_profile_ms": profile, "copies": store.copies, "chained": s["chained"],
        "table": static.session.table if static else None, "table_wait_ms": table_wait_ms, **then,
        "kernel_subgroups": bool(static and static.session.plan and static.session.plan.subgroups),
        "kernel_q8": bool(static and static.session.plan and static.session.plan.quantized),
        "fills": page.backend.fills,
        "scores": [[s.values.tolist(), None if s.ids is None else s.ids.tolist()] for s in outcome.scores],
        "ready_ms": ready_ms, "ort_start_ms": browser.get_global("webgemmaOrtStart"),
        "upload_from": browser.get_global("webgemmaUploadFrom"), "long_tasks": browser.get_global("webgemmaLongTasks"),
        "upload_trace": browser.get_global("webgemmaUploadTrace"),
    })


async def start(site: dict, env: dict, params: dict) -> None:
    status = browser.set_status
    download = Element.by_id("download")
    bar, bar_text = Element.by_id("download-bar"), Element.by_id("download-text")

    def on_progress(p) -> None:
        download.set(hidden=False)
        bar.set(value=p.percent)
        bar_text.text = describe_progress(p)

    t0 = time.perf_counter()
    status("loading the model…")
    model, backend, report = await open_web_model(
        params.get("model") or site["model_url"], ep=params.get("backend", "auto"), on_progress=on_progress,
        reverify=params.get("verify") == "1", verbose_log=params.get("verbose") == "1",
        max_context=int(params["max_context"]) if "max_context" in params else None,
        prefill_chunk=int(params["prefill_chunk"]) if "prefill_chunk" in params else None,
        capture=params.get("capture") != "0",
        kernels=params.get("step") != "graph",
        kernel_options={name: int(params["kernel_" + name]) for name in ("lanes", "subgroups", "merge", "q8")
                        if "kernel_" + name in params},
        table_on_gpu=params.get("gpu_table") != "0", warm_up=params.get("warm") != "0", fill=params.get("fill") != "0")
    load_ms = (time.perf_counter() - t0) * 1000
    ready_ms = browser.page_time_ms()
    download.set(hidden=True)
    if report.refetched:
        browser.show_notice(f"Damaged model files were found in the browser's storage and downloaded again: "
                            f"{', '.join(report.refetched)}.")
    if params.get("verbose") == "1":
        placement = backend.placement
        browser.set_global("webgemmaPlacement", {"counts": placement.counts, "nodes": placement.nodes})
    page = ChatPage(model, backend, params)
    Element.by_id("app").set(hidden=False)
    quant = model.manifest.raw["quantization"]["weights"]
    status(f"ready: {model.manifest.raw['source']['checkpoint']} ({quant}) on {backend.name}, loaded in {load_ms / 1000:.1f} s")
    page.enable(True)
    if params.get("autorun") == "1":
        await autorun(page, params, report.phases_ms | {"total": load_ms}, report.step, ready_ms)


async def main() -> None:
    params = {}
    try:
        site = await browser.fetch_json("site.json")
        env = await environment()
        params = browser.query_params()
        if params.get("selftest") == "1":
            browser.expose_selftest(globals())
            browser.set_global("webgemmaReady", {"site": site, **env})
            browser.set_status("ready: self-test mode (no model loaded)")
            return
        await start(site, env, params)
    except Exception as e:
        browser.set_status(f"error: {type(e).__name__}: {e}", error=True)
        if params.get("autorun") == "1":
            browser.set_global("webgemmaResult", {"error": f"{type(e).__name__}: {e}"})
        raise


await main()  # noqa: F704 - PyScript runs this file with top-level await
