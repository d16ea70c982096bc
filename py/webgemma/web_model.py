"""Opening an exported model in the browser: cache and verify its files, then create the onnxruntime-web session.

Every file's sha256 is checked before the session is created (a session whose external data fails to load
poisons every later WebGPU session on the page); the page and the documentation widget both start here.
"""

from __future__ import annotations

from collections.abc import Callable

from .backends.ort_web import OrtWebBackend
from .kernel_plan import KernelPlanError
from .laps import Laps
from .manifest import parse_manifest
from .model import Model, load_model
from .storage_web import EnsureReport, Progress, WebModelStore


STEP_CONTEXT = 8192  # default context of the step session's fixed caches (E2B: 16 MiB per global layer's K or V)


def default_prefill_chunk(arch: dict) -> int:
    """A prompt's tokens per prefill run. Longer runs pay the page's fixed cost per run (a warm run ~15-20 ms over
    native Dawn's: Chromium's per-dispatch cost and shader robustness) less often and hold more GPU memory while they
    run (onnxruntime-web keeps freed buffers of up to 160 MiB, six per size): E2B on an H200, a 4,096-token prompt in
    chunks of 512 → 5,200 tokens/s, 3.9 GiB; 1,024 → 6,700, 4.1 GiB; 2,048 → 8,200, 6.1 GiB. E4B's runs are long
    already: 1,024 was no faster than 512 and held 0.8 GiB more (BENCHMARKS.md)."""
    return 1024 if arch["hidden_size"] <= 2048 else 512


async def open_web_model(model_url: str, *, ep: str = "auto", on_progress: Callable[[Progress], None] | None = None,
                         reverify: bool = False, verbose_log: bool = False, prefill_chunk: int | None = None,
                         max_context: int | None = None, capture: bool = True, kernels: bool = True,
                         kernel_options: dict | None = None, table_on_gpu: bool = True, warm_up: bool = True,
                         fill: bool = True) -> tuple[Model, OrtWebBackend, EnsureReport]:
    """The model at `model_url` (a folder written by `webgemma export`), ready to generate, and what the store
    did to get its files (downloaded, refetched after a failed check).

    prefill_chunk: a prompt's tokens per prefill run (default: `default_prefill_chunk`).
    reverify: hash files already verified on an earlier visit again (otherwise a cached file is trusted when
    it was stored by this store after passing its check and still has its size).
    capture: on WebGPU, decode one token at a time through fixed caches (webgemma.static_cache), sharing the
    prefill session's weights, its first runs made here, during loading; the caches hold `max_context` tokens
    (default STEP_CONTEXT). Older exports, whose step graph has no masks, decode without it.
    kernels: that step through the hand-written kernels (webgemma.kernel_plan) where the export is one they read
    (int4) and they run; otherwise through the graph-captured step graph, and `report.step` says why.
    kernel_options: kernel_plan's lanes, subgroups, merge, q8 (tests, benchmarks).
    table_on_gpu: with the kernels, put the per-layer table on the GPU after loading (in the background): their steps
    then find their rows there, sample there and follow each other without waiting for Python
    (Engine._chain). Otherwise each step's row is read from storage.
    warm_up: on WebGPU, run the prefill graph once on throwaway tokens after loading, in the background
    (Engine.warm_up), before the table's upload: the first prompt then finds onnxruntime-web's pipelines built.
    fill: with the kernels asked for, prefill through the graph cut to the caches (the manifest's fill_graph; about
    half the dispatches of E2B's prefill graph) and score a prompt's last token through the step (the kernels', or
    the step graph's where they cannot run); the whole prefill graph's session is made only for a sampler that needs
    every logit.
    """
    phase = Laps()
    store = WebModelStore(model_url)
    manifest = parse_manifest(await store.read("manifest.json"))
    report = await store.ensure(manifest.files(), on_progress, reverify=reverify)
    phase("files")
    graph = await store.read(manifest.decoder["graph"]["path"])
    shards = [f["path"] for f in manifest.decoder["external_data"]]
    external = {path: store.file(path) for path in shards}
    capture = capture and "masks" in manifest.decoder.get("step_graph", {})
    fill_graph = manifest.decoder.get("fill_graph") if capture and kernels and fill else None
    backend = await OrtWebBackend.create(
        graph, external, host_outputs=[manifest.decoder["logits"]], ep=ep,
        # constant folding would materialise the Reshape of the shared embedding: a second copy of 200+ MiB; the
        # other optimizations (onnxruntime's q, k, v fusion) made no prompt faster and session creation ~0.5 s slower
        graph_optimization="disabled", verbose_log=verbose_log, shared_weights=capture, laps=phase,
        fill=await store.read(fill_graph["path"]) if fill_graph else None,
        # a visit that fetched the shards just now does not look for their copies (no worker started)
        copies=None if set(shards) & set(report.downloaded + report.refetched) else store.copy_sources(shards),
    )
    model = await load_model(store, lambda _: backend, prefill_chunk=prefill_chunk or default_prefill_chunk(manifest.arch),
                             max_context=max_context, manifest=manifest)
    phase("tokenizer")
    if capture and backend.name == "webgpu":
        context = min(model.engine.max_context, max_context or STEP_CONTEXT)
        step = None
        if kernels:
            try:
                step = await backend.kernel_step(graph, manifest, context, laps=phase, options=kernel_options)
                await _start_step(model, step)  # the kernels' first runs: WebGPU errors show here
                report.step = "kernels"
            except (KernelPlanError, RuntimeError) as e:
                if step is not None:
                    await backend.discard_step(step)
                step, report.step = None, f"graph (the kernels: {e})"
        if step is None:
            step_graph = await store.read(manifest.decoder["step_graph"]["path"])
            await _start_step(model, await backend.step_session(step_graph, external, manifest, context, laps=phase))
            report.step = report.step or "graph"
        phase("record_step")
    if backend.weights is not None:
        await backend.weights.ready()
        phase("weights")
    warming = model.engine.warm_up() if warm_up and backend.name == "webgpu" else None
    if report.step == "kernels" and table_on_gpu:  # their steps chain on the GPU once it holds the per-layer table
        step.start_upload([(store.file(f["path"]), f["first_row"], f["rows"]) for f in manifest.table["files"]],
                          manifest.table["row_bytes"], after=warming)
    # the shards we upload, read faster there by the next visit (first: a short visit may leave the rest uncopied),
    # and the per-layer rows, read a row per token
    store.start_copies((shards if backend.weights is not None else []) + [f["path"] for f in manifest.table["files"]])
    report.phases_ms = phase.ms
    return model, backend, report


async def _start_step(model: Model, step) -> None:
    """Decode through `step` from now on, its first runs made now, over weights maybe still being written (their
    results are thrown away)."""
    model.engine.use_step_session(step)
    await model.engine.record_step()
