"""The real chat page on exported tiny models, in Debian's Chromium, offline: the same tokens as
`webgemma generate --json` in CPython on wasm and on WebGPU (SwiftShader), node placement, storage on reload,
recovery from a damaged cache, the wasm fallback, the context limit, text-only rendering and a screenshot."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from tests.support.checkpoints import make_checkpoint, write_tokenizer
from tests.support.reference import forced_logits, open_engine
from tests.support.warmth import wait_for_spin, warmth
from webgemma_export.export import export
from webgemma_site.build import build_site

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PROMPT = "Hello there, how are you?"
WEBGPU_TOKENS, WASM_TOKENS = 6, 16  # SwiftShader runs about a token a second on the tiny model
RESULT_TIMEOUT_MS = 240_000


def cli_json(model: Path, tokens: int, *extra: str, prompt: str = PROMPT) -> dict:
    out = subprocess.run([sys.executable, "-m", "webgemma.cli", "generate", str(model), prompt, "--temperature", "0",
                          "--max-new-tokens", str(tokens), "--json", *extra], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def sites(tmp_path_factory, serve_dir):
    base = tmp_path_factory.mktemp("page")
    checkpoint = make_checkpoint(base / "checkpoint", kind="e2b", layout="multimodal")
    served = {}
    for quant in ("fp32", "int4"):
        model = export(checkpoint, base / quant, quant=quant, log=lambda _: None)
        served[quant] = (model, serve_dir(build_site(model, base / f"site-{quant}")))
    return served


def run_page(page, site, **params) -> dict:
    page.goto(site.url + "?" + urlencode({"autorun": "1", "prompt": PROMPT, "temperature": "0", **params}))
    page.wait_for_function("window.webgemmaResult", timeout=RESULT_TIMEOUT_MS)
    return page.evaluate("window.webgemmaResult")


# webgpu-capture decodes through the step session: the hand-written kernels by default (int4), the captured step
# graph with step=graph (and for fp32, which the kernels do not read). The default variant waits for the per-layer
# table on the GPU (its steps then sample there and are queued ahead, chained) and reads the prompt's rows from their
# copies in OPFS (wait_copies=1); -lanes64 runs every kernel matvec with 64 lanes per row (the tiny model takes 8
# and 16; larger models up to 256, slow on SwiftShader), its pass in 3 submits, each step's commands encoded once
# its inputs are known, each step's row read from storage and its token sampled in Python, its lanes' sums added
# through workgroup memory (not by subgroups). The kernels' variants take float32 inputs (kernel_q8=0), as the CLI
# computes, to give its tokens exactly; the default int8 inputs are checked against onnxruntime's logits below
# (test_kernels_with_int8_inputs_track_onnxruntime_s_logits).
EXACT = {"kernel_q8": "0"}
STEP_VARIANTS = {"webgpu-capture": {"wait_copies": "1", "wait_table": "1"} | EXACT,
                 "webgpu-capture-graph": {"step": "graph"},
                 "webgpu-capture-lanes64": {"kernel_lanes": "64", "kernel_subgroups": "0", "submits": "3",
                                            "encode_ahead": "0", "gpu_table": "0", "profile": "1"} | EXACT}


@pytest.mark.parametrize(("quant", "backend"), [
    (quant, backend) for quant in ("fp32", "int4") for backend in ("wasm", "webgpu", *STEP_VARIANTS)
    if quant == "int4" or backend in ("wasm", "webgpu", "webgpu-capture")  # fp32 always takes the step graph
])
def test_page_generates_the_cli_tokens(sites, offline_context, quant, backend):
    model, site = sites[quant]
    variant = STEP_VARIANTS.get(backend)
    capture = variant is not None
    backend = "webgpu" if capture else backend
    # the prompt (~20 tokens) is longer than the window (8): the step session's sliding rings wrap from its first token
    tokens = WEBGPU_TOKENS + 8 * capture if backend == "webgpu" else WASM_TOKENS
    if variant and "kernel_lanes" in variant:
        tokens = WEBGPU_TOKENS  # a few seconds a token on SwiftShader
    context, _ = offline_context(site.url)
    page = context.new_page()
    result = run_page(page, site, backend=backend, max_new_tokens=tokens, verbose="1",
                      **(variant if capture else {"capture": "0"}))
    expected = cli_json(model, tokens)
    assert result.get("error") is None, result
    assert result["backend"] == backend
    assert (result["prompt_ids"], result["output_ids"], result["text"]) == (expected["prompt_ids"], expected["output_ids"], expected["text"])
    assert result["tokens_per_s"] > 0 and result["ttft_ms"] > 0 and result["prefill_tokens_per_s"] > 0
    # onnxruntime-web's WebGPU runtime was started while Python booted (boot.mjs)
    assert (result["ort_start_ms"] is not None) == (backend == "webgpu"), result["ort_start_ms"]
    # by default the tokens after the first come from the step session (webgemma.static_cache)
    assert result["graph_capture"] == capture
    if capture:
        kernels = quant == "int4" and variant.get("step") != "graph"
        assert result["step"] == "kernels" if kernels else result["step"].startswith("graph"), result["step"]
        if "wait_copies" in variant:  # the prompt's rows came from OPFS
            assert result["copies"] == "opfs", result["copies"]
        if variant.get("profile") and result["kernel_profile_ms"]:  # where the device has timestamp queries
            profile = result["kernel_profile_ms"]
            assert profile["step"] > 0 and set(profile["in_step"]) >= {"qkv", "gate_up", "sample"}, profile
        if kernels:  # the tokens after the first sampled on the GPU, steps chained, or each one sampled in Python
            chained = "gpu_table" not in variant
            assert (result["chained"], result["table"]) == (chained, "gpu" if chained else "storage"), result
            # SwiftShader's subgroups (4 invocations) are usable: the matvecs add by shuffles unless told not to
            assert result["kernel_subgroups"] == ("kernel_subgroups" not in variant)
    if backend == "webgpu":
        placement = page.evaluate("window.webgemmaPlacement")
        assert list(placement["counts"]) == ["WebGpuExecutionProvider"], placement  # every node, none on CPU


def test_a_later_visit_uploads_the_weights_from_their_copies_in_opfs(sites, offline_context):
    """The first visit uploads the decoder's shards from the Cache API and copies them into OPFS after loading; the
    next one reads them from those copies (into reused buffers) and generates the CLI's tokens; a visit that finds a
    copy gone reads them from the Cache API."""
    model, site = sites["int4"]
    expected = cli_json(model, WEBGPU_TOKENS)
    context, _ = offline_context(site.url)
    first = run_page(context.new_page(), site, backend="webgpu", max_new_tokens=WEBGPU_TOKENS, wait_copies="1")
    page = context.new_page()
    again = run_page(page, site, backend="webgpu", max_new_tokens=WEBGPU_TOKENS)
    shards = json.loads((model / "manifest.json").read_text())["decoder"]["external_data"]
    page.evaluate("""async (sha256) => {
        const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle("webgemma-rows");
        await dir.removeEntry(`${sha256}.done`);
    }""", shards[-1]["sha256"])
    gone = run_page(context.new_page(), site, backend="webgpu", max_new_tokens=WEBGPU_TOKENS)
    for result in (first, again, gone):
        assert result.get("error") is None, result
        assert (result["prompt_ids"], result["output_ids"]) == (expected["prompt_ids"], expected["output_ids"])
    assert [r["upload_from"] for r in (first, again, gone)] == ["blobs", "opfs", "blobs"]
    assert first["copies"] == "opfs"
    assert {t[0] for t in again["upload_trace"]} >= {f["path"] for f in shards}  # every shard, the table after them


def merged_layers(model: Path, context: int) -> list[int]:
    """The chunk counts of the layers whose o_proj merges the attention's chunks itself in the kernels' plan."""
    from webgemma.kernel_plan import kernel_plan
    from webgemma.manifest import parse_manifest
    from webgemma.onnx_bytes import float_initializers, weights_as_inputs

    manifest = parse_manifest((model / "manifest.json").read_text())
    graph = (model / manifest.decoder["step_graph"]["path"]).read_bytes()
    plan = kernel_plan(manifest, weights_as_inputs(graph)[1], float_initializers(graph), context)
    return [d.constants["MERGE"]["C"] for d in plan.dispatches if "MERGE" in d.constants]


@pytest.mark.parametrize("max_context", [None, 512])
def test_kernels_attend_over_several_chunks_of_the_cache(sites, offline_context, max_context):
    """A prompt longer than one attention chunk (64 slots): the kernels' per-chunk softmaxes and their merge, in the
    global layers by the merge's own dispatch (4,096 slots) or by o_proj's workgroups (512 slots: 8 chunks)."""
    model, site = sites["int4"]
    prompt = " ".join([PROMPT] * 14)
    expected = cli_json(model, 3, prompt=prompt)
    assert 2 * 64 < len(expected["prompt_ids"]) < 512 - 3
    assert (8 in merged_layers(model, max_context or 4096)) == (max_context is not None)
    context, _ = offline_context(site.url)
    page = context.new_page()
    page.goto(site.url + "?" + urlencode({"autorun": "1", "prompt": prompt, "temperature": "0", "backend": "webgpu",
                                          "max_new_tokens": "3", **({"max_context": max_context} if max_context else {}),
                                          **EXACT}))
    page.wait_for_function("window.webgemmaResult", timeout=RESULT_TIMEOUT_MS)
    result = page.evaluate("window.webgemmaResult")
    assert result.get("error") is None and result["step"] == "kernels", result
    assert (result["prompt_ids"], result["output_ids"]) == (expected["prompt_ids"], expected["output_ids"])


@pytest.mark.parametrize("variant", [{"wait_table": "1"}, {"kernel_lanes": "64", "kernel_subgroups": "0", "fill": "0"}])
def test_kernels_with_int8_inputs_track_onnxruntime_s_logits(sites, offline_context, variant):
    """By default the kernels' matvecs read their inputs as int8 in groups of 8 (wgsl.mjs quantize8): over a greedy
    reply to a prompt of several attention chunks, every step's top-k values are the logits onnxruntime computes on
    the CPU from the same export fed the page's own tokens, within the rounding's error, and each token the page
    picks is onnxruntime's best or within that error of it. Default: chained steps, subgroup sums, gate·up writing
    down's input quantized, the prompt through the fill graph and its last token scored by the kernels; lanes 64:
    workgroup-memory sums, down reading float32, the first token scored by the whole prefill graph (float32)."""
    model, site = sites["int4"]
    prompt = " ".join([PROMPT] * 6)
    context, _ = offline_context(site.url)
    result = run_page(context.new_page(), site, backend="webgpu", prompt=prompt, max_new_tokens=12, scores="1",
                      **variant)
    assert result.get("error") is None and result["step"] == "kernels" and result["kernel_q8"], result
    assert result["fills"] == (variant.get("fill") != "0")
    prompt_ids, output_ids = result["prompt_ids"], result["output_ids"]
    assert len(prompt_ids) > 64 and len(result["scores"]) == len(output_ids) == 12
    with ThreadPoolExecutor(1) as thread:  # off Playwright's event loop
        reference = thread.submit(forced_logits, open_engine(model), prompt_ids, output_ids).result()
    # the kernels' tokens (with fill=0 the first comes from the prefill graph, float32). The rounding of a tiny random
    # model's inputs moves its logits by up to ~1 (spread ~8; transformers with its linears' inputs rounded so: 0.26
    # median, 0.97 at worst over 90 positions): a wrong scale, sum or order of values moves them by several
    errors = []
    for i, ((values, ids), logits) in enumerate(zip(result["scores"], reference)):
        errors.append(np.abs(np.asarray(values) - logits[ids]).max())
        assert logits.max() - logits[output_ids[i]] <= 1.0, (i, logits.max(), logits[output_ids[i]])
    assert errors[0] < (1e-3 if variant.get("fill") == "0" else 1.0), errors
    assert max(errors) < 1.0 and np.mean(errors) < 0.3, errors


def test_chained_kernels_sample_the_cli_tokens(sites, offline_context):
    """Seeded sampling on the GPU (temperature, top-k, top-p, min-p, a repetition penalty) picks what Python's
    sampler picks from the same draws of the same generator: the CLI's tokens, which another seed changes."""
    model, site = sites["int4"]
    settings = {"temperature": "1.5", "top_k": "20", "top_p": "0.9", "min_p": "0.05", "repetition_penalty": "1.3"}
    args = [a for name, value in settings.items() for a in (f"--{name.replace('_', '-')}", value)]
    expected = cli_json(model, 12, *args, "--seed", "7")
    assert expected["output_ids"] != cli_json(model, 12, *args, "--seed", "8")["output_ids"]
    context, _ = offline_context(site.url)
    result = run_page(context.new_page(), site, backend="webgpu", max_new_tokens=12, wait_table="1", seed="7",
                      **settings, **EXACT)
    assert result.get("error") is None and result["chained"], result
    assert (result["prompt_ids"], result["output_ids"]) == (expected["prompt_ids"], expected["output_ids"])


