"""GPU benchmark of real-size Gemma 4 E2B / E4B (random int4 weights) on an NVIDIA H100/H200 host.

Subcommands, run on the GPU machine (see BENCHMARKS.md for the whole session):

    prepare   --kinds e2b e4b     write random bf16 checkpoints (real configs) and export them int4
    browser   --kind e2b          the real page in headless Chromium with WebGPU (CHROMIUM, CHROMIUM_GPU_FLAGS from
                                  ../shared/gpu-browser/setup.sh): cold and warm load, decode at 128/1024/4096
                                  tokens of context, prefill of 512/4096 tokens, time to first token (the tab's
                                  first prompt of its length, and the same again right after: "again"), peak GPU
                                  memory, the page's heap and the renderer's resident memory
    pages     QUERY... --kind e2b one page load per query (e.g. "capture=0&prompt_tokens=1024&max_new_tokens=128")
                                  after a cold load, in one Chromium: A/B comparisons of page settings
    native    --kind e2b          the same graph and runtime through native Dawn (onnxruntime-ep-webgpu)
    torch     --kind e2b          transformers' PyTorch CUDA decode of the same checkpoint (bf16)
    bandwidth                     a device-to-device copy: the memory bandwidth behind the decode floor

Each subcommand adds its figures to RESULTS (default $OUT/results.json) and prints them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONTEXTS = (128, 1024, 4096)  # decode speed after prompts of these lengths (--contexts to try the harness small)
PROMPT = 512  # prefill speed and time to first token
DECODE_TOKENS = 128


def synthetic_prompt(n: int, vocab: int) -> list[int]:
    """n token ids spread over the vocabulary after <bos> (2): the native runs' prompt."""
    return [2] + [30 + (i * 7919) % (vocab - 30) for i in range(n - 1)]


def results_path(a) -> Path:
    return Path(a.results or Path(os.environ.get("OUT", ".")) / "results.json")


def record(a, section: str, values: dict) -> None:
    path = results_path(a)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.setdefault(section, {}).update(values)
    path.write_text(json.dumps(data, indent=1))
    print(json.dumps({section: values}, indent=1), flush=True)


# ---------------------------------------------------------------- prepare


def prepare(a) -> None:
    from bench.full_size import write_checkpoint
    from webgemma_export.export import export

    for kind in a.kinds:
        t = time.perf_counter()
        checkpoint = write_checkpoint(kind, a.work / f"gemma-4-{kind}-random")
        written = time.perf_counter() - t
        model = a.work / f"{kind}-int4"
        if not (model / "manifest.json").is_file():
            shutil.rmtree(model, ignore_errors=True)
            export(checkpoint, model, quant="int4", log=lambda s: print(s, flush=True))
        record(a, f"{kind}/prepare", {"checkpoint_s": round(written, 1), "export_s": round(time.perf_counter() - t - written, 1)})


# ---------------------------------------------------------------- browser


class Sampler(threading.Thread):
    """Peak GPU memory (nvidia-smi) and peak resident memory of any Chromium process, sampled every 0.2 s."""

    def __init__(self):
        super().__init__(daemon=True)
        self.gpu_mib = 0
        self.rss = {}  # process kind → peak KiB
        self.running = True

    def run(self):
        has_gpu = shutil.which("nvidia-smi") is not None
        while self.running:
            if has_gpu:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True).stdout.split()
                self.gpu_mib = max([self.gpu_mib, *map(int, out)])
            for proc in Path("/proc").iterdir():
                try:
                    cmd = (proc / "cmdline").read_bytes().split(b"\0")
                    if b"chrom" not in cmd[0]:
                        continue
                    kind = next((c.split(b"=")[1].decode() for c in cmd if c.startswith(b"--type=")), "browser")
                    rss = next(int(line.split()[1]) for line in (proc / "status").read_text().splitlines() if line.startswith("VmRSS"))
                    self.rss[kind] = max(self.rss.get(kind, 0), rss)
                except (OSError, StopIteration, ValueError, IndexError):
                    pass
            time.sleep(0.2)


