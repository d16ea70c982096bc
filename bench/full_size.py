"""Full-size Gemma 4 E2B / E4B checkpoints with random bf16 weights, laid out as transformers writes them.

The configs are the real ones (transformers' `convert_gemma4_weights.py`, text decoder); tensor names and shapes
are transformers' own (checked against it by a test). The data is random and written shard by shard, so making a
15 GB checkpoint needs no more memory than one shard. Random weights cost the same to export and to decode as
trained ones.
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


def text_decoder_shapes(kind: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a Gemma4ForCausalLM text decoder with `kind`'s config, as transformers saves
    them (the tied lm_head absent, KV-shared layers without k/v). Checked against transformers where it is
    installed (tests/exporter/test_full_size_layout.py); written out so the GPU host needs no transformers."""
    c = CONFIGS[kind]
    h, n, p, vocab = c["hidden_size"], c["num_hidden_layers"], c["hidden_size_per_layer_input"], 262_144
    first_shared = n - c["num_kv_shared_layers"]
    shapes = {
        "model.embed_tokens.weight": (vocab, h),
        "model.embed_tokens_per_layer.weight": (vocab, n * p),
        "model.per_layer_model_projection.weight": (n * p, h),
        "model.per_layer_projection_norm.weight": (p,),
        "model.norm.weight": (h,),
    }
    for i, kind_i in enumerate(c["layer_types"]):
        d = c["global_head_dim"] if kind_i == G else c["head_dim"]
        inner = c["intermediate_size"] * (2 if c["use_double_wide_mlp"] and i >= first_shared else 1)
        pre = f"model.layers.{i}."
        shapes.update({pre + f"{norm}.weight": (h,) for norm in (
            "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm",
            "post_per_layer_input_norm")})
        shapes.update({
            pre + "layer_scalar": (1,),
            pre + "self_attn.q_proj.weight": (c["num_attention_heads"] * d, h),
            pre + "self_attn.q_norm.weight": (d,),
            pre + "self_attn.o_proj.weight": (h, c["num_attention_heads"] * d),
            pre + "mlp.gate_proj.weight": (inner, h),
            pre + "mlp.up_proj.weight": (inner, h),
            pre + "mlp.down_proj.weight": (h, inner),
            pre + "per_layer_input_gate.weight": (p, h),
            pre + "per_layer_projection.weight": (h, p),
        })
        if i < first_shared:
            kv = c["num_key_value_heads"] * d
            shapes.update({pre + "self_attn.k_proj.weight": (kv, h), pre + "self_attn.v_proj.weight": (kv, h),
                           pre + "self_attn.k_norm.weight": (d,)})
    return shapes


def config_json(kind: str) -> dict:
    """The published config.json form (global_head_dim) of the text decoder."""
    return {"architectures": ["Gemma4ForCausalLM"], "model_type": "gemma4_text", "vocab_size": 262_144,
            "vocab_size_per_layer_input": 262_144, "final_logit_softcapping": 30.0, "sliding_window": 512,
            "max_position_embeddings": 131_072, "rope_parameters": ROPE, "rms_norm_eps": 1e-6,
            "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True, "dtype": "bfloat16",
            "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2, **CONFIGS[kind]}


def write_checkpoint(kind: str, folder: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    from tests.support.checkpoints import write_tokenizer

    if (folder / "model.safetensors.index.json").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config_json(kind), indent=1))
    write_tokenizer(folder)  # the built-in small tokenizer: the exporter's cost is in the weights
    shapes = text_decoder_shapes(kind)

    # on the GPU where there is one (the benchmark host): drawing 4.6 G values on its CPU took 2–3 minutes
    gen = torch.Generator("cuda" if torch.cuda.is_available() else "cpu").manual_seed(seed)
    groups, current, size = [], [], 0  # tensor names per shard, in order
    for name, shape in shapes.items():
        current.append(name)
        size += int(torch.Size(shape).numel()) * 2
        if size >= SHARD_BYTES:
            groups.append(current)
            current, size = [], 0
    groups += [current] if current else []
    weight_map = {}
    for i, names in enumerate(groups, 1):
        file = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: _random(shapes[n], n, gen).cpu() for n in names}, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    return folder


def _random(shape, name: str, gen) -> torch.Tensor:
    if name.endswith(("norm.weight", "layer_scalar")):
        return torch.ones(shape, dtype=torch.bfloat16)
    # generated in bf16 directly: the per-layer table alone is 2.8 G values
    return torch.randn(shape, generator=gen, dtype=torch.bfloat16, device=gen.device).mul_(
        0.02 if "embed" in name else shape[-1] ** -0.5)