def test_a_sampler_over_every_token_gets_the_whole_prefill_graph(sites, offline_context):
    """With the kernels the page loads only the fill graph, which gives no logits; a sampler over every token (top-k
    0) makes it create the whole prefill graph's session at its first prompt, whose logits give the CLI's tokens."""
    model, site = sites["int4"]
    settings = {"temperature": "1.0", "top_k": "0", "top_p": "1.0"}
    args = [a for name, value in settings.items() for a in (f"--{name.replace('_', '-')}", value)]
    expected = cli_json(model, WEBGPU_TOKENS, *args, "--seed", "3")
    context, _ = offline_context(site.url)
    result = run_page(context.new_page(), site, backend="webgpu", max_new_tokens=WEBGPU_TOKENS, seed="3", **settings)
    assert result.get("error") is None and result["fills"] and not result["chained"], result
    assert (result["prompt_ids"], result["output_ids"]) == (expected["prompt_ids"], expected["output_ids"])


def test_steps_queued_past_a_stop_token_leave_the_cache_as_it_was(sites, offline_context):
    """A stop token sampled on the GPU stops the cache writes of the steps already queued after it: a follow-up
    prompt then reuses the cache, its tokens fed through queued steps, and gets the tokens it gets when every step
    waits for Python (its sampling, the follow-up one token at a time)."""
    model, site = sites["int4"]
    stop = cli_json(model, 4)["output_ids"][2]  # the third greedy token stops the reply
    context, _ = offline_context(site.url)
    runs = [run_page(context.new_page(), site, backend="webgpu", max_new_tokens=12, stop_ids=str(stop), then=" and then",
                     **variant, **EXACT) for variant in ({"wait_table": "1"}, {"gpu_table": "0"})]
    chained, stepped = runs
    assert chained.get("error") is None and chained["chained"] and not stepped["chained"], runs
    assert chained["output_ids"] == stepped["output_ids"] and chained["output_ids"][-1] == stop
    assert chained["then_reused_tokens"] == len(chained["prompt_ids"]) + 2  # the reply up to its stop token
    assert chained["then_prompt_tokens"] > chained["then_reused_tokens"] and chained["then_ttft_ms"] > 0
    fed = chained["then_prompt_tokens"] - chained["then_reused_tokens"]  # through the steps, queued (Engine._feed)
    assert chained["then_prefill_ms"]["runs"] == stepped["then_prefill_ms"]["runs"] == fed
    assert chained["then_output_ids"] == stepped["then_output_ids"]


