"""Stream the graph's weights into external-data shard files, one weight in memory at a time."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx

from .errors import ExportError
from .graph.builder import Weight

class ShardWriter:
    """Appends byte blobs to numbered files of at most `max_bytes`, hashing as it goes.

    Blobs start at multiples of `align` (typed-array views in the browser need aligned offsets).
    """

    def __init__(self, folder: Path, stem: str, max_bytes: int, align: int = 64):
        self.folder, self.stem, self.max_bytes, self.align = folder, stem, max_bytes, align
        self.files: list[dict] = []
        self._f = None
        self._hash = None

    def append(self, data: bytes | memoryview, what: str) -> tuple[str, int]:
        """Writes `data` whole into the current shard (or a new one); returns (file name, offset)."""
        size = len(data)
        if size > self.max_bytes:
            raise ExportError(f"{what} is {size / 2**20:.1f} MiB, larger than a shard ({self.max_bytes / 2**20:.0f} MiB): raise --shard-mb")
        pad = -self.files[-1]["bytes"] % self.align if self._f else 0
        if self._f is None or self.files[-1]["bytes"] + pad + size > self.max_bytes:
            self._open()
            pad = 0
        entry = self.files[-1]
        if pad:
            self._write(b"\0" * pad)
        offset = entry["bytes"]
        self._write(data)
        return entry["path"], offset

    def _write(self, data) -> None:
        self._f.write(data)
        self._hash.update(data)
        self.files[-1]["bytes"] += len(data)

    def new_file(self) -> None:
        """Start the next blob in a fresh file."""
        self._open()

    def _open(self) -> None:
        self.close()
        path = f"{self.stem}.{len(self.files):03d}.bin"
        self._f = open(self.folder / path, "wb")
        self._hash = hashlib.sha256()
        self.files.append({"path": path, "bytes": 0})

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self.files[-1]["sha256"] = self._hash.hexdigest()
            self._f = None


def write_weights(model: onnx.ModelProto, weights: list[Weight], writer: ShardWriter, progress=None) -> None:
    """Produces each weight, checks it against its declaration, appends it and points its initializer at it."""
    protos = {t.name: t for t in model.graph.initializer}
    for n, w in enumerate(weights):
        data = w.produce()
        if data.dtype != w.dtype or tuple(data.shape) != w.shape:
            raise AssertionError(f"{w.name}: produced {data.dtype}{list(data.shape)}, declared {w.dtype}{list(w.shape)}")
        location, offset = writer.append(memoryview(data.reshape(-1).view("u1")), w.name)
        _point_at(protos[w.name], location, offset, data.nbytes)
        if progress:
            progress(n + 1, len(weights), w.name)
    writer.close()


def share_weights(model: onnx.ModelProto, written: onnx.ModelProto) -> onnx.ModelProto:
    """Points `model`'s external initializers at the data `written` already has under the same names."""
    stored = {t.name: t for t in written.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            source = stored[t.name]
            if list(source.dims) != list(t.dims) or source.data_type != t.data_type:
                raise AssertionError(f"{t.name}: declared differently in the two graphs")
            t.ClearField("external_data")
            t.external_data.extend(source.external_data)
    return model


def _point_at(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL
