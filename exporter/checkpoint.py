"""Read safetensors checkpoints one tensor (or one block of rows) at a time.

The format is an 8-byte header length, a JSON header and raw little-endian data. We read it with plain file reads
rather than the `safetensors` package because its numpy frontend cannot return bfloat16 (numpy has no bf16), and
rather than mmap so that touched pages do not pile up in the resident set while a 9 GB table streams through.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CheckpointError

_DTYPES = {"BF16": 2, "F16": 2, "F32": 4}


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in `file`


class Checkpoint:
    """The tensors of a checkpoint folder (single file or sharded with an index)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.tensors: dict[str, TensorInfo] = {}
        for file in self._files():
            self._read_header(file)

    def _files(self) -> list[Path]:
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            try:
                names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index} is not a valid safetensors index ({e})") from None
            files = [self.folder / n for n in names]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"{index} lists {', '.join(missing)}, missing from {self.folder}: the download is incomplete")
            return files
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"no *.safetensors in {self.folder}: a Hugging Face checkpoint folder holds model.safetensors or shards with model.safetensors.index.json")
        return files

    def _read_header(self, file: Path) -> None:
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{file} is truncated (no safetensors header)")
            (size,) = struct.unpack("<Q", head)
            try:
                header = json.loads(f.read(size))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise CheckpointError(f"{file} has a corrupt safetensors header") from None
        end = file.stat().st_size
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            begin, stop = meta["data_offsets"]
            info = TensorInfo(file, meta["dtype"], tuple(meta["shape"]), 8 + size + begin)
            if info.offset + (stop - begin) > end:
                raise CheckpointError(f"{file} is truncated: tensor {name} ends past the end of the file")
            self.tensors[name] = info

    def read(self, name: str) -> np.ndarray:
        """The whole tensor as float32."""
        info = self.tensors[name]
        return self.read_rows(name, 0, info.shape[0] if info.shape else 1).reshape(info.shape)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a tensor (first axis) as float32."""
        info = self.tensors[name]
        itemsize = _DTYPES.get(info.dtype)
        if itemsize is None:
            raise CheckpointError(f"tensor {name} has dtype {info.dtype}; webgemma reads BF16, F16 or F32 weights")
        row = int(np.prod(info.shape[1:], dtype=np.int64)) if len(info.shape) > 1 else 1
        count = (stop - start) * row
        raw = np.empty(count, dtype=np.uint16 if itemsize == 2 else np.float32)
        with open(info.file, "rb") as f:
            f.seek(info.offset + start * row * itemsize)
            if f.readinto(memoryview(raw).cast("B")) != raw.nbytes:
                raise CheckpointError(f"{info.file} is truncated while reading {name}")
        out_shape = (stop - start, *info.shape[1:]) if info.shape else (1,)
        if info.dtype == "BF16":  # bf16 is the high half of a float32
            return (raw.astype(np.uint32) << 16).view(np.float32).reshape(out_shape)
        if info.dtype == "F16":
            return raw.view(np.float16).astype(np.float32).reshape(out_shape)
        return raw.reshape(out_shape)
