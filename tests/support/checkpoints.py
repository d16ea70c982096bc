"""Tiny Gemma 4 checkpoints written by transformers at test time, with the real E2B/E4B layer features.

E2B-like: (S,S,S,S,G) pattern, KV sharing (4 of 10 layers: three sliding and one global), double-wide MLP on
the shared layers, per-layer embeddings, 1 KV head, global head_dim twice the sliding one, proportional RoPE,
final soft-cap. E4B-like: (S,S,S,S,S,G), 2 KV heads, no double-wide MLP. The sliding window is short so tests
cross it. Every weight is randomised (norms and layer scalars too) so that no parameter hides at its init value.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.gemma_tokenizer import tokenizer_config, train_gemma_style_tokenizer  # noqa: E402

S, G = "sliding_attention", "full_attention"
KINDS = {
    "e2b": dict(num_hidden_layers=10, layer_types=([S] * 4 + [G]) * 2, num_key_value_heads=1,
                num_kv_shared_layers=4, use_double_wide_mlp=True, intermediate_size=128),
    "e4b": dict(num_hidden_layers=12, layer_types=([S] * 5 + [G]) * 2, num_key_value_heads=2,
                num_kv_shared_layers=4, use_double_wide_mlp=False, intermediate_size=96),
}
VOCAB = 512
_TEXT = [
    "The quick brown fox jumps over the lazy dog. ",
    "Ein Wörterbuch enthält viele Wörter, große und kleine. ",
    "La lune brille au-dessus de la mer calme; les étoiles répondent. ",
    "It was the best of times, it was the worst of times.\n",
    "数字 123 and emoji 😀 mixed with tabs\tand  double  spaces. ",
]


def write_tokenizer(folder: Path, extra_text: list[str] = ()) -> None:
    """A Gemma-style tokenizer (byte fallback, ▁ spaces, Gemma 4 control tokens) and our chat template."""
    tok = train_gemma_style_tokenizer([t * 20 for t in _TEXT] * 5 + list(extra_text), VOCAB)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    template = (ROOT / "models" / "chat_template.jinja").read_text()
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(template), indent=1))


def text_config(kind: str, window: int):
    from transformers import Gemma4TextConfig

    return Gemma4TextConfig(
        vocab_size=VOCAB, vocab_size_per_layer_input=VOCAB, hidden_size=64, hidden_size_per_layer_input=64,
        num_attention_heads=4, head_dim=32, global_head_dim=64, sliding_window=window,
        final_logit_softcapping=30.0, max_position_embeddings=4096, pad_token_id=0, eos_token_id=1, bos_token_id=2,
        **KINDS[kind],
    )


def randomise(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_scalar"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 2 and "embed" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))


def make_checkpoint(folder: Path, *, kind: str = "e2b", dtype: str = "float32", layout: str = "text",
                    config_form: str = "resaved", window: int = 8, seed: int = 0, max_shard_size: str | None = None) -> Path:
    """Writes a checkpoint folder; `layout` is "text" (Gemma4ForCausalLM) or "multimodal"; `max_shard_size`
    (e.g. "40KB") writes it in shards with an index, as large checkpoints are."""
    from transformers import (Gemma4AudioConfig, Gemma4Config, Gemma4ForCausalLM, Gemma4ForConditionalGeneration,
                              Gemma4VisionConfig)

    torch.manual_seed(seed)
    tc = text_config(kind, window)
    if layout == "text":
        model = Gemma4ForCausalLM(tc)
    else:
        vision = Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                    num_key_value_heads=2, head_dim=16, global_head_dim=16)
        audio = Gemma4AudioConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, output_proj_dims=64,
                                  subsampling_conv_channels=[8, 4], conv_kernel_size=3)
        model = Gemma4ForConditionalGeneration(Gemma4Config(text_config=tc, vision_config=vision, audio_config=audio))
    randomise(model, seed)
    model.to(getattr(torch, dtype)).save_pretrained(folder, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    write_tokenizer(folder)
    if config_form == "published":
        _to_published_config(folder / "config.json")
    return folder


def _to_published_config(path: Path) -> None:
    """Rewrite transformers' re-saved form (per_layer_config) into the published one (global_head_dim)."""
    config = json.loads(path.read_text())
    text = config.get("text_config", config)
    overrides = text.pop("per_layer_config")
    text["global_head_dim"] = next(iter(overrides.values()))["head_dim"]
    path.write_text(json.dumps(config, indent=1))
