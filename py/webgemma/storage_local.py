"""A model folder on the local disk (CPython)."""

from __future__ import annotations

from pathlib import Path


class LocalStore:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, name: str) -> Path:
        return self.folder / name

    async def read(self, path: str) -> bytes:
        return (self.folder / path).read_bytes()

    async def read_range(self, path: str, start: int, length: int) -> bytes:
        with open(self.folder / path, "rb") as f:
            f.seek(start)
            data = f.read(length)
        if len(data) != length:
            raise OSError(f"{self.folder / path} is truncated: wanted {length} bytes at {start}")
        return data

    async def read_ranges(self, ranges: list[tuple[str, int, int]]) -> list[bytes]:
        return [await self.read_range(path, start, length) for path, start, length in ranges]
