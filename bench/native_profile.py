"""Where a decode step's or a prefill's time goes on the GPU: the exported decoder through native Dawn
(onnxruntime-ep-webgpu) with onnxruntime's profiler, and the same decode with MatMulNBits switched to its
int8-activation kernels (accuracy_level 4), side by side.

    python bench/native_profile.py MODEL_DIR [--tokens 32] [--prompt 128]
    python bench/native_profile.py MODEL_DIR --prefill 512 [--runs 5] [--idle 3] [--grow 8]

Prints decode tokens/s for both graphs and, from the profile of the first, the time per operator type (the
profiler's kernel events; on the WebGPU EP they carry GPU timestamps where the adapter has timestamp queries).
--prefill: the wall time of each run of one prefill chunk of that many tokens (the first builds the pipelines), and
the last run's profile per operator type, once for the layers that own a cache (every position) and once for the
KV-shared ones (the last position only). --idle S: S seconds with the GPU idle before each run after the first (does
idleness slow the next run, as it does in Chromium?). --grow N: each run's prompt N tokens longer than the one before
(as real prompts come: does a length not run before cost more?).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_bench import synthetic_prompt  # noqa: E402
from bench.model_variants import with_accuracy_level  # noqa: E402


def load(model_dir: Path, profile: bool):
    """The model through native Dawn, its session's profiler on or off."""
    import onnxruntime as ort

    from webgemma.backends import ort_native
    from webgemma.model import load_model
    from webgemma.storage_local import LocalStore

    original = ort.SessionOptions

    def options():  # NativeBackend's options with the profiler switched on
        o = original()
        o.enable_profiling = profile
        o.profile_file_prefix = "/tmp/webgemma_profile"
        return o

    ort.SessionOptions = options
    try:
        model = asyncio.run(load_model(LocalStore(model_dir), lambda m: ort_native.NativeBackend(model_dir, m, provider="webgpu"),
                                       prefill_chunk=1 << 16))
    finally:
        ort.SessionOptions = original
    model.generator.stop_token_ids = []
    return model


def decode(model_dir: Path, prompt: int, tokens: int, profile: bool) -> tuple[float, Path | None]:
    from webgemma.generation import GenerationSettings
    from webgemma.sampling import SamplingSettings

    model = load(model_dir, profile)
    ids = [2] + [30 + (i * 7919) % 200000 for i in range(prompt - 1)]
    settings = GenerationSettings(max_new_tokens=tokens, sampling=SamplingSettings(temperature=0))
    asyncio.run(model.generator.generate(ids, settings))  # warm-up: shaders compiled
    model.engine.reset()
    r = asyncio.run(model.generator.generate(ids, settings))
    path = Path(model.engine.backend.session.end_profiling()) if profile else None
    return r.stats["tokens_per_s"], path


def prefill(model_dir: Path, n: int, runs: int, idle: float, grow: int) -> None:
    """Wall time of `runs` prefills of one n-token chunk (each `grow` tokens longer than the one before), `idle`
    seconds apart; the last one's profile, owned and shared layers apart."""
    model = load(model_dir, profile=True)
    engine = model.engine
    walls = []
    for run in range(runs):
        ids = synthetic_prompt(n + run * grow, model.manifest.arch["vocab_size"])
        engine.reset()
        time.sleep(idle if run else 0)
        t = time.perf_counter()
        asyncio.run(engine.prefill(ids, top_k=True))
        walls.append(round((time.perf_counter() - t) * 1000, 1))
    lengths = f"{n}..{n + (runs - 1) * grow}" if grow else f"{n}"
    print(f"prefill of {lengths} tokens, ms a run: {walls} ({n / min(walls) * 1000:.0f} tokens/s at best)")
    events = json.loads(Path(engine.backend.session.end_profiling()).read_text())
    runs_ = [e for e in events if e.get("name") == "model_run"]
    start = runs_[-1]["ts"] if runs_ else 0
    first_shared = model.manifest.arch["num_hidden_layers"] - model.manifest.arch.get("num_kv_shared_layers", 0)

    def shared(event: dict) -> bool:
        layer = re.search(r"layers\.(\d+)/", event.get("name", ""))
        return layer is not None and int(layer[1]) >= first_shared

    last = [e for e in events if e.get("ts", 0) >= start]
    print(f"--- the last run, layers that own a cache (0..{first_shared - 1})")
    summarize([e for e in last if not shared(e)])
    print(f"--- the last run, KV-shared layers ({first_shared}..)")
    summarize([e for e in last if shared(e)])


def summarize(events: list[dict]) -> None:
    by = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        args = e.get("args", {})
        key = (e.get("cat"), args.get("op_name") or e.get("name", "").split("_kernel_time")[0][-40:])
        by[key][0] += e["dur"]
        by[key][1] += 1
    for cat in sorted({k[0] for k in by}):
        rows = sorted(((v[0], k[1], v[1]) for k, v in by.items() if k[0] == cat), reverse=True)[:14]
        total = sum(v[0] for k, v in by.items() if k[0] == cat)
        print(f"--- {cat}: {total / 1000:.1f} ms in all")
        for dur, name, n in rows:
            print(f"  {name:42s} {dur / 1000:9.1f} ms  {n:6d} events  {dur / max(n, 1):8.1f} µs each")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--prefill", type=int, default=0, help="profile the prefill of one chunk of this many tokens")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--idle", type=float, default=0, help="--prefill: seconds idle before each run after the first")
    p.add_argument("--grow", type=int, default=0, help="--prefill: each run's prompt this many tokens longer")
    a = p.parse_args()
    if a.prefill:
        return prefill(a.model, a.prefill, a.runs, a.idle, a.grow)
    speed, profile = decode(a.model, a.prompt, a.tokens, profile=True)
    print(f"int4 MatMulNBits (as exported): {speed:.1f} tokens/s with the profiler on")
    speed, _ = decode(a.model, a.prompt, a.tokens, profile=False)
    print(f"int4 MatMulNBits (as exported): {speed:.1f} tokens/s")
    variant = with_accuracy_level(a.model, 4)
    speed, _ = decode(variant, a.prompt, a.tokens, profile=False)
    print(f"accuracy_level 4 (int8 activations): {speed:.1f} tokens/s")
    summarize(json.loads(profile.read_text()))
    shutil.rmtree(variant.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
