"""One backend protocol, two implementations: onnxruntime in CPython (`ort_native`), onnxruntime-web in Pyodide
(`ort_web`). The engine cannot tell them apart."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Backend(Protocol):
    """Runs the exported decoder graph, one `run()` per prefill chunk or decoded token.

    Feeds are numpy arrays or device handles returned by an earlier `run()` (the KV cache). Outputs named in
    `host_outputs` come back as numpy arrays; every other output comes back as a device handle that stays where
    it was computed (GPU memory under WebGPU) until it is fed back or released.
    """

    name: str  # what really runs the graph: "cpu", "webgpu" or "wasm"
    # a run that reads nothing back (`host_outputs` empty) goes through the graph cut to the caches (the manifest's
    # fill_graph): the engine then scores a prompt's last token through its step session
    fills: bool

    async def run(self, feeds: dict[str, np.ndarray | Any], host_outputs: list[str]) -> dict[str, np.ndarray | Any]: ...

    def release(self, handle: Any) -> None:
        """Frees a device handle that will not be fed again."""

    async def keep_warm(self, seconds: float) -> None:
        """Keeps the device's clocks up for `seconds` from now (0: stop): someone is typing the next prompt."""

    def close(self) -> None: ...
