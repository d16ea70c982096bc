"""Opening an exported model in the browser: cache and verify its files, then create the onnxruntime-web session.

Every file's sha256 is checked before the session is created (a session whose external data fails to load
poisons every later WebGPU session on the page); the page and the documentation widget both start here.
"""

from __future__ import annotations

from collections.abc import Callable

from .backends.ort_web import OrtWebBackend
from .manifest import parse_manifest
from .model import Model, load_model
from .storage_web import EnsureReport, Progress, WebModelStore


STEP_CONTEXT = 8192  # default context of the step session's fixed caches (E2B: 16 MiB per global layer's K or V)


async def open_web_model(model_url: str, *, ep: str = "auto", on_progress: Callable[[Progress], None] | None = None,
                         reverify: bool = False, verbose_log: bool = False, prefill_chunk: int = 256,
                         max_context: int | None = None, capture: bool = False) -> tuple[Model, OrtWebBackend, EnsureReport]:
    """The model at `model_url` (a folder written by `webgemma export`), ready to generate, and what the store
    did to get its files (downloaded, refetched after a failed check).

    reverify: hash files already verified on an earlier visit again (otherwise a cached file is trusted when
    it was stored by this store after passing its check and still has its size).
    capture: on WebGPU, decode through the graph-captured step session (webgemma.static_cache); its fixed caches
    hold `max_context` tokens (default STEP_CONTEXT). Off by default: it loads the weights a second time (load
    time, GPU memory) for a 2.6× faster decode, measured in BENCHMARKS.md. Older exports, whose step graph has no
    masks, decode without it.
    """
    store = WebModelStore(model_url)
    manifest = parse_manifest(await store.read("manifest.json"))
    report = await store.ensure(manifest.files(), on_progress, reverify=reverify)
    graph = await store.read(manifest.decoder["graph"]["path"])
    external = {f["path"]: store.file(f["path"]) for f in manifest.decoder["external_data"]}
    backend = await OrtWebBackend.create(
        graph, external, host_outputs=[manifest.decoder["logits"]], ep=ep,
        # constant folding would materialise the Reshape of the shared embedding: a second copy of 200+ MiB
        graph_optimization="disabled", verbose_log=verbose_log,
    )
    model = await load_model(store, lambda _: backend, prefill_chunk=prefill_chunk, max_context=max_context)
    if capture and backend.name == "webgpu" and "masks" in manifest.decoder.get("step_graph", {}):
        step = await backend.step_session(await store.read(manifest.decoder["step_graph"]["path"]), external, manifest,
                                          min(model.engine.max_context, max_context or STEP_CONTEXT))
        model.engine.use_step_session(step)
    return model, backend, report
