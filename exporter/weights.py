"""The strict mapping between checkpoint tensors and the exported model.

Every tensor the graph needs is claimed by its checkpoint name with the shape it must have; every tensor the
checkpoint holds must be claimed or skipped for a stated reason. Anything else is an error that names the tensor,
so a renamed or mis-shaped weight can never be exported silently.
"""

from __future__ import annotations

import re

import numpy as np

from .checkpoint import Checkpoint
from .config import TextArch
from .errors import CheckpointError

_TOWERS = re.compile(r"^model\.(vision_tower|audio_tower|embed_vision|embed_audio)\.")


class Weights:
    def __init__(self, checkpoint: Checkpoint, arch: TextArch):
        self.checkpoint = checkpoint
        self.arch = arch
        self.claimed: dict[str, tuple[int, ...]] = {}

    def claim(self, relative: str, shape: tuple[int, ...]) -> str:
        """The checkpoint name of a text-decoder tensor, checked to exist with exactly `shape`."""
        name = self.arch.weight_prefix + relative
        info = self.checkpoint.tensors.get(name)
        if info is None:
            raise CheckpointError(f"checkpoint has no tensor {name} (expected shape {list(shape)}): is this a complete Gemma 4 E2B/E4B checkpoint?")
        if tuple(info.shape) != tuple(shape):
            raise CheckpointError(f"tensor {name} has shape {list(info.shape)}, expected {list(shape)} from config.json")
        self.claimed[name] = tuple(shape)
        return name

    def read(self, name: str) -> np.ndarray:
        return self.checkpoint.read(name)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.checkpoint.read_rows(name, start, stop)

    def skip_reason(self, name: str) -> str | None:
        if _TOWERS.match(name):
            return "vision/audio towers: webgemma exports the text decoder"
        if name in ("lm_head.weight", self.arch.weight_prefix + "lm_head.weight", "model.lm_head.weight"):
            return "lm_head is tied to embed_tokens"
        m = re.fullmatch(re.escape(self.arch.weight_prefix) + r"layers\.(\d+)\.self_attn\.(k_proj|v_proj|k_norm|v_norm)\.weight", name)
        if m and int(m.group(1)) >= self.arch.first_shared_layer:
            layer = int(m.group(1))
            return f"layer {layer} is KV-shared: it attends to layer {self.arch.kv_source[layer]}'s keys and values"
        return None

    def skipped(self) -> dict[str, str]:
        """Checkpoint tensors left out of the export, with the reason."""
        out = {}
        for name in self.checkpoint.tensors:
            if name not in self.claimed:
                reason = self.skip_reason(name)
                if reason is None:
                    raise CheckpointError(
                        f"checkpoint tensor {name} {list(self.checkpoint.tensors[name].shape)} is not part of the Gemma 4 "
                        "E2B/E4B text decoder webgemma knows; refusing to export a model that would ignore it"
                    )
                out[name] = reason
        return out
