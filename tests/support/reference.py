"""Running an exported model on onnxruntime (CPU) and its checkpoint in transformers, side by side."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import torch

from webgemma.backends.ort_native import NativeBackend
from webgemma.engine import Engine
from webgemma.manifest import parse_manifest
from webgemma.per_layer_rows import PerLayerRows
from webgemma.sampling import SamplingSettings
from webgemma.storage_local import LocalStore


def open_engine(model_dir: Path, prefill_chunk: int = 256, fill: bool = False) -> Engine:
    manifest = parse_manifest((Path(model_dir) / "manifest.json").read_text())
    rows = PerLayerRows(LocalStore(model_dir), manifest.table, manifest.decoder["inputs"])
    return Engine(manifest, NativeBackend(model_dir, manifest, fill=fill), rows, prefill_chunk=prefill_chunk)


def greedy_with_logits(engine: Engine, prompt: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy tokens and the logits each was chosen from, starting from an empty cache."""

    async def run():
        engine.reset()
        scores, _ = await engine.prefill(prompt)
        tokens, seen = [], []
        for _ in range(steps):
            seen.append(scores.values.copy())
            tokens.append(int(np.argmax(scores.values)))
            scores = await engine._run([tokens[-1]])
        return tokens, seen

    return asyncio.run(run())


def forced_logits(engine: Engine, prompt: list[int], tokens: list[int]) -> list[np.ndarray]:
    """The logits each of `tokens` is chosen from when the model is fed `prompt`, then `tokens` one by one (whatever
    it would have chosen itself)."""

    async def run():
        engine.reset()
        scores, _ = await engine.prefill(prompt)
        seen = [scores.values.copy()]
        for token in tokens[:-1]:
            seen.append((await engine._run([token])).values.copy())
        return seen

    return asyncio.run(run())


def generate_greedy(engine: Engine, prompt: list[int], steps: int) -> list[int]:
    result = asyncio.run(engine.generate(prompt, SamplingSettings(temperature=0), max_new_tokens=steps, stop_ids=[]))
    return result.output_ids


def transformers_logits(checkpoint: Path, ids: list[int]) -> np.ndarray:
    """Logits at every position of `ids` from the checkpoint in transformers (PyTorch, float32, CPU)."""
    from transformers import AutoConfig, AutoModelForCausalLM, Gemma4ForConditionalGeneration

    config = AutoConfig.from_pretrained(checkpoint)
    cls = Gemma4ForConditionalGeneration if config.model_type == "gemma4" else AutoModelForCausalLM
    model = cls.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()