def test_e4b_layout_generates_the_cli_tokens_on_webgpu(tmp_path_factory, serve_dir, offline_context):
    """E4B's layout (two key/value heads a layer, which the prefill graph's attention regroups unlike E2B's one):
    onnxruntime-web's WebGPU kernels give the CLI's tokens in prefill runs across the sliding window."""
    base = tmp_path_factory.mktemp("e4b")
    model = export(make_checkpoint(base / "checkpoint", kind="e4b"), base / "fp32", quant="fp32", log=lambda _: None)
    site = serve_dir(build_site(model, base / "site"))
    context, _ = offline_context(site.url)
    result = run_page(context.new_page(), site, backend="webgpu", max_new_tokens=WEBGPU_TOKENS, capture="0")
    expected = cli_json(model, WEBGPU_TOKENS)
    assert result.get("error") is None, result
    assert (result["prompt_ids"], result["output_ids"]) == (expected["prompt_ids"], expected["output_ids"])


def test_prompts_read_their_rows_from_the_table_on_the_gpu(sites, offline_context):
    """Once the per-layer table is on the GPU a prefill gathers its tokens' rows there: a follow-up longer than the
    step session takes is prefilled anew, in several chunks, to the same tokens as with rows read from storage."""
    _, site = sites["int4"]
    context, _ = offline_context(site.url)
    then = " and then the story went on" * 6
    gpu, storage = [run_page(context.new_page(), site, backend="webgpu", max_new_tokens=4, then=then, prefill_chunk=16,
                             **variant) for variant in ({"wait_table": "1"}, {"gpu_table": "0"})]
    assert gpu.get("error") is None and storage.get("error") is None, (gpu, storage)
    assert gpu["then_reused_tokens"] == 0 and gpu["then_prefill_ms"]["gpu_rows"] >= 2, gpu
    assert storage["then_prefill_ms"]["gpu_rows"] == 0 and gpu["prefill_ms"]["gpu_rows"] >= 1
    assert gpu["output_ids"] == storage["output_ids"] and gpu["then_output_ids"] == storage["then_output_ids"]


