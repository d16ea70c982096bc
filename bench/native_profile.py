"""Where a decode step's time goes on the GPU: the exported decoder through native Dawn (onnxruntime-ep-webgpu)
with onnxruntime's profiler, and the same decode with MatMulNBits switched to its int8-activation kernels
(accuracy_level 4), side by side.

    python bench/native_profile.py MODEL_DIR [--tokens 32] [--prompt 128]

Prints decode tokens/s for both graphs and, from the profile of the first, the time per operator type (the
profiler's kernel events; on the WebGPU EP they carry GPU timestamps where the adapter has timestamp queries).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.model_variants import with_accuracy_level  # noqa: E402


def decode(model_dir: Path, prompt: int, tokens: int, profile: bool) -> tuple[float, Path | None]:
    import onnxruntime as ort

    from webgemma.backends import ort_native
    from webgemma.generation import GenerationSettings
    from webgemma.model import load_model
    from webgemma.sampling import SamplingSettings
    from webgemma.storage_local import LocalStore

    original = ort.SessionOptions

    def options():  # NativeBackend's options with the profiler switched on
        o = original()
        o.enable_profiling = profile
        return o

    ort.SessionOptions = options
    try:
        model = asyncio.run(load_model(LocalStore(model_dir), lambda m: ort_native.NativeBackend(model_dir, m, provider="webgpu")))
    finally:
        ort.SessionOptions = original
    model.generator.stop_token_ids = []
    model.engine.backend.causal_prefill_limit = None
    ids = [2] + [30 + (i * 7919) % 200000 for i in range(prompt - 1)]
    settings = GenerationSettings(max_new_tokens=tokens, sampling=SamplingSettings(temperature=0))
    asyncio.run(model.generator.generate(ids, settings))  # warm-up: shaders compiled
    model.engine.reset()
    r = asyncio.run(model.generator.generate(ids, settings))
    path = Path(model.engine.backend.session.end_profiling()) if profile else None
    return r.stats["tokens_per_s"], path


def summarize(profile: Path) -> None:
    events = json.loads(profile.read_text())
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
    a = p.parse_args()
    speed, profile = decode(a.model, a.prompt, a.tokens, profile=True)
    print(f"int4 MatMulNBits (as exported): {speed:.1f} tokens/s with the profiler on")
    speed, _ = decode(a.model, a.prompt, a.tokens, profile=False)
    print(f"int4 MatMulNBits (as exported): {speed:.1f} tokens/s")
    variant = with_accuracy_level(a.model, 4)
    speed, _ = decode(variant, a.prompt, a.tokens, profile=False)
    print(f"accuracy_level 4 (int8 activations): {speed:.1f} tokens/s")
    summarize(profile)
    shutil.rmtree(variant.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
