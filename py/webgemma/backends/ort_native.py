"""The decoder on CPython's onnxruntime (CPU): the reference the browser is compared against."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class NativeBackend:
    name = "cpu"
    causal_prefill_limit = None

    def __init__(self, model_dir: Path, manifest, threads: int = 0):
        import onnxruntime as ort  # CPython only; the browser never imports this module

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        # Constant folding would copy the tied embedding (its Reshape of a shared weight): as in the browser.
        self.session = ort.InferenceSession(
            str(Path(model_dir) / manifest.decoder["graph"]["path"]), options,
            providers=["CPUExecutionProvider"], disabled_optimizers=["ConstantFolding"],
        )
        self.output_names = [o.name for o in self.session.get_outputs()]

    async def run(self, feeds: dict[str, np.ndarray], host_outputs: list[str]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def release(self, handle) -> None:
        pass  # numpy arrays are freed by the garbage collector

    def close(self) -> None:
        self.session = None