def test_raw_prompt_matches_the_cli(sites, offline_context):
    model, site = sites["int4"]
    context, _ = offline_context(site.url)
    result = run_page(context.new_page(), site, backend="wasm", max_new_tokens=WASM_TOKENS, raw="1")
    expected = cli_json(model, WASM_TOKENS, "--raw")
    assert (result["prompt_ids"], result["output_ids"]) == (expected["prompt_ids"], expected["output_ids"])


def test_benchmark_prompts_of_an_exact_length_repeated(sites, offline_context):
    # bench/gpu_bench.py's parameters: a synthetic prompt of N ids, more prompts of that length or longer, a reader's
    # pause with the pointer over the form at its end
    _, site = sites["int4"]
    context, _ = offline_context(site.url)
    result = run_page(context.new_page(), site, backend="wasm", prompt_tokens="40", max_new_tokens="3", repeat="3",
                      grow="4", think_ms="50", gap_ms="300", near_ms="100", ignore_stop="1")
    assert result.get("error") is None, result
    assert len(result["prompt_ids"]) == 40 and len(set(result["prompt_ids"])) == 40 and len(result["output_ids"]) == 3
    keys = ["prefill_ms", "prefill_tokens_per_s", "prompt_tokens", "tokens_per_s", "ttft_ms"]
    assert [sorted(r) for r in result["repeats"]] == [keys] * 2
    assert [r["prompt_tokens"] for r in result["repeats"]] == [44, 48]
    assert all(r["ttft_ms"] > 0 and r["prefill_ms"]["runs"] >= 1 for r in result["repeats"])


