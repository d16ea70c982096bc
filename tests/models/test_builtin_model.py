"""The built-in model (models/tiny): loads in transformers, has Gemma 4 E2B's layer features, and has learnt English.

Needs torch + transformers (the `test` extra). The corpus package is not needed: the held-out excerpt and the training
split's token counts are in models/.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

MODELS = Path(__file__).resolve().parents[2] / "models"
TINY = MODELS / "tiny"
FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]
MAX_BYTES = 12_000_000
EVAL_WINDOW = 256  # tokens per evaluated window (<bos> + 255): longer than the sliding window
EVAL_WINDOWS = 16  # ~4k held-out tokens


@pytest.fixture(scope="module")
def config() -> dict:
    return json.loads((TINY / "config.json").read_text())


@pytest.fixture(scope="module")
def tensors() -> dict:
    return safetensors_torch.load_file(str(TINY / "model.safetensors"))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = transformers.AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32)
    return m.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(TINY)


def test_folder_is_a_small_hf_checkpoint():
    present = sorted(p.name for p in TINY.iterdir())
    assert present == sorted(FILES)
    size = sum((TINY / f).stat().st_size for f in FILES)
    assert size <= MAX_BYTES, f"models/tiny is {size} bytes, over {MAX_BYTES}"


def test_loads_with_auto_classes(model, tokenizer, config):
    assert config["model_type"] == "gemma4_text"
    assert type(model).__name__ == "Gemma4ForCausalLM"
    assert model.config.model_type == "gemma4_text"
    assert tokenizer.bos_token == "<bos>" and tokenizer.convert_tokens_to_ids("<bos>") == config["bos_token_id"]
    assert tokenizer.convert_tokens_to_ids("<eos>") == config["eos_token_id"]
    assert tokenizer.convert_tokens_to_ids("<pad>") == config["pad_token_id"]
    ids = tokenizer("It is a truth universally acknowledged").input_ids
    assert ids[0] == config["bos_token_id"] and len(ids) > 3
    assert tokenizer.decode(ids, skip_special_tokens=True) == "It is a truth universally acknowledged"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<bos><|turn>user\nHi<turn|>\n<|turn>model\n"
    generation = json.loads((TINY / "generation_config.json").read_text())
    stops = generation["eos_token_id"]
    assert tokenizer.convert_tokens_to_ids("<eos>") in stops and tokenizer.convert_tokens_to_ids("<turn|>") in stops


def test_config_has_e2b_features(config, model):
    layers = config["num_hidden_layers"]
    types = config["layer_types"]
    pattern = ["sliding_attention"] * 4 + ["full_attention"]
    assert len(types) == layers and layers % 5 == 0 and layers >= 10
    assert types == pattern * (layers // 5), "layer_types must repeat (sliding x4, full x1)"
    assert types[-1] == "full_attention"

    shared = config["num_kv_shared_layers"]
    assert 0 < shared < layers
    first_shared = layers - shared
    assert {"sliding_attention", "full_attention"} <= set(types[first_shared:]), "need a shared sliding and a shared full layer"
    assert {"sliding_attention", "full_attention"} <= set(types[:first_shared]), "each shared type needs a source layer"

    assert config["use_double_wide_mlp"] is True
    assert config["hidden_size_per_layer_input"] > 0
    assert config["vocab_size_per_layer_input"] == config["vocab_size"]
    assert config["num_key_value_heads"] == 1
    assert config["final_logit_softcapping"] == 30.0
    assert config["tie_word_embeddings"] is True
    assert 0 < config["sliding_window"] < EVAL_WINDOW
    assert config.get("attention_k_eq_v", False) is False and config.get("enable_moe_block", False) is False

    # Global head dim, in both spellings (published `global_head_dim`, transformers' `per_layer_config`).
    head_dim = config["head_dim"]
    assert config["global_head_dim"] == 2 * head_dim
    for i, t in enumerate(types):
        want = 2 * head_dim if t == "full_attention" else head_dim
        assert model.config.per_layer_config[i].head_dim == want
        assert model.model.layers[i].self_attn.head_dim == want

    rope = config["rope_parameters"]
    assert rope["full_attention"] == {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1e6}
    assert rope["sliding_attention"] == {"rope_type": "default", "rope_theta": 1e4}
    # Proportional RoPE: only the first quarter of each half of the global head rotates.
    inv = model.model.rotary_emb.full_attention_inv_freq
    rotating = int(0.25 * 2 * head_dim) // 2
    assert inv.shape == (head_dim,) and bool((inv[:rotating] > 0).all()) and bool((inv[rotating:] == 0).all())


def test_checkpoint_tensors(config, tensors):
    layers, hidden = config["num_hidden_layers"], config["hidden_size"]
    first_shared = layers - config["num_kv_shared_layers"]
    heads, head_dim, ple = config["num_attention_heads"], config["head_dim"], config["hidden_size_per_layer_input"]
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert "lm_head.weight" not in tensors  # tied
    assert tensors["model.embed_tokens.weight"].shape == (config["vocab_size"], hidden)
    assert tensors["model.embed_tokens_per_layer.weight"].shape == (config["vocab_size"], layers * ple)
    assert tensors["model.per_layer_model_projection.weight"].shape == (layers * ple, hidden)
    for i, t in enumerate(config["layer_types"]):
        p = f"model.layers.{i}."
        hd = 2 * head_dim if t == "full_attention" else head_dim
        assert tensors[p + "self_attn.q_proj.weight"].shape == (heads * hd, hidden)
        assert tensors[p + "self_attn.o_proj.weight"].shape == (hidden, heads * hd)
        kv = [p + f"self_attn.{n}.weight" for n in ("k_proj", "v_proj", "k_norm")]
        if i < first_shared:
            assert tensors[p + "self_attn.k_proj.weight"].shape == (hd, hidden)  # one KV head
            assert all(k in tensors for k in kv)
        else:
            assert not any(k in tensors for k in kv), f"KV-shared layer {i} carries k/v weights"
        wide = 2 if i >= first_shared else 1
        assert tensors[p + "mlp.gate_proj.weight"].shape == (wide * config["intermediate_size"], hidden)
        assert tensors[p + "per_layer_input_gate.weight"].shape == (ple, hidden)
        assert tensors[p + "per_layer_projection.weight"].shape == (hidden, ple)
    # Trained, not left at init: every norm weight and layer scalar has moved away from ones.
    at_init = [n for n, t in tensors.items() if (n.endswith("norm.weight") or n.endswith("layer_scalar")) and bool((t == 1).all())]
    assert at_init == []
    assert len([n for n in tensors if n.endswith("layer_scalar")]) == layers


def _heldout_windows(tokenizer, config):
    text = (MODELS / "heldout.txt").read_text()
    ids = tokenizer(text, add_special_tokens=False).input_ids
    need = EVAL_WINDOWS * (EVAL_WINDOW - 1)
    assert len(ids) >= need, "models/heldout.txt is too short for the evaluation"
    body = torch.tensor(ids[:need]).view(EVAL_WINDOWS, EVAL_WINDOW - 1)
    return torch.cat([torch.full((EVAL_WINDOWS, 1), config["bos_token_id"]), body], dim=1)


def test_heldout_perplexity_beats_unigram(model, tokenizer, config):
    windows = _heldout_windows(tokenizer, config)
    targets = windows[:, 1:]
    with torch.no_grad():
        logits = model(input_ids=windows, use_cache=False).logits.float()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1)).item()
    model_ppl = math.exp(nll)

    # Unigram from the training split's token counts, add-one smoothed over the vocabulary, on the same tokens.
    stats = json.loads((MODELS / "unigram_counts.json").read_text())
    counts = torch.tensor(stats["counts"], dtype=torch.float64)
    assert counts.shape == (config["vocab_size"],) and counts.sum().item() == stats["total"]
    logp = (counts + 1).log() - (counts + 1).sum().log()
    unigram_ppl = math.exp(-logp[targets.reshape(-1)].mean().item())
    assert model_ppl < 0.5 * unigram_ppl, f"held-out ppl {model_ppl:.1f} vs unigram {unigram_ppl:.1f}"

    # Stricter: beat even a unigram fitted to the evaluated tokens themselves.
    own = torch.bincount(targets.reshape(-1), minlength=config["vocab_size"]).double() + 1
    oracle_ppl = math.exp(-(own.log() - own.sum().log())[targets.reshape(-1)].mean().item())
    assert model_ppl < 0.5 * oracle_ppl, f"held-out ppl {model_ppl:.1f} vs fitted unigram {oracle_ppl:.1f}"


def test_cached_greedy_decoding_matches_full_forward(model, tokenizer):
    """generate() runs the KV cache, sliding window and KV sharing incrementally; a full forward must agree."""
    enc = tokenizer("She was", return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=80, do_sample=False, min_new_tokens=80)  # runs past the window
    n = enc.input_ids.shape[1]
    with torch.no_grad():
        logits = model(input_ids=out, use_cache=False).logits[0].float()
    chosen = logits[n - 1 : -1].gather(1, out[0, n:, None]).squeeze(1)
    assert torch.all(logits[n - 1 : -1].max(dim=1).values - chosen < 1e-3)
    text = tokenizer.decode(out[0, n:], skip_special_tokens=True)
    words = re.findall(r"\S+", text.replace("--", " "))
    wordlike = [w for w in words if re.fullmatch(r"[A-Za-z]+(['-][A-Za-z]+)*", w.strip('.,;:!?"()\''))]
    assert len(words) >= 20 and len(wordlike) >= 0.8 * len(words), text
    assert len({w.lower() for w in wordlike}) >= 15, f"not varied enough: {text!r}"  # an undertrained model loops


def _corpus_module():
    spec = importlib.util.spec_from_file_location("webgemma_builtin_corpus", MODELS / "corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_heldout_excerpt_is_the_corpus_tail():
    """With the corpus package installed, models/heldout.txt is the start of the held-out slice, never trained on."""
    corpus = _corpus_module()
    if not (corpus.PACKAGE_DIR / "data" / "Rdata.rdb").exists():
        pytest.skip(f"corpus package not installed ({corpus.INSTALL_HINT})")
    paragraphs = corpus.paragraphs()
    train, held = corpus.split(paragraphs)
    assert train + held == paragraphs and len(held) < 0.1 * len(paragraphs)
    excerpt = (MODELS / "heldout.txt").read_text().rstrip("\n").split("\n")
    assert excerpt == held[: len(excerpt)]
    assert held[0].startswith("As Mr Elliot became known to her")
