"""The decoder on CPython's onnxruntime: the CPU EP (the reference the browser is compared against), or the same
WebGPU kernels as the browser's, natively through Dawn (PyPI `onnxruntime-ep-webgpu`), for the browser/native ratio.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..static_cache import step_caches


class NativeBackend:
    def __init__(self, model_dir: Path, manifest, threads: int = 0, provider: str = "cpu", fill: bool = False):
        import onnxruntime as ort  # CPython only; the browser never imports this module

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if provider == "webgpu":
            options.add_provider_for_devices([_webgpu_device(ort)], {})
            providers = None
        elif provider != "cpu":
            raise ValueError(f"provider must be 'cpu' or 'webgpu', not {provider!r}")
        self.name = provider
        # Constant folding would copy the tied embedding (its Reshape of a shared weight): as in the browser.
        def session(path: str):
            return ort.InferenceSession(str(Path(model_dir) / path), options, providers=providers,
                                        disabled_optimizers=["ConstantFolding"])
        self.session = session(manifest.decoder["graph"]["path"])
        # fill: runs that read nothing back go through the graph cut to the caches (see Backend.fills)
        self.fill_session = session(manifest.decoder["fill_graph"]["path"]) if fill and "fill_graph" in manifest.decoder else None
        self.fills = self.fill_session is not None
        # each session with its input names and outputs, read once (a CLI token is one run)
        self._runs = {cut: (s, {i.name for i in s.get_inputs()}, [o.name for o in s.get_outputs()])
                      for cut, s in ((False, self.session), (True, self.fill_session)) if s is not None}
        self._device_outputs = provider == "webgpu"
        self._ort = ort

    async def run(self, feeds: dict, host_outputs: list[str]) -> dict:
        session, names, outputs = self._runs[self.fills and not host_outputs]
        feeds = {k: v for k, v in feeds.items() if k in names}
        if self._device_outputs:
            try:
                return self._run_bound(session, outputs, feeds, host_outputs)
            except Exception as e:  # noqa: BLE001 - an onnxruntime without WebGPU device binding: say so, go on
                print(f"webgemma: device-resident outputs unavailable ({e}); the cache goes through host memory")
                self._device_outputs = False
                feeds = {k: v if isinstance(v, np.ndarray) else v.numpy() for k, v in feeds.items()}
        return dict(zip(outputs, session.run(outputs, feeds)))

    def _run_bound(self, session, outputs: list[str], feeds: dict, host_outputs: list[str]) -> dict:
        """One run with the non-host outputs left in GPU memory (the cache), as the browser does."""
        binding = session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        for name in outputs:
            binding.bind_output(name, "cpu" if name in host_outputs else "webgpu")
        session.run_with_iobinding(binding)
        values = binding.get_outputs()
        return {n: (v.numpy() if n in host_outputs else v) for n, v in zip(outputs, values)}

    def release(self, handle) -> None:
        pass  # numpy arrays and OrtValues are freed by the garbage collector

    def step_session(self, model_dir: Path, manifest, context: int) -> NativeStepSession:
        """The step graph on the CPU EP over fixed numpy caches (see webgemma.static_cache): the reference the
        browser's captured decoding is checked against."""
        if self.name != "cpu":
            raise ValueError("the native step session runs on the CPU EP only")
        return NativeStepSession(self._ort, Path(model_dir) / manifest.decoder["step_graph"]["path"], manifest, context)

    async def keep_warm(self, seconds: float) -> None:
        pass  # no prompt box is typed in: the CLI and the benchmarks send their prompts at once

    def close(self) -> None:
        self.session = self.fill_session = None
        self._runs = {}


class NativeStepSession:
    """webgemma.static_cache.StepSession on onnxruntime's CPU EP: every cache is a numpy array bound once as an
    input, so the rows copied into it are what the next step reads, as on the GPU."""

    def __init__(self, ort, path: Path, manifest, context: int):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=["ConstantFolding"])
        self.io = manifest.decoder
        caches = step_caches(self.io, context)
        self.caches = {c["input"]: np.zeros(c["dims"], np.float32) for c in caches}
        self.slots = {c["input"]: c["dims"][2] for c in caches}
        # the caches and outputs are bound once; each step rebinds only its other inputs
        self.binding = self.session.io_binding()
        for name, cache in self.caches.items():
            self.binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(cache))
        self.output_names = [o.name for o in self.session.get_outputs()]
        for name in self.output_names:
            self.binding.bind_output(name, "cpu")
        self.outputs: dict[str, np.ndarray] = {}  # the last step's, its new key/value rows among them
        self.reads_rows = self.chains = False

    async def copy(self, copies) -> None:
        for c in copies:
            dst = self.caches[c.dst]
            src = self.outputs[c.src] if isinstance(c.src, str) else np.asarray(c.src)
            dst[:, :, c.dst_row:c.dst_row + c.rows] = src[:, :, c.src_row:c.src_row + c.rows]

    async def run(self, feeds: dict, row: object = None) -> tuple[np.ndarray, np.ndarray]:
        for name, value in feeds.items():
            self.binding.bind_cpu_input(name, np.ascontiguousarray(value))
        self.session.run_with_iobinding(self.binding)
        # copies: the bound outputs' memory is written again by the next run
        self.outputs = {n: v.numpy().copy() for n, v in zip(self.output_names, self.binding.get_outputs())}
        top = self.io["top_k"]
        return self.outputs[top["values"]], self.outputs[top["ids"]]


def _webgpu_device(ort):
    import onnxruntime_ep_webgpu as webgpu

    if not any(d.ep_name == webgpu.get_ep_name() for d in ort.get_ep_devices()):  # registered once per process
        ort.register_execution_provider_library("webgpu", webgpu.get_library_path())
    device = next((d for d in ort.get_ep_devices() if d.ep_name == webgpu.get_ep_name()), None)
    if device is None:
        raise RuntimeError("onnxruntime-ep-webgpu found no WebGPU device (a GPU and libvulkan.so.1 are needed)")
    return device