def model_requests(traffic) -> list[str]:
    return [u for u in traffic.requests if "/model/" in u and not u.split("?")[0].endswith("/manifest.json")]


def test_reload_reads_every_shard_from_storage(sites, offline_context):
    _, site = sites["int4"]
    context, traffic = offline_context(site.url)
    page = context.new_page()
    assert run_page(page, site, backend="wasm", max_new_tokens="4")["output_ids"]
    first = len(model_requests(traffic))
    assert first >= 4  # graph, shards, table files, tokenizer
    page.reload()
    page.wait_for_function("window.webgemmaResult", timeout=RESULT_TIMEOUT_MS)
    assert page.evaluate("window.webgemmaResult")["output_ids"]
    assert len(model_requests(traffic)) == first, "the second visit downloaded model files again"


def test_damaged_cached_shard_is_named_and_fetched_again(sites, offline_context):
    model, site = sites["int4"]
    shard = json.loads((model / "manifest.json").read_text())["decoder"]["external_data"][0]["path"]
    context, traffic = offline_context(site.url)
    page = context.new_page()
    clean = run_page(page, site, backend="wasm", max_new_tokens="4")
    page.evaluate("""async ([url]) => {
        const cache = await caches.open("webgemma-model");
        const bytes = new Uint8Array(await (await (await cache.match(url)).blob()).arrayBuffer());
        bytes[bytes.length >> 1] ^= 0xff;  // same size, one byte flipped
        await cache.put(url, new Response(bytes));
    }""", [site.url + "model/" + shard])
    before = traffic.count("model/" + shard)
    page.reload()
    page.wait_for_function("window.webgemmaResult", timeout=RESULT_TIMEOUT_MS)
    assert shard in page.text_content("#notice")
    assert traffic.count("model/" + shard) == before + 1
    assert page.evaluate("window.webgemmaResult")["output_ids"] == clean["output_ids"]


