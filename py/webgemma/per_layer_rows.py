"""Rows of the per-layer embedding table, read by byte range from the store, never the whole table.

Each token's row is one record (see the exporter's per_layer_table.py). Recently used rows stay in a small
cache: chat text repeats tokens, and a decode step then costs no storage read at all.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .storage import ModelStore


class PerLayerRows:
    def __init__(self, store: ModelStore, table: dict, input_names: dict, cache_rows: int = 8192):
        self.store, self.table = store, table
        self.row_bytes = table["row_bytes"]
        self.data_bytes = table["data_bytes"]
        self.quantized = table["format"] in ("int4", "int8")
        self.rows_name, self.scales_name = input_names["per_layer_rows"], input_names.get("per_layer_scales")
        self.cache: OrderedDict[int, bytes] = OrderedDict()
        self.cache_rows = cache_rows

    def _range(self, token: int) -> tuple[str, int, int]:
        """(file, start, length) of a token's row."""
        if not 0 <= token < self.table["rows"]:
            raise ValueError(f"token id {token} is outside the per-layer table ({self.table['rows']} rows)")
        per_file = self.table["rows_per_file"]
        return self.table["files"][token // per_file]["path"], (token % per_file) * self.row_bytes, self.row_bytes

    def source(self, token: int) -> object:
        """Where a step session that reads the row itself finds `token`'s (a browser store's range_source)."""
        return self.store.range_source([self._range(token)])

    async def _rows(self, tokens: list[int]) -> dict[int, bytes]:
        """The rows of the distinct `tokens`: cached ones, the rest read from the store in one call."""
        missing = [t for t in tokens if t not in self.cache]
        ranges = [self._range(t) for t in missing]
        read = dict(zip(missing, await self.store.read_ranges(ranges))) if missing else {}
        rows = {}
        for t in tokens:
            rows[t] = self.cache[t] = read[t] if t in read else self.cache[t]
            self.cache.move_to_end(t)
        while len(self.cache) > self.cache_rows:
            self.cache.popitem(last=False)
        return rows

    async def prefetch(self, ids: list[int]) -> None:
        """Reads the rows of `ids` into the cache (the next prefill chunk's, while this one runs)."""
        await self._rows(list(dict.fromkeys(ids)))

    async def feeds(self, ids: list[int]) -> dict[str, np.ndarray]:
        """Graph inputs for the tokens `ids` (one chunk)."""
        rows = await self._rows(list(dict.fromkeys(ids)))
        block = np.frombuffer(b"".join(rows[t] for t in ids), dtype=np.uint8).reshape(len(ids), self.row_bytes)
        if not self.quantized:
            return {self.rows_name: block.view(self.table["format"]).astype(np.float32)}
        scales = np.ascontiguousarray(block[:, self.data_bytes :]).view(self.table["scales_dtype"]).astype(np.float32)
        return {self.rows_name: np.ascontiguousarray(block[:, : self.data_bytes]), self.scales_name: scales}
