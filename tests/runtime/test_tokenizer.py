"""webgemma.tokenizer against Hugging Face `tokenizers` on the same tokenizer.json: ids, decoding, the artifact.

Each comparison runs over ~2000 generated strings (scripts, emoji, whitespace, control characters, special-token
text and near misses, random code points and bytes, very long words) and collects every mismatch.
"""

from __future__ import annotations

import collections
import copy
import functools
import json
import random
import types

import pytest
from tokenizers import Tokenizer as HFTokenizer
from transformers.tokenization_utils_tokenizers import TokenizersBackend

from webgemma.tokenizer import HEADER, MAGIC, MODEL_SPLIT_BEFORE_SPACE, VERSION, Tokenizer
from webgemma_export.tokenizer_artifact import convert_tokenizer_json, convert_tokenizer_spec


# ---- test strings -------------------------------------------------------------------------------------------------

def _edge_cases(specials):
    cases = ["", " ", "  ", "\t", "\n", "\r", "\r\n", "\x00", "a\x00b", "\x00\x00\x00", "\x7f", "\x1c\x1d\x1e\x1f",
             "\u200b", "\u200d", "\ufeff", "\xa0", "\u3000", "\u2028", "▁", "▁▁", " ▁ ", "a▁b", "<0x41>", "<0xZZ>",
             "<0x4>", "<0x+A>", "\ufffd", "\ufffd\ufffd", "\uffff", "\U0010ffff", "\ue000", "e\u0301", "n\u0303",
             "a\u0300\u0301\u0302\u0303\u0304", "Z\u0351\u0352\u0353a\u035b\u035c\u035dl\u0360\u0361go",
             "\u0915\u094d\u0937", "\u0e01\u0e34\u0e48", "👨‍👩‍👧‍👦", "🏳️‍🌈", "👍🏽👍🏿", "🇯🇵🇫🇷", "1\ufe0f\u20e3",
             "🧑🏽‍💻 and 👩‍❤️‍💋‍👨", "مرحبا\u200fبالعالم", "ﷺ", "ﬁ", "Å Å", "İstanbul ıi", "ß ẞ", "ǅ",
             "tab\tinside", "line\nbreak", "cr\rlf\r\n", " leading", "trailing ", "  both  ", "\n\n\n\n",
             "mixed \t\n \t\n", "\x01\x02\x03text\x04", "😀" * 7, "中" * 9]
    cases += [chr(c) for c in range(32)] + [f"x{chr(c)}y" for c in range(32)]
    cases += [sep * k for sep in (" ", "\n", "\t", "\r\n", " \n") for k in (2, 3, 5, 8, 17, 40)]
    for token in specials:
        cases += [token, token * 3, f"a{token}b", f" {token} ", f"\n{token}\n", token[:-1], token[1:], token + ">",
                  "<" + token, token.upper(), token.replace("|", "")]
    cases += ["<|turn", "<turn|>>", "<<|turn>>", "<|turn|>", "<|turn >", "< |turn>", "|turn>", "<|turn><turn|>",
              "<|turn>user\nHi<turn|>\n<|turn>model\n", '<|"|>value<|"|>', '<|"', '"|>', "<bos><bos>", "<eos",
              "<|tool_call>call:get_weather{city:<|\"|>Paris<|\"|>}<tool_call|>", "<|channel>thought\nhm<channel|>"]
    return cases


def _random_code_points(rng, n):
    ranges = [(0x20, 0x7F), (0, 0x20), (0xA0, 0x250), (0x370, 0x2000), (0x2000, 0x3000), (0x3000, 0xA000),
              (0xAC00, 0xD7A4), (0xE000, 0xF900), (0xFB00, 0xFFFF + 1), (0x10000, 0x10400), (0x1F000, 0x1FB00),
              (0x20000, 0x2A6E0), (0xE0000, 0xE0080), (0xF0000, 0x110000)]
    return "".join(chr(rng.randrange(*rng.choice(ranges))) for _ in range(n))


def _long_cases(rng, make_text):
    return ["a" * 5000, "ab" * 2500, "的" * 3000, " " * 3000, "\n" * 1000, "<|turn>" * 300, "😀" * 1000,
            "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(8000)),
            make_text(rng, 3000), make_text(rng, 3000).replace(" ", ""), _random_code_points(rng, 4000)]


