"""Tokenizer artifact load time and encode speed on a synthetic Gemma-sized vocabulary (262144 tokens).

    python bench/tokenizer_speed.py            # CPython: builds the artifact, then times `measure`
    python bench/tokenizer_speed.py --browser  # the same `measure` in Pyodide, in headless Chromium (Playwright)

`measure(artifact, text)` is the timed part and needs only the runtime (numpy + webgemma.tokenizer), so the same
function runs in Pyodide on an artifact and text built here (`write_inputs`).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

GEMMA_VOCAB_SIZE = 262144


def synthetic_tokenizer_json(vocab_size: int = GEMMA_VOCAB_SIZE, seed: int = 0) -> dict:
    """A tokenizer.json shaped like Gemma's: specials, 256 byte tokens, ~10k single characters, then words of a
    made-up syllabic language, with and without a leading "▁". Each word gets a merge for every cut into two
    vocabulary pieces (as SentencePiece conversions list), about two per word, so merges outnumber pieces as in
    Gemma (≈ 514k merges for 262144 tokens)."""
    rng = random.Random(seed)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<|turn>", "<turn|>"]
    vocab = specials + [f"<0x{b:02X}>" for b in range(256)] + ["▁", "\n", "\t"]
    vocab += [chr(c) for r in ((0x21, 0x7F), (0xC0, 0x250), (0x391, 0x3CA), (0x410, 0x450), (0x4E00, 0x6F00))
              for c in range(*r) if chr(c) not in vocab]
    index = {t: i for i, t in enumerate(vocab)}
    syllables = [c + v for c in "bcdfghjklmnprstvwxyz" for v in "aeiouy"]
    merges = []

    def add(word):
        cuts = [c for c in range(1, len(word)) if word[:c] in index and word[c:] in index]
        if word in index or not cuts:
            return
        index[word] = len(vocab)
        vocab.append(word)
        merges.extend([word[:c], word[c:]] for c in cuts[:4])

    first_word = len(vocab)
    for word in syllables + [a + b for a in syllables for b in syllables]:
        add(word)
        add("▁" + word)
    while len(vocab) < vocab_size:  # extend a random word by a syllable
        add(vocab[rng.randrange(first_word, len(vocab))] + rng.choice(syllables))
    added = [{"id": index[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for t in specials]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious",
                          "invert": False},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [], "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": index, "merges": merges},
    }


def synthetic_text(spec: dict, n_pieces: int = 20000, seed: int = 1) -> str:
    """Text made of random vocabulary pieces, so that long merges apply."""
    rng = random.Random(seed)
    pieces = [t for t in spec["model"]["vocab"] if not t.startswith("<")]
    return "".join(rng.choice(pieces) for _ in range(n_pieces)).replace("▁", " ")


def measure(artifact: bytes, text: str, repeats: int = 3) -> dict:
    """Best-of-`repeats` load time and encode throughput; runtime-only, so it also runs in Pyodide."""
    from webgemma.tokenizer import Tokenizer

    load_s = encode_s = warm_s = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tokenizer = Tokenizer.from_bytes(artifact)
        load_s = min(load_s, time.perf_counter() - start)
        start = time.perf_counter()
        ids = tokenizer.encode(text)
        encode_s = min(encode_s, time.perf_counter() - start)
        start = time.perf_counter()
        tokenizer.encode(text)  # again: words come from the tokenizer's cache, as when a chat is re-encoded
        warm_s = min(warm_s, time.perf_counter() - start)
    return {"vocab_size": tokenizer.vocab_size, "artifact_bytes": len(artifact), "load_s": load_s,
            "encode_chars": len(text), "encode_tokens": len(ids), "encode_s": encode_s,
            "tokens_per_s": len(ids) / encode_s, "warm_tokens_per_s": len(ids) / warm_s}


def write_inputs(folder) -> None:
    """Write tokenizer.bin and text.txt for running `measure` elsewhere (e.g. in Pyodide)."""
    from webgemma_export.tokenizer_artifact import convert_tokenizer_spec

    spec = synthetic_tokenizer_json()
    Path(folder, "tokenizer.bin").write_bytes(convert_tokenizer_spec(spec))
    Path(folder, "text.txt").write_text(synthetic_text(spec), encoding="utf-8")


def measure_in_browser(artifact: bytes, text: str) -> dict:
    """`measure` run by Pyodide in a page of a freshly built site (Debian's Chromium, offline)."""
    import base64
    import inspect
    import json
    import tempfile
    import threading

    from playwright.sync_api import sync_playwright

    from webgemma_site.build import build_site
    from webgemma_site.serve import make_server

    site = build_site(None, Path(tempfile.mkdtemp()) / "site", model_url="model/")
    server = make_server(site, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    code = (f"import base64, time\n{inspect.getsource(measure)}\n"
            f"measure(base64.b64decode({base64.b64encode(artifact).decode()!r}), {text!r})")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/?selftest=1")
        page.wait_for_function("window.webgemmaReady", timeout=120_000)
        result = json.loads(page.evaluate("code => window.webgemmaExec(code)", code))
        browser.close()
    server.shutdown()
    return result


def main() -> None:
    import sys

    from webgemma_export.tokenizer_artifact import convert_tokenizer_spec

    spec = synthetic_tokenizer_json()
    artifact = convert_tokenizer_spec(spec)
    where = "Pyodide in Chromium" if "--browser" in sys.argv else "CPython"
    print(f"synthetic vocabulary: {len(spec['model']['vocab'])} tokens, {len(spec['model']['merges'])} merges; {where}")
    run = measure_in_browser if "--browser" in sys.argv else measure
    result = run(artifact, synthetic_text(spec))
    print(f"artifact {result['artifact_bytes'] / 2**20:.1f} MiB, load {result['load_s'] * 1e3:.0f} ms")
    print(f"encode {result['encode_chars']} chars -> {result['encode_tokens']} tokens in "
          f"{result['encode_s'] * 1e3:.0f} ms: {result['tokens_per_s']:,.0f} tokens/s "
          f"(same text again: {result['warm_tokens_per_s']:,.0f} tokens/s)")


if __name__ == "__main__":
    main()
