"""Train a Gemma-style tokenizer with HF `tokenizers`.

Gemma's tokenizer (SentencePiece converted to `tokenizers`) is a BPE over the whole string: spaces are normalised
to `▁`, there is no pre-tokenizer, characters missing from the vocabulary fall back to `<0xXX>` byte tokens, and the
chat markers are special added tokens. This module builds one with the same structure from any text, so that the
built-in model and the tokenizer tests use a tokenizer shaped like the real one (but with its own ids: nothing may
hard-code Gemma's ids).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

# Gemma 4's control tokens, in the order their ids are assigned here (ids 0..len-1).
SPECIAL_TOKENS = [
    "<pad>", "<eos>", "<bos>", "<unk>", "<mask>",
    "<|turn>", "<turn|>", "<|think|>", "<|channel>", "<channel|>",
    "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>',
    "<|image>", "<image|>", "<|audio>", "<audio|>", "<|image|>", "<|audio|>", "<|video|>",
]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def train_gemma_style_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A BPE tokenizer with Gemma's layout: specials, then the 256 byte tokens, then learned pieces and merges."""
    # Training splits before each `▁` so that merges stay inside words (SentencePiece's split_by_whitespace);
    # the saved tokenizer has no pre-tokenizer, like Gemma's, and encodes the same because no merge crosses a `▁`.
    draft = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    draft.normalizer = normalizers.Replace(" ", "▁")
    draft.pre_tokenizer = pre_tokenizers.Split(Regex("▁+[^▁]*|[^▁]+"), behavior="isolated")
    learned = vocab_size - len(SPECIAL_TOKENS) - len(BYTE_TOKENS)
    trainer = trainers.BpeTrainer(vocab_size=learned, show_progress=False, limit_alphabet=1000)
    draft.train_from_iterator(texts, trainer)

    trained = draft.model.get_vocab() if hasattr(draft.model, "get_vocab") else draft.get_vocab()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + BYTE_TOKENS)}
    for tok, _ in sorted(trained.items(), key=lambda kv: kv[1]):
        vocab.setdefault(tok, len(vocab))
    merges = _merges_of(draft)

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return tok


def _merges_of(tok: Tokenizer) -> list[tuple[str, str]]:
    import json

    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]


def tokenizer_config(chat_template: str) -> dict:
    """The `tokenizer_config.json` that transformers reads beside `tokenizer.json`."""
    return {
        "tokenizer_class": "GemmaTokenizer",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1000000000000000019884624838656,
        "chat_template": chat_template,
    }
