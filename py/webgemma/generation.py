"""Text in, streamed text out: the engine's token loop plus incremental detokenization and stop strings.

Streamed text never contains a stop string nor a broken UTF-8 sequence: text that could still turn out to be
the start of a stop string is held back until the next tokens decide it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from .detokenizer import Detokenizer
from .engine import Engine, GenerationResult
from .sampling import SamplingSettings
from .tokenizer import Tokenizer


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 512
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be ≥ 1")


class TextGenerator:
    def __init__(self, engine: Engine, tokenizer: Tokenizer, stop_token_ids):
        self.engine, self.tokenizer, self.stop_token_ids = engine, tokenizer, list(stop_token_ids)
        self.cancelled = False

    def cancel(self) -> None:
        """Stop the running generation after the current token (the page's stop button)."""
        self.cancelled = True

    async def generate(self, prompt_ids: list[int], settings: GenerationSettings,
                       on_text: Callable[[str], object] | None = None) -> GenerationResult:
        self.cancelled = False
        # special tokens stay in the text: a thinking model's <|channel>…<channel|> marks what to show as thought
        stream = _StopStringStream(Detokenizer(self.tokenizer), settings.stop_strings)

        async def show(piece: str) -> None:
            if piece and on_text is not None:
                shown = on_text(piece)
                if inspect.isawaitable(shown):
                    await shown

        async def on_token(token: int) -> bool:
            await show(stream.feed(token))
            return stream.stopped or self.cancelled

        result = await self.engine.generate(prompt_ids, settings.sampling, max_new_tokens=settings.max_new_tokens,
                                            stop_ids=self.stop_token_ids, on_token=on_token)
        if stream.stopped:
            result.finish_reason = "stop_string"
        elif self.cancelled:
            result.finish_reason = "cancelled"
        await show(stream.finish())
        result.text = stream.text
        return result


class _StopStringStream:
    """Detokenized text, cut at the first stop string, released only once no stop string can start in it."""

    def __init__(self, detokenizer: Detokenizer, stop_strings: tuple[str, ...]):
        self.detokenizer, self.stop_strings = detokenizer, tuple(s for s in stop_strings if s)
        self.text = ""  # everything decided so far (what the caller sees in the end)
        self.released = 0  # how much of it was streamed
        self.stopped = False

    def feed(self, token: int) -> str:
        if self.stopped:
            return ""
        self.text += self.detokenizer.feed(token)
        return self._release(final=False)

    def finish(self) -> str:
        if not self.stopped:
            self.text += self.detokenizer.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        hits = [i for i in (self.text.find(s) for s in self.stop_strings) if i >= 0]
        if hits:
            self.text, self.stopped, final = self.text[: min(hits)], True, True
        safe = len(self.text) if final else len(self.text) - self._held_back()
        piece = self.text[self.released : safe]
        self.released = max(self.released, safe)
        return piece

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        return max((k for s in self.stop_strings for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
