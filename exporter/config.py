"""Gemma 4 text-decoder architecture, read from a checkpoint's `config.json`.

Accepts the multimodal (`Gemma4ForConditionalGeneration`, `text_config` + `model.language_model.*`) and the
text-only (`Gemma4ForCausalLM`, `model.*`) layouts, and both config forms: the published one (`global_head_dim`,
`num_global_key_value_heads`) and the one transformers re-saves (`per_layer_config` with per-layer overrides).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CheckpointError, OptionError

SLIDING, FULL = "sliding_attention", "full_attention"

# Features of larger Gemma 4 models that E2B/E4B do not use; exporting them would silently compute the wrong model.
_UNSUPPORTED = {
    "enable_moe_block": "mixture-of-experts blocks (Gemma 4 26B-A4B)",
    "attention_k_eq_v": "keys reused as values (Gemma 4 31B/26B)",
    "attention_bias": "attention biases",
    "use_bidirectional_attention": "bidirectional attention",
}


@dataclass(frozen=True)
class TextArch:
    """The numbers that shape the decoder graph. Per-layer lists are indexed by layer."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    layer_types: tuple[str, ...]
    head_dim: dict[str, int]  # by layer type
    num_kv_heads: dict[str, int]  # by layer type
    intermediate_size: tuple[int, ...]  # by layer, double-wide already applied
    sliding_window: int
    num_kv_shared_layers: int
    per_layer_dim: int  # hidden_size_per_layer_input
    vocab_size_per_layer: int
    final_logit_softcapping: float | None
    rms_norm_eps: float
    max_position_embeddings: int
    rope: dict[str, dict]  # by layer type: rope_parameters
    tie_word_embeddings: bool
    weight_prefix: str  # "model.language_model." or "model."
    architecture: str

    @property
    def first_shared_layer(self) -> int:
        return self.num_layers - self.num_kv_shared_layers

    @property
    def kv_source(self) -> tuple[int, ...]:
        """For each layer, the layer whose K/V it attends to (itself unless KV-shared)."""
        first = self.first_shared_layer
        last_of_type = {t: max(i for i in range(first) if self.layer_types[i] == t) for t in set(self.layer_types[:first])}
        return tuple(i if i < first else last_of_type[t] for i, t in enumerate(self.layer_types))

    @property
    def cache_layers(self) -> tuple[int, ...]:
        """Layers that own a KV cache (the rest read their source layer's)."""
        return tuple(range(self.first_shared_layer))

    def rope_inv_freq(self, layer_type: str) -> np.ndarray:
        """Inverse frequencies as transformers computes them in float32 (default and proportional RoPE)."""
        p = self.rope[layer_type]
        dim = self.head_dim[layer_type]
        theta = float(p["rope_theta"])
        kind = p.get("rope_type", "default")
        if kind == "default":
            return (1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))).astype(np.float32)
        if kind == "proportional":
            angles = int(float(p.get("partial_rotary_factor", 1.0)) * dim // 2)
            rotated = 1.0 / (theta ** (np.arange(0, 2 * angles, 2, dtype=np.float32) / np.float32(dim)))
            inv = np.concatenate([rotated, np.zeros(dim // 2 - angles, np.float32)]).astype(np.float32)
            return (inv / np.float32(p.get("factor", 1.0))).astype(np.float32)
        raise OptionError(f"config.json: rope_type {kind!r} for {layer_type} is not supported (default, proportional)")


def read_arch(checkpoint_dir: Path) -> TextArch:
    path = Path(checkpoint_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} not found: point webgemma at a Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    model_type = config.get("model_type")
    if model_type == "gemma4":
        text, prefix = config.get("text_config") or {}, "model.language_model."
    elif model_type == "gemma4_text":
        text, prefix = config, "model."
    else:
        raise CheckpointError(
            f"{path}: unknown architecture model_type={model_type!r} ({config.get('architectures')}); "
            "webgemma exports Gemma 4 E2B/E4B checkpoints (model_type 'gemma4' or 'gemma4_text')"
        )
    arch_name = (config.get("architectures") or ["Gemma4ForConditionalGeneration" if model_type == "gemma4" else "Gemma4ForCausalLM"])[0]
    return _text_arch(text, prefix, arch_name, config.get("tie_word_embeddings", text.get("tie_word_embeddings", True)))


def _text_arch(c: dict, prefix: str, arch_name: str, tie: bool) -> TextArch:
    for key, what in _UNSUPPORTED.items():
        if c.get(key) not in (None, False):
            raise OptionError(f"config.json: {key}={c[key]!r} ({what}) is not supported; webgemma exports Gemma 4 E2B/E4B")
    if c.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise OptionError(f"config.json: hidden_activation {c['hidden_activation']!r} is not supported (gelu_pytorch_tanh)")
    if not tie:
        raise OptionError("config.json: tie_word_embeddings=false is not supported; Gemma 4 ties lm_head to embed_tokens")

    n = int(c.get("num_hidden_layers", 30))
    types = c.get("layer_types") or [SLIDING if (i + 1) % 6 else FULL for i in range(n)]
    types = list(types)
    if len(types) != n or set(types) - {SLIDING, FULL}:
        raise CheckpointError(f"config.json: layer_types must list {n} entries of {SLIDING!r}/{FULL!r}, got {types}")
    types[-1] = FULL  # transformers forces the last layer global

    head_dim = {SLIDING: int(c.get("head_dim", 256)), FULL: int(c.get("global_head_dim", 512))}
    kv_heads = {SLIDING: int(c.get("num_key_value_heads", 4))}
    kv_heads[FULL] = int(c.get("num_global_key_value_heads") or kv_heads[SLIDING])
    for idx, override in (c.get("per_layer_config") or {}).items():
        layer_type = types[int(idx)]
        if "head_dim" in override:
            head_dim[layer_type] = int(override["head_dim"])
        if "num_key_value_heads" in override:
            kv_heads[layer_type] = int(override["num_key_value_heads"])

    shared = int(c.get("num_kv_shared_layers", 0))
    inter = c.get("intermediate_size", 9216)
    inter = [int(x) for x in inter] if isinstance(inter, list) else [int(inter)] * n
    if c.get("use_double_wide_mlp", False):
        inter = [x * 2 if i >= n - shared else x for i, x in enumerate(inter)]
    rope = c.get("rope_parameters") or {
        SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
        FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
    }
    arch = TextArch(
        vocab_size=int(c.get("vocab_size", 262_144)),
        hidden_size=int(c.get("hidden_size", 2304)),
        num_layers=n,
        num_heads=int(c.get("num_attention_heads", 8)),
        layer_types=tuple(types),
        head_dim=head_dim,
        num_kv_heads=kv_heads,
        intermediate_size=tuple(inter),
        sliding_window=int(c.get("sliding_window", 512)),
        num_kv_shared_layers=shared,
        per_layer_dim=int(c.get("hidden_size_per_layer_input", 256) or 0),
        vocab_size_per_layer=int(c.get("vocab_size_per_layer_input", c.get("vocab_size", 262_144))),
        final_logit_softcapping=c.get("final_logit_softcapping"),
        rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(c.get("max_position_embeddings", 131_072)),
        rope={t: dict(rope[t]) for t in set(types)},
        tie_word_embeddings=True,
        weight_prefix=prefix,
        architecture=arch_name,
    )
    if arch.per_layer_dim == 0:
        raise OptionError("config.json: hidden_size_per_layer_input=0; webgemma exports E2B/E4B, which have per-layer embeddings")
    if shared and set(types[: arch.first_shared_layer]) != set(types):
        raise CheckpointError("config.json: KV-shared layers need an earlier non-shared layer of each attention type")
    return arch
