// <webgemma-chat>: a chat box with a language model that runs in the reader's browser, for any static page.
//
//   <script type="module" src="https://host/webgemma/widget.mjs"></script>
//   <webgemma-chat context="page"></webgemma-chat>
//
// Until the reader presses "Start the model", this script and widget.css are all that load. Then it boots the
// Pyodide of the webgemma site it sits in (everything is resolved against this script's URL, so the site may be
// on another origin), installs numpy, jinja2 and webgemma as that site's pyscript.json says, and hands the box
// to Python (webgemma.widget), which loads the model and runs the chat. All boxes on a page share one Pyodide.
// Attributes, CSS custom properties and hosting: examples/README.md.

const BASE = new URL("./", import.meta.url).href; // the webgemma site: pyodide/, vendor/ort/, site.json, model/
const SHARED = Symbol.for("webgemma.widget"); // one Python per page, even if this script is included twice
const INTRO = "A small language model that runs in your browser: what you type never leaves this page. " +
  "Starting it downloads the model once; the browser keeps it for later visits.";

const TEMPLATE = `<link rel="stylesheet">
<section class="webgemma" part="box" aria-labelledby="title">
  <p class="title" id="title" part="title"></p>
  <p class="intro" part="intro"></p>
  <p class="status" role="status" aria-live="polite"></p>
  <button type="button" class="start" part="button">Start the model</button>
</section>`;

// Resolves to the Python module webgemma.widget; `say(text)` hears the boot steps while it is under way.
function python(say) {
  const shared = (globalThis[SHARED] ??= { listeners: new Set(), ready: null });
  shared.listeners.add(say);
  shared.ready ??= boot((text) => shared.listeners.forEach((f) => f(text)))
    .catch((e) => { shared.ready = null; throw e; }); // a later click tries again
  return shared.ready.finally(() => shared.listeners.delete(say));
}

async function boot(step) {
  const failure = failedFile();
  try {
    return await Promise.race([failure.promise, (async () => {
      step("Loading Python…");
      // onnxruntime-web starts meanwhile (ort_bridge.mjs startOrt): the model's first session is then ~1 s shorter
      import(`${BASE}ort_bridge.mjs`).then((bridge) => bridge.startOrt(`${BASE}vendor/ort/`)).catch(() => {});
      // the site's runtime config (build.py): Pyodide's URL (vendored, or a CDN) and the packages to install
      const response = await fetch(`${BASE}pyscript.json`);
      if (!response.ok) throw new Error(`${BASE}pyscript.json: HTTP ${response.status}`);
      const config = await response.json();
      const interpreter = new URL(config.interpreter, BASE).href;
      const packages = config.packages.map((p) => (p.endsWith(".whl") ? new URL(p, BASE).href : p));
      const { loadPyodide } = await import(interpreter);
      const pyodide = await loadPyodide({ indexURL: new URL("./", interpreter).href });
      step(`Loading ${packages.map((p) => p.split("/").pop().split("-")[0]).join(", ")}…`);
      await pyodide.loadPackage(packages, { messageCallback: () => {} });
      const widget = pyodide.pyimport("webgemma.widget");
      widget.configure(BASE);
      return widget;
    })()]);
  } finally {
    failure.stop();
  }
}

// Rejects when a file of the site answers with an HTTP error: Pyodide would otherwise wait forever on a
// missing pyodide.asm.wasm.
function failedFile() {
  let observer;
  const promise = new Promise((_, reject) => {
    observer = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) {
        if (e.name.startsWith(BASE) && e.responseStatus >= 400) {
          reject(new Error(`could not load ${e.name} (HTTP ${e.responseStatus})`));
        }
      }
    });
    observer.observe({ type: "resource", buffered: false });
  });
  return { promise, stop: () => observer.disconnect() };
}

class WebgemmaChat extends HTMLElement {
  connectedCallback() {
    if (this.shadowRoot) return;
    const root = this.attachShadow({ mode: "open" });
    root.innerHTML = TEMPLATE; // fixed markup; every text below goes in as text
    root.querySelector("link").href = `${BASE}widget.css`;
    const title = this.hasAttribute("context") ? "Ask about this page" : "Ask the model";
    root.querySelector(".title").textContent = this.getAttribute("label") ?? title;
    root.querySelector(".intro").textContent = this.getAttribute("intro") ?? INTRO;
    root.querySelector(".start").addEventListener("click", () => this.start());
    // Keys typed in the widget's fields stay in the widget: outside the shadow root their target reads as the
    // <webgemma-chat> element, not a text field, and docs themes would take them for shortcuts ("s": search).
    const typing = (e) => { if (e.composedPath()[0]?.matches?.("textarea, input")) e.stopPropagation(); };
    for (const type of ["keydown", "keypress", "keyup"]) root.addEventListener(type, typing);
    this.dataset.state = "idle";
  }

  // Boots Python (once per page) and hands this box to it; errors end as text in the box.
  async start() {
    if (!["idle", "error"].includes(this.dataset.state)) return;
    const box = this.shadowRoot.querySelector(".webgemma");
    const button = box.querySelector(".start");
    const status = box.querySelector(".status");
    this.dataset.state = "starting";
    button.setAttribute("aria-disabled", "true"); // not `disabled`: the focus stays on it while loading
    button.textContent = "Starting…";
    status.classList.remove("error");
    try {
      const widget = await python((text) => { status.textContent = text; });
      this.controller ??= widget.create(this, box);
      await this.controller.start();
    } catch (e) {
      this.dataset.state = "error";
      status.textContent = `Could not start the model: ${e?.message ?? e}`;
      status.classList.add("error");
      button.textContent = "Try again";
      button.removeAttribute("aria-disabled");
    }
  }
}

if (!customElements.get("webgemma-chat")) customElements.define("webgemma-chat", WebgemmaChat);
