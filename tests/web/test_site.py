"""The site builder, the vendored runtime and the server, without a browser."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import urllib.request
import zipfile
from pathlib import Path

import pytest
from webgemma_site import vendor
from webgemma_site.build import build_site
from webgemma_site.serve import _parse_range, make_server

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    model = tmp_path_factory.mktemp("model")
    (model / "manifest.json").write_text("{}")
    (model / "sub").mkdir()
    (model / "sub" / "shard-00.bin").write_bytes(bytes(range(256)) * 64)
    return build_site(model, tmp_path_factory.mktemp("site") / "static")


def test_package_json_pins_what_vendor_expects():
    deps = json.loads((REPO / "package.json").read_text())["dependencies"]
    assert deps == {"pyodide": vendor.PYODIDE_VERSION, "@pyscript/core": vendor.PYSCRIPT_VERSION,
                    "onnxruntime-web": vendor.ORT_WEB_VERSION}
    lock = json.loads((REPO / "package-lock.json").read_text())["packages"]
    assert lock["node_modules/pyodide"]["version"] == vendor.PYODIDE_VERSION


def test_site_layout_and_config(built):
    config = json.loads((built / "pyscript.json").read_text())
    assert config == {"interpreter": "./pyodide/pyodide.mjs", "packages": ["numpy", "jinja2", "webgemma"],
                      "packages_cache": "passthrough"}
    site = json.loads((built / "site.json").read_text())
    assert site["model_url"] == "model/" and site["ort_url"] == "vendor/ort/"
    assert (built / "model" / "sub" / "shard-00.bin").stat().st_size == 16384
    for f in ("index.html", "main.py", "ort_bridge.mjs", "store_bridge.mjs", "pyodide/pyodide.asm.wasm",
              "vendor/pyscript/core.js", "vendor/ort/ort.webgpu.min.mjs",
              "vendor/ort/ort-wasm-simd-threaded.asyncify.wasm", "vendor/ort/ort.wasm.min.mjs",
              "vendor/ort/ort-wasm-simd-threaded.wasm", "vendor/ort/start.onnx"):
        assert (built / f).is_file(), f
    assert not list(built.rglob("*.map")) and not (built / "vendor/ort/ort.all.min.mjs").exists()


def test_trimmed_lock_lists_only_the_runtime_packages(built):
    lock = json.loads((built / "pyodide" / "pyodide-lock.json").read_text())
    official = json.loads((REPO / "node_modules" / "pyodide" / "pyodide-lock.json").read_text())
    assert lock["info"] == official["info"]
    assert sorted(lock["packages"]) == ["jinja2", "markupsafe", "numpy", "webgemma"]
    assert lock["packages"]["numpy"] == official["packages"]["numpy"]
    for entry in lock["packages"].values():
        wheel = built / "pyodide" / entry["file_name"]
        assert hashlib.sha256(wheel.read_bytes()).hexdigest() == entry["sha256"], entry["name"]
        if entry["name"] != "numpy":
            assert entry["file_name"].endswith("-py3-none-any.whl")


def test_pure_wheels_hold_python_only(built):
    for pattern, top in (("markupsafe-*.whl", "markupsafe/"), ("jinja2-*.whl", "jinja2/"),
                         ("webgemma-*.whl", "webgemma/")):
        [wheel] = (built / "pyodide").glob(pattern)
        names = zipfile.ZipFile(wheel).namelist()
        code = [n for n in names if ".dist-info/" not in n]
        assert code and all(n.startswith(top) and n.endswith((".py", ".typed", ".json")) for n in code), names
    markupsafe = zipfile.ZipFile(next((built / "pyodide").glob("markupsafe-*.whl"))).namelist()
    assert "markupsafe/_native.py" in markupsafe and not any("_speedups" in n for n in markupsafe)
    runtime = zipfile.ZipFile(next((built / "pyodide").glob("webgemma-*.whl"))).namelist()
    assert "webgemma/browser.py" in runtime and "webgemma/backends/ort_web.py" in runtime


def test_wheels_are_reproducible(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, _ = vendor.runtime_wheel(tmp_path / "a")
    b, _ = vendor.runtime_wheel(tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()


def test_numpy_wheel_refused_unless_pyodide_lock_agrees(tmp_path):
    lock = json.loads((REPO / "node_modules" / "pyodide" / "pyodide-lock.json").read_text())
    fake = tmp_path / vendor.NUMPY_CARRIER
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr(vendor.NUMPY_CARRIER_MEMBER, b"not the official wheel")
    with pytest.raises(vendor.VendorError, match="refusing"):
        vendor.numpy_wheel(lock, fake)
    with pytest.raises(vendor.VendorError, match="pip download"):
        vendor.numpy_wheel(lock, tmp_path / "absent.whl")


def test_cdn_mode_ships_no_pyodide(tmp_path):
    out = build_site(None, tmp_path / "site", pyodide="cdn", model_url="https://models.example/gemma/")
    config = json.loads((out / "pyscript.json").read_text())
    assert config["interpreter"] == f"{vendor.PYODIDE_CDN}pyodide.mjs"
    assert config["packages"][:2] == ["numpy", "jinja2"] and config["packages"][2].startswith("./pyodide/webgemma-")
    assert not (out / "pyodide" / "pyodide.asm.wasm").exists() and not (out / "model").exists()
    assert json.loads((out / "site.json").read_text())["model_url"] == "https://models.example/gemma/"


def test_build_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_site(None, tmp_path, model_url="m/")
    assert (tmp_path / "keep.txt").read_text() == "mine"


# ---------------------------------------------------------------- server


@pytest.fixture(scope="module")
def server_url(built):
    server = make_server(built, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def get(url: str, headers: dict | None = None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@pytest.mark.parametrize("path, mime", [("pyodide/pyodide.asm.wasm", "application/wasm"),
                                        ("vendor/ort/ort.webgpu.min.mjs", "text/javascript"),
                                        ("index.html", "text/html"), ("site.json", "application/json")])
def test_server_mime_types_and_isolation_headers(server_url, path, mime):
    status, headers, _ = get(server_url + path)
    assert status == 200 and headers["Content-Type"].split(";")[0] == mime
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    assert headers["Cache-Control"] == "no-cache" and headers["Accept-Ranges"] == "bytes"


def test_server_byte_ranges(server_url):
    url = server_url + "model/sub/shard-00.bin"
    data = bytes(range(256)) * 64
    status, headers, body = get(url, {"Range": "bytes=100-355"})
    assert (status, body, headers["Content-Range"]) == (206, data[100:356], "bytes 100-355/16384")
    assert get(url, {"Range": "bytes=16380-"})[2] == data[16380:]
    assert get(url, {"Range": "bytes=-5"})[2] == data[-5:]
    status, headers, _ = get(url, {"Range": "bytes=20000-"})
    assert status == 416 and headers["Content-Range"] == "bytes */16384"
    assert get(url, {"Range": "bytes=0-1,5-6"})[0] == 200  # multi-range: the whole file, as RFC 9110 allows


def test_parse_range():
    assert _parse_range("bytes=0-0", 10) == (0, 0)
    assert _parse_range("bytes=5-100", 10) == (5, 9)
    assert _parse_range("bytes=9-3", 10) == ()
    assert _parse_range("bytes=-0", 10) == ()
    assert _parse_range("items=1-2", 10) is None


def test_the_graph_capture_workaround_is_applied_or_the_build_says_why(built):
    bundle = (built / vendor.ORT_DIR / vendor.ORT_BUNDLES["webgpu"][0]).read_bytes()
    # both unregistration loops of run() now skip graph-captured sessions
    assert len(re.findall(rb'"gpu-buffer"&&!\w+&&\w+\.webgpuUnregisterBuffer', bundle)) == 2
    with pytest.raises(vendor.VendorError, match="graph-capture workaround no longer applies"):
        vendor.keep_captured_buffers(bundle.replace(b"webgpuUnregisterBuffer", b"webgpuForgetBuffer"))
