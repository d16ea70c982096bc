"""The generation engine: prefill in chunks, then one `run()` per decoded token, the KV cache kept on the device.

The engine remembers which tokens its cache holds; a new prompt that extends them (a follow-up chat turn) only
feeds the new tokens. Anything else resets the cache: a sliding layer's cache keeps only the last window, so it
cannot be rewound.

Where the backend gives a step session (`use_step_session`), decoding leaves the prefill graph after the prompt:
the cache moves once into fixed buffers and every token is one replay of the captured step graph
(webgemma.static_cache). Only the top-k candidates come back from it; samplers that need every logit, and
follow-up prompts that would take longer through it than the whole conversation prefilled again (`_feed_limit`), go
back to the prefill graph.

Where the step session chains (the kernels with the per-layer table on the GPU), the tokens after the first are
sampled on the GPU and each step is queued before the last one's result is read (`_chain`): the page's Python then
only keeps the queue full. The GPU picks as Sampler does, from the same draws of the sampler's generator. A short
follow-up prompt's tokens are queued the same way (`_feed`).

Where the backend also fills (`Backend.fills`: the prefill graph cut to the caches), a prompt only fills the cache
and the step session scores its last token again: the prefill graph's KV-shared layers, lm_head and top-k do not
run, and nothing is read back between its chunks (E2B on an H200: a 512-token prompt 74 → 59 ms, 4,096 tokens
464 → 319 ms, BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import warnings
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .backends import Backend
from .kernel_plan import MAX_STOPS
from .manifest import SLIDING, Manifest
from .per_layer_rows import PerLayerRows
from .rope import RopeRows
from .sampling import Sampler, SamplingSettings
from .static_cache import StaticDecoder, StepSession

STEP_PREFILL_MAX = 32  # a follow-up this short is fed through the step session (longer ones: `_feed_limit`)
MIN_STEPS_MEASURED = 8  # decoded tokens that give `ms_per_step`
CHAIN_DEPTH = 4  # steps queued on the GPU at once when the session chains them (E2B: 299 tokens/s, 295 with 3)
MAX_CHAIN_DEPTH = 4  # kernel_step.mjs STAGING: its read-back buffers
ROPE_AHEAD = 4096  # positions whose RoPE rows are computed after the warm-up (E2B: 12 MB), ROPE_SLICE at a time
ROPE_SLICE = 256


class ContextLimitError(ValueError):
    """The prompt does not fit the model's context."""


class Scores(NamedTuple):
    """The last position's logits: all of them (`ids` None), or the best few and their token ids."""

    values: np.ndarray
    ids: np.ndarray | None = None


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    output_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = ""  # "stop", "stop_string", "max_new_tokens", "context", "cancelled"
    stats: dict = field(default_factory=dict)
    scores: list[Scores] = field(default_factory=list)  # what each output token was sampled from (keep_scores)


