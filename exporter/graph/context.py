"""What every component needs: the graph under construction, the architecture, the weights and the injected
linear-layer factory. Passed explicitly; components hold no state of their own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..config import TextArch
from ..weights import Weights
from .builder import GraphBuilder


class Linear(Protocol):
    def __call__(self, g: GraphBuilder, x: str, name: str, n: int, k: int) -> str: ...


@dataclass(frozen=True)
class Context:
    g: GraphBuilder
    arch: TextArch
    weights: Weights
    linear: Linear

    def linear_layer(self, x: str, relative: str, n: int, k: int) -> str:
        """x @ W.T for the checkpoint Linear `relative` ([n, k]), named after it."""
        name = self.weights.claim(relative, (n, k))
        with self.g.scope(relative.removesuffix(".weight")):
            return self.linear(self.g, x, name, n, k)

    def small(self, relative: str, shape: tuple[int, ...]) -> str:
        """A small float32 tensor (norm weight, layer scalar) stored in the graph under its checkpoint name."""
        name = self.weights.claim(relative, shape)
        return self.g.const(self.weights.read(name).astype(np.float32), np.float32, name=name)
