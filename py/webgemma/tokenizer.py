"""Gemma-style BPE tokenizer that encodes and decodes exactly like Hugging Face `tokenizers`.

It reads webgemma's binary tokenizer artifact (written by `webgemma_export.tokenizer_artifact`), never
`tokenizer.json`: parsing Gemma's 30 MB JSON is too slow in Pyodide, while the artifact loads with a few
`numpy.frombuffer` calls, one utf-8 decode and one `str.split`.

The pipeline mirrors `tokenizers`' (`TokenizerImpl::encode`), restricted to the components Gemma uses:

    text ─ added tokens matched on the raw text (normalized=false), leftmost-longest
         ─ normalizer on each remaining piece (Replace, Prepend)
         ─ added tokens matched on the normalized pieces (normalized=true)
         ─ pre-tokenizer (Split on a literal string, or none: then the whole piece is one word)
         ─ BPE with byte fallback on each word ─ template ("<bos> $A") when add_special_tokens

Artifact layout (little-endian), version `VERSION`:

    header    HEADER: magic, version, n_vocab, n_added, n_merges, n_symbols, n_steps, model flags (MODEL_*),
              unk id (-1: none), separator code point, text byte length
    merges    uint32[n_merges, 3]: left id, right id, merged id, in rank order
    symbols   uint32[n_symbols]: ids of the single-character and byte ("<0xAB>") tokens, which BPE starts from
    added     uint32[n_added]: ids of the added tokens, ascending
    steps     int32[n_steps, 4]: (Step, a, b, c), the normalizer, pre-tokenizer, decoder and template in order;
              string arguments are indices into the step strings
    flags     uint8[n_added]: ADDED_* bits of each added token, then zero padding to 4 bytes
    text      utf-8: every string joined by the separator (a code point that no string contains):
              n_vocab model tokens in id order, n_added added-token contents, then the step strings

The writer resolves everything `tokenizers` decides at load time (ids of added tokens, merge ids, template
ids), so loading here only rebuilds lookup tables.
"""

from __future__ import annotations

import enum
import functools
import heapq
import re
import struct

import numpy as np

MAGIC = b"WGTOKEN\x00"
VERSION = 1
HEADER = struct.Struct("<8sIIIIIIIiII")

MODEL_BYTE_FALLBACK = 1
MODEL_FUSE_UNK = 2
MODEL_IGNORE_MERGES = 4
# No merge joins a piece starting with "▁" to a piece before it that doesn't end with "▁" (the writer checks),
# so BPE may cut a word before each "▁" that follows another character and cache the pieces: a Gemma prompt is
# one word, and this makes it many short, mostly repeated ones.
MODEL_SPLIT_BEFORE_SPACE = 8

ADDED_SPECIAL = 1
ADDED_NORMALIZED = 2
ADDED_LSTRIP = 4
ADDED_RSTRIP = 8


class Step(enum.IntEnum):
    """One pipeline step of the artifact; comments give the meaning of (a, b, c)."""

    NORMALIZE_REPLACE = 1  # a: pattern string, b: content string
    NORMALIZE_PREPEND = 2  # a: prepended string
    PRE_TOKENIZE_SPLIT = 3  # a: pattern string, b: SplitBehavior, c: invert (0/1)
    DECODE_REPLACE = 4  # a: pattern string, b: content string
    DECODE_BYTE_FALLBACK = 5
    DECODE_FUSE = 6
    DECODE_STRIP = 7  # a: content string (one character), b: start, c: stop
    TEMPLATE_TOKEN = 8  # a: token id, emitted when add_special_tokens
    TEMPLATE_SEQUENCE = 9  # the encoded text


class SplitBehavior(enum.IntEnum):
    REMOVED = 0
    ISOLATED = 1
    MERGED_WITH_PREVIOUS = 2
    MERGED_WITH_NEXT = 3
    CONTIGUOUS = 4


