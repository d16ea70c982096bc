"""Where a model folder's files come from: a local directory (CPython) or the browser's storage (Pyodide).

Both implementations verify files against the manifest's sha256 before anything uses them.
"""

from __future__ import annotations

from typing import Protocol


class ModelStore(Protocol):
    async def read(self, path: str) -> bytes:
        """A whole file of the model folder (manifest, tokenizer artifact)."""

    async def read_range(self, path: str, start: int, length: int) -> bytes:
        """`length` bytes at `start` of a file: per-layer embedding rows are read this way, never whole."""

    async def read_ranges(self, ranges: list[tuple[str, int, int]]) -> list[bytes]:
        """Many (path, start, length) ranges at once: a prompt's rows in one storage call, not one each."""
