// storage_read_bench.py's worker: {setup: n} copies the cached files into OPFS; {mode, files} reads them all one way
// and answers {ms, gbps, first (ms to the first file)}.
const MB = 64 * 2 ** 20;
let handles = [];

onmessage = async ({ data }) => {
  if (data.setup) {
    const dir = await navigator.storage.getDirectory();
    const cache = await caches.open("storage-read");
    for (let i = 0; i < data.setup; i++) {
      const bytes = new Uint8Array(await (await cache.match(`/f${i}`)).arrayBuffer());
      const handle = await (await dir.getFileHandle(`f${i}`, { create: true })).createSyncAccessHandle();
      handle.truncate(0);
      handle.write(bytes, { at: 0 });
      handle.flush();
      handle.close();
    }
    handles = await Promise.all(Array.from({ length: data.setup }, async (_, i) =>
      (await dir.getFileHandle(`f${i}`)).createSyncAccessHandle({ mode: "read-only" })));
    postMessage("ready");
    return;
  }
  const { mode, files } = data;
  const cache = await caches.open("storage-read");
  const blobs = [];
  if (!mode.startsWith("opfs")) for (let i = 0; i < files; i++) blobs.push(await (await cache.match(`/f${i}`)).blob());
  const reused = new Uint8Array(MB);
  const done = [];
  const t0 = performance.now();
  if (mode.startsWith("opfs")) {
    for (let i = 0; i < files; i++) {
      handles[i].read(mode === "opfs_reuse" ? reused : new Uint8Array(MB), { at: 0 });
      done.push(performance.now() - t0);
    }
  } else if (mode === "stream_reuse") {
    for (let i = 0; i < files; i++) {
      const reader = blobs[i].stream().getReader();
      let at = 0;
      for (let part = await reader.read(); !part.done; part = await reader.read()) {
        reused.set(part.value, at);
        at += part.value.byteLength;
      }
      done.push(performance.now() - t0);
    }
  } else {  // blobN: N reads at once, as ort_bridge.mjs blobReader's read-ahead
    let next = 0;
    const one = async () => {
      while (next < files) {
        const i = next++;
        await blobs[i].arrayBuffer();
        done[i] = performance.now() - t0;
      }
    };
    await Promise.all(Array.from({ length: Number(mode.slice(4)) }, one));
  }
  const ms = performance.now() - t0;
  postMessage({ ms: Math.round(ms), gbps: +(files * MB / 1e6 / ms).toFixed(2), first: Math.round(done[0]) });
};
