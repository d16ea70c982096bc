"""Incremental detokenization for streaming: text for each new token id, which joined equals `decode(all_ids)`.

Decoding one token alone is not enough: byte-fallback tokens ("<0xE4>") only make text together, and
`tokenizers` turns a whole run of byte tokens into one U+FFFD per byte as soon as the run is not valid utf-8 as
a whole, so a complete character can still become U+FFFDs if later bytes break its run. So a run of byte tokens
is held back until a token that is not a byte ends it (or `flush`). Otherwise each step decodes only a short
window, the last emitted token (the anchor) plus the new ones, and emits what follows the anchor's own text; the
anchor carries the context a decoder may need (a run boundary, a stripped leading space).
"""

from __future__ import annotations

from .tokenizer import Tokenizer


class Detokenizer:
    """Feed token ids one at a time; each call returns only the new text."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._anchor: list[int] = []  # ids already emitted, kept as context; see the module docstring
        self._anchor_text = ""  # what decoding the anchor alone gives
        self._pending: list[int] = []  # ids after the anchor whose text is not emitted yet

    def feed(self, token_id: int) -> str:
        tokenizer = self._tokenizer
        if not 0 <= token_id < tokenizer.vocab_size or (
            self._skip_special_tokens and token_id in tokenizer.special_ids
        ):
            return ""  # decode drops these, so they must not end a run of byte tokens either
        self._pending.append(token_id)
        if tokenizer.is_byte_token(token_id):
            return ""
        return self._emit()

    def flush(self) -> str:
        """The text still held back (an unfinished run of byte tokens) at the end of the stream; then start over."""
        text = self._emit() if self._pending else ""
        self._anchor, self._anchor_text = [], ""
        return text

    def _emit(self) -> str:
        decode = self._tokenizer.decode
        window = self._anchor + self._pending
        text = decode(window, self._skip_special_tokens)
        new_text = text[len(self._anchor_text):]
        last = self._pending[-1:]
        last_text = decode(last, self._skip_special_tokens)
        # A token with no text of its own carries no context: keep the older anchor along with it
        if last_text:
            self._anchor, self._anchor_text = last, last_text
        else:
            self._anchor, self._anchor_text = window, text
        self._pending = []
        return new_text
