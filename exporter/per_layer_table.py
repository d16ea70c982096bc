"""The per-layer embedding table (half of E2B's bytes) as row-addressable shards, kept out of GPU memory.

Each token's row is one contiguous record, so the browser reads exactly the rows it needs by byte range:

    quantized:  [packed values: width*bits/8 bytes][scales: width/block float16 (float32 if float16 overflows)]
    float:      [width float32 or float16 values]

Rows hold `embed_tokens_per_layer * sqrt(P)`: the embedding scale is folded in at export.
"""

from __future__ import annotations

import numpy as np

from .config import TextArch
from .errors import ExportError
from .quantize import check_block, quantize
from .shards import ShardWriter
from .weights import Weights

_ROWS_PER_READ = 4096


def claim_per_layer_table(weights: Weights, arch: TextArch, bits: int | None, block_size: int) -> str:
    """The table's checkpoint name, its shape (and, quantized, its rows' fit into blocks) checked before any write."""
    width = arch.num_layers * arch.per_layer_dim
    name = weights.claim("embed_tokens_per_layer.weight", (arch.vocab_size_per_layer, width))
    if bits:
        check_block(name, width, block_size)
    return name


def write_per_layer_table(weights: Weights, name: str, arch: TextArch, writer: ShardWriter, *, bits: int | None,
                          float_dtype, block_size: int) -> dict:
    vocab, width = arch.vocab_size_per_layer, arch.num_layers * arch.per_layer_dim
    scale = np.float32(arch.per_layer_dim ** 0.5)
    scale_dtype = np.float16
    data_bytes = width * bits // 8 if bits else width * np.dtype(float_dtype).itemsize
    scales_bytes = (width // block_size) * np.dtype(scale_dtype).itemsize if bits else 0
    row_bytes = data_bytes + scales_bytes
    rows_per_file = writer.max_bytes // row_bytes

    for start in range(0, vocab, rows_per_file):
        writer.new_file()
        stop = min(start + rows_per_file, vocab)
        for r in range(start, stop, _ROWS_PER_READ):
            block = weights.read_rows(name, r, min(r + _ROWS_PER_READ, stop)) * scale
            writer.append(memoryview(_encode(block, bits, block_size, float_dtype, scale_dtype).reshape(-1)), name)
    writer.close()
    for i, f in enumerate(writer.files):
        f["first_row"] = i * rows_per_file
        f["rows"] = f["bytes"] // row_bytes
    return {
        "tensor": name,
        "rows": vocab,
        "row_values": width,
        "row_bytes": row_bytes,
        "rows_per_file": rows_per_file,
        "format": {4: "int4", 8: "int8"}.get(bits, np.dtype(float_dtype).name),
        "block_size": block_size if bits else None,
        "data_bytes": data_bytes,
        "scales_dtype": np.dtype(scale_dtype).name if bits else None,
        "embed_scale_folded": float(scale),
        "files": writer.files,
    }


def _encode(rows: np.ndarray, bits, block_size, float_dtype, scale_dtype) -> np.ndarray:
    if not bits:
        return np.ascontiguousarray(rows.astype(float_dtype)).view(np.uint8)
    q, s = quantize(rows, bits, block_size, scale_dtype)
    if not np.isfinite(s).all():
        raise ExportError("embed_tokens_per_layer holds values too large for float16 block scales (|w| > ~1e5): export with --quant fp32")
    return np.concatenate([q.reshape(len(rows), -1), s.view(np.uint8).reshape(len(rows), -1)], axis=1)
