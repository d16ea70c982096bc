"""webgemma.detokenizer: streamed pieces join to exactly `decode(all_ids)` (and to HF's decode), nothing is emitted
before a character's bytes are complete, and each step decodes only a short window."""

from __future__ import annotations

import copy
import json
import random

import pytest
from tokenizers import Tokenizer as HFTokenizer

from webgemma.detokenizer import Detokenizer
from webgemma.tokenizer import Tokenizer
from webgemma_export.tokenizer_artifact import convert_tokenizer_spec


def stream(tokenizer, ids, skip_special_tokens=False):
    detokenizer = Detokenizer(tokenizer, skip_special_tokens)
    return [detokenizer.feed(i) for i in ids] + [detokenizer.flush()]


def id_lists(tokenizer, text_maker, seed, n):
    """Encoded texts, and random sequences rich in byte tokens (whole and cut characters) and special tokens."""
    rng = random.Random(seed)
    lists = [tokenizer.encode(text_maker(rng, rng.randint(1, 40))) for _ in range(n)]
    byte_id = [tokenizer.token_to_id(f"<0x{b:02X}>") for b in range(256)]
    specials = sorted(tokenizer.special_tokens.values())
    for _ in range(n):
        ids = []
        for _ in range(rng.randint(1, 40)):
            kind = rng.random()
            if kind < 0.35:
                ids += [byte_id[b] for b in rng.choice("é中😀ш🏽").encode()]
            elif kind < 0.45:
                ids += [byte_id[b] for b in rng.choice("中😀").encode()[:rng.randint(1, 2)]]
            elif kind < 0.55:
                ids.append(rng.choice(specials))
            elif kind < 0.6:
                ids.append(tokenizer.vocab_size + rng.randrange(3))  # decode drops unknown ids
            else:
                ids.append(rng.randrange(tokenizer.vocab_size))
        lists.append(ids)
    return lists


@pytest.mark.parametrize("skip", [False, True])
def test_stream_joins_to_decode(hf_tokenizer, tokenizer, text_maker, skip):
    for ids in id_lists(tokenizer, text_maker, seed=1, n=400):
        pieces = stream(tokenizer, ids, skip)
        assert "".join(pieces) == tokenizer.decode(ids, skip) == hf_tokenizer.decode(ids, skip_special_tokens=skip)


def test_stream_joins_to_decode_with_strip_decoder(gemma_dir, text_maker):
    # A decoder that strips the text's first space: the window's anchor must keep later pieces' spaces
    spec = json.loads((gemma_dir / "tokenizer.json").read_text(encoding="utf-8"))
    spec = copy.deepcopy(spec)
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    spec["decoder"]["decoders"].append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    tokenizer = Tokenizer.from_bytes(convert_tokenizer_spec(spec))
    hf = HFTokenizer.from_str(json.dumps(spec))
    for skip in (False, True):
        for ids in id_lists(tokenizer, text_maker, seed=2, n=150):
            assert "".join(stream(tokenizer, ids, skip)) == hf.decode(ids, skip_special_tokens=skip)


def test_bytes_are_held_back_until_their_run_ends(tokenizer):
    byte_ids = [tokenizer.token_to_id(f"<0x{b:02X}>") for b in "中😀".encode()]
    word = tokenizer.encode("hello", add_special_tokens=False)
    detokenizer = Detokenizer(tokenizer)
    assert [detokenizer.feed(i) for i in byte_ids] == [""] * len(byte_ids)
    assert detokenizer.feed(word[0]) == "中😀" + tokenizer.decode(word[:1])
    assert "".join(detokenizer.feed(i) for i in word[1:]) + detokenizer.flush() == tokenizer.decode(word[1:])


def test_flush_emits_an_unfinished_run_as_decode_does(tokenizer):
    cut = [tokenizer.token_to_id(f"<0x{b:02X}>") for b in "中".encode()[:2]]
    detokenizer = Detokenizer(tokenizer)
    assert [detokenizer.feed(i) for i in cut] == ["", ""]
    assert detokenizer.flush() == tokenizer.decode(cut) == "\ufffd\ufffd"
    assert detokenizer.feed(tokenizer.encode("a", add_special_tokens=False)[0]) == "a"  # a new stream


def test_no_replacement_character_for_complete_characters(tokenizer, text_maker):
    rng = random.Random(4)
    for _ in range(200):
        text = text_maker(rng, 30) + "".join(rng.choices("中😀é", k=5))
        pieces = stream(tokenizer, tokenizer.encode(text, add_special_tokens=False))
        assert "\ufffd" not in "".join(pieces)
        assert "".join(pieces) == text


def test_each_step_decodes_a_short_window(tokenizer, text_maker):
    lengths = []

    class Counting(Tokenizer):
        def decode(self, ids, skip_special_tokens=False):
            lengths.append(len(ids))
            return super().decode(ids, skip_special_tokens)

    counting = copy.copy(tokenizer)
    counting.__class__ = Counting
    rng = random.Random(5)
    text = "".join(text_maker(rng, 20) + rng.choice(["ᚠᛇ", "𝔘𝔫𝔦", "🦀", "ꙮ"]) for _ in range(100))  # bytes
    ids = tokenizer.encode(text)
    assert "".join(stream(counting, ids)) == tokenizer.decode(ids)
    runs = "".join("b" if tokenizer.is_byte_token(i) else " " for i in ids).split()
    longest_run = max(map(len, runs), default=0)
    assert longest_run >= 4  # the rare characters fell back to bytes
    assert len(lengths) >= len(ids) and max(lengths) <= 1 + longest_run + 1  # anchor, held-back bytes, new token
