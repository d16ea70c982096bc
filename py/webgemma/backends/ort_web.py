"""Backend on onnxruntime-web in the browser: the WebGPU EP (`ort.webgpu.min.mjs`) when the browser gives a WebGPU
adapter, else the CPU wasm EP (`ort.wasm.min.mjs`, whose wasm has GatherBlockQuantized; the webgpu bundle's own
wasm EP lacks it).

Outputs that Python reads (logits) come back as numpy; every other output (the KV cache) stays where it was
computed, as a `JsTensor` that can be fed back and must be released. With a step session (graph capture) the
weights are graph inputs (webgemma.onnx_bytes), uploaded once and fed to both sessions: onnxruntime-web would keep
a copy per session.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import browser
from ..browser import CachedFile, JsTensor
from ..laps import Laps
from ..kernel_plan import KernelPlan, kernel_plan
from ..onnx_bytes import ExternalWeight, float_initializers, graph_output_names, weights_as_inputs
from ..static_cache import step_caches

ORT_URL = "vendor/ort/"  # relative to the page; the site builder puts onnxruntime-web there
# GPUs lower their clocks ~1.5 s after their last work and take ~0.3 s of work to raise them: a keystroke (or the
# pointer over the prompt's form) keeps them up this long (a typist's pause is shorter; after it the GPU may rest)
KEEP_WARM_S = 2.0
WASM_NOTICE = "WebGPU is not available in this browser: running on the CPU (wasm), which is much slower."


@dataclass(frozen=True)
class Placement:
    """Where ORT put the graph's nodes, read from the verbose log recorded at session creation:

        ... VerifyEachNodeIsAssignedToAnEp]  All nodes placed on [WebGpuExecutionProvider]. Number of nodes: 5
    or
        ... VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [CPUExecutionProvider]. Number of nodes: 1
        ... VerifyEachNodeIsAssignedToAnEp]   Unique (name)
    """

    counts: dict[str, int] = field(default_factory=dict)  # provider → number of nodes
    nodes: dict[str, list[str]] = field(default_factory=dict)  # provider → "OpType (name)", where listed

    @property
    def all_on(self) -> str | None:
        """The provider holding every node, or None if they are spread (or the log said nothing)."""
        return next(iter(self.counts)) if len(self.counts) == 1 else None

    @classmethod
    def from_log(cls, lines: Sequence[str]) -> Placement:
        counts: dict[str, int] = {}
        nodes: dict[str, list[str]] = {}
        current = None
        for line in lines:
            if m := re.search(r"(?:All nodes|Node\(s\)) placed on \[(\w+)\]\. Number of nodes: (\d+)", line):
                current = m[1]
                counts[current] = counts.get(current, 0) + int(m[2])
                nodes.setdefault(current, [])
            elif current and (m := re.search(r"VerifyEachNodeIsAssignedToAnEp\]   (\S.*)$", line)):
                nodes[current].append(m[1].strip())
            elif "VerifyEachNodeIsAssignedToAnEp" not in line:
                current = None
        return cls(counts, nodes)


async def pick_ep(prefer: str = "auto") -> tuple[str, str | None, dict | None]:
    """("webgpu" | "wasm", notice or None, the WebGPU adapter's description or None). "auto" takes WebGPU when
    navigator.gpu gives an adapter."""
    if prefer not in ("auto", "webgpu", "wasm"):
        raise ValueError(f"ep must be 'auto', 'webgpu' or 'wasm', not {prefer!r}")
    if prefer == "wasm":
        return "wasm", None, None
    if (adapter := await browser.webgpu_adapter()) is not None:
        return "webgpu", None, adapter
    if prefer == "webgpu":
        raise RuntimeError("WebGPU was asked for but navigator.gpu gives no adapter in this browser")
    return "wasm", WASM_NOTICE, None


class OrtWebBackend:
    """`Backend` over an onnxruntime-web InferenceSession (see webgemma.backends.Backend)."""

    def __init__(self, session: browser.JsSession | None, name: str, notice: str | None, host_outputs: Sequence[str],
                 adapter: dict | None = None, ort: Any = None) -> None:
        self._session = session  # the whole graph's (with a fill graph: made when a run first reads scores)
        self._fill: browser.JsSession | None = None  # the graph cut to the caches (`fills`)
        self._open: Callable[[], Awaitable[browser.JsSession]] | None = None  # makes `_session` on first need
        self._ort = ort  # the onnxruntime-web module, for further sessions (the step session)
        self._steps: list[browser.JsStepSession] = []
        self.weights: browser.WeightBuffers | None = None  # on WebGPU, shared by the sessions
        self.shared: list[ExternalWeight] = []  # the weights in them
        self._weight_names: frozenset[str] = frozenset()  # their names: inputs the sessions get from `weights`
        self.name = name  # "webgpu" or "wasm"
        self.notice = notice  # why wasm was chosen, when it was chosen for want of WebGPU
        self.adapter = adapter  # the WebGPU adapter's vendor, architecture, limits (None on wasm)
        self.host_outputs = list(host_outputs)

    @property
    def fills(self) -> bool:
        return self._fill is not None

    @classmethod
    async def create(
        cls,
        model: bytes,
        external_data: Mapping[str, CachedFile | bytes] | None = None,
        *,
        host_outputs: Sequence[str] = ("logits",),
        ep: str = "auto",
        graph_optimization: str = "all",
        disabled_optimizers: Sequence[str] = (),
        verbose_log: bool = False,
        ort_url: str = ORT_URL,
        num_threads: int | None = None,
        shared_weights: bool = False,
        fill: bytes | None = None,
        laps: Laps | None = None,
        copies: dict | None = None,
    ) -> OrtWebBackend:
        """A session over `model` (the .onnx bytes) whose external-data files are `external_data`, keyed by the
        tensors' `location` exactly (e.g. "weights/decoder-00.bin").

        host_outputs: outputs placed in CPU memory (read by Python); the others stay on the GPU.
        graph_optimization: "disabled" | "basic" | "extended" | "layout" | "all" (the exporter writes fused graphs).
        disabled_optimizers: ORT optimizers switched off by name, e.g. ["ConstantFolding"] keeps a shared weight single.
        verbose_log: record ORT's verbose log during creation (`creation_log`, `placement`).
        num_threads: wasm threads (default: ort_bridge.mjs defaultThreads).
        shared_weights: on WebGPU, upload the weights ourselves, for a step session to share (`step_session`).
        fill: with shared_weights, `model` cut to its caches (the manifest's fill_graph): the session made now is
        its, runs that read nothing back go through it, and `model`'s is made when a run first reads scores.
        laps: where the time goes (runtime, graph_edit, buffers, session), for a load report.
        copies: with shared_weights, where the external-data files may have copies in OPFS, read faster than the
        Cache API (`WebModelStore.copy_sources`).
        """
        lap = laps or Laps()
        name, notice, adapter = await pick_ep(ep)
        if notice:
            browser.show_notice(notice)
        ort = await browser.ort_load(name, ort_url, num_threads)
        lap("runtime")
        outputs = graph_output_names(model)
        missing = sorted(set(host_outputs) - set(outputs))
        if missing:
            raise ValueError(f"host outputs {missing} are not outputs of the graph ({outputs})")
        options: dict[str, Any] = {"executionProviders": [name], "graphOptimizationLevel": graph_optimization}
        if disabled_optimizers:
            options["extra"] = {"optimization": {"disable_specified_optimizers": ",".join(disabled_optimizers)}}
        if verbose_log:
            options["logSeverityLevel"] = 0
            options["logVerbosityLevel"] = 0

        def options_for(graph: bytes) -> dict:
            if name != "webgpu":
                return options
            return options | {"preferredOutputLocation": {o: "cpu" if o in host_outputs else "gpu-buffer"
                                                          for o in graph_output_names(graph)}}

        if name != "webgpu" or not shared_weights:
            session = await browser.ort_session(ort, model, dict(external_data or {}), options_for(model),
                                                verbose=verbose_log)
            lap("session")
            return cls(session, name, notice, host_outputs, adapter, ort)
        # the weights become inputs, uploaded by us, so that the step session shares them (one GPU copy); their
        # bytes are written while onnxruntime creates the session (ort_load made the device)
        model, weights = weights_as_inputs(model)
        lap("graph_edit")
        buffers = await browser.WeightBuffers.create(ort)
        await buffers.upload(dict(external_data or {}), weights, copies)
        lap("buffers")

        async def open_session(graph: bytes, used: list[ExternalWeight]) -> browser.JsSession:
            session = await browser.ort_session(ort, graph, {}, options_for(graph), verbose=verbose_log)
            session.weights = buffers.feeds(used)
            return session

        backend = cls(None, name, notice, host_outputs, adapter, ort)
        backend.weights, backend.shared = buffers, weights
        backend._weight_names = frozenset(w.name for w in weights)
        try:
            if fill is None:
                backend._session = await open_session(model, weights)
            else:
                backend._fill = await open_session(*weights_as_inputs(fill))
                backend._open = lambda: open_session(model, weights)
        except RuntimeError:
            await buffers.discard()
            raise
        lap("session")
        return backend

    async def kernel_step(self, graph: bytes, manifest, context: int, laps: Laps | None = None,
                          options: dict | None = None) -> WebStepSession:
        """The decode step as hand-written kernels (webgemma.kernel_plan) over the weights the prefill session uses,
        its caches fixed buffers for `context` tokens (see `step_session`). `graph`: the prefill graph, whose
        float32 constants (norms, layer scalars) the kernels take as numbers (the step graph holds the same ones:
        the kernels need it neither read nor parsed). KernelPlanError where the export is not one they read.
        options: kernel_plan's lanes, subgroups (by default where the device's are usable), merge, q8."""
        lap = laps or Laps()
        context, caches = self._step_caches(manifest, context)
        limit = self._binding_limit()
        options = {"table_buffer_bytes": min(limit, self.adapter.get("max_buffer_size", limit))} | (options or {})
        if "subgroups" not in options:
            options["subgroups"] = await browser.subgroups_usable(self._ort)
        plan = kernel_plan(manifest, self.shared, float_initializers(graph), context, **options)
        lap("step_graph_edit")
        step = await browser.kernel_step(self._ort, self.weights, self.shared, plan)
        lap("step_session")
        self._steps.append(step)  # released with this backend
        return WebStepSession(step, caches, manifest.decoder["top_k"]["k"], plan)

    async def step_session(self, model: bytes, external_data: Mapping[str, CachedFile | bytes], manifest,
                           context: int, laps: Laps | None = None) -> WebStepSession:
        """The step graph under graph capture (WebGPU only), fed the weights the prefill session uses (one GPU copy),
        its caches fixed buffers for `context` tokens (fewer where the adapter cannot bind a cache that large)."""
        lap = laps or Laps()
        context, caches = self._step_caches(manifest, context)
        io = manifest.decoder
        graph, weights = weights_as_inputs(model)
        await self.weights.upload(dict(external_data), weights)  # the prefill graph's: nothing new to upload
        rows = [{"name": c["output"], "type": "float32", "dims": [1, c["dims"][1], 1, c["dims"][3]]} for c in caches]
        k = io["top_k"]["k"]
        outputs = [{"name": io["top_k"]["values"], "type": "float32", "dims": [1, k]},
                   {"name": io["top_k"]["ids"], "type": "int64", "dims": [1, k]}]
        # the EP only gets its enableGraphCapture option when it is named by an object, not by a string
        session_options = {"executionProviders": [{"name": "webgpu"}], "graphOptimizationLevel": "disabled",
                           "preferredOutputLocation": "gpu-buffer"}
        lap("step_graph_edit")
        step = await browser.ort_step_session(self._ort, graph, self.weights.feeds(weights), session_options,
                                              {"caches": caches, "rows": rows, "outputs": outputs})
        lap("step_session")
        self._steps.append(step)  # released with this backend
        return WebStepSession(step, caches, k, None)

    def _step_caches(self, manifest, context: int) -> tuple[int, list[dict]]:
        """`context`, fewer where a global layer's cache (one buffer) would not fit the adapter's largest storage
        binding, and a step's caches for it."""
        if self.weights is None:
            raise ValueError("a step session needs the WebGPU EP and a backend created with shared_weights")
        io = manifest.decoder
        limit = self._binding_limit()
        context = min([context] + [limit // (4 * c["num_key_value_heads"] * c["head_dim"]) for c in io["cache"]])
        return context, [c | {"type": "float32"} for c in step_caches(io, context)]

    def _binding_limit(self) -> int:
        """The adapter's largest storage binding, in bytes (a cache, and a buffer of the per-layer table, is one)."""
        return (self.adapter or {}).get("max_storage_buffer_binding_size", 128 * 2**20)

    async def discard_step(self, step: WebStepSession) -> None:
        """Releases a step session that will not be used (a kernel step that failed while loading)."""
        self._steps.remove(step._step)
        await step._step.release()

    @property
    def creation_log(self) -> list[str]:
        return (self._fill or self._session).log

    @property
    def placement(self) -> Placement:
        return Placement.from_log(self.creation_log)

    async def run(self, feeds: dict[str, np.ndarray | JsTensor],
                  host_outputs: Sequence[str]) -> dict[str, np.ndarray | JsTensor]:
        """One session.run: numpy for `host_outputs`, JsTensor handles for the rest. With a fill graph, a run that
        reads nothing back goes through it, given only the feeds it takes."""
        if self._fill is not None and not host_outputs:
            session = self._fill
            feeds = {k: v for k, v in feeds.items() if k in session.input_names}
        else:
            if self._session is None:  # the first run that reads scores (a sampler that needs every logit)
                self._session = await self._open()
            session = self._session
        self._check(session, feeds, host_outputs)
        if self.weights:
            await self.weights.ready()
        try:
            outputs = await session.run(feeds)
        except browser.JsException as e:
            shapes = ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in feeds.items())
            raise RuntimeError(f"onnxruntime-web ({self.name}) run failed with feeds {{{shapes}}}: {e}") from None
        result: dict[str, np.ndarray | JsTensor] = {}
        for name, t in outputs.items():
            if name in host_outputs:
                result[name] = await browser.to_numpy(t)
                t.dispose()
            else:
                result[name] = t
        return result

    def _check(self, session: browser.JsSession, feeds: Mapping[str, Any], host_outputs: Sequence[str]) -> None:
        inputs = [n for n in session.input_names if n not in self._weight_names]
        missing = [n for n in inputs if n not in feeds]
        unknown = [n for n in feeds if n not in inputs]
        if missing or unknown:
            raise ValueError(f"feeds do not match the graph's inputs: missing {missing}, unknown {unknown}")
        bad = [n for n in host_outputs if n not in session.output_names]
        if bad:
            raise ValueError(f"host outputs {bad} are not outputs of the graph ({session.output_names})")
        for n, v in feeds.items():
            if isinstance(v, JsTensor) and v._t is None:
                raise ValueError(f"feed {n!r} is a released tensor")

    def release(self, handle: Any) -> None:
        if isinstance(handle, JsTensor):
            handle.dispose()

    async def keep_warm(self, seconds: float = KEEP_WARM_S) -> None:
        """Keeps the GPU's clocks up for `seconds` more (0: stop), one workgroup busy (ort_bridge.mjs keepWarm): the
        page calls it on every keystroke in the prompt and when the pointer comes over its form, so that the prompt
        does not run at idle clocks."""
        if self.name == "webgpu":
            await browser.keep_gpu_warm(self._ort, seconds)

    async def to_numpy(self, handle: JsTensor) -> np.ndarray:
        """A copy of a device handle's contents (reads GPU memory back): for checks, not the decode loop."""
        return await browser.to_numpy(handle)

    async def aclose(self) -> None:
        for step in self._steps:
            await step.release()
        for session in (self._session, self._fill):
            if session is not None:
                await session.release()
        if self.weights:
            self.weights.destroy()

    def close(self) -> None:
        asyncio.ensure_future(self.aclose())


class WebStepSession:
    """webgemma.static_cache.StepSession over the bridge's graph-captured StepSession, or over the kernel step
    (`plan` given: its inputs go as one block, its ids come back as uint32, it writes its own key/value rows into the
    caches and, once the per-layer table is on the GPU (`start_upload`), samples and chains steps: `submit`)."""

    def __init__(self, step: browser.JsStepSession | browser.JsKernelStep, caches: list[dict], k: int,
                 plan: KernelPlan | None = None):
        self._step, self.k, self.plan = step, k, plan
        self.reads_rows = plan is not None
        self.chains = False  # the table is on the GPU: steps sample and follow each other there (`submit`)
        self.table, self.uploading = "storage", None
        self.slots = {c["input"]: c["dims"][2] for c in caches}
        self._dims = {c["input"]: c["dims"] for c in caches}

    async def copy(self, copies) -> None:
        rows = []
        for c in copies:
            if self.plan is not None and isinstance(c.src, str):
                continue  # the kernels wrote the step's own rows into their slots
            _, heads, slots, dim = self._dims[c.dst]
            for h in range(heads if c.rows else 0):  # [1, heads, slots, dim] float32: one run of rows per head
                rows.append((c.dst, 4 * dim * (h * slots + c.dst_row), c.src, 4 * dim * (h * c.src_rows + c.src_row),
                             4 * dim * c.rows))
        if rows:
            self._step.copy(rows)

    async def run(self, feeds: dict[str, np.ndarray], row: object = None) -> tuple[np.ndarray, np.ndarray]:
        if self.plan is not None:
            return self.plan.read(await self._step.run(self.plan.pack(feeds), row))
        data = await self._step.run(feeds)
        return (np.frombuffer(data, np.float32, self.k), np.frombuffer(data, np.int64, self.k, offset=4 * self.k))

    def submit(self, feeds: dict[str, np.ndarray], chained: bool) -> Awaitable[tuple[np.ndarray, np.ndarray, int, bool]]:
        """Queues a kernel step now (see KernelPlan.pack for `feeds`; chained: its token is the last step's sample);
        await (top values, ids, sampled token, live) later."""
        pending = self._step.submit(self.plan.pack(feeds), chained)

        async def result():
            data = await pending
            return *self.plan.read(data), *self.plan.sampled(data)
        return result()

    def mark_seen(self, tokens: list[int]) -> None:
        """The repetition penalty's seen tokens (the sampling kernel adds each token it picks)."""
        at, words = self.plan.seen
        bits = np.zeros(words * 32, np.uint8)
        bits[np.asarray(tokens, np.int64)] = 1
        self._step.write(at, np.packbits(bits, bitorder="little").view(np.uint32))

    def start_upload(self, files: list[tuple[CachedFile, int, int]], row_bytes: int,
                     after: asyncio.Future | None = None) -> None:
        """Starts putting the per-layer table (its (file, first row, rows)) on the GPU (the task `uploading`), once
        `after` is done (the prefill's warm-up: both would take the page's main thread); steps chain once it is
        there. `table` says where the steps' rows come from."""
        async def upload() -> None:
            if after is not None:
                await asyncio.wait([after])  # done, whether it failed or not
            try:
                await self._step.upload_table(files, row_bytes)
                self.chains, self.table = True, "gpu"
            except RuntimeError as e:
                self.table = f"storage ({e})"
        self.table = "storage (uploading to the GPU)"
        self.uploading = asyncio.ensure_future(upload())

    def prefill_rows(self, ids: list[int]) -> tuple[JsTensor, JsTensor]:
        """The per-layer rows of a prefill chunk's tokens from the table on the GPU (once `chains`): (int4 data,
        float32 scales) as PerLayerRows.feeds reads them from storage."""
        return self._step.prefill_rows(ids)

    def configure(self, *, time_steps: bool = False, encode_ahead: bool = True, submits: int | None = None) -> None:
        """For benchmarks, the kernel step only: time each step on the GPU (webgemmaStepTimes.gpu_ms); encode each
        step's commands during the step before (the default) or once its inputs are known; an unchained step's pass in
        `submits` submits (default: kernel_step.mjs SUBMITS; chained steps go in one)."""
        self._step.configure(time_steps=time_steps, encode_ahead=encode_ahead, submits=submits)

    async def profile(self) -> dict | None:
        """For benchmarks, the kernel step only: GPU milliseconds of the last step run again, by kind of dispatch (qkv,
        attend, lm_head, ...): "alone", each dispatch in a pass of its own (overstated by a pass's overhead: for
        ranking); "in_step", what the step saves without that kind's dispatches (their real share, gaps included);
        "step", the whole step in one pass. None without timestamp queries."""
        if self.plan is None:
            return None
        kinds: dict[str, list[int]] = {}
        for i, d in enumerate(self.plan.dispatches):
            kinds.setdefault(d.label or d.kernel, []).append(i)
        out = await self._step.profile(list(kinds.values()))
        if out is None:
            return None
        alone: dict[str, float] = {}
        for i, t in zip(out["indices"], out["alone"]):
            label = self.plan.dispatches[i].label or self.plan.dispatches[i].kernel
            alone[label] = alone.get(label, 0.0) + t / 1e6
        return {"step": out["step"] / 1e6, "alone": alone,
                "in_step": {k: (out["step"] - t) / 1e6 for k, t in zip(kinds, out["without"])}}
