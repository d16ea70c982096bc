"""The model folder's manifest: what the exporter wrote and the runtime reads (JSON Schema: manifest.schema.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass

FORMAT = "webgemma-model"
FORMAT_VERSION = 2
FULL, SLIDING = "full_attention", "sliding_attention"  # the layer types


class ManifestError(ValueError):
    """A manifest this runtime cannot use; the message says why and what to do."""


@dataclass(frozen=True)
class Manifest:
    raw: dict

    @property
    def arch(self) -> dict:
        return self.raw["architecture"]

    @property
    def decoder(self) -> dict:
        return self.raw["decoder"]

    @property
    def table(self) -> dict:
        return self.raw["per_layer_table"]

    @property
    def stop_token_ids(self) -> list[int]:
        return self.raw["stop_token_ids"]

    @property
    def max_context(self) -> int:
        return int(self.arch["max_position_embeddings"])

    def files(self) -> list[dict]:
        """Every file the model needs besides the manifest: {path, bytes, sha256}."""
        d = self.decoder
        graphs = [d[name] for name in ("step_graph", "fill_graph") if name in d]
        return [d["graph"], *graphs, *d["external_data"], *self.table["files"], self.raw["tokenizer"]]


def parse_manifest(text: str | bytes) -> Manifest:
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ManifestError(f"manifest.json is not valid JSON ({e}); export the model again") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ManifestError("manifest.json is not a webgemma model manifest; point at a folder written by `webgemma export`")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise ManifestError(
            f"manifest.json has format version {version}; this runtime reads version {FORMAT_VERSION}: "
            + ("upgrade webgemma" if newer else "export the model again with this webgemma")
        )
    return Manifest(raw)