def make_cases(make_text, specials, seed=7):
    rng = random.Random(seed)
    cases = _edge_cases(specials)
    cases += [make_text(rng, rng.randint(1, 60)) for _ in range(700)]
    cases += [_random_code_points(rng, rng.randint(1, 40)) for _ in range(400)]
    cases += [bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))).decode("utf-8", rng.choice(
        ["replace", "ignore"])) for _ in range(300)]
    pieces = specials + [s[:-1] for s in specials] + ["<", ">", "|", " ", "\n", "▁", "x", "hello", "中文", "😀"]
    cases += ["".join(rng.choices(pieces, k=rng.randint(1, 12))) for _ in range(300)]
    cases += ["".join(rng.choices(" \t\n\r\u3000\xa0▁", k=rng.randint(1, 30))) for _ in range(100)]
    cases += _long_cases(rng, make_text)
    return cases


@pytest.fixture(scope="session")
def specials(hf_tokenizer):
    return [t.content for t in hf_tokenizer.get_added_tokens_decoder().values() if t.special]


@pytest.fixture(scope="session")
def cases(text_maker, specials):
    return make_cases(text_maker, specials)


# ---- comparison helpers -------------------------------------------------------------------------------------------

def _mismatches(pairs):
    bad = [(case, expected, got) for case, expected, got in pairs if expected != got]
    return "\n".join(f"{case!r:.120}: expected {expected!r:.200}, got {got!r:.200}" for case, expected, got in bad[:5])


def assert_encode_equal(hf, ours, cases):
    for add in (True, False):
        bad = _mismatches((c, hf.encode(c, add_special_tokens=add).ids, ours.encode(c, add_special_tokens=add))
                          for c in cases)
        assert not bad, f"add_special_tokens={add}:\n{bad}"


def assert_decode_equal(hf, ours, id_lists):
    for skip in (False, True):
        bad = _mismatches((ids, hf.decode(ids, skip_special_tokens=skip), ours.decode(ids, skip)) for ids in id_lists)
        assert not bad, f"skip_special_tokens={skip}:\n{bad}"


def assert_parse_special_false_equal(hf, ours, cases):
    # transformers' own function, run on the backend tokenizer only
    backend = types.SimpleNamespace(_tokenizer=hf)
    bad = _mismatches((c, TokenizersBackend._encode_without_added_tokens(backend, c),
                       ours.encode(c, add_special_tokens=False, parse_special=False)) for c in cases)
    assert not bad, bad


def random_id_lists(hf, rng, n):
    """Id sequences biased towards what decoding must get right: byte tokens (valid and broken utf-8),
    special tokens, "▁" pieces, and ids beyond the vocabulary."""
    size = hf.get_vocab_size(with_added_tokens=True)
    byte_ids = [hf.token_to_id(f"<0x{b:02X}>") for b in range(256)]
    bracketed = [i for t, i in hf.get_vocab(with_added_tokens=True).items() if t.startswith("<") and len(t) < 9]
    special_ids = list(hf.get_added_tokens_decoder())
    utf8 = [list(ch.encode()) for ch in "é中😀ш\u0301"]
    lists = []
    for _ in range(n):
        ids = []
        for _ in range(rng.randint(0, 30)):
            kind = rng.random()
            if kind < 0.3:
                ids.append(rng.randrange(size))
            elif kind < 0.5:
                ids += [byte_ids[b] for b in rng.choice(utf8)]
            elif kind < 0.6:
                ids += [byte_ids[b] for b in rng.choice(utf8)[:-1]]  # cut short
            elif kind < 0.65:
                ids.append(rng.choice(byte_ids))
            elif kind < 0.7:
                ids.append(rng.choice(bracketed))
            elif kind < 0.85:
                ids.append(rng.choice(special_ids))
            elif kind < 0.95:
                ids.append(hf.token_to_id("▁"))
            else:
                ids.append(size + rng.randrange(3))
        lists.append([i for i in ids if i is not None])
    return lists


def load(spec):
    """(HF tokenizer, ours) for a tokenizer.json dict."""
    return HFTokenizer.from_str(json.dumps(spec)), Tokenizer.from_bytes(convert_tokenizer_spec(spec))


# ---- the trained Gemma-style tokenizer ---------------------------------------------------------------------------

def test_has_enough_cases(cases):
    assert len(cases) >= 2000


def test_encode_matches_hf(hf_tokenizer, tokenizer, cases):
    assert_encode_equal(hf_tokenizer, tokenizer, cases)


def test_decode_matches_hf(hf_tokenizer, tokenizer, cases):
    assert_decode_equal(hf_tokenizer, tokenizer, [hf_tokenizer.encode(c).ids for c in cases])


