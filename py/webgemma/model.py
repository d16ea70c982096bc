"""Loading an exported model folder from any store into a ready engine, the same way in CPython and the browser."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from .backends import Backend
from .chat import Chat
from .chat_template import ChatTemplate
from .engine import Engine
from .generation import TextGenerator
from .manifest import Manifest, parse_manifest
from .per_layer_rows import PerLayerRows
from .storage import ModelStore
from .tokenizer import Tokenizer


@dataclass
class Model:
    manifest: Manifest
    tokenizer: Tokenizer
    template: ChatTemplate | None
    engine: Engine
    generator: TextGenerator

    def chat(self, system: str | None = None, thinking: bool = False) -> Chat:
        if self.template is None:
            raise ValueError("this model has no chat template: use raw prompts")
        return Chat(self.generator, self.template, self.tokenizer, system=system, thinking=thinking)

    def encode_raw(self, text: str) -> list[int]:
        """A prompt without the chat template (the tokenizer's own <bos> handling applies)."""
        return self.tokenizer.encode(text, add_special_tokens=True)


async def load_model(store: ModelStore, make_backend: Callable[[Manifest], Backend], *, prefill_chunk: int = 256,
                     max_context: int | None = None, manifest: Manifest | None = None) -> Model:
    """manifest: the store's, read already (the web store reads it from the network each time)."""
    manifest = manifest or parse_manifest(await store.read("manifest.json"))
    tokenizer = Tokenizer.from_bytes(await store.read(manifest.raw["tokenizer"]["path"]))
    source = manifest.raw.get("chat_template")
    template = ChatTemplate(source, manifest.raw["special_tokens"], manifest.raw.get("chat_control_tokens")) if source else None
    backend = make_backend(manifest)
    if inspect.isawaitable(backend):
        backend = await backend
    rows = PerLayerRows(store, manifest.table, manifest.decoder["inputs"])
    engine = Engine(manifest, backend, rows, prefill_chunk=prefill_chunk, max_context=max_context)
    return Model(manifest, tokenizer, template, engine, TextGenerator(engine, tokenizer, manifest.stop_token_ids))
