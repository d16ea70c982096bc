"""Render a checkpoint's own Jinja chat template exactly as transformers 5.24 `apply_chat_template` does.

Same Jinja environment (sandboxed, immutable, trim_blocks + lstrip_blocks, loop controls, a `{% generation %}`
tag), same helpers (`tojson` without HTML escaping, `raise_exception`, `strftime_now`, a safe `dict` and
`namespace`), same template variables (the named special tokens like `bos_token`, `messages`, `tools`,
`documents`, `add_generation_prompt` and any extra keyword such as `enable_thinking`), and the same preparation of
the inputs (None-valued message keys dropped, data copied to plain types, reasoning fields aliased).

`encode(..., sanitize_control_tokens=True)` reproduces transformers' option of that name: control tokens that
appear in the caller's strings (a user typing "<|turn>") are encoded as text, so only the template's own control
tokens become control ids.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.nodes
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .tokenizer import Tokenizer

_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
# Private-use characters that wrap control tokens found in the caller's strings (transformers uses the same two)
_MARK_START, _MARK_END = "\U000f0000", "\U000f0001"


def special_token_variables(tokenizer_config: Mapping) -> dict[str, str]:
    """The special-token variables (`bos_token`, ...) that transformers passes to templates, from tokenizer_config:
    the "*_token" keys, then (winning, as in transformers) the names in `extra_special_tokens` if it is a dict."""
    named = {key: value for key, value in tokenizer_config.items() if key.endswith("_token")}
    extra = tokenizer_config.get("extra_special_tokens")
    if isinstance(extra, Mapping):
        named.update(extra)
    return {key: text for key, value in named.items() if (text := _token_text(value)) is not None}


def _token_text(value):
    # A token is written as a string or as a serialized AddedToken ({"content": ..., "lstrip": ...})
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


class ChatTemplate:
    """A compiled chat template with the tokenizer's special-token variables."""

    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None,
                 chat_control_tokens: Sequence[str] | None = None):
        """source: the Jinja text; special_tokens: e.g. {"bos_token": "<bos>"} (see `special_token_variables`);
        chat_control_tokens: tokenizer_config's explicit list for `sanitize_control_tokens`, if it has one."""
        self.source = source
        self._special_tokens = dict(special_tokens or {})
        self._chat_control_tokens = None if chat_control_tokens is None else frozenset(chat_control_tokens)
        self._template = _environment().from_string(source)

    @classmethod
    def from_tokenizer_config(cls, tokenizer_config: Mapping, source: str | None = None) -> ChatTemplate:
        """From tokenizer_config.json; `source` (e.g. chat_template.jinja) overrides its "chat_template"."""
        source = tokenizer_config.get("chat_template") if source is None else source
        if not isinstance(source, str):
            raise ValueError("tokenizer config has no single chat template (named templates are not supported)")
        return cls(source, special_token_variables(tokenizer_config), tokenizer_config.get("chat_control_tokens"))

    def render(self, messages: Sequence[Mapping], *, tools: Sequence[Mapping] | None = None,
               documents: Sequence[Mapping] | None = None, add_generation_prompt: bool = False, **kwargs) -> str:
        """The prompt text, equal to `apply_chat_template(messages, ..., tokenize=False)`; kwargs become template
        variables (e.g. enable_thinking=True). Messages, tools and documents are plain data (dicts, lists, str...)."""
        messages = _prepare_messages(messages)
        return self._render(messages, tools, documents, add_generation_prompt, kwargs)

    def encode(self, tokenizer: Tokenizer, messages: Sequence[Mapping], *, tools: Sequence[Mapping] | None = None,
               documents: Sequence[Mapping] | None = None, add_generation_prompt: bool = False,
               sanitize_control_tokens: bool = True, **kwargs) -> list[int]:
        """The prompt's token ids, equal to `apply_chat_template(..., tokenize=True, return_dict=False,
        sanitize_control_tokens=...)`. The template writes the special tokens itself (no extra <bos>)."""
        messages = _prepare_messages(messages)
        if not sanitize_control_tokens:
            text = self._render(messages, tools, documents, add_generation_prompt, kwargs)
            return tokenizer.encode(text, add_special_tokens=False)
        control = _alternation(self._control_tokens(tokenizer))
        messages, tools, documents, kwargs = (_mark(x, control) for x in (messages, tools, documents, kwargs))
        text = self._render(messages, tools, documents, add_generation_prompt, kwargs)
        return _encode_marked(tokenizer, text)

    def _render(self, messages, tools, documents, add_generation_prompt, kwargs):
        if tools is not None and not all(isinstance(tool, Mapping) for tool in tools):
            raise TypeError("tools must be JSON schemas (dicts); functions are not converted here")
        if documents is not None and not all(isinstance(document, Mapping) for document in documents):
            raise TypeError("Documents should be a list of dicts with 'title' and 'text' keys!")
        variables = _plain({**self._special_tokens, **kwargs})
        return self._template.render(messages=_alias_reasoning(_plain(messages)), tools=_plain(tools),
                                     documents=_plain(documents), add_generation_prompt=add_generation_prompt,
                                     **variables)

    def _control_tokens(self, tokenizer):
        """The added tokens that count as control tokens: special ones, plus those named by the tokenizer config's
        chat_control_tokens or, without that list, those the template's literal text contains (not whitespace)."""
        listed = self._chat_control_tokens
        if listed is None:
            listed = {token for token in tokenizer.added_tokens if token in self._literal_text and not token.isspace()}
        return [token for token in tokenizer.added_tokens if token in tokenizer.special_tokens or token in listed]

    @functools.cached_property
    def _literal_text(self):
        """The template's literal text and string constants, joined by NULs so a token can't match across two."""
        ast = self._template.environment.parse(self.source)
        literals = {node.data for node in ast.find_all(jinja2.nodes.TemplateData)}
        literals |= {node.value for node in ast.find_all(jinja2.nodes.Const) if isinstance(node.value, str)}
        return "\0".join(literals)


