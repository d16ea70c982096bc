// Keeps #status telling what happens until Python takes over, and shows any error as text.
import { startOrt } from "./ort_bridge.mjs";
const status = document.getElementById("status");
const say = (text, error = false) => {
  if (!status || status.classList.contains("error")) return; // the first error stays visible
  status.textContent = text;
  status.classList.toggle("error", error);
};

// A runtime file that fails to load (a 404 for pyodide.asm.wasm, say) leaves Pyodide waiting forever: name it.
const failed = new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    if (e.responseStatus >= 400) say(`error: could not load ${new URL(e.name).pathname} (HTTP ${e.responseStatus})`, true);
  }
});
failed.observe({ type: "resource", buffered: true });

addEventListener("py:progress", ({ detail }) => say(`loading Python… (${detail})`));
document.addEventListener("py:ready", () => { failed.disconnect(); say("starting webgemma…"); });
addEventListener("error", (e) => say(`error: ${e.message || e.error || "unknown"}`, true));
addEventListener("unhandledrejection", (e) => say(`error: ${e.reason?.message ?? e.reason}`, true));

// onnxruntime-web starts while Python boots (the model's load is then ~1 s shorter, the page ready 0–0.5 s sooner:
// BENCHMARKS.md), unless the page is told to use wasm or `ort_start=0` (benchmarks).
const params = new URLSearchParams(location.search);
if (params.get("autorun") === "1") {  // for benchmarks: the main thread's long tasks, [start, duration] in ms
  globalThis.webgemmaLongTasks = [];
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) globalThis.webgemmaLongTasks.push([e.startTime, e.duration]);
  }).observe({ type: "longtask" });
}
if (params.get("backend") !== "wasm" && params.get("ort_start") !== "0") {
  startOrt(new URL("vendor/ort/", location.href).href);  // webgemma.backends.ort_web.ORT_URL
}