def test_decode_random_ids_matches_hf(hf_tokenizer, tokenizer):
    assert_decode_equal(hf_tokenizer, tokenizer, random_id_lists(hf_tokenizer, random.Random(3), 1000))


def test_parse_special_false_matches_transformers(hf_tokenizer, tokenizer, cases):
    assert_parse_special_false_equal(hf_tokenizer, tokenizer, cases)


def test_parse_special_false_encodes_control_tokens_as_text(tokenizer):
    ids = tokenizer.encode("<|turn>user", add_special_tokens=False, parse_special=False)
    assert tokenizer.special_tokens["<|turn>"] not in ids
    assert tokenizer.decode(ids) == "<|turn>user"


def test_vocabulary_matches_hf(hf_tokenizer, tokenizer):
    size = hf_tokenizer.get_vocab_size(with_added_tokens=True)
    assert tokenizer.vocab_size == size
    assert [tokenizer.id_to_token(i) for i in range(size)] == [hf_tokenizer.id_to_token(i) for i in range(size)]
    assert tokenizer.id_to_token(size) is None
    for token, token_id in hf_tokenizer.get_vocab(with_added_tokens=True).items():
        assert tokenizer.token_to_id(token) == token_id
    assert tokenizer.token_to_id("not a token at all") is None
    added = hf_tokenizer.get_added_tokens_decoder()
    assert tokenizer.special_tokens == {t.content: i for i, t in added.items() if t.special}
    assert tokenizer.added_tokens == {t.content: i for i, t in added.items()}


def test_words_are_cut_before_spaces(gemma_dir):
    # The trained tokenizer has the property that lets BPE work on "▁" pieces, so the tests above cover that path
    data = convert_tokenizer_json(gemma_dir / "tokenizer.json")
    assert HEADER.unpack_from(data)[7] & MODEL_SPLIT_BEFORE_SPACE


# ---- other tokenizer.json shapes --------------------------------------------------------------------------------

def _ignore_merges(spec, rng, cases):
    spec["model"]["ignore_merges"] = True


def _shuffled_merges(spec, rng, cases):
    # Ranks out of creation order: queued merges go stale, new pairs outrank the merge that made them
    rng.shuffle(spec["model"]["merges"])


def _cross_space_merges(spec, rng, cases):
    # Merges that join a piece to the "▁" piece after it, for pairs frequent in the test strings: BPE must then
    # work on whole words
    hf = HFTokenizer.from_str(json.dumps(spec))
    pairs = collections.Counter()
    for case in cases[::8]:
        tokens = hf.encode(case, add_special_tokens=False).tokens
        pairs.update((a, b) for a, b in zip(tokens, tokens[1:]) if b.startswith("▁") and not a.endswith("▁")
                     and not a.startswith("<"))
    vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
    for (left, right), _ in pairs.most_common(60):
        if left + right not in vocab:
            vocab[left + right] = len(vocab)
            merges.insert(rng.randrange(len(merges) + 1), [left, right])


def _llama_style(spec, rng, cases):
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    spec["pre_tokenizer"] = {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious",
                             "invert": False}
    spec["decoder"]["decoders"].append({"type": "Strip", "content": " ", "start": 1, "stop": 0})


def _no_byte_fallback(spec, rng, cases):
    spec["model"]["byte_fallback"] = False
    spec["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "Fuse"}]}


def _no_fuse_unk(spec, rng, cases):
    spec["model"]["byte_fallback"] = False
    spec["model"]["fuse_unk"] = False


def _some_byte_tokens_missing(spec, rng, cases, fuse=True):
    # Characters needing a missing byte become <unk>; `tokenizers` then appends the pending <unk> late. The
    # renamed tokens, some spelled almost like byte tokens, test how decoding recognizes a byte token.
    vocab = spec["model"]["vocab"]
    spellings = ["<byte{:02X}>", "<0x{:02x}>", "<0x+{:X}>", "<0x{:02X}_>", "<0X{:02X}>"]
    for b in range(0x80, 0xA0):
        spelling = spellings[b % len(spellings)]
        vocab[spelling.format(b & 0xF if "+" in spelling else b)] = vocab.pop(f"<0x{b:02X}>")
    spec["model"]["fuse_unk"] = fuse


def _template_around(spec, rng, cases):
    specials = spec["post_processor"]["special_tokens"]
    specials["<eos>"] = {"id": "<eos>", "ids": [spec["model"]["vocab"]["<eos>"]], "tokens": ["<eos>"]}
    spec["post_processor"]["single"].append({"SpecialToken": {"id": "<eos>", "type_id": 0}})


def _no_post_processor(spec, rng, cases):
    spec["post_processor"] = None


def _split(behavior, invert, pattern="▁"):
    def change(spec, rng, cases):
        spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"String": pattern}, "behavior": behavior, "invert": invert},
            {"type": "Split", "pattern": {"String": "."}, "behavior": "Isolated", "invert": False}]}
    return change


