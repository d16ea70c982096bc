"""What the runtime needs from the checkpoint's tokenizer and generation files besides the vocabulary:
the chat template, the special-token variables it is rendered with, the stop ids and the generation defaults."""

from __future__ import annotations

import json
from pathlib import Path

from webgemma.chat_template import special_token_variables

from .errors import CheckpointError
# Turn end is a stop token for chat even where generation_config.json lists only <eos>.
_TURN_END = "<turn|>"


def _json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None


def chat_template(folder: Path, tok_config: dict) -> str | None:
    """The checkpoint's own template: chat_template.jinja, else tokenizer_config.json's (default entry if named)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    template = tok_config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template}
        return named.get("default") or next(iter(named.values()), None)
    return template


def read_chat_files(folder: Path, tokenizer_json: dict, config: dict) -> dict:
    # transformers 5.24 lets special_tokens_map.json (older checkpoints) override tokenizer_config.json's tokens
    # unless the config lists added_tokens_decoder
    tok_config = _json(folder / "tokenizer_config.json")
    if "added_tokens_decoder" not in tok_config:
        tok_config = {**tok_config, **_json(folder / "special_tokens_map.json")}
    special = special_token_variables(tok_config)
    vocab = tokenizer_json.get("model", {}).get("vocab")
    ids = dict(vocab) if isinstance(vocab, dict) else {}
    ids.update({t["content"]: t["id"] for t in tokenizer_json.get("added_tokens", [])})

    gen = _json(folder / "generation_config.json")
    stop = set()
    for source in (gen.get("eos_token_id"), config.get("eos_token_id"), (config.get("text_config") or {}).get("eos_token_id")):
        stop.update(source if isinstance(source, list) else [source] if source is not None else [])
    for token in (special.get("eos_token"), _TURN_END):
        if token in ids:
            stop.add(ids[token])
    if not stop:
        raise CheckpointError(f"{folder}: no end-of-sequence token found (generation_config.json eos_token_id or tokenizer_config.json eos_token)")
    return {
        "chat_template": chat_template(folder, tok_config),
        "special_tokens": special,
        "chat_control_tokens": tok_config.get("chat_control_tokens"),
        "stop_token_ids": sorted(int(i) for i in stop),
        "generation": {k: gen[k] for k in ("temperature", "top_p", "top_k") if gen.get(k) is not None},
    }
