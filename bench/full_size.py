"""Full-size Gemma 4 E2B / E4B checkpoints with random bf16 weights, laid out as transformers writes them.

The configs are the real ones (transformers' `convert_gemma4_weights.py`, text decoder). Tensor names and shapes
come from transformers itself (the model built on the meta device); the data is random and written shard by
shard, so making a 15 GB checkpoint needs no more memory than one shard. Random weights cost the same to export
and to decode as trained ones.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

S, G = "sliding_attention", "full_attention"
ROPE = {G: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
        S: {"rope_type": "default", "rope_theta": 10_000.0}}
CONFIGS = {
    "e2b": dict(hidden_size=1536, hidden_size_per_layer_input=256, intermediate_size=4 * 1536, num_hidden_layers=35,
                layer_types=([S] * 4 + [G]) * 7, num_attention_heads=8, num_key_value_heads=1, head_dim=256,
                global_head_dim=512, num_kv_shared_layers=20, use_double_wide_mlp=True),
    "e4b": dict(hidden_size=2560, hidden_size_per_layer_input=256, intermediate_size=4 * 2560, num_hidden_layers=42,
                layer_types=([S] * 5 + [G]) * 7, num_attention_heads=8, num_key_value_heads=2, head_dim=256,
                global_head_dim=512, num_kv_shared_layers=18, use_double_wide_mlp=False),
}
SHARD_BYTES = 2 * 2**30


def write_checkpoint(kind: str, folder: Path, seed: int = 0) -> Path:
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    from tests.support.checkpoints import write_tokenizer

    if (folder / "model.safetensors.index.json").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    config = Gemma4TextConfig(vocab_size=262_144, vocab_size_per_layer_input=262_144, final_logit_softcapping=30.0,
                              sliding_window=512, max_position_embeddings=131_072, rope_parameters=ROPE,
                              dtype="bfloat16", **CONFIGS[kind])
    config.architectures = ["Gemma4ForCausalLM"]
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Gemma4ForCausalLM(config).state_dict().items() if k != "lm_head.weight"}
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    write_tokenizer(folder)  # the built-in small tokenizer: the exporter's cost is in the weights

    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    groups, current, size = [], [], 0  # tensor names per shard, in state-dict order
    for name, shape in shapes.items():
        current.append(name)
        size += shape.numel() * 2
        if size >= SHARD_BYTES:
            groups.append(current)
            current, size = [], 0
    groups += [current] if current else []
    weight_map = {}
    for i, names in enumerate(groups, 1):
        file = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: _random(shapes[n], n, gen) for n in names}, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    return folder


def _random(shape, name: str, gen) -> torch.Tensor:
    if name.endswith(("norm.weight", "layer_scalar")):
        return torch.ones(shape, dtype=torch.bfloat16)
    # generated in bf16 directly: the per-layer table alone is 2.8 G values
    return torch.randn(shape, generator=gen, dtype=torch.bfloat16).mul_(0.02 if "embed" in name else shape[-1] ** -0.5)
