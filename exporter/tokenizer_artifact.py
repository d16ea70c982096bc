"""Convert a Hugging Face `tokenizer.json` into webgemma's binary tokenizer artifact.

The layout, version and codes live in `webgemma.tokenizer` (the reader); this module resolves what `tokenizers`
would decide while loading the JSON (ids of added tokens, merge ids, template ids) and refuses, with a
ValueError naming the component, anything the runtime does not reproduce exactly.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from webgemma.tokenizer import (
    ADDED_LSTRIP, ADDED_NORMALIZED, ADDED_RSTRIP, ADDED_SPECIAL, HEADER, MAGIC, MODEL_BYTE_FALLBACK, MODEL_FUSE_UNK,
    MODEL_IGNORE_MERGES, MODEL_SPLIT_BEFORE_SPACE, VERSION, SplitBehavior, Step,
)

SUPPORTED = (
    "webgemma supports Gemma-style tokenizers (BPE model with optional byte_fallback/fuse_unk/ignore_merges; "
    "normalizer Replace/Prepend with literal patterns; pre-tokenizer none or Split on a literal string; "
    "decoder Replace/ByteFallback/Fuse/Strip; post-processor TemplateProcessing; added tokens without single_word)"
)
_BEHAVIORS = {
    "Removed": SplitBehavior.REMOVED,
    "Isolated": SplitBehavior.ISOLATED,
    "MergedWithPrevious": SplitBehavior.MERGED_WITH_PREVIOUS,
    "MergedWithNext": SplitBehavior.MERGED_WITH_NEXT,
    "Contiguous": SplitBehavior.CONTIGUOUS,
}


def convert_tokenizer_json(path) -> bytes:
    """The artifact for the tokenizer.json at `path`."""
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    return convert_tokenizer_spec(spec, Path(path).name)


def convert_tokenizer_spec(spec: dict, name: str = "tokenizer.json") -> bytes:
    """The artifact for an already parsed tokenizer.json; `name` prefixes error messages."""
    try:
        return _convert(spec)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


def _convert(spec):
    if spec.get("version", "1.0") != "1.0":
        raise ValueError(f"version {spec['version']!r} is not supported")
    for option in ("truncation", "padding"):
        if spec.get(option) is not None:
            raise ValueError(f"{option} is not supported (the runtime truncates and pads itself)")

    model = spec.get("model") or {}
    vocab, merges, symbol_ids, model_flags, unk_id = _model(model)
    added = _added_tokens(spec.get("added_tokens") or [], model["vocab"])
    strings = []  # the step strings; a step refers to one by its index
    steps = (
        _normalizer_steps(spec.get("normalizer"), strings)
        + _pre_tokenizer_steps(spec.get("pre_tokenizer"), strings)
        + _decoder_steps(spec.get("decoder"), strings)
        + _template_steps(spec.get("post_processor"))
    )

    texts = list(vocab) + [content for _, content, _ in added] + strings
    separator = _unused_code_point(texts)
    try:
        text = chr(separator).join(texts).encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"a string holds an unpaired surrogate ({e.reason})") from None
    flags = np.array([f for _, _, f in added], np.uint8).tobytes()
    parts = [
        HEADER.pack(MAGIC, VERSION, len(vocab), len(added), len(merges), len(symbol_ids), len(steps), model_flags,
                    unk_id, separator, len(text)),
        np.array(merges, "<u4").reshape(-1, 3).tobytes(),
        np.array(symbol_ids, "<u4").tobytes(),
        np.array([i for i, _, _ in added], "<u4").tobytes(),
        np.array(steps, "<i4").reshape(-1, 4).tobytes(),
        flags + bytes(-len(flags) % 4),
        text,
    ]
    return b"".join(parts)


def _unsupported(component, kind):
    return ValueError(f"{component} {kind} is not supported; {SUPPORTED}")


def _model(model):
    """Model tokens in id order, merges as (left, right, merged) ids, the ids BPE starts from (single characters
    and byte tokens), MODEL_* flags and the unk id (-1: none)."""
    if model.get("type") != "BPE":
        raise _unsupported("model", model.get("type"))
    if model.get("dropout") not in (None, 0.0):
        raise _unsupported("model", "BPE with dropout")
    for option in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(option):
            raise _unsupported("model", f"BPE with {option}")

    token_ids = model["vocab"]
    if sorted(token_ids.values()) != list(range(len(token_ids))):
        raise ValueError("model vocab ids are not 0..n-1")
    vocab = sorted(token_ids, key=token_ids.__getitem__)

    merges = []
    for merge in model.get("merges", []):
        if isinstance(merge, str):
            if merge.startswith("#version"):
                continue
            pair = merge.split(" ")
            if len(pair) != 2:
                raise ValueError(f"merge {merge!r} is not two tokens separated by one space")
        else:
            pair = merge
        left, right = pair
        for token in (left, right, left + right):
            if token not in token_ids:
                raise ValueError(f"merge {left!r} + {right!r}: {token!r} is not in the vocabulary")
        merges.append((token_ids[left], token_ids[right], token_ids[left + right]))

    unk = model.get("unk_token")
    if unk is not None and unk not in token_ids:
        raise ValueError(f"unk_token {unk!r} is not in the vocabulary")
    flags = (
        MODEL_BYTE_FALLBACK * bool(model.get("byte_fallback"))
        | MODEL_FUSE_UNK * bool(model.get("fuse_unk"))
        | MODEL_IGNORE_MERGES * bool(model.get("ignore_merges"))
        | MODEL_SPLIT_BEFORE_SPACE * _splits_before_space(vocab, merges, unk)
    )
    bytes_ = {f"<0x{b:02X}>" for b in range(256)}
    symbol_ids = [i for i, token in enumerate(vocab) if len(token) == 1 or token in bytes_]
    return vocab, merges, symbol_ids, flags, -1 if unk is None else token_ids[unk]


def _splits_before_space(vocab, merges, unk):
    """Whether BPE can never join the piece at a "▁" that follows another character to the piece before it.

    The symbol there starts with "▁" (a vocabulary token), and the piece before it ends with that other character,
    a byte token's ">" or the unk token; so it suffices that every merge whose right part starts with "▁" has a
    left part ending with "▁".
    """
    if "▁" not in vocab or (unk is not None and unk.endswith("▁")):
        return False
    return all(vocab[left].endswith("▁") for left, right, _ in merges if vocab[right].startswith("▁"))


def _added_tokens(tokens, token_ids):
    """[(id, content, ADDED_* flags)] sorted by id.

    `tokenizers` ignores the ids written in the JSON: a token whose content is in the model vocabulary takes that
    id, the others get ids after the vocabulary in the order listed (AddedVocabulary::add_tokens).
    """
    added, seen, next_id = [], set(), len(token_ids)
    for token in tokens:
        content = token["content"]
        if not content:
            continue  # `tokenizers` skips empty added tokens
        if content in seen:
            raise ValueError(f"added token {content!r} is listed twice")
        if token.get("single_word"):
            raise _unsupported("added token", f"{content!r} with single_word")
        seen.add(content)
        token_id = token_ids.get(content)
        if token_id is None:
            token_id, next_id = next_id, next_id + 1
        flags = (
            ADDED_SPECIAL * bool(token.get("special"))
            | ADDED_NORMALIZED * bool(token.get("normalized", True))
            | ADDED_LSTRIP * bool(token.get("lstrip"))
            | ADDED_RSTRIP * bool(token.get("rstrip"))
        )
        added.append((token_id, content, flags))
    return sorted(added)


def _flatten(component, key):
    if component is None:
        return []
    if component.get("type") == "Sequence":
        return [c for child in component[key] for c in _flatten(child, key)]
    return [component]


def _literal(component, role):
    pattern = component.get("pattern") or {}
    if set(pattern) != {"String"} or not pattern["String"]:
        raise _unsupported(role, f"{component['type']} with pattern {pattern} (only non-empty literal strings)")
    return pattern["String"]


def _string(strings, value):
    strings.append(value)
    return len(strings) - 1


def _normalizer_steps(normalizer, strings):
    steps = []
    for n in _flatten(normalizer, "normalizers"):
        if n["type"] == "Replace":
            steps.append((Step.NORMALIZE_REPLACE, _string(strings, _literal(n, "normalizer")),
                          _string(strings, n["content"]), 0))
        elif n["type"] == "Prepend":
            steps.append((Step.NORMALIZE_PREPEND, _string(strings, n["prepend"]), 0, 0))
        else:
            raise _unsupported("normalizer", n["type"])
    return steps


def _pre_tokenizer_steps(pre_tokenizer, strings):
    steps = []
    for p in _flatten(pre_tokenizer, "pretokenizers"):
        if p["type"] != "Split":
            raise _unsupported("pre_tokenizer", p["type"])
        steps.append((Step.PRE_TOKENIZE_SPLIT, _string(strings, _literal(p, "pre_tokenizer")),
                      _BEHAVIORS[p["behavior"]], int(bool(p.get("invert")))))
    return steps


def _decoder_steps(decoder, strings):
    if decoder is None:
        raise _unsupported("decoder", "null (tokens joined by spaces)")
    steps = []
    for d in _flatten(decoder, "decoders"):
        if d["type"] == "Replace":
            steps.append((Step.DECODE_REPLACE, _string(strings, _literal(d, "decoder")),
                          _string(strings, d["content"]), 0))
        elif d["type"] == "ByteFallback":
            steps.append((Step.DECODE_BYTE_FALLBACK, 0, 0, 0))
        elif d["type"] == "Fuse":
            steps.append((Step.DECODE_FUSE, 0, 0, 0))
        elif d["type"] == "Strip":
            steps.append((Step.DECODE_STRIP, _string(strings, d["content"]), d["start"], d["stop"]))
        else:
            raise _unsupported("decoder", d["type"])
    return steps


def _template_steps(post_processor):
    """The single-sequence template; without a post-processor the text alone."""
    if post_processor is None:
        return [(Step.TEMPLATE_SEQUENCE, 0, 0, 0)]
    if post_processor["type"] != "TemplateProcessing":
        raise _unsupported("post_processor", post_processor["type"])
    steps = []
    for piece in post_processor["single"]:
        if "SpecialToken" in piece:
            ids = post_processor["special_tokens"][piece["SpecialToken"]["id"]]["ids"]
            steps += [(Step.TEMPLATE_TOKEN, i, 0, 0) for i in ids]
        elif piece["Sequence"]["id"] == "A":
            steps.append((Step.TEMPLATE_SEQUENCE, 0, 0, 0))
        else:
            raise ValueError("post_processor: the single-sequence template refers to sequence B")
    return steps


def _unused_code_point(texts):
    """A code point that no string contains, to join them all into one text that splits back exactly."""
    used = set("".join(texts))
    candidates = itertools.chain((0, 0xFFFF, 0xFFFE), range(0xE000, 0xF900), range(0xF0000, 0x10FFFE))
    return next(c for c in candidates if chr(c) not in used)
