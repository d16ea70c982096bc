// onnxruntime-web glue for py/browser.py: loading a bundle once, creating a session while recording ORT's log.
// Everything else (feeds, outputs, conversions) is done from Python.

// ORT's wasm module binds console.log/error when it initialises, so a recorder must already sit in the console
// by then: this tap forwards every call and, while a session is being created, also keeps the line.
let recording = null;
for (const k of ["log", "info", "warn", "error", "debug"]) {
  const original = console[k].bind(console);
  console[k] = (...args) => {
    if (recording) recording.push(args.map(String).join(" "));
    original(...args);
  };
}

const bundles = new Map();

// One module instance per bundle URL; its env is set before its first session (wasm is initialised then).
export function loadOrt(bundleUrl, wasmBaseUrl, numThreads) {
  if (!bundles.has(bundleUrl)) {
    bundles.set(bundleUrl, import(bundleUrl).then((ort) => {
      ort.env.wasm.wasmPaths = wasmBaseUrl;
      ort.env.wasm.numThreads = numThreads;
      ort.env.wasm.proxy = false;
      return ort;
    }));
  }
  return bundles.get(bundleUrl);
}

// Creates a session; with verbose, ORT's console output during creation comes back as `log` (node placement).
export async function createSession(ort, model, options, verbose) {
  const log = [];
  const level = ort.env.logLevel;
  if (verbose) {
    ort.env.logLevel = "verbose";
    recording = log;
  }
  try {
    const session = await ort.InferenceSession.create(model, options);
    return { session, log };
  } finally {
    if (verbose) {
      recording = null;
      ort.env.logLevel = level;
    }
  }
}

// A tensor's bytes as a Uint8Array (read back from the GPU if needed): Pyodide 0.27 cannot take a Float16Array,
// so no typed array of another kind crosses over to Python.
export async function tensorBytes(tensor) {
  const data = tensor.location === "cpu" ? tensor.data : await tensor.getData();
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}
