"""The prefill graph's last-position logits through native Dawn (onnxruntime-ep-webgpu: the browser's WebGPU
kernels) against onnxruntime's CPU kernels, on the same export: a full-size check of what the tests check on tiny
models in SwiftShader.

    python bench/prefill_parity.py MODEL_DIR [--tokens 512 1536] [--chunk 512]

Prints, per prompt length, the largest logit difference relative to the logits' range, whether the top token is
the same, and how many of the 64 best tokens the two share.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def last_logits(model_dir: Path, provider: str, ids: list[int], chunk: int) -> np.ndarray:
    from webgemma.backends.ort_native import NativeBackend
    from webgemma.model import load_model
    from webgemma.storage_local import LocalStore

    model = asyncio.run(load_model(LocalStore(model_dir), lambda m: NativeBackend(model_dir, m, provider=provider),
                                   prefill_chunk=chunk))
    scores, _ = asyncio.run(model.engine.prefill(ids))
    return scores.values


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("--tokens", nargs="+", type=int, default=[512, 1536])
    p.add_argument("--chunk", type=int, default=512)
    a = p.parse_args()
    from bench.gpu_bench import synthetic_prompt
    from webgemma.manifest import parse_manifest

    vocab = parse_manifest((a.model / "manifest.json").read_text()).arch["vocab_size"]
    for n in a.tokens:
        ids = synthetic_prompt(n, vocab)
        cpu, gpu = (last_logits(a.model, provider, ids, a.chunk) for provider in ("cpu", "webgpu"))
        top_cpu, top_gpu = (set(np.argsort(x)[-64:].tolist()) for x in (cpu, gpu))
        print(f"{n} tokens (chunks of {a.chunk}): max |Δlogit| / range {np.abs(cpu - gpu).max() / np.ptp(cpu):.2e}, "
              f"top token {'same' if cpu.argmax() == gpu.argmax() else 'differs'} ({cpu.argmax()} / {gpu.argmax()}), "
              f"top-64 shared {len(top_cpu & top_gpu)}, gap between the CPU's best two {np.sort(cpu)[-1] - np.sort(cpu)[-2]:.3g}",
              flush=True)


if __name__ == "__main__":
    main()