def test_without_webgpu_the_page_says_it_falls_back_to_wasm(sites, offline_context):
    _, site = sites["int4"]
    context, _ = offline_context(site.url, "Object.defineProperty(Navigator.prototype, 'gpu', {get: () => undefined});")
    page = context.new_page()
    assert run_page(page, site, max_new_tokens="2")["backend"] == "wasm"
    assert page.is_visible("#notice") and "WebGPU is not available" in page.text_content("#notice")


def test_prompt_past_the_context_limit_gets_a_message(sites, offline_context):
    _, site = sites["int4"]
    context, _ = offline_context(site.url)
    page = context.new_page()
    result = run_page(page, site, backend="wasm", max_context="24", prompt=PROMPT * 4)
    assert "context holds 24" in result["error"]
    assert "context holds 24" in page.text_content(".message.model.failed")
    assert page.is_enabled("#prompt")  # the page stays usable


BRIDGE = "import(new URL('ort_bridge.mjs', location.href))"  # the module as the page imported it


@pytest.mark.parametrize("backend", ["wasm", "webgpu"])
def test_chat_turns_by_keyboard_reuse_the_cache_and_stop_works(sites, offline_context, backend):
    _, site = sites["int4"]
    context, _ = offline_context(site.url)
    page = context.new_page()
    page.goto(site.url + f"?backend={backend}&temperature=0&max_new_tokens=8")
    page.wait_for_selector("#prompt:not([disabled])", timeout=RESULT_TIMEOUT_MS)
    page.focus("#prompt")
    page.keyboard.type("First question")
    if backend == "webgpu":  # keystrokes keep the GPU's clocks up
        wait_for_spin(page, BRIDGE)
    page.evaluate(BRIDGE + ".then(({warmth}) => { warmth.until += 600_000; })")  # as if typing went on and on
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelectorAll('.message.model').length == 1 && !document.querySelector('#send').disabled")
    spun = warmth(page, BRIDGE)
    assert not spun["spinning"], "the prompt stops the spin"  # its own work keeps the GPU busy
    assert (spun["dispatches"] > 0) == (backend == "webgpu"), spun
    if backend == "webgpu":  # and so does the pointer on its way to Send
        page.hover("#send")
        wait_for_spin(page, BRIDGE, since=spun["dispatches"])
    page.fill("#prompt", "Second question")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelectorAll('.message.model').length == 2 && !document.querySelector('#send').disabled")
    turns = page.evaluate("[...document.querySelectorAll('.message')].map(m => m.className)")
    assert turns == ["message user", "message model", "message user", "message model"]
    assert "tokens/s" in page.text_content("#stats")
    # a long generation stopped with the stop button
    page.click("#settings summary")  # open the settings
    page.fill("#max-tokens", "4000")
    page.fill("#prompt", "Third question")
    page.keyboard.press("Enter")
    page.wait_for_function("!document.querySelector('#stop').disabled")
    page.click("#stop")
    page.wait_for_function("!document.querySelector('#send').disabled", timeout=60_000)
    assert "stopped" in page.text_content("#stats")


