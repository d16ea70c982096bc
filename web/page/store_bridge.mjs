// Cache API glue for py/storage_web.py (through py/browser.py). Keys are absolute URLs.

// Each url's entry, {blob, verified} or null, looked up at once: E2B's 47 files one after another from Python took
// 0.19–0.33 s of an H100's warm load, at once 0.02–0.05 s. `verified` is the sha256 this store recorded after the
// entry passed its check, or "".
export async function cachedEntries(cacheName, urls) {
  const cache = await caches.open(cacheName);
  return await Promise.all(urls.map(async (url) => {
    const response = await cache.match(url);
    if (!response) return null;
    return { blob: await response.blob(), verified: response.headers.get("x-webgemma-sha256") ?? "" };
  }));
}

// Records that the entry passed its sha256 check: stored again with the digest as a header (the body is a
// Blob already in the browser's storage, so this copies no bytes through JS).
export async function markVerified(cacheName, url, sha256) {
  const cache = await caches.open(cacheName);
  const response = await cache.match(url);
  if (!response) throw new Error(`${url} is not cached`);
  await cache.put(url, new Response(await response.blob(), {
    headers: { "content-type": "application/octet-stream", "x-webgemma-sha256": sha256 },
  }));
}

// Streams `url` into the cache, calling onBytes(bytesSoFar) at most every 100 ms and once at the end.
export async function download(cacheName, url, onBytes, reload) {
  const response = await fetch(url, { cache: reload ? "reload" : "no-store" });
  if (!response.ok) throw new Error(`HTTP ${response.status} ${response.statusText}`);
  let done = 0;
  let last = 0;
  const counter = new TransformStream({
    transform(chunk, controller) {
      done += chunk.byteLength;
      const now = performance.now();
      if (now - last > 100) { last = now; onBytes(done); }
      controller.enqueue(chunk);
    },
  });
  const cache = await caches.open(cacheName);
  try {
    await cache.put(url, new Response(response.body.pipeThrough(counter),
      { headers: { "content-type": "application/octet-stream" } }));
  } catch (e) {
    // Chromium private windows keep Cache Storage in memory and refuse large entries with an "internal error"
    throw new Error(`the browser refused to store it after ${done} bytes (${e.name}: ${e.message}); ` +
      "a private window or a full disk keeps large models from being stored");
  }
  onBytes(done);
  return done;
}

// Hex sha256 of a cached entry, or null where crypto.subtle is missing (plain http on a non-local host).
export async function sha256(cacheName, url) {
  if (!globalThis.crypto?.subtle) return null;
  const response = await (await caches.open(cacheName)).match(url);
  if (!response) throw new Error(`${url} is not cached`);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", await response.arrayBuffer()));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

export async function remove(cacheName, url) {
  return await (await caches.open(cacheName)).delete(url);
}

export async function keys(cacheName) {
  return (await (await caches.open(cacheName)).keys()).map((r) => r.url);
}

export async function storageEstimate() {
  const e = await navigator.storage?.estimate?.();
  const persisted = await navigator.storage?.persist?.().catch(() => false);
  return { usage: e?.usage ?? 0, quota: e?.quota ?? 0, persisted: !!persisted };
}

// Many byte ranges of cached files in one call (a prompt's per-layer rows): [[blob, start, end]] → the ranges'
// bytes concatenated in order, one Uint8Array (one crossing into Python instead of one per range).
export async function readRanges(ranges) {
  const parts = await Promise.all(ranges.map(([blob, start, end]) => blob.slice(start, end).arrayBuffer()));
  const out = new Uint8Array(parts.reduce((n, part) => n + part.byteLength, 0));
  let at = 0;
  for (const part of parts) {
    out.set(new Uint8Array(part), at);
    at += part.byteLength;
  }
  return out;
}

// A module worker (`url`) that answers each message {id, ...} with {id, bytes} or {id, error}, as rows_worker.mjs and
// blob_reader.mjs do → {ask(message, ms, transfer) → bytes, close(error)}. A worker that fails, or stops answering
// for `ms` (it crashed), closes the client: every request then rejects, so that the page does not hang. `name` is
// the worker's in errors.
export function workerClient(url, name) {
  const worker = new Worker(url, { type: "module" });
  const pending = new Map();
  let next = 0;
  let closed = null;  // why the client stopped
  const close = (error) => {
    closed ??= error;
    worker.terminate();
    for (const { reject, timer } of pending.values()) {
      clearTimeout(timer);
      reject(closed);
    }
    pending.clear();
  };
  worker.onmessage = ({ data }) => {
    const request = pending.get(data.id);
    pending.delete(data.id);
    clearTimeout(request?.timer);
    if (data.error) request?.reject(new Error(data.error));
    else request?.resolve(data.bytes);
  };
  worker.onerror = (e) => close(new Error(`${name}'s worker failed: ${e.message}`));
  const ask = (message, ms, transfer = []) => new Promise((resolve, reject) => {
    if (closed) return reject(closed);
    const id = next++;
    const timer = setTimeout(() => close(new Error(`${name} did not answer in ${ms / 1000} s`)), ms);
    pending.set(id, { resolve, reject, timer });
    worker.postMessage({ id, ...message }, transfer);
  });
  return { ask, close };
}

// Byte ranges of cached files from their copies in the origin private file system, read by rows_worker.mjs
// (files: [{url, sha256, bytes}]; copies are made first where missing, unless `make` is false) →
// {read([[file index, start, length]], into) → Uint8Array (in the ArrayBuffer `into`, transferred, where given),
// close()}. Throws where the copies cannot be made (or are missing) or opened; the Cache API still serves the ranges.
export async function openRowReader(cacheName, files, make = true) {
  // reads take milliseconds, copies seconds
  const { ask, close } = workerClient(new URL("./rows_worker.mjs", import.meta.url), "the row reader");
  try {
    await ask({ open: { cacheName, files, make } }, 600_000);
  } catch (e) {
    close(e);
    throw e;
  }
  return {
    read: (ranges, into) => ask({ read: ranges, into }, 10_000, into ? [into] : []),
    close: () => close(new Error("the row reader was closed")),
  };
}

// One token's per-layer row for a decode step that reads it itself (kernel_step.mjs): {reader, copies, blobs} from
// py/browser.py row_source, read from the OPFS copies where there is a reader, else (or where it fails: the Cache
// API has every file) from the cached Blobs.
export async function readRow({ reader, copies, blobs }) {
  if (reader) {
    try {
      return await reader.read(copies);
    } catch {
      // the reader is closed for good: later steps go to the Cache API at once
    }
  }
  return readRanges(blobs);
}
