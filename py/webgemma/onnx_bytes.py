"""Reading and editing ONNX model bytes without the onnx package, which the browser does not have.

`weights_as_inputs` turns every initializer whose bytes live in an external-data file into a graph input, so the
WebGPU backend uploads each weight once and feeds the same GPU buffer to both of its sessions (the prefill graph
and the graph-captured step graph); onnxruntime-web would otherwise hold a copy per session.

`identity_model` is the smallest model a session can be created for.

`float_initializers` reads the small float32 tensors kept inside the graph (norm weights, layer scalars), which the
hand-written decode step (webgemma.kernel_plan) needs as plain numbers.

Protobuf field numbers (onnx.proto): ModelProto.graph 7; GraphProto.initializer 5, input 11, output 12;
TensorProto.dims 1, data_type 2, float_data 4, name 8, raw_data 9, external_data 13 (key 1, value 2),
data_location 14 (1 = EXTERNAL);
ValueInfoProto.name 1, type 2 → TypeProto.tensor_type 1 → elem_type 1, shape 2 → dim 1 → dim_value 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

# TensorProto.DataType → onnxruntime-web tensor type
ORT_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
             10: "float16", 11: "float64", 12: "uint32", 13: "uint64"}


@dataclass(frozen=True)
class ExternalWeight:
    """An initializer moved to the graph's inputs, and where its bytes are."""

    name: str
    dtype: int  # TensorProto.DataType
    dims: tuple[int, ...]
    location: str  # the external-data file, as the graph names it
    offset: int
    length: int

    @property
    def ort_type(self) -> str:
        return ORT_TYPES[self.dtype]


def graph_output_names(model: bytes) -> list[str]:
    """The graph's output names."""
    names = []
    for f, _, payload in _fields(_graph(memoryview(model))):
        if f == 12:
            names += [bytes(n).decode() for g, _, n in _fields(payload) if g == 1]
    return names


def weights_as_inputs(model: bytes) -> tuple[bytes, list[ExternalWeight]]:
    """`model` with its external initializers declared as graph inputs instead, and those weights."""
    buf = memoryview(model)
    graph = _graph(buf)
    kept, weights = [], []
    for f, span, payload in _fields(graph):
        weight = _external_weight(payload) if f == 5 else None
        if weight is None:
            kept.append(bytes(span))
        else:
            weights.append(weight)
            kept.append(_message(11, _value_info(weight.name, weight.dtype, weight.dims)))
    new_graph = b"".join(kept)
    out = [bytes(span) if f != 7 else _message(7, new_graph) for f, span, _ in _fields(buf)]
    return b"".join(out), weights


def identity_model() -> bytes:
    """A model of one Identity node over a float32 [1]: onnxruntime-web starts its runtime only for a session
    (ort_bridge.mjs startOrt). ModelProto: ir_version 1, opset_import 8 (version 2), graph 7; GraphProto: node 1
    (NodeProto: input 1, output 2, op_type 4), name 2."""
    node = _message(1, b"x") + _message(2, b"y") + _message(4, b"Identity")
    graph = (_message(1, node) + _message(2, b"identity") + _message(11, _value_info("x", 1, (1,)))
             + _message(12, _value_info("y", 1, (1,))))
    return _key(1, 0) + _varint_bytes(8) + _message(8, _key(2, 0) + _varint_bytes(17)) + _message(7, graph)


def float_initializers(model: bytes) -> dict[str, np.ndarray]:
    """The graph's float32 initializers stored in the graph itself, by name."""
    out = {}
    for f, _, payload in _fields(_graph(memoryview(model))):
        tensor = _tensor(payload) if f == 5 else None
        if tensor and tensor.dtype == 1 and tensor.data:
            out[tensor.name] = np.frombuffer(tensor.data, "<f4").reshape(tensor.dims)
    return out


def _graph(model: memoryview) -> memoryview:
    graphs = [payload for f, _, payload in _fields(model) if f == 7]
    if not graphs:
        raise ValueError("not an ONNX model: no graph")
    return graphs[-1]


@dataclass
class _Tensor:
    """The TensorProto fields read here."""

    dims: list[int] = field(default_factory=list)
    dtype: int = 0
    name: str = ""
    data: bytes = b""  # float_data (packed, or one fixed32 per field) or raw_data
    entries: dict[str, str] = field(default_factory=dict)  # external_data
    external: bool = False


def _tensor(payload: memoryview) -> _Tensor:
    t = _Tensor()
    for f, span, value in _fields(payload):
        if f == 1:
            t.dims += _ints(span, value)
        elif f == 2:
            t.dtype = _ints(span, value)[0]
        elif f == 8:
            t.name = bytes(value).decode()
        elif f in (4, 9):
            t.data += bytes(value)
        elif f == 13:
            entry = {g: bytes(v).decode() for g, _, v in _fields(value)}
            t.entries[entry.get(1, "")] = entry.get(2, "")
        elif f == 14:
            t.external = _ints(span, value)[0] == 1
    return t


def _external_weight(payload: memoryview) -> ExternalWeight | None:
    t = _tensor(payload)
    if not t.external:
        return None
    if t.dtype not in ORT_TYPES:
        raise ValueError(f"initializer {t.name!r}: data type {t.dtype} has no onnxruntime-web tensor type")
    size = 1
    for d in t.dims:
        size *= d
    length = int(t.entries.get("length", 0)) or size * _ITEM_BYTES[t.dtype]
    return ExternalWeight(t.name, t.dtype, tuple(t.dims), t.entries["location"], int(t.entries.get("offset", 0)), length)


_ITEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8}


def _value_info(name: str, dtype: int, dims: tuple[int, ...]) -> bytes:
    shape = b"".join(_message(1, _key(1, 0) + _varint_bytes(d)) for d in dims)
    tensor_type = _key(1, 0) + _varint_bytes(dtype) + _message(2, shape)
    return _message(1, name.encode()) + _message(2, _message(1, tensor_type))


def _fields(buf: memoryview) -> Iterator[tuple[int, memoryview, memoryview]]:
    """(field number, the whole field's bytes, its payload: the bytes of a length-delimited field, else the value's)."""
    i, n = 0, len(buf)
    while i < n:
        start = i
        key, i = _varint(buf, i)
        kind = key & 7
        if kind == 0:
            _, end = _varint(buf, i)
        elif kind == 1:
            end = i + 8
        elif kind == 5:
            end = i + 4
        elif kind == 2:
            size, i = _varint(buf, i)
            end = i + size
        else:
            raise ValueError(f"not an ONNX model: protobuf wire type {kind} at byte {start}")
        if end > n:
            raise ValueError(f"not an ONNX model: a field at byte {start} runs past the end")
        yield key >> 3, buf[start:end], buf[i:end]
        i = end


def _ints(span: memoryview, payload: memoryview) -> list[int]:
    """The integers of a varint field, packed (length-delimited) or not."""
    values, i = [], 0
    if span[0] & 7 == 0:
        return [_signed(_varint(payload, 0)[0])]
    while i < len(payload):
        v, i = _varint(payload, i)
        values.append(_signed(v))
    return values


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _varint_bytes(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _key(field: int, kind: int) -> bytes:
    return _varint_bytes(field << 3 | kind)


def _message(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint_bytes(len(payload)) + payload