VARIANTS = {
    "ignore_merges": _ignore_merges,
    "shuffled_merges": _shuffled_merges,
    "cross_space_merges": _cross_space_merges,
    "llama_style": _llama_style,
    "no_byte_fallback": _no_byte_fallback,
    "no_fuse_unk": _no_fuse_unk,
    "some_byte_tokens_missing": _some_byte_tokens_missing,
    "some_byte_tokens_missing_no_fuse": functools.partial(_some_byte_tokens_missing, fuse=False),
    "template_around": _template_around,
    "no_post_processor": _no_post_processor,
    **{f"split_{b}_{'inverted' if i else 'plain'}": _split(b, i)
       for b in ("Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous") for i in (False, True)},
}


@pytest.fixture(scope="session")
def gemma_spec(gemma_dir):
    return json.loads((gemma_dir / "tokenizer.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_matches_hf(variant, gemma_spec, cases):
    spec = copy.deepcopy(gemma_spec)
    VARIANTS[variant](spec, random.Random(variant), cases)
    hf, ours = load(spec)
    subset = cases[::8] + [c for c in cases if len(c) > 3000]
    assert_encode_equal(hf, ours, subset)
    assert_parse_special_false_equal(hf, ours, subset)
    assert_decode_equal(hf, ours, [hf.encode(c).ids for c in subset] + random_id_lists(hf, random.Random(5), 100))
    flags = HEADER.unpack_from(convert_tokenizer_spec(spec))[7]
    assert bool(flags & MODEL_SPLIT_BEFORE_SPACE) == (variant != "cross_space_merges")


# ---- added tokens: non-special, lstrip/rstrip, normalized, beyond the vocabulary --------------------------------

def _added(content, special=False, normalized=False, lstrip=False, rstrip=False):
    return {"id": 0, "content": content, "single_word": False, "lstrip": lstrip, "rstrip": rstrip,
            "normalized": normalized, "special": special}


RICH_ADDED_TOKENS = [
    _added("\n"), _added("\n\n"), _added("\n\n\n"), _added("▁▁"), _added("<t"), _added("<ta"), _added("<table>"),
    _added("</td>"), _added("<td>"), _added("ing"), _added("the"),
    _added("<mask2>", special=True, lstrip=True, rstrip=True), _added("[RS]", rstrip=True),
    _added("[LS]", lstrip=True), _added("<sep>", special=True, rstrip=True), _added(" x ", lstrip=True),
    _added("hello world", normalized=True), _added("▁foo", normalized=True), _added("día", normalized=True),
    _added("<s x>", special=True, normalized=True), _added("bar", normalized=True, rstrip=True),
    *[_added(f"<unused{i}>", special=True) for i in range(40)],
]


@pytest.fixture(scope="session")
def rich(gemma_spec):
    spec = copy.deepcopy(gemma_spec)
    spec["added_tokens"] += RICH_ADDED_TOKENS
    return load(spec)


def test_rich_added_tokens_match_hf(rich, cases, text_maker):
    hf, ours = rich
    rng = random.Random(11)
    pieces = [t["content"] for t in RICH_ADDED_TOKENS] + ["hello", "world", " ", "  ", "\t", "\n", "x", "<", "día",
                                                          "<unused1", "foo", "▁", "\u3000", "\x1c", "\x1f", "\x85",
                                                          "\u2028", "\u200b", "\xa0"]
    mixes = ["".join(rng.choices(pieces, k=rng.randint(1, 15))) for _ in range(600)]
    mixes += ["<sep>\n\n\nz", "a <mask2> b", "  <mask2>  ", "\t[LS]\t[RS]\t", "<ta<table><t", "hello world",
              "hello  world", "x x x", "<unused7><unused17>", "<s x>y", "bar   baz"]
    subset = cases[::4] + mixes + [text_maker(rng, 30) for _ in range(100)]
    assert_encode_equal(hf, ours, subset)
    assert_decode_equal(hf, ours, [hf.encode(c).ids for c in subset] + random_id_lists(hf, rng, 300))
    assert ours.vocab_size == hf.get_vocab_size(with_added_tokens=True)
    assert [ours.id_to_token(i) for i in range(ours.vocab_size)] == [hf.id_to_token(i) for i in
                                                                       range(ours.vocab_size)]


# ---- BPE merge order on a hand-made vocabulary ---------------------------------------------------------------

def test_merge_order_on_crafted_merges():
    # "b cd" outranks "c d": once "c d" merges, "b cd" goes first, before the next "c d" to its right; and two
    # different pairs ("a bcd", "ab cd") make the same token, which the stale-entry check must accept.
    chars = ["a", "b", "c", "d", "▁"]
    tokens = chars + ["cd", "bcd", "ab", "abcd", "dc", "cdc"]
    merges = [["b", "cd"], ["ab", "cd"], ["c", "d"], ["a", "b"], ["a", "bcd"], ["d", "c"], ["cd", "c"]]
    spec = {
        "version": "1.0", "added_tokens": [], "normalizer": None, "pre_tokenizer": None, "post_processor": None,
        "decoder": {"type": "Fuse"},
        "model": {"type": "BPE", "unk_token": None, "byte_fallback": False, "fuse_unk": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }
    hf, ours = load(spec)
    rng = random.Random(0)
    words = ["".join(rng.choices("abcd", k=rng.randint(1, 14))) for _ in range(3000)] + ["abcdcdcd", "cdcdc"]
    assert_encode_equal(hf, ours, words)


# ---- the artifact ------------------------------------------------------------------------------------------------

def test_artifact_round_trip(gemma_dir, gemma_spec):
    data = convert_tokenizer_json(gemma_dir / "tokenizer.json")
    assert data == convert_tokenizer_spec(gemma_spec)
    assert data[:8] == MAGIC and HEADER.unpack_from(data)[1] == VERSION
    again = Tokenizer.from_bytes(memoryview(bytearray(data)))
    text = "Hello <|turn>world 😀"
    assert again.encode(text) == HFTokenizer.from_file(str(gemma_dir / "tokenizer.json")).encode(text).ids


def test_artifact_rejects_bad_input(gemma_dir):
    data = convert_tokenizer_json(gemma_dir / "tokenizer.json")
    with pytest.raises(ValueError, match="magic"):
        Tokenizer.from_bytes(b"NOTATOKN" + data[8:])
    with pytest.raises(ValueError, match="version"):
        Tokenizer.from_bytes(data[:8] + (VERSION + 1).to_bytes(4, "little") + data[12:])
    with pytest.raises(ValueError, match="truncated"):
        Tokenizer.from_bytes(data[:-10])


@pytest.mark.parametrize("component, change", [
    ("pre_tokenizer ByteLevel", lambda s: s.update(pre_tokenizer={"type": "ByteLevel", "add_prefix_space": False,
                                                                  "trim_offsets": True, "use_regex": True})),
    ("pre_tokenizer Metaspace", lambda s: s.update(pre_tokenizer={"type": "Metaspace", "replacement": "▁"})),
    ("normalizer NFKC", lambda s: s.update(normalizer={"type": "NFKC"})),
    ("normalizer Replace with pattern", lambda s: s.update(normalizer={"type": "Replace", "pattern": {
        "Regex": " +"}, "content": "▁"})),
    ("decoder ByteLevel", lambda s: s.update(decoder={"type": "ByteLevel"})),
    ("decoder null", lambda s: s.update(decoder=None)),
    ("model Unigram", lambda s: s.update(model={"type": "Unigram", "vocab": []})),
    ("model BPE with dropout", lambda s: s["model"].update(dropout=0.1)),
    ("model BPE with continuing_subword_prefix", lambda s: s["model"].update(continuing_subword_prefix="##")),
    ("post_processor ByteLevel", lambda s: s.update(post_processor={"type": "ByteLevel"})),
    ("with single_word", lambda s: s["added_tokens"].append(_added("<w>") | {"single_word": True})),
    ("truncation", lambda s: s.update(truncation={"max_length": 8})),
])
def test_converter_rejects_unsupported(component, change, gemma_spec):
    spec = copy.deepcopy(gemma_spec)
    change(spec)
    with pytest.raises(ValueError, match=f"tokenizer.json: .*{component}"):
        convert_tokenizer_spec(spec)
