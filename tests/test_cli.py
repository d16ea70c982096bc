"""The `webgemma` command as a user runs it: export, generate, site checks and the demo's check mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from webgemma_site.build import SiteError, build_site, check_site

ROOT = Path(__file__).resolve().parents[1]


def webgemma(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "webgemma.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "model"
    done = webgemma("export", str(ROOT / "models" / "tiny"), str(out), "--quant", "int4")
    assert done.returncode == 0, done.stderr
    return out


def test_generate_json_is_reproducible_and_streams_the_same_text(model):
    args = ("generate", str(model), "It is a truth universally acknowledged", "--max-new-tokens", "24", "--seed", "7")
    first = json.loads(webgemma(*args, "--json").stdout)
    assert json.loads(webgemma(*args, "--json").stdout) == first  # seeded sampling
    assert set(first) == {"prompt_ids", "output_ids", "text"} and len(first["output_ids"]) <= 24
    streamed = webgemma(*args)
    assert streamed.stdout.rstrip("\n") == first["text"].rstrip("\n") and "tokens/s" in streamed.stderr


def test_raw_prompt_starts_with_bos_and_chat_prompt_with_the_template(model):
    raw = json.loads(webgemma("generate", str(model), "Emma", "--raw", "--temperature", "0", "--max-new-tokens", "3", "--json").stdout)
    chat = json.loads(webgemma("generate", str(model), "Emma", "--temperature", "0", "--max-new-tokens", "3", "--json").stdout)
    assert raw["prompt_ids"][0] == 2 and len(raw["prompt_ids"]) < len(chat["prompt_ids"])
    assert chat["prompt_ids"][:2] == [2, 5]  # <bos><|turn> of the built-in tokenizer


@pytest.mark.parametrize("args, message", [
    (("export", "/nonexistent", "/tmp/x"), "is not a folder"),
    (("generate", "/nonexistent", "hi"), "is not a webgemma model folder"),
    (("export", str(ROOT / "models" / "tiny"), "OUT", "--quant", "int3"), "--quant 'int3' is not supported"),
])
def test_errors_are_one_clear_line_and_exit_2(tmp_path, args, message):
    done = webgemma(*[a.replace("OUT", str(tmp_path / "out")) for a in args])
    assert done.returncode == 2
    assert done.stderr.startswith("webgemma: error:") and message in done.stderr and "Traceback" not in done.stderr


def test_check_site_names_what_is_wrong(model, tmp_path):
    site = build_site(model, tmp_path / "site")
    check_site(site)
    shard = json.loads((model / "manifest.json").read_text())["decoder"]["external_data"][0]["path"]
    data = bytearray((site / "model" / shard).read_bytes())
    data[100] ^= 1
    (site / "model" / shard).write_bytes(bytes(data))
    (site / "pyodide" / "pyodide.asm.wasm").unlink()
    with pytest.raises(SiteError) as error:
        check_site(site)
    assert f"model/{shard} fails its sha256" in str(error.value) and "missing pyodide/pyodide.asm.wasm" in str(error.value)


def test_demo_check_builds_the_built_in_site(tmp_path):
    """What CI runs for the README's first command (which would otherwise serve forever)."""
    done = webgemma("demo", "--check", "--out", str(tmp_path / "static"), cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "built and checked" in done.stdout
    manifest = json.loads((tmp_path / "static" / "model" / "manifest.json").read_text())
    assert manifest["source"]["checkpoint"] == "tiny" and manifest["quantization"]["weights"] == "int4"
