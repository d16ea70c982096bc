"""ModelStore over the browser's Cache API: download once with progress, verify every file's sha256 before any
session is created, read byte ranges without loading whole files.

    store = WebModelStore("model/")                       # the model folder's URL, relative to the page
    report = await store.ensure(files, on_progress)       # files: [{"path", "bytes", "sha256"}, ...]
    blob = store.file("weights-00.bin")                   # a CachedFile, e.g. for onnxruntime-web's externalData
    row = await store.read_range("ple-00.bin", start, n)
    store.start_copies(["ple-00.bin"])                    # read_ranges then goes to copies in OPFS (a worker)

A cached file whose sha256 is wrong is named, deleted and downloaded again once; if the new copy is wrong too,
`ensure` raises `ModelFileError` naming it. Files not in the list (the manifest itself) are read network-first
with the cached copy as a fallback, so a page works offline once the model is cached.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from . import browser
from .browser import CachedFile

CACHE_NAME = "webgemma-model"
_HASH_CHUNK = 16 << 20  # fallback hashing in Python (no crypto.subtle), read this much at a time


@dataclass(frozen=True)
class ModelFile:
    path: str  # relative to the model folder, as the manifest (and the ONNX `location`) spells it
    bytes: int
    sha256: str

    @classmethod
    def of(cls, f: ModelFile | Mapping) -> ModelFile:
        return f if isinstance(f, ModelFile) else cls(str(f["path"]), int(f["bytes"]), str(f["sha256"]).lower())


@dataclass(frozen=True)
class Progress:
    phase: str  # "download", "verify" or "refetch" (a cached file failed its check and is downloaded again)
    file: str  # the file being worked on
    done: int  # bytes of this phase done so far, over all its files
    total: int
    seconds: float  # since the phase began
    eta: float | None  # seconds left at the rate so far (None until it can be told)

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0


@dataclass
class EnsureReport:
    downloaded: list[str] = field(default_factory=list)  # fetched because they were not cached
    refetched: list[str] = field(default_factory=list)  # cached but wrong (size or sha256): deleted, fetched again
    downloaded_bytes: int = 0
    verified_bytes: int = 0
    download_seconds: float = 0.0
    verify_seconds: float = 0.0
    phases_ms: dict[str, float] = field(default_factory=dict)  # open_web_model: where loading went (files, session, ...)
    step: str = ""  # open_web_model: what decodes a token ("graph", "kernels", or "graph (why not the kernels)")


class ModelFileError(RuntimeError):
    """Model files that could not be fetched or failed their sha256 check twice; `files` names them."""

    def __init__(self, message: str, files: list[str]) -> None:
        super().__init__(message)
        self.files = files


class WebModelStore:
    """`ModelStore` (webgemma.storage) over the Cache API; entries are keyed by the files' absolute URLs."""

    def __init__(self, base_url: str, cache_name: str = CACHE_NAME) -> None:
        base = base_url if base_url.endswith("/") else base_url + "/"
        self.base_url = browser.resolve_url(base)
        self.cache = cache_name
        self._files: dict[str, CachedFile] = {}
        self._wanted: dict[str, ModelFile] = {}
        self._copies: tuple[browser.RowReader, dict[str, int]] | None = None
        self.copies = "none"  # where read_ranges reads: "none" (the Cache API), "opfs", or why not OPFS
        self.copying: asyncio.Task | None = None

    def url(self, path: str) -> str:
        return browser.resolve_url(self.base_url + path)

    async def ensure(self, files: Iterable[ModelFile | Mapping], on_progress: Callable[[Progress], None] | None = None,
                     *, reverify: bool = True) -> EnsureReport:
        """Makes every file present and verified. `reverify=False` trusts a cached file that this store recorded
        as verified with the manifest's sha256 (and that still has its size); every other file is hashed."""
        wanted = [ModelFile.of(f) for f in files]
        self._wanted |= {f.path: f for f in wanted}
        report = EnsureReport()
        notify = on_progress or (lambda p: None)
        missing, unverified = [], []
        found = await browser.cache_files(self.cache, {f.path: self.url(f.path) for f in wanted})
        for f in wanted:
            cached = found[f.path]
            if cached is None:
                missing.append(f)
            elif cached.size != f.bytes:
                await browser.cache_delete(self.cache, self.url(f.path))
                report.refetched.append(f.path)
                missing.append(f)
            elif reverify or cached.verified != f.sha256:
                unverified.append(f)
        await self._check_space(missing)
        report.downloaded = [f.path for f in missing if f.path not in report.refetched]
        await self._download(missing, "download", notify, report)
        bad = await self._verify(missing + unverified, notify, report)
        if bad:
            report.refetched += [f.path for f in bad if f.path not in report.refetched]
            for f in bad:
                await browser.cache_delete(self.cache, self.url(f.path))
            await self._download(bad, "refetch", notify, report, reload=True)
            still = await self._verify(bad, notify, report)
            if still:
                for f in still:
                    await browser.cache_delete(self.cache, self.url(f.path))
                names = ", ".join(f.path for f in still)
                raise ModelFileError(
                    f"model file(s) {names} failed the sha256 check again after a fresh download: the copy at "
                    f"{self.base_url} does not match the manifest", [f.path for f in still])
        # entries stored or re-stored (marked verified) since the look-up above: their Blobs are looked up again
        if missing or unverified:
            found |= await browser.cache_files(self.cache, {f.path: self.url(f.path) for f in missing + unverified})
        for f in wanted:
            if found[f.path] is None:
                raise ModelFileError(f"model file {f.path} vanished from the browser cache (evicted?)", [f.path])
            self._files[f.path] = found[f.path]
        return report

    async def _check_space(self, missing: list[ModelFile]) -> None:
        need = sum(f.bytes for f in missing)
        if not need:
            return
        est = await browser.storage_estimate()
        if est["quota"] and est["quota"] - est["usage"] < need:
            raise ModelFileError(
                f"not enough browser storage for the model: {need / 2**20:.0f} MiB to download, "
                f"{(est['quota'] - est['usage']) / 2**20:.0f} MiB free", [f.path for f in missing])

    async def _download(self, files: list[ModelFile], phase: str, notify: Callable[[Progress], None],
                        report: EnsureReport, *, reload: bool = False) -> None:
        total = sum(f.bytes for f in files)
        start = time.monotonic()
        before = 0
        for f in files:
            def on_bytes(n: int, f: ModelFile = f, before: int = before) -> None:
                notify(_progress(phase, f.path, before + n, total, start))

            notify(_progress(phase, f.path, before, total, start))
            try:
                got = await browser.cache_download(self.cache, self.url(f.path), on_bytes, reload=reload)
            except OSError as e:
                raise ModelFileError(f"model file {f.path} could not be downloaded: {e}", [f.path]) from None
            before += got
        report.downloaded_bytes += before
        report.download_seconds += time.monotonic() - start

    async def _verify(self, files: list[ModelFile], notify: Callable[[Progress], None],
                      report: EnsureReport) -> list[ModelFile]:
        """Files whose cached bytes do not hash to the expected sha256; the others are recorded as verified."""
        total = sum(f.bytes for f in files)
        start = time.monotonic()
        done = 0
        bad = []
        for f in files:
            notify(_progress("verify", f.path, done, total, start))
            digest = await browser.cache_sha256(self.cache, self.url(f.path))
            if digest is None:  # no crypto.subtle (plain http on a non-local host): hash in Python
                digest = await self._sha256_here(f)
            if digest != f.sha256:
                bad.append(f)
            else:
                await browser.cache_mark_verified(self.cache, self.url(f.path), f.sha256)
            done += f.bytes
            notify(_progress("verify", f.path, done, total, start))
        report.verified_bytes += done
        report.verify_seconds += time.monotonic() - start
        return bad

    async def _sha256_here(self, f: ModelFile) -> str:
        cached = (await browser.cache_files(self.cache, {f.path: self.url(f.path)}))[f.path]
        h = hashlib.sha256()
        for at in range(0, cached.size, _HASH_CHUNK):
            h.update(await cached.read(at, min(_HASH_CHUNK, cached.size - at)))
        return h.hexdigest()

    def file(self, path: str) -> CachedFile:
        """A verified file (after `ensure`), e.g. as external data for onnxruntime-web."""
        try:
            return self._files[path]
        except KeyError:
            raise KeyError(f"{path} is not among the files ensured by this store") from None

    async def read(self, path: str) -> bytes:
        if path in self._files:
            return await self._files[path].read()
        return await self._read_unlisted(path)

    async def read_range(self, path: str, start: int, length: int) -> bytes:
        return await self.file(path).read(start, length)

    def copy_sources(self, paths: list[str]) -> dict:
        """The ensured files `paths` as a JS reader of their OPFS copies (made by `start_copies`, maybe on an earlier
        visit) names them: {cacheName, files: {path: {url, sha256, bytes}}} (ort_bridge.mjs copyReader)."""
        return {"cacheName": self.cache, "files": {p: self._copy_spec(p) for p in paths}}

    def _copy_spec(self, path: str) -> dict:
        """How rows_worker.mjs finds an ensured file in the Cache API and names its copy: {url, sha256, bytes}."""
        f = self._wanted[path]
        return {"url": self.url(path), "sha256": f.sha256, "bytes": f.bytes}

    def start_copies(self, paths: list[str]) -> None:
        """Copies the ensured files `paths` into the origin private file system, in the background (`copying`),
        where a worker reads their byte ranges (a message instead of a Blob read from the Cache API per call):
        read_ranges goes there once they are ready. `copies` says whether they are, or why not (no OPFS, too
        little storage): the Cache API serves the ranges meanwhile and in that case."""
        self.copying = asyncio.ensure_future(self._open_copies(list(paths)))

    async def _open_copies(self, paths: list[str]) -> None:
        try:
            reader = await browser.open_row_reader(self.cache, [self._copy_spec(p) for p in paths])
        except OSError as e:
            self.copies = f"none (OPFS: {e})"
            return
        self._copies, self.copies = (reader, {p: i for i, p in enumerate(paths)}), "opfs"

    def _copy_ranges(self, ranges: list[tuple[str, int, int]]) -> list[tuple[int, int, int]] | None:
        """The ranges as (copy index, start, length) where the OPFS copies are open and hold every file of them."""
        if self._copies and all(path in self._copies[1] for path, _, _ in ranges):
            return [(self._copies[1][path], start, length) for path, start, length in ranges]
        return None

    def range_source(self, ranges: list[tuple[str, int, int]]) -> object:
        """The ranges for a JS caller that reads them itself (browser.row_source): from the OPFS copies where they
        are open, else from the Cache API."""
        copies = self._copy_ranges(ranges)
        return browser.row_source([(self.file(path), start, length) for path, start, length in ranges],
                                  self._copies[0] if copies else None, copies)

    async def read_ranges(self, ranges: list[tuple[str, int, int]]) -> list[bytes]:
        data = None
        copies = self._copy_ranges(ranges)
        if copies:
            reader = self._copies[0]
            try:
                data = await reader.read(copies)
            except OSError as e:  # the worker failed: the Cache API still has every file
                reader.close()
                self._copies, self.copies = None, f"none (OPFS: {e})"
        if data is None:
            data = await browser.read_ranges([(self.file(path), start, length) for path, start, length in ranges])
        out, at = [], 0
        for _, _, length in ranges:
            out.append(data[at:at + length])
            at += length
        return out

    async def _read_unlisted(self, path: str) -> bytes:
        """A file outside the verified list (the manifest): network first, the cached copy when offline."""
        url = self.url(path)
        offline = None
        try:
            await browser.cache_download(self.cache, url, lambda n: None)
        except OSError as e:
            offline = e
        cached = (await browser.cache_files(self.cache, {path: url}))[path]
        if cached is None:
            raise offline or ModelFileError(f"{path} is not in the browser cache right after its download", [path])
        return await cached.read()

    async def forget(self) -> int:
        """Deletes every cached file of this model folder; returns how many there were. (Copies in OPFS stay: they
        are named by content, for any folder with the same files.)"""
        if self._copies:
            self._copies[0].close()
            self._copies, self.copies = None, "none"
        urls = [u for u in await browser.cache_keys(self.cache) if u.startswith(self.base_url)]
        for u in urls:
            await browser.cache_delete(self.cache, u)
        self._files.clear()
        return len(urls)


def describe_progress(p: Progress) -> str:
    """One line for the reader: "downloading decoder.000.bin: 1.2 of 3.0 MiB (40%), 3 s left"."""
    mib = 2**20
    left = f", {p.eta:.0f} s left" if p.eta is not None else ""
    verb = {"download": "downloading", "verify": "checking", "refetch": "downloading again"}[p.phase]
    return f"{verb} {p.file}: {p.done / mib:.1f} of {p.total / mib:.1f} MiB ({p.percent:.0f}%){left}"


def _progress(phase: str, path: str, done: int, total: int, start: float) -> Progress:
    seconds = time.monotonic() - start
    eta = (total - done) * seconds / done if done and seconds > 0.5 else None
    return Progress(phase, path, done, total, seconds, eta)