@pytest.fixture(scope="module")
def script_model(tmp_path_factory, serve_dir):
    """A model whose greedy output is the token "<script>" over and over: every embedding shares a direction
    that the "<script>" row holds fifty times over, so it wins the tied lm_head whatever the layers do."""
    import numpy as np
    import torch

    from webgemma.tokenizer import Tokenizer
    from webgemma_export.tokenizer_artifact import convert_tokenizer_json

    base = tmp_path_factory.mktemp("script")
    checkpoint = make_checkpoint(base / "checkpoint", kind="e2b")
    write_tokenizer(checkpoint, extra_text=["<script>alert(1)</script> "] * 50)
    token = Tokenizer.from_bytes(convert_tokenizer_json(checkpoint / "tokenizer.json")).token_to_id("<script>")
    assert token is not None, "the tokenizer should have learned <script> as one piece"
    tensors = load_file(checkpoint / "model.safetensors")
    embed = tensors["model.embed_tokens.weight"].numpy()
    direction = np.random.default_rng(0).standard_normal(embed.shape[1]).astype(np.float32)
    direction /= np.linalg.norm(direction)
    embed += direction
    embed[token] += 50 * direction
    tensors["model.embed_tokens.weight"] = torch.from_numpy(embed)
    save_file(tensors, checkpoint / "model.safetensors", metadata={"format": "pt"})
    model = export(checkpoint, base / "model", quant="fp32", log=lambda _: None)
    return model, serve_dir(build_site(model, base / "site"))


def test_model_output_is_rendered_as_text_and_shows_in_a_screenshot(script_model, offline_context):
    model, site = script_model
    context, _ = offline_context(site.url)
    page = context.new_page()
    page.on("dialog", lambda d: pytest.fail(f"model output ran script: {d.message}"))
    result = run_page(page, site, backend="wasm", max_new_tokens="5")
    assert result["text"].count("<script>") == 5
    reply = page.locator(".message.model").first
    assert reply.text_content() == result["text"]
    assert page.locator("#conversation script").count() == 0
    assert "&lt;script&gt;" in reply.inner_html()
    # The screenshot shows that text: redrawing the same bubble with the CLI's text gives the same pixels, and
    # an emptied bubble does not.
    box = {k: round(v) for k, v in reply.bounding_box().items()}

    def picture() -> bytes:
        return page.screenshot(clip=box, full_page=True, animations="disabled", caret="hide")

    shot = picture()
    redraw = "([text]) => { document.querySelector('.message.model').textContent = text; }"
    page.evaluate(redraw, [cli_json(model, 5)["text"]])
    assert picture() == shot
    page.evaluate(redraw, [""])
    assert picture() != shot