def _prepare_messages(messages):
    if not messages:
        raise ValueError("Cannot apply chat template to an empty conversation. Provide at least one message.")
    for message in messages:
        if not isinstance(message, Mapping):
            raise TypeError(f"Chat messages should be dicts, but got {message!r}.")
    # APIs like OpenAI's send content=None or tool_calls=None; templates expect the key to be absent instead
    return [{key: value for key, value in message.items() if value is not None} for message in messages]


def _plain(value):
    """A copy made of plain JSON-like types, so the sandboxed template only sees their methods."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    if isinstance(value, np.generic):
        return _plain(value.item())
    return f"<{type(value).__name__}>"


def _alias_reasoning(messages):
    # A message's reasoning may come under any of three names; templates read `reasoning_content` or `thinking`
    aliased = []
    for message in messages:
        reasoning = next((message[key] for key in _REASONING_FIELDS if message.get(key) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        aliased.append(message)
    return aliased


def _environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks the model's text for transformers' assistant masks; rendering
    only needs its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes HTML characters, which chat templates don't want
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(format):
    return datetime.now().strftime(format)


class _TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)` without exposing the `dict` type to the template."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """Jinja's namespace, refusing underscore-prefixed attributes (a way into CPython internals)."""

    def __init__(*args, **kwargs):  # Jinja's signature, so that namespace(self=...) still works
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}.")


def _alternation(tokens):
    """A regex matching any of `tokens`, the longest first so a token wins over the tokens it contains."""
    return re.compile("|".join(map(re.escape, sorted(tokens, key=len, reverse=True))) or "(?!)")


def _mark(value, control):
    """Wrap the control tokens in the caller's strings in private-use markers (dict keys are left alone)."""
    if isinstance(value, str):
        value = value.replace(_MARK_START, "").replace(_MARK_END, "")  # no forged markers
        return control.sub(lambda m: _MARK_START + m.group() + _MARK_END, value)
    if isinstance(value, Mapping):
        return {key: _mark(item, control) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mark(item, control) for item in value]
    return value


def _encode_marked(tokenizer, text):
    """Encode a prompt rendered from marked inputs: marked tokens as plain text, the rest normally. A lone marker
    (a template's string method can split a pair) is dropped but still separates the text around it."""
    markers = re.compile(f"{_MARK_START}({_alternation(tokenizer.added_tokens).pattern}){_MARK_END}"
                         f"|[{_MARK_START}{_MARK_END}]")
    pieces = markers.split(text)  # [text, marked token or None, text, ...]
    newline = tokenizer.encode("\n", add_special_tokens=False)
    ids = tokenizer.encode(pieces[0], add_special_tokens=False)
    for i, piece in enumerate(pieces[1:], start=1):
        if not piece:
            continue
        as_text = i % 2 == 1
        piece_ids = _encode_piece(tokenizer, piece, as_text, newline)
        if as_text and tokenizer.token_to_id(piece) in piece_ids:
            raise ValueError(f"Can't sanitize {piece!r}: the tokenizer produces it from plain text")
        ids += piece_ids
    return ids


def _encode_piece(tokenizer, piece, as_text, newline):
    # Encoded after a newline that is then removed, as transformers does (it keeps SentencePiece tokenizers from
    # adding a prefix space at the start of a piece)
    ids = tokenizer.encode("\n" + piece, add_special_tokens=False, parse_special=not as_text)
    if ids[:len(newline)] == newline:
        return ids[len(newline):]
    return tokenizer.encode(piece, add_special_tokens=False, parse_special=not as_text)
