// The per-layer table's files, and the decoder's shards, copied from the Cache API into the origin private file system
// (OPFS) and read there through synchronous access handles, which only a worker may hold: a row costs a message round
// trip (~0.1 ms) instead of a Blob read from the Cache API (0.7 ms on an idle machine, 2–3 ms beside a busy GPU
// process), a shard read into a reused buffer 3–5 GB/s instead of 1.1–1.4. Driven by store_bridge.mjs openRowReader
// and ort_bridge.mjs copyReader. Copies are named by their sha256 and count once their ".done" marker exists.

const DIR = "webgemma-rows";
const SPARE = 64 * 2 ** 20;  // storage left free after a copy
let handles = [];

onmessage = async ({ data }) => {
  try {
    if (data.open) {
      await open(data.open);
      postMessage({ id: data.id });
    } else {
      const bytes = read(data.read, data.into);
      postMessage({ id: data.id, bytes }, [bytes.buffer]);
    }
  } catch (e) {
    postMessage({ id: data.id, error: `${e.name}: ${e.message}` });
  }
};

// files: [{url, sha256, bytes}], verified entries of the Cache API `cacheName`, copied first where missing (unless
// `make` is false: then a missing copy fails the open)
async function open({ cacheName, files, make = true }) {
  const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle(DIR, { create: true });
  const missing = [];
  for (const f of files) if (!(await copied(dir, f))) missing.push(f);
  if (missing.length && !make) throw new Error(`${missing.length} of ${files.length} files have no copy yet`);
  const need = missing.reduce((n, f) => n + f.bytes, 0);
  const { usage = 0, quota = Infinity } = await navigator.storage.estimate();
  if (need && usage + need + SPARE > quota) {
    throw new Error(`${need} bytes to copy, ${quota - usage} of storage left`);
  }
  for (const f of missing) await copy(dir, cacheName, f);
  // read-only handles may be held by several pages at once (an older browser ignores the mode: one page at a time)
  handles = await Promise.all(files.map(async (f) =>
    (await dir.getFileHandle(`${f.sha256}.bin`)).createSyncAccessHandle({ mode: "read-only" })));
}

async function copied(dir, f) {
  try {
    await dir.getFileHandle(`${f.sha256}.done`);
    return (await (await dir.getFileHandle(`${f.sha256}.bin`)).getFile()).size === f.bytes;
  } catch {
    return false;
  }
}

async function copy(dir, cacheName, f) {
  const response = await (await caches.open(cacheName)).match(f.url);
  if (!response) throw new Error(`${f.url} is not cached`);
  const handle = await (await dir.getFileHandle(`${f.sha256}.bin`, { create: true })).createSyncAccessHandle();
  try {
    handle.truncate(0);
    let at = 0;
    const reader = response.body.getReader();
    for (let part = await reader.read(); !part.done; part = await reader.read()) {
      at += handle.write(part.value, { at });
    }
    if (at !== f.bytes) throw new Error(`${f.url}: copied ${at} of ${f.bytes} bytes`);
    handle.flush();
  } finally {
    handle.close();
  }
  await dir.getFileHandle(`${f.sha256}.done`, { create: true });
}

// [[file index, start, length]] → the ranges' bytes concatenated, in `into` (an ArrayBuffer) where given
function read(ranges, into) {
  const total = ranges.reduce((n, [, , length]) => n + length, 0);
  const out = into ? new Uint8Array(into, 0, total) : new Uint8Array(total);
  let at = 0;
  for (const [file, start, length] of ranges) {
    const n = handles[file].read(out.subarray(at, at + length), { at: start });
    if (n !== length) throw new Error(`read ${n} of ${length} bytes at ${start} of copy ${file}`);
    at += length;
  }
  return out;
}
