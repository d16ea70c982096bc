"""A conversation: messages rendered by the checkpoint's own chat template, answered by the text generator.

The prompt of every turn is the whole conversation, so the template decides what the model sees (earlier
thoughts are dropped by Gemma's template); the engine notices when it extends the cached tokens and then only
feeds the new ones. Control tokens typed by the user are encoded as text, never as control ids.
"""

from __future__ import annotations

from collections.abc import Callable

from .chat_template import ChatTemplate
from .engine import ContextLimitError, GenerationResult
from .generation import GenerationSettings, TextGenerator
from .tokenizer import Tokenizer

THOUGHT_OPEN, THOUGHT_CLOSE = "<|channel>", "<channel|>"


class Chat:
    def __init__(self, generator: TextGenerator, template: ChatTemplate, tokenizer: Tokenizer, *,
                 system: str | None = None, thinking: bool = False):
        self.generator, self.template, self.tokenizer = generator, template, tokenizer
        self.thinking = thinking
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []

    def prompt_ids(self) -> list[int]:
        return self.template.encode(self.tokenizer, self.messages, add_generation_prompt=True,
                                    enable_thinking=self.thinking, sanitize_control_tokens=True)

    async def send(self, text: str, settings: GenerationSettings,
                   on_text: Callable[[str], object] | None = None) -> GenerationResult:
        self.messages.append({"role": "user", "content": text})
        try:
            result = await self.generator.generate(self.prompt_ids(), settings, on_text)
        except ContextLimitError:
            self.messages.pop()
            raise
        self.messages.append({"role": "assistant", "content": result.text})
        return result


def split_thought(text: str) -> tuple[str, str]:
    """(thought, answer) of a model reply written as `<|channel>thought\\n...<channel|>answer`."""
    if THOUGHT_OPEN not in text:
        return "", text
    before, _, rest = text.partition(THOUGHT_OPEN)
    thought, closed, after = rest.partition(THOUGHT_CLOSE)
    thought = thought.removeprefix("thought\n")
    return thought, before + after if closed else before
