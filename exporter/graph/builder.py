"""A small ONNX graph builder: nodes with hierarchical names, inline constants and lazily produced weights.

Weights are declared with their shape and a function that produces their data; the shard writer calls those
functions one at a time while streaming to disk, so the model is never in memory at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 21
MS_DOMAIN = "com.microsoft"

ONNX_TYPES = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.int64): TensorProto.INT64,
}


@dataclass
class Weight:
    """An initializer whose bytes live in an external-data shard."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


class GraphBuilder:
    def __init__(self, name: str):
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.constants: list[onnx.TensorProto] = []
        self.weights: list[Weight] = []
        self._scope: list[str] = []
        self._names: set[str] = set()
        self._const_cache: dict[tuple, str] = {}

    # --- naming ---------------------------------------------------------------------------------------------
    @contextmanager
    def scope(self, name: str) -> Iterator[None]:
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def _unique(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    # --- graph interface ------------------------------------------------------------------------------------
    def input(self, name: str, dtype, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, ONNX_TYPES[np.dtype(dtype)], shape))
        self._names.add(name)
        return name

    def output(self, value: str, name: str, dtype, shape: list) -> str:
        """Expose the node output `value` as graph output `name`, renaming it where it is produced and used (an
        Identity would copy it every run: the KV cache, for one)."""
        if value != name:
            if name in self._names:
                raise ValueError(f"graph output name {name!r} is already taken")
            for node in self.nodes:
                for names in (node.output, node.input):
                    for i, n in enumerate(names):
                        if n == value:
                            names[i] = name
            self._names.add(name)
        self.outputs.append(helper.make_tensor_value_info(name, ONNX_TYPES[np.dtype(dtype)], shape))
        return name

    def const(self, value, dtype=np.int64, name: str | None = None) -> str:
        """A small tensor stored inside the graph (shapes, axes, scalars, norm weights).

        Unnamed constants with equal values are shared; named ones keep their (checkpoint) name.
        """
        array = np.asarray(value, dtype=dtype)
        if name is not None:
            self._names.add(name)
            self.constants.append(numpy_helper.from_array(array, name))
            return name
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._const_cache:
            unique = self._unique(f"const_{len(self._const_cache)}")
            self.constants.append(numpy_helper.from_array(array, unique))
            self._const_cache[key] = unique
        return self._const_cache[key]

    def weight(self, name: str, dtype, shape: tuple[int, ...], produce: Callable[[], np.ndarray]) -> str:
        self._names.add(name)
        self.weights.append(Weight(name, np.dtype(dtype), tuple(int(s) for s in shape), produce))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, *, domain: str = "", name: str | None = None, **attrs) -> str | list[str]:
        """Add a node named after the current scope; returns its output name (or names when several).

        `outputs` is a count, or a list of names where "*" asks for a generated name and "" omits an optional output.
        """
        node_name = self._unique("/" + "/".join([*self._scope, name or op_type]))
        if isinstance(outputs, int):
            outputs = ["*"] * outputs
        outputs = [f"{node_name}/output_{i}" if o == "*" else o for i, o in enumerate(outputs)]
        self._names.update(o for o in outputs if o)
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=node_name, domain=domain or None, **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def model(self) -> onnx.ModelProto:
        """The graph with weights declared as external tensors (their data locations are filled in by the writer)."""
        initializers = list(self.constants)
        for w in self.weights:
            t = TensorProto(name=w.name, data_type=ONNX_TYPES[w.dtype], dims=w.shape, data_location=TensorProto.EXTERNAL)
            initializers.append(t)
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, initializers)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)], producer_name="webgemma"
        )
        model.ir_version = 10
        return model