class Engine:
    def __init__(self, manifest: Manifest, backend: Backend, rows: PerLayerRows, *, prefill_chunk: int = 256,
                 max_context: int | None = None):
        self.manifest, self.backend, self.rows = manifest, backend, rows
        arch, self.io = manifest.arch, manifest.decoder
        self.window = int(arch["sliding_window"])
        self.rope = {t: RopeRows(np.asarray(v, np.float32)) for t, v in arch["rope_inv_freq"].items()}
        self.prefill_chunk = prefill_chunk
        self.max_context = min(max_context or manifest.max_context, manifest.max_context)
        self.tokens: list[int] = []
        self.cache: dict[str, Any] = {}
        self.last: Scores | None = None
        self.timing = _timers()
        self.static: StaticDecoder | None = None
        self.on_static = False  # the cache lives in the step session's buffers
        self.chain_depth = CHAIN_DEPTH  # 0: never chain steps (benchmarks: sampling in Python)
        self.keep_scores = False  # each output token's scores in GenerationResult.scores (tests)
        self.warming: asyncio.Future | None = None  # the prefill graph's throwaway run (`warm_up`)
        self.rope_ahead: asyncio.Future | None = None  # the RoPE rows computed after it
        # measured costs (`_feed_limit`): a decoded token through the step session, and a prompt's token through the
        # prefill graph at its best rate over prompts of half a chunk or more
        self.ms_per_step: float | None = None
        self.ms_per_prefilled_token: float | None = None
        self.reset()

    def use_step_session(self, session: StepSession) -> None:
        """Decode through `session` from now on (see webgemma.static_cache)."""
        self.static = StaticDecoder(session, self.io, self.window)
        self.max_context = min(self.max_context, self.static.capacity())
        self.reset()

    async def record_step(self) -> None:
        """Runs the step session on a throwaway token (see StaticDecoder.rehearse); the cache is untouched."""
        await self.static.rehearse(await self._token_feeds([0]))

    def warm_up(self) -> asyncio.Future:
        """Runs the prefill (or fill) graph once, in the background, on a chunk of throwaway tokens, then forgets them: its
        first run builds the backend's GPU pipelines (onnxruntime-web: ~0.3 s of a first 512-token prompt's ~0.45 s
        on an H100, BENCHMARKS.md), which a prompt then finds ready. The next prompt waits for it (the future
        returned), not for the RoPE rows of the first ROPE_AHEAD positions, computed after it (`rope_ahead`)."""
        async def run() -> None:
            try:
                await self._run([0] * min(self.prefill_chunk, self.max_context - 1), top_k=True,
                                fill=self.backend.fills)
            finally:
                self.reset()
            self.rope_ahead = asyncio.ensure_future(self._rope_ahead(min(ROPE_AHEAD, self.max_context)))
        self.warming = asyncio.ensure_future(run())
        return self.warming

    async def _rope_ahead(self, end: int) -> None:
        """Computes the RoPE rows of positions below `end` in slices, between other work: a long first prompt then
        finds them (see RopeRows)."""
        for rope in self.rope.values():
            while rope.count < end:
                rope.rows(rope.count, min(ROPE_SLICE, end - rope.count))
                await asyncio.sleep(0)

    async def _warmed(self) -> None:
        """Waits for the warm-up. Its failure is not the prompt's: the prompt's own runs show a real problem."""
        if self.warming is not None:
            warming, self.warming = self.warming, None
            await asyncio.wait([warming])
            if warming.exception() is not None:
                warnings.warn(f"the prefill graph's warm-up failed: {warming.exception()}", RuntimeWarning, stacklevel=2)

    def reset(self) -> None:
        """Forget the cache: zero-length past tensors (the prefill graph appends a chunk's rows to them)."""
        self._release(self.cache)
        self.cache = {}
        for c in self.io["cache"]:
            empty = np.zeros((1, c["num_key_value_heads"], 0, c["head_dim"]), np.float32)
            self.cache[c["past_key"]] = self.cache[c["past_value"]] = empty
        self.tokens, self.last = [], None
        self.on_static = False

    def _release(self, handles: dict) -> None:
        for handle in handles.values():
            if not isinstance(handle, np.ndarray):  # device tensors; the initial empty pasts are numpy
                self.backend.release(handle)

    def _position_feeds(self, start: int, count: int) -> dict[str, np.ndarray]:
        """The positions the prefill graph's attention masks come from, for a chunk of `count` tokens after `start`
        cached ones: the chunk's, and per layer type its keys' (the cache's, a sliding layer's at most the window
        before the chunk, then the chunk's)."""
        names = self.io["positions"]
        feeds = {names["query"]: np.arange(start, start + count, dtype=np.float32)}
        for kind, name in names.items():
            if kind != "query":
                feeds[name] = np.arange(start - min(start, self.window) if kind == SLIDING else 0, start + count,
                                        dtype=np.float32)
        return feeds

    async def _token_feeds(self, ids: list[int], rows: bool = True) -> dict[str, np.ndarray]:
        """input ids, table rows (unless `rows` is false) and RoPE tables for `ids` following the cached tokens."""
        feeds = {self.io["inputs"]["input_ids"]: np.asarray([ids], np.int64), **(await self._row_feeds(ids) if rows else {})}
        return feeds | self._rope_feeds(len(self.tokens), len(ids))

    def _gpu_rows(self) -> bool:
        """Whether a prefill's rows come from the per-layer table on the GPU (the step session holds it)."""
        return self.static is not None and self.static.session.chains

    async def _row_feeds(self, ids: list[int]) -> dict:
        if not self._gpu_rows():
            return await self.rows.feeds(ids)
        self.timing["gpu_rows"] += 1
        rows, scales = self.static.session.prefill_rows(ids)
        return {self.rows.rows_name: rows, self.rows.scales_name: scales}

    def _rope_feeds(self, start: int, count: int) -> dict[str, np.ndarray]:
        feeds = {}
        for kind, names in self.io["rope"].items():
            feeds[names["cos"]], feeds[names["sin"]] = self.rope[kind].rows(start, count)
        return feeds

    async def _to_static(self) -> None:
        """Moves the cache into the step session's buffers (once after a prefill)."""
        if not self.on_static:
            await self.static.load(self.cache, len(self.tokens))
            self._release(self.cache)
            self.cache, self.on_static = {}, True

    async def _step(self, token: int) -> Scores:
        """One token through the step session (top-k scores)."""
        await self._to_static()
        t0 = time.perf_counter()
        # a session that reads the row itself spares Python a read (and an await) per token; one that holds the
        # table needs no row at all
        session = self.static.session
        row = self.rows.source(token) if session.reads_rows and not session.chains else None
        feeds = await self._token_feeds([token], rows=not session.reads_rows)
        t1 = time.perf_counter()
        values, ids = await self.static.step(feeds, row)
        self._count(t0, t1)
        self.tokens.append(token)
        self.last = Scores(np.asarray(values).reshape(-1), np.asarray(ids).reshape(-1))
        return self.last

    async def _feed(self, tokens: list[int]) -> Scores:
        """Given tokens through the step session (a follow-up prompt, `_feed_limit`); their last one's top-k scores.
        A session that chains steps takes them MAX_CHAIN_DEPTH at a time, with no read-back between them: each token
        costs the GPU's step, not a round trip (E2B on an H200: 22 tokens in 72-76 ms, 139-146 one at a time)."""
        if not self.static.session.chains:
            for token in tokens:
                scores = await self._step(token)
            return scores
        pending: deque[Awaitable] = deque()
        try:
            for i, token in enumerate(tokens):
                t0 = time.perf_counter()
                feeds = await self._token_feeds([token], rows=False)  # the session gathers the row itself
                pending.append(self.static.submit(feeds, chained=False))
                self.tokens.append(token)
                t1 = time.perf_counter()
                while len(pending) == MAX_CHAIN_DEPTH or (pending and i == len(tokens) - 1):
                    values, ids, _, _ = await pending.popleft()
                self._count(t0, t1)
        except BaseException:  # a step failed: the cache no longer holds what self.tokens say
            for step in pending:
                with contextlib.suppress(Exception):
                    await step
            self.reset()
            raise
        self.last = Scores(values, ids)
        return self.last

    def _chains(self, top_k: bool, stop_ids: set[int]) -> bool:
        """Whether the next tokens can be sampled on the GPU, steps queued ahead (see `_chain`)."""
        return (self.static is not None and self.static.session.chains and self.chain_depth > 0
                and top_k and len(stop_ids) <= MAX_STOPS and bool(self.tokens))

    async def _chain(self, token: int, sampler: Sampler, history: list[int], stop_ids: set[int],
                     steps: int) -> AsyncIterator[int]:
        """The tokens after `token` (at most `steps`), each sampled on the GPU by the step that fed the one before,
        `chain_depth` steps in flight. A stop token sampled there stops later steps' cache writes, so the steps queued
        past it are simply forgotten; steps queued past a token at which the caller stops for another reason (a stop
        string, cancel) have written their rows over slots of the sliding windows: the cache is then dropped."""
        await self._to_static()
        session, s = self.static.session, sampler.settings
        if s.repetition_penalty != 1.0:
            session.mark_seen(history)
        params = [s.temperature, s.top_k, s.top_p, s.min_p, s.repetition_penalty]
        stops = np.asarray(sorted(stop_ids), np.int64)
        pending: deque[Awaitable] = deque()

        def queue(first: int | None) -> None:
            feeds = self._rope_feeds(self.static.length, 1)
            feeds[self.io["inputs"]["input_ids"]] = np.asarray([[first or 0]], np.int64)
            feeds["sample"] = np.asarray([sampler.rng.random(), *params], np.float32)
            feeds["stops"] = stops
            pending.append(self.static.submit(feeds, chained=first is None))

        t0 = time.perf_counter()
        queue(token)
        queued, live = 1, True
        try:
            while pending:
                while queued < steps and len(pending) < min(self.chain_depth, MAX_CHAIN_DEPTH):
                    queue(None)
                    queued += 1
                t1 = time.perf_counter()
                values, ids, sampled, live = await pending.popleft()
                self._count(t0, t1)
                t0 = time.perf_counter()
                self.tokens.append(token)
                self.last = Scores(values, ids)
                token = sampled
                yield token
        finally:
            ahead = len(pending)
            while pending:
                await pending.popleft()
            self.static.rollback(len(self.tokens))
            if ahead and live:
                self.reset()

    def _restart_timing(self) -> dict:
        """The timers so far, and fresh ones from now on."""
        old, self.timing = self.timing, _timers()
        return old

    def _count(self, t0: float, t1: float) -> None:
        self.timing["rows"] += t1 - t0
        self.timing["run"] += time.perf_counter() - t1
        self.timing["steps"] += 1

    async def _run(self, ids: list[int], top_k: bool = False, then: list[int] = (), fill: bool = False) -> Scores | None:
        """One graph run over `ids` following the cached tokens; returns the last position's scores (all the
        logits, or with `top_k` only the best ones, found on the device), or with `fill` nothing (the caches only,
        through the fill graph: Backend.fills). The rows of `then` (the next prefill chunk) are read while the graph
        runs."""
        if self.static and top_k and not fill and len(ids) == 1 and self.tokens:
            return await self._step(ids[0])
        start, count = len(self.tokens), len(ids)
        t0 = time.perf_counter()
        feeds = await self._token_feeds(ids)
        t1 = time.perf_counter()
        feeds |= self._position_feeds(start, count)
        feeds.update(self.cache)
        top = self.io["top_k"]
        host = [] if fill else [top["values"], top["ids"]] if top_k else [self.io["logits"]]
        ahead = asyncio.ensure_future(self.rows.prefetch(then)) if then and not self._gpu_rows() else None
        try:
            out = await self.backend.run(feeds, host)
        finally:
            if ahead:
                await ahead
        self._count(t0, t1)
        old, self.cache = self.cache, {}
        for c in self.io["cache"]:
            self.cache[c["past_key"]], self.cache[c["past_value"]] = out.pop(c["present_key"]), out.pop(c["present_value"])
        self._release(old)
        self._release({name: out.pop(name) for name in list(out) if name not in host})  # outputs nobody reads
        self.tokens.extend(ids)
        if fill:
            self.last = None
        elif top_k:
            self.last = Scores(np.asarray(out[top["values"]]).reshape(-1), np.asarray(out[top["ids"]]).reshape(-1))
        else:
            self.last = Scores(np.asarray(out[self.io["logits"]]).reshape(-1))
        return self.last

    def _feed_limit(self, length: int) -> int:
        """The most new tokens of a `length`-token prompt fed through the step session rather than prefilling it all
        again: STEP_PREFILL_MAX, or as many as its steps take less time than the prefill would, by the costs measured
        here (a long conversation, such as a page's text in the widget: E2B on an H200 ~3.3 ms a step against ~0.13
        ms a prefilled token, 2,000 tokens of conversation ~80 tokens)."""
        if self.ms_per_step is None or self.ms_per_prefilled_token is None:
            return STEP_PREFILL_MAX
        return max(STEP_PREFILL_MAX, int(length * self.ms_per_prefilled_token / self.ms_per_step))

    async def prefill(self, prompt_ids: list[int], top_k: bool = False) -> tuple[Scores, int]:
        """Bring the cache to `prompt_ids`; returns (last scores, number of cached tokens reused)."""
        await self._warmed()
        if not prompt_ids:
            raise ValueError("the prompt is empty: give at least one token (a chat prompt starts with <bos>)")
        if len(prompt_ids) >= self.max_context:
            raise ContextLimitError(
                f"The conversation is {len(prompt_ids)} tokens long and this model's context holds {self.max_context}: "
                "start a new chat or shorten the message."
            )
        reused = len(self.tokens)
        exact = reused == len(prompt_ids) and self.last is not None and (self.last.ids is not None) == top_k
        leave_static = self.on_static and (not top_k or len(prompt_ids) - reused > self._feed_limit(len(prompt_ids)))
        if prompt_ids[:reused] != self.tokens or (reused == len(prompt_ids) and not exact) or leave_static:
            self.reset()
            reused = 0
        new = prompt_ids[reused:]
        if not new:  # the prompt is exactly what the cache holds
            return self.last, reused
        if self.on_static:
            return await self._feed(new), reused
        t0, fed = time.perf_counter(), len(new)
        stepped = top_k and self.static is not None and self.backend.fills  # the step session scores the last token
        while new:
            n = chunk_length(len(new), self.prefill_chunk)
            then = new[n:n + chunk_length(len(new) - n, self.prefill_chunk)]
            scoring = n == len(new) and not stepped
            scores = await self._run(new[:n], top_k=top_k or not scoring, then=then,
                                     fill=self.backend.fills and not scoring)
            new = new[n:]
        if stepped:
            # the fill graph ran over the whole prompt (the shapes the warm-up built pipelines for); the step scores
            # the last token again and writes its key/value rows over the fill graph's
            await self._to_static()
            self.tokens.pop()
            self.static.rollback(len(self.tokens))
            scores = await self._feed(prompt_ids[-1:])
        if 2 * fed >= self.prefill_chunk:  # long enough to count
            rate = (time.perf_counter() - t0) * 1000 / fed
            self.ms_per_prefilled_token = min(rate, self.ms_per_prefilled_token or rate)
        return scores, reused

    async def generate(self, prompt_ids: list[int], sampling: SamplingSettings, *, max_new_tokens: int, stop_ids,
                       on_token: Callable[[int], Awaitable[bool] | bool] | None = None) -> GenerationResult:
        """Sample up to `max_new_tokens`. `on_token` sees each token and returns True to stop (stop strings, cancel)."""
        result = GenerationResult(list(prompt_ids))
        sampler, stop_ids = Sampler(sampling), set(stop_ids)
        top_k = not sampler.needs_all_logits(self.io["top_k"]["k"])
        t0 = time.perf_counter()
        await self.backend.keep_warm(0)  # the prompt's own work keeps the GPU busy now
        await self._warmed()  # counted in the time to the first token: the prompt waits for it
        self._restart_timing()  # the prompt's own: not what an earlier turn's decoding left or the warm-up
        scores, reused = await self.prefill(result.prompt_ids, top_k)
        t_prefill = time.perf_counter()
        fed = len(result.prompt_ids) - reused
        history = list(result.prompt_ids)
        token = sampler(scores.values, history, scores.ids)
        keep = result.scores.append if self.keep_scores else lambda _: None
        keep(scores)
        decode_start = time.perf_counter()
        prefill_timing = self._restart_timing()
        chain = None  # the GPU's tokens (`_chain`)
        try:
            while True:
                result.output_ids.append(token)
                history.append(token)
                if token in stop_ids:
                    result.finish_reason = "stop"
                    break
                if on_token is not None:
                    stop = on_token(token)
                    if inspect.isawaitable(stop):
                        stop = await stop
                    if stop:
                        result.finish_reason = "stopped"
                        break
                if len(result.output_ids) >= max_new_tokens:
                    result.finish_reason = "max_new_tokens"
                    break
                if len(self.tokens) + 1 >= self.max_context:
                    result.finish_reason = "context"
                    break
                if chain is None and self._chains(top_k, stop_ids):
                    steps = min(max_new_tokens - len(result.output_ids), self.max_context - 1 - len(self.tokens))
                    chain = self._chain(token, sampler, history, stop_ids, steps)
                if chain is not None:
                    token = await anext(chain)
                else:
                    await self._run([token], top_k)
                    token = sampler(self.last.values, history, self.last.ids)
                keep(self.last)
        finally:
            if chain is not None:
                await chain.aclose()
        t_end = time.perf_counter()
        decoded = len(result.output_ids) - 1
        if self.on_static and decoded >= MIN_STEPS_MEASURED:
            self.ms_per_step = (t_end - decode_start) * 1000 / decoded
        result.stats = {
            "prompt_tokens": len(result.prompt_ids),
            "reused_tokens": reused,
            "ttft_ms": (decode_start - t0) * 1000,
            "prefill_tokens_per_s": fed / max(t_prefill - t0, 1e-9),
            "tokens_per_s": decoded / (t_end - decode_start) if decoded > 0 else 0.0,
            "backend": self.backend.name,
            "graph_capture": self.on_static or chain is not None,  # decoded through the captured step session
            "chained": chain is not None,  # the tokens after the first sampled on the GPU, steps queued ahead
            # where a decode step's time goes: reading table rows, the graph run (with read-back), the rest
            "ms_per_step": {k: 1000 * self.timing[k] / max(self.timing["steps"], 1) for k in ("rows", "run")}
            | {"total": 1000 * (t_end - decode_start) / max(decoded, 1)},
            # the prompt's runs: reading table rows, the graph runs, in all, and those with rows from the GPU
            "prefill_ms": {"rows": 1000 * prefill_timing["rows"], "run": 1000 * prefill_timing["run"],
                           "runs": prefill_timing["steps"], "gpu_rows": prefill_timing["gpu_rows"]},
        }
        return result


def chunk_length(left: int, chunk: int) -> int:
    """The next prefill run's share of the `left` tokens: `chunk`, or all of them where they are at most 1.5 chunks.
    A short last run would pay a whole run's fixed cost for a few tokens (E4B in Chromium on an H200: 8 tokens after
    512 took 75 ms more, BENCHMARKS.md); a run at most half as long again holds little more memory (E4B: 0.2 GiB for
    a last run of 766 tokens after 3,584)."""
    return left if 2 * left <= 3 * chunk else chunk


def _timers() -> dict:
    """Seconds reading table rows and in run(); runs, and those whose rows came from the table on the GPU."""
    return {"rows": 0.0, "run": 0.0, "steps": 0, "gpu_rows": 0}
