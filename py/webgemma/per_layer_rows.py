"""Rows of the per-layer embedding table, read by byte range from the store, never the whole table.

Each token's row is one record (see the exporter's per_layer_table.py). Recently used rows stay in a small
cache: chat text repeats tokens, and a decode step then costs no storage read at all.
"""

from __future__ import annotations

import asyncio
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

    async def _row(self, token: int) -> bytes:
        row = self.cache.get(token)
        if row is None:
            if not 0 <= token < self.table["rows"]:
                raise ValueError(f"token id {token} is outside the per-layer table ({self.table['rows']} rows)")
            per_file = self.table["rows_per_file"]
            entry = self.table["files"][token // per_file]
            row = await self.store.read_range(entry["path"], (token % per_file) * self.row_bytes, self.row_bytes)
            self.cache[token] = row
            if len(self.cache) > self.cache_rows:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(token)
        return row

    async def feeds(self, ids: list[int]) -> dict[str, np.ndarray]:
        """Graph inputs for the tokens `ids` (one chunk)."""
        unique = list(dict.fromkeys(ids))
        rows = dict(zip(unique, await asyncio.gather(*(self._row(t) for t in unique))))
        block = np.frombuffer(b"".join(rows[t] for t in ids), dtype=np.uint8).reshape(len(ids), self.row_bytes)
        if not self.quantized:
            return {self.rows_name: block.view(self.table["format"]).astype(np.float32)}
        scales = np.ascontiguousarray(block[:, self.data_bytes :]).view(self.table["scales_dtype"]).astype(np.float32)
        return {self.rows_name: np.ascontiguousarray(block[:, : self.data_bytes]), self.scales_name: scales}