@contextmanager
def chromium_pages(a):
    """Serves the site with the model linked in, starts Chromium on the GPU; yields page(name, **params) → result."""
    from webgemma_site.serve import make_server

    site = a.site
    model_link = site / "model"
    if model_link.is_symlink() or model_link.exists():
        model_link.unlink() if model_link.is_symlink() else shutil.rmtree(model_link)
    model_link.symlink_to(a.work / f"{a.kind}-int4")
    server = make_server(site, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"

    port = 9333
    profile = Path(f"/tmp/chromium-profile-{a.kind}")
    shutil.rmtree(profile, ignore_errors=True)
    # cdp.py opens pages in new tabs, which Chromium would treat as background tabs and throttle
    flags = os.environ["CHROMIUM_GPU_FLAGS"].split() + [
        "--disable-background-timer-throttling", "--disable-renderer-backgrounding", "--disable-backgrounding-occluded-windows"
    ] + a.chromium_flags
    chromium = subprocess.Popen([os.environ["CHROMIUM"], *flags, f"--remote-debugging-port={port}",
                                 f"--user-data-dir={profile}", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sampler = Sampler()
    sampler.start()
    runs = {}

    def page(name: str, **params) -> dict:
        query = {"autorun": "1", "backend": "webgpu", "temperature": "0", "ignore_stop": "1", **a.page_params, **params}
        t = time.perf_counter()
        result = cdp_result(port, base + "?" + urlencode(query), a.cdp, timeout=a.timeout)
        result["wall_s"] = round(time.perf_counter() - t, 2)
        result["started"] = round(time.time() - result["wall_s"], 2)  # to match with a clock log (nvidia-smi)
        runs[name] = result
        print(name, json.dumps({k: v for k, v in result.items() if k not in ("prompt_ids", "output_ids", "text")}), flush=True)
        if "error" in result:
            raise SystemExit(f"{name}: {result['error']}")
        return result

    try:
        yield page, sampler
    finally:
        sampler.running = False
        chromium.terminate()
        server.shutdown()


def pages(a) -> None:
    """One page load per QUERY (after a cold load that fills the storage): for A/B comparisons in one browser."""
    with chromium_pages(a) as (page, sampler):
        page("cold", prompt_tokens=8, max_new_tokens=2)
        out = {}
        for i, query in enumerate(a.queries):
            sampler.gpu_mib, sampler.rss = 0, {}
            r = page(query, **dict(kv.split("=") for kv in query.split("&")))
            key = query if a.queries.count(query) == 1 else f"{query} #{a.queries[:i + 1].count(query)}"
            out[key] = {k: r.get(k) for k in ("tokens_per_s", "prefill_tokens_per_s", "ttft_ms", "load_ms", "ms_per_step",
                                              "step_times", "graph_capture", "load_phases_ms", "prefill_ms", "repeats", "step", "kernel_profile_ms", "chained", "table", "table_wait_ms", "copies",
                                              "ready_ms", "ort_start_ms", "wall_s", "started", "then_prompt_tokens", "then_ttft_ms",
                                              "then_reused_tokens", "then_prefill_ms", "memory", "upload_from",
                                              "upload_trace", "long_tasks")} | {
                "first_tokens": r["output_ids"][:16], "peak_gpu_mib": sampler.gpu_mib,
                "peak_rss_gib": {k: round(v / 2**20, 2) for k, v in sampler.rss.items()}}
            record(a, f"{a.kind}/pages", out)  # after each page: a run cut short keeps what it measured


def browser(a) -> None:
    with chromium_pages(a) as (page, sampler):
        contexts, tokens = a.contexts, a.decode_tokens
        cold = page("cold", prompt_tokens=contexts[0], max_new_tokens=tokens)
        warm = page("warm", prompt_tokens=contexts[0], max_new_tokens=tokens)
        # each prompt again (`repeat=2`) a second later, the pointer over the prompt's form for its last 300 ms, as a
        # reader's on the way to Send: native Dawn's prompts follow one another (the GPU's clock up), the tab's first
        # of a length does not
        again = {"gap_ms": 1000, "near_ms": 300}
        ttft = page("prompt", prompt_tokens=a.prompt, max_new_tokens=8, repeat=2, **again)
        long = {n: page(f"context{n}", prompt_tokens=n, max_new_tokens=tokens,
                        **({"repeat": 2} | again if n == contexts[-1] else {})) for n in contexts[1:]}
        # the same long prompt in short chunks: equal tokens mean the chunks' attention masks agree on this GPU (decoded
        # from float32 inputs: the int8 rounding of the kernels' inputs amplifies the chunks' float differences into
        # other greedy tokens of a random model)
        check = [page(f"chunks{n}", prompt_tokens=contexts[-1], max_new_tokens=8, prefill_chunk=str(n), kernel_q8="0")
                 for n in (64, 1024)]
        same = check[0]["output_ids"] == check[1]["output_ids"]
    decode = {n: long[n]["tokens_per_s"] for n in contexts[1:]}
    decode[contexts[0]] = warm["tokens_per_s"]
    record(a, f"{a.kind}/browser" + ("?" + urlencode(a.page_params) if a.page_params else ""), {
        "load_cold_s": round(cold["load_ms"] / 1000, 2), "load_warm_s": round(warm["load_ms"] / 1000, 2),
        "decode_tokens_per_s": {str(k): round(v, 1) for k, v in sorted(decode.items())},
        "prefill_tokens_per_s": {str(a.prompt): round(ttft["prefill_tokens_per_s"]),
                                 str(contexts[-1]): round(long[contexts[-1]]["prefill_tokens_per_s"])},
        f"ttft_ms_{a.prompt}": round(ttft["ttft_ms"], 1),
        # the same prompts sent again right after the first, as native Dawn's are measured
        "again": {"prefill_tokens_per_s": {str(n): round(r["repeats"][0]["prefill_tokens_per_s"])
                                           for n, r in ((a.prompt, ttft), (contexts[-1], long[contexts[-1]]))},
                  f"ttft_ms_{a.prompt}": round(ttft["repeats"][0]["ttft_ms"], 1)},
        "peak_gpu_memory_gib": round(sampler.gpu_mib / 1024, 2),
        "long_chunks_equal_short_chunks": same, "page_params": a.page_params,
        "graph_capture": warm.get("graph_capture"), "chained": warm.get("chained"), "table_wait_ms": warm.get("table_wait_ms"),
        # the greedy tokens after the longest prompt: equal across page settings when both compute the same model
        "first_tokens": long[contexts[-1]]["output_ids"][:32],
        "ms_per_step": {n: long[n].get("ms_per_step") for n in contexts[1:]},
        "page_memory": warm["memory"],
        "load_phases_ms": warm.get("load_phases_ms"), f"prefill_ms_{a.prompt}": ttft.get("prefill_ms"),
        "peak_rss_gib": {k: round(v / 2**20, 2) for k, v in sampler.rss.items()},
    })


def cdp_result(port: int, url: str, cdp: Path, timeout: float) -> dict:
    """Opens `url` in a new tab through cdp.py (../shared/gpu-browser), returns window.webgemmaResult, closes tabs."""
    # DevTools' /json/new?URL ends the URL at its first '&' unless it is escaped
    out = subprocess.run([sys.executable, str(cdp), str(port), url.replace("&", "%26"), "--expr", "window.webgemmaResult", "--timeout", str(timeout)],
                         capture_output=True, text=True)
    for tab in json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list").read()):
        if tab.get("type") == "page" and tab["url"].startswith("http://127.0.0.1"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/json/close/{tab['id']}").read()
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"no result (cdp.py exit {out.returncode}): {out.stderr[-2000:]}"}
    return json.loads(lines[-1])


# ---------------------------------------------------------------- native Dawn


def native(a) -> None:
    from webgemma.backends.ort_native import NativeBackend
    from webgemma.generation import GenerationSettings
    from webgemma.model import load_model
    from webgemma.sampling import SamplingSettings
    from webgemma.storage_local import LocalStore
    from webgemma.web_model import default_prefill_chunk

    model_dir = a.work / f"{a.kind}-int4"

    async def run():
        t = time.perf_counter()
        model = await load_model(LocalStore(model_dir), lambda m: NativeBackend(model_dir, m, provider="webgpu"))
        model.engine.prefill_chunk = a.prefill_chunk or default_prefill_chunk(model.manifest.arch)
        load = time.perf_counter() - t
        await model.engine.warm_up()  # as the page does after loading: the first prompt finds the pipelines built
        model.generator.stop_token_ids = []
        greedy = SamplingSettings(temperature=0)
        out = {"load_s": round(load, 2), "decode_tokens_per_s": {}, "prefill_tokens_per_s": {}}
        vocab = model.tokenizer.vocab_size
        for n in sorted({a.prompt, *a.contexts}):
            ids = synthetic_prompt(n, vocab)
            model.engine.reset()
            r = await model.generator.generate(ids, GenerationSettings(max_new_tokens=a.decode_tokens, sampling=greedy))
            if n in a.contexts:
                out["decode_tokens_per_s"][str(n)] = round(r.stats["tokens_per_s"], 1)
            if n in (a.prompt, a.contexts[-1]):
                out["prefill_tokens_per_s"][str(n)] = round(r.stats["prefill_tokens_per_s"])
            if n == a.prompt:
                out[f"ttft_ms_{n}"] = round(r.stats["ttft_ms"], 1)
        out["cache_on_device"] = model.engine.backend._device_outputs
        return out

    record(a, f"{a.kind}/native", asyncio.run(run()))


# ---------------------------------------------------------------- PyTorch CUDA reference


def torch_reference(a) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    checkpoint = a.work / f"gemma-4-{a.kind}-random"
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16).cuda().eval()
    out = {"decode_tokens_per_s": {}, "transformers": __import__("transformers").__version__, "torch": torch.__version__}
    for n in a.contexts:
        ids = torch.tensor([[2] + [30 + (i * 7919) % 4000 for i in range(n - 1)]], device="cuda")
        kwargs = dict(do_sample=False, min_new_tokens=a.decode_tokens, max_new_tokens=a.decode_tokens)
        model.generate(ids, **{**kwargs, "min_new_tokens": 8, "max_new_tokens": 8})  # warm-up
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(ids, **{**kwargs, "min_new_tokens": 1, "max_new_tokens": 1})
        torch.cuda.synchronize()
        prefill = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(ids, **kwargs)
        torch.cuda.synchronize()
        out["decode_tokens_per_s"][str(n)] = round((a.decode_tokens - 1) / (time.perf_counter() - t - prefill), 1)
    record(a, f"{a.kind}/torch_cuda", out)


def bandwidth(a) -> None:
    import torch

    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        y.copy_(x)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - t) / 20
    record(a, "device", {"name": torch.cuda.get_device_name(), "copy_gb_per_s_read_plus_write": round(2 * x.numel() / seconds / 1e9)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["prepare", "browser", "pages", "native", "torch", "bandwidth"])
    p.add_argument("queries", nargs="*", help="pages: one page query per argument, e.g. capture=0&prompt_tokens=128")
    p.add_argument("--kinds", nargs="+", default=["e2b", "e4b"])
    p.add_argument("--kind", default="e2b")
    p.add_argument("--work", type=Path, default=Path("/tmp/wgb"))
    p.add_argument("--site", type=Path, default=Path("/tmp/wgb/site"))
    p.add_argument("--cdp", type=Path, default=ROOT / ".gpu" / "tools" / "cdp.py")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--results")
    p.add_argument("--contexts", nargs="+", type=int, default=list(CONTEXTS))
    p.add_argument("--prompt", type=int, default=PROMPT)
    p.add_argument("--decode-tokens", type=int, default=DECODE_TOKENS)
    p.add_argument("--prefill-chunk", type=int, help="native: the prefill's chunk length (default: the page's, "
                   "web_model.default_prefill_chunk)")
    p.add_argument("--chromium-flags", type=str.split, default=[], help="extra Chromium flags, for diagnostics, e.g. "
                   "'--chromium-flags=--enable-dawn-features=disable_robustness' (BENCHMARKS.md, fifteenth session)")
    p.add_argument("--page-params", type=lambda t: dict(kv.split("=") for kv in t.split("&")), default={},
                   help="extra page parameters for every browser run, e.g. 'prefill_chunk=1024&warm=0'")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    {"prepare": prepare, "browser": browser, "pages": pages, "native": native, "torch": torch_reference, "bandwidth": bandwidth}[a.command](a)


if __name__ == "__main__":
    main()