# Rust's `char::is_whitespace` / regex `\s` (Unicode White_Space), which lstrip/rstrip use; Python's
# `str.isspace` differs (it also accepts U+001C..U+001F).
_WHITE_SPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_POS_BITS = 32  # heap entries pack (rank, merged id, position); positions stay below 2**32


class Tokenizer:
    """Encode text to token ids and decode ids to text, equal to `tokenizers.Tokenizer` on the same tokenizer.

    Public attributes: `added_tokens` (content → id of every added token), `special_tokens` (content → id of the
    added tokens marked special) and `special_ids` (the ids `decode(..., skip_special_tokens=True)` drops).
    """

    def __init__(self, vocab, merges, symbol_ids, added, steps, model_flags, unk_id):
        # Use `from_bytes`. vocab: model tokens in id order; merges: uint32[n, 3]; symbol_ids: see the layout;
        # added: [(id, content, ADDED_* flags)] by id; steps: [(Step, a, b, c)] with string arguments resolved.
        self._normalize = _Normalizer([s for s in steps if s[0] in (Step.NORMALIZE_REPLACE, Step.NORMALIZE_PREPEND)])
        self._pre_tokenize = _PreTokenizer([s for s in steps if s[0] == Step.PRE_TOKENIZE_SPLIT])
        self._decoder = _Decoder([s for s in steps if Step.DECODE_REPLACE <= s[0] <= Step.DECODE_STRIP])
        # The single-sequence template: ids, with None where the text goes; no post-processor is "$A"
        self._template = [s[1] if s[0] == Step.TEMPLATE_TOKEN else None
                          for s in steps if s[0] >= Step.TEMPLATE_TOKEN] or [None]
        self._bpe = _BPE(vocab, merges, symbol_ids, model_flags, unk_id)

        # Decoding shows a normalized added token in its normalized form, and skips it with
        # skip_special_tokens only if that form is itself a special token's content (as `tokenizers` does).
        self._id_to_token = list(vocab)
        self.added_tokens = {}
        raw_patterns, normalized_patterns = {}, {}
        for token_id, content, flags in added:
            shown = self._normalize(content) if flags & ADDED_NORMALIZED else content
            if token_id == len(self._id_to_token):
                self._id_to_token.append(shown)
            else:
                self._id_to_token[token_id] = shown
            self.added_tokens[content] = token_id
            patterns = normalized_patterns if flags & ADDED_NORMALIZED else raw_patterns
            patterns[shown] = (token_id, bool(flags & ADDED_LSTRIP), bool(flags & ADDED_RSTRIP))
        self._raw_added = _AddedTokenMatcher(raw_patterns)
        self._normalized_added = _AddedTokenMatcher(normalized_patterns)
        self.special_tokens = {content: i for i, content, flags in added if flags & ADDED_SPECIAL}
        self.special_ids = frozenset(i for i in self.added_tokens.values()
                                     if self._id_to_token[i] in self.special_tokens)

    @classmethod
    def from_bytes(cls, data) -> Tokenizer:
        """Load a tokenizer artifact (bytes, bytearray or memoryview)."""
        data = memoryview(data)
        if len(data) < HEADER.size or bytes(data[:8]) != MAGIC:
            raise ValueError("not a webgemma tokenizer artifact (bad magic)")
        (_, version, n_vocab, n_added, n_merges, n_symbols, n_steps, model_flags, unk_id, separator,
         text_nbytes) = HEADER.unpack_from(data)
        if version != VERSION:
            raise ValueError(f"tokenizer artifact version {version} is not supported (this runtime reads {VERSION})")
        offset = HEADER.size
        merges = np.frombuffer(data, "<u4", n_merges * 3, offset).reshape(n_merges, 3)
        offset += merges.nbytes
        symbol_ids = np.frombuffer(data, "<u4", n_symbols, offset).tolist()
        offset += 4 * n_symbols
        added_ids = np.frombuffer(data, "<u4", n_added, offset).tolist()
        offset += 4 * n_added
        step_rows = np.frombuffer(data, "<i4", n_steps * 4, offset).reshape(n_steps, 4).tolist()
        offset += 16 * n_steps
        added_flags = np.frombuffer(data, "u1", n_added, offset).tolist()
        offset += -(-n_added // 4) * 4
        strings = str(data[offset:offset + text_nbytes], "utf-8").split(chr(separator))
        if offset + text_nbytes != len(data) or len(strings) < n_vocab + n_added:
            raise ValueError("tokenizer artifact is truncated or corrupt")

        step_strings = strings[n_vocab + n_added:]
        steps = [_resolve_step(Step(kind), a, b, c, step_strings) for kind, a, b, c in step_rows]
        added = list(zip(added_ids, strings[n_vocab:n_vocab + n_added], added_flags))
        return cls(strings[:n_vocab], merges, symbol_ids, added, steps, model_flags, None if unk_id < 0 else unk_id)

    @property
    def vocab_size(self) -> int:
        """Number of ids (model vocabulary plus added tokens outside it)."""
        return len(self._id_to_token)

    def token_to_id(self, token: str) -> int | None:
        token_id = self.added_tokens.get(token)
        return self._bpe.vocab.get(token) if token_id is None else token_id

    def id_to_token(self, token_id: int) -> str | None:
        return self._id_to_token[token_id] if 0 <= token_id < len(self._id_to_token) else None

    def encode(self, text: str, add_special_tokens: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of `text`.

        parse_special=False encodes added tokens written in the text (like "<|turn>") as plain text, the way
        transformers' `_encode_without_added_tokens` does: normalize, pre-tokenize and BPE, no added tokens.
        """
        if parse_special:
            ids = []
            for token_id, piece in self._raw_added.split(text):
                if token_id is not None:
                    ids.append(token_id)
                    continue
                for token_id, normalized in self._normalized_added.split(self._normalize(piece)):
                    ids += self._tokenize(normalized) if token_id is None else [token_id]
        else:
            ids = self._tokenize(self._normalize(text))
        if not add_special_tokens:
            return ids
        return [i for token_id in self._template for i in (ids if token_id is None else [token_id])]

    def _tokenize(self, normalized: str) -> list[int]:
        return [i for word in self._pre_tokenize(normalized) for i in self._bpe.tokenize(word)]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of `ids`; unknown ids are dropped and invalid byte sequences become U+FFFD, as in `tokenizers`."""
        table, n, skip = self._id_to_token, len(self._id_to_token), self.special_ids
        tokens = [table[i] for i in ids if 0 <= i < n and not (skip_special_tokens and i in skip)]
        return self._decoder(tokens)

    def is_byte_token(self, token_id: int) -> bool:
        """Whether the decoder's byte fallback reads this token as one raw byte (like "<0xE4>")."""
        return self._decoder.is_byte_token(self._id_to_token[token_id])


def _resolve_step(kind, a, b, c, strings):
    if kind in (Step.NORMALIZE_REPLACE, Step.DECODE_REPLACE):
        return kind, strings[a], strings[b], None
    if kind == Step.NORMALIZE_PREPEND:
        return kind, strings[a], None, None
    if kind == Step.PRE_TOKENIZE_SPLIT:
        return kind, strings[a], SplitBehavior(b), bool(c)
    if kind == Step.DECODE_STRIP:
        return kind, strings[a], b, c
    return kind, a, b, c


class _Normalizer:
    """Replace (literal, non-empty pattern) and Prepend, applied in order to each piece of text."""

    def __init__(self, steps):
        self._steps = steps

    def __call__(self, text: str) -> str:
        for kind, a, b, _ in self._steps:
            if kind == Step.NORMALIZE_REPLACE:
                text = text.replace(a, b)
            elif text:  # Prepend leaves an empty string empty
                text = a + text
        return text


class _PreTokenizer:
    """`Split` on a literal pattern, with `tokenizers`' delimiter behaviours; no steps: the piece is one word."""

    def __init__(self, steps):
        self._steps = [(a, b, c) for _, a, b, c in steps]

    def __call__(self, text: str) -> list[str]:
        words = [text]
        for pattern, behavior, invert in self._steps:
            words = [w for word in words for w in _split(word, pattern, behavior, invert)]
        return words


def _split(text, pattern, behavior, invert):
    spans, pos = [], 0  # (start, end, is_match) covering the text
    while (start := text.find(pattern, pos)) >= 0:
        if start > pos:
            spans.append([pos, start, invert])
        pos = start + len(pattern)
        spans.append([start, pos, not invert])
    if pos < len(text):
        spans.append([pos, len(text), invert])

    if behavior == SplitBehavior.REMOVED:
        kept = [s for s in spans if not s[2]]
    elif behavior == SplitBehavior.ISOLATED:
        kept = spans
    elif behavior == SplitBehavior.MERGED_WITH_NEXT:
        kept = _merge_matches(spans[::-1], into_start=True)[::-1]
    else:
        kept = _merge_matches(spans, into_start=False, contiguous=behavior == SplitBehavior.CONTIGUOUS)
    return [text[s:e] for s, e, _ in kept]


def _merge_matches(spans, into_start, contiguous=False):
    """Attach each match to the span before it (in iteration order), like `NormalizedString::split`.

    contiguous: merge runs of equal flags instead (matches with matches, text with text).
    """
    merged, previous = [], False
    for span in spans:
        joins = span[2] == previous if contiguous else span[2] and not previous
        if joins and merged:
            merged[-1][0 if into_start else 1] = span[0 if into_start else 1]
        else:
            merged.append(list(span))
        previous = span[2]
    return merged


class _AddedTokenMatcher:
    """Split text on added tokens: leftmost-longest matches, as `tokenizers`' Aho-Corasick (daachorse) finds them,
    then lstrip/rstrip widening as in `AddedVocabulary::find_matches`."""

    def __init__(self, patterns):
        # patterns: {text to match: (id, lstrip, rstrip)}. A match is looked up by trying, at each position whose
        # character starts some pattern, the pattern lengths for that character from longest to shortest.
        self._patterns = patterns
        lengths = {}
        for pattern in patterns:
            lengths.setdefault(pattern[0], set()).add(len(pattern))
        self._lengths = {c: sorted(ls, reverse=True) for c, ls in lengths.items()}
        self._starts = re.compile("[" + "".join(map(re.escape, lengths)) + "]") if lengths else None

    def split(self, text: str) -> list[tuple[int | None, str]]:
        """[(id, piece) for each added token, (None, piece) for text between them]; empty pieces are dropped."""
        if self._starts is None or not text:
            return [(None, text)] if text else []
        pieces, done, pos = [], 0, 0
        while (found := self._starts.search(text, pos)) is not None:
            start = found.start()
            for length in self._lengths[text[start]]:
                hit = self._patterns.get(text[start:start + length])
                if hit is not None:
                    break
            else:
                pos = start + 1
                continue
            token_id, lstrip, rstrip = hit
            pos = stop = start + length
            if lstrip:
                while start > done and text[start - 1] in _WHITE_SPACE:
                    start -= 1
            if rstrip:
                while stop < len(text) and text[stop] in _WHITE_SPACE:
                    stop += 1
            if start > done:
                pieces.append((None, text[done:start]))
            pieces.append((token_id, text[start:stop]))
            done = stop
        if done < len(text):
            pieces.append((None, text[done:]))
        return pieces


class _BPE:
    """BPE over one word with `tokenizers`' merge order (word.rs `merge_all`): repeatedly apply the queued merge
    of lowest rank, leftmost first, over a linked list of symbols; O(n log n) for an n-character word."""

    _CACHE_SIZE = 1 << 14  # pieces; a chat uses a few thousand distinct words
    _CACHED_LENGTH = 256  # `tokenizers` caches words below this length too

    def __init__(self, vocab, merges, symbol_ids, flags, unk_id):
        self._tokens = vocab
        self._symbols = {vocab[i]: i for i in symbol_ids}
        # A pair (left, right) is the int left << shift | right; its merge the int rank << shift | merged id,
        # so that comparing packed ints orders merges by rank. Later duplicates of a pair win, as in Rust's
        # HashMap `collect`.
        self._shift = shift = max(len(vocab) - 1, 1).bit_length()
        merges = merges.astype(np.int64)
        keys = merges[:, 0] << shift | merges[:, 1]
        values = np.arange(len(merges), dtype=np.int64) << shift | merges[:, 2]
        self._merges = dict(zip(keys.tolist(), values.tolist()))
        self._byte_ids = ([self._symbols.get(f"<0x{b:02X}>") for b in range(256)]
                          if flags & MODEL_BYTE_FALLBACK else None)
        self._fuse_unk = bool(flags & MODEL_FUSE_UNK)
        self._ignore_merges = bool(flags & MODEL_IGNORE_MERGES)
        self._pieces = re.compile("▁*[^▁]+|▁+") if flags & MODEL_SPLIT_BEFORE_SPACE else None
        self._unk_id = unk_id
        self._cache = {}

    @functools.cached_property
    def vocab(self) -> dict[str, int]:
        """Token → id over the whole model vocabulary; built on first use, since encoding rarely needs it."""
        return dict(zip(self._tokens, range(len(self._tokens))))

    def tokenize(self, word: str) -> list[int]:
        """Ids of one word; the list must not be modified (it may be cached)."""
        if not word:
            return []
        if self._ignore_merges and (token_id := self.vocab.get(word)) is not None:
            return [token_id]
        if self._pieces is None:
            return self._tokenize_piece(word)
        return [i for piece in self._pieces.findall(word) for i in self._tokenize_piece(piece)]

    def _tokenize_piece(self, piece):
        # The list returned may be the cache's own: callers only read it
        ids = self._cache.get(piece)
        if ids is None:
            symbols = list(map(self._symbols.get, piece))
            if None in symbols:
                symbols = self._symbols_with_fallback(piece)
            ids = self._merge(symbols)
            if len(piece) < self._CACHED_LENGTH:
                if len(self._cache) >= self._CACHE_SIZE:
                    self._cache.clear()
                self._cache[piece] = ids
        return ids

    def _symbols_with_fallback(self, word):
        """Initial symbols when some characters are not in the vocabulary (BPE::merge_word)."""
        symbols, unk_pending = [], False
        for char in word:
            token_id = self._symbols.get(char)
            if token_id is not None:
                if unk_pending:
                    symbols.append(self._unk_id)
                    unk_pending = False
                symbols.append(token_id)
                continue
            if self._byte_ids is not None:
                byte_ids = [self._byte_ids[b] for b in char.encode()]
                if None not in byte_ids:
                    # `tokenizers` does not flush a pending unknown here, so it lands after these bytes
                    symbols += byte_ids
                    continue
            if self._unk_id is not None:
                if unk_pending and not self._fuse_unk:
                    symbols.append(self._unk_id)
                unk_pending = True
        if unk_pending:
            symbols.append(self._unk_id)
        return symbols

    def _merge(self, symbols):
        merges, shift = self._merges, self._shift
        id_mask, pos_mask = (1 << shift) - 1, (1 << _POS_BITS) - 1
        n = len(symbols)
        following = list(range(1, n + 1))  # index of the next live symbol; n: none
        preceding = list(range(-1, n - 1))  # index of the previous live symbol; -1: none
        pairs = [a << shift | b for a, b in zip(symbols, symbols[1:])]
        queue = [m << _POS_BITS | i for i, m in enumerate(map(merges.get, pairs)) if m is not None]
        heapq.heapify(queue)
        pop, push = heapq.heappop, heapq.heappush
        while queue:
            entry = pop(queue)
            pos = entry & pos_mask
            left = symbols[pos]
            right_pos = following[pos]
            if left < 0 or right_pos == n:  # merged away, or nothing to its right any more
                continue
            merged = (entry >> _POS_BITS) & id_mask
            current = merges.get(left << shift | symbols[right_pos])
            if current is None or current & id_mask != merged:  # stale: this pair changed since queued
                continue
            symbols[pos] = merged
            symbols[right_pos] = -1
            after = following[pos] = following[right_pos]
            before = preceding[pos]
            if before >= 0 and (m := merges.get(symbols[before] << shift | merged)) is not None:
                push(queue, m << _POS_BITS | before)
            if after < n:
                preceding[after] = pos
                if (m := merges.get(merged << shift | symbols[after])) is not None:
                    push(queue, m << _POS_BITS | pos)
        return [s for s in symbols if s >= 0]


class _Decoder:
    """`tokenizers`' decoders Replace, ByteFallback, Fuse and Strip, each mapping a list of token strings."""

    def __init__(self, steps):
        self._steps = steps
        fallback = [i for i, s in enumerate(self._steps) if s[0] == Step.DECODE_BYTE_FALLBACK]
        # Token-wise steps before the byte fallback decide whether a token reaches it looking like "<0xAB>"
        self._before_fallback = self._steps[:fallback[0]] if fallback else None

    def __call__(self, tokens: list[str]) -> str:
        for kind, a, b, c in self._steps:
            if kind == Step.DECODE_REPLACE:
                tokens = [t.replace(a, b) for t in tokens]
            elif kind == Step.DECODE_BYTE_FALLBACK:
                tokens = _byte_fallback(tokens)
            elif kind == Step.DECODE_FUSE:
                tokens = ["".join(tokens)]
            else:
                tokens = [_strip(t, a, b, c) for t in tokens]
        return "".join(tokens)

    def is_byte_token(self, token: str) -> bool:
        if self._before_fallback is None:
            return False
        for kind, a, b, c in self._before_fallback:
            if kind == Step.DECODE_REPLACE:
                token = token.replace(a, b)
            elif kind == Step.DECODE_STRIP:
                token = _strip(token, a, b, c)
            # Fuse before the byte fallback would join the whole sequence: no single token is a byte then
            elif kind == Step.DECODE_FUSE:
                return False
        return _byte_value(token) is not None


def _byte_value(token):
    # "<0xAB>": Rust checks a 6-byte token and parses its 2 middle characters with u8::from_str_radix(.., 16),
    # which also takes a leading "+" (so "<0x+A>" is byte 10).
    if len(token) != 6 or not token.startswith("<0x") or token[5] != ">":
        return None
    high, low = token[3], token[4]
    if low not in _HEX_DIGITS or (high not in _HEX_DIGITS and high != "+"):
        return None
    return int(token[3:5], 16)


def _byte_fallback(tokens):
    out, run = [], bytearray()
    for token in tokens:
        value = _byte_value(token)
        if value is not None:
            run.append(value)
            continue
        if run:
            out += _decode_byte_run(run)
            run = bytearray()
        out.append(token)
    if run:
        out += _decode_byte_run(run)
    return out


def _decode_byte_run(run):
    # A run of byte tokens is valid utf-8 as a whole, or else every byte of it becomes one U+FFFD
    try:
        return [run.decode("utf-8")]
    except UnicodeDecodeError:
        return ["\ufffd"] * len(run)


def _strip(token, content, start, stop):
    begin = 0
    while begin < min(start, len(token)) and token[begin] == content:
        begin += 1
    end = len(token)
    while len(token) - end < stop and end > begin and token[end - 1] == content:
        end -= 1
    return token[begin:end]
