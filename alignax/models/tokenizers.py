"""Tokenisers: HF `tokenizer.json` through the `tokenizers` library, and a byte tokenizer.

`load_tokenizer(path)` reads a local HF directory (`tokenizer.json`, `tokenizer_config.json`,
optional `chat_template.jinja`); `load_tokenizer("byte")` gives `ByteTokenizer`, for tiny
models and synthetic tasks. Chat templates render with jinja2 the way transformers does
(sandboxed, `trim_blocks`, `lstrip_blocks`). `tokenizers` and `jinja2` are imported lazily.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

Message = dict[str, Any]


def _render_chat(template: str, messages: Sequence[Message], *, add_generation_prompt: bool,
                 special: dict[str, str | None], **kwargs) -> str:
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:
        raise ImportError("chat templates need jinja2: pip install jinja2") from e

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        import datetime

        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    return env.from_string(template).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt,
        **{k: v for k, v in special.items() if v is not None}, **kwargs)


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, plus pad (256), bos (257) and eos (258).

    `vocab_size` is 259; models may use a larger vocabulary (e.g. `tiny_config`'s 320).
    Chat messages render as "<role>: content\\n" lines unless a jinja `chat_template` is given.
    """

    pad_id, bos_id, eos_id = 256, 257, 258
    vocab_size = 259
    special_ids = (256, 257, 258)

    def __init__(self, chat_template: str | None = None):
        self.chat_template = chat_template

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False,
               add_special_tokens: bool = True) -> list[int]:
        """UTF-8 bytes; BOS / EOS only when asked for (`add_special_tokens` adds none: the
        byte tokenizer has no automatic special tokens)."""
        del add_special_tokens
        ids = list(text.encode("utf-8"))
        return [self.bos_id] * add_bos + ids + [self.eos_id] * add_eos

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        names = {self.pad_id: "<pad>", self.bos_id: "<bos>", self.eos_id: "<eos>"}
        out, buf = [], bytearray()
        for i in (int(i) for i in ids):
            if i < 256:
                buf.append(i)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf = bytearray()
            if not skip_special_tokens:
                out.append(names.get(i, f"<{i}>"))
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def apply_chat_template(self, messages: Sequence[Message], *,
                            add_generation_prompt: bool = False, tokenize: bool = False,
                            **kwargs) -> str | list[int]:
        """Formats a conversation; returns text, or ids when `tokenize=True`."""
        if self.chat_template is not None:
            text = _render_chat(self.chat_template, messages,
                                add_generation_prompt=add_generation_prompt,
                                special={"bos_token": "", "eos_token": ""}, **kwargs)
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
            text += "assistant: " if add_generation_prompt else ""
        return self.encode(text) if tokenize else text


def _token_str(value) -> str | None:
    if isinstance(value, dict):  # serialised AddedToken
        return value.get("content")
    return value


class HFTokenizer:
    """A `tokenizers.Tokenizer` with the special tokens and chat template of its directory."""

    def __init__(self, tokenizer, *, bos_token: str | None = None,
                 eos_token: str | None = None, pad_token: str | None = None,
                 chat_template: str | None = None):
        self.tokenizer = tokenizer
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.chat_template = chat_template

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> HFTokenizer:
        """Loads `tokenizer.json` (+ `tokenizer_config.json`, chat template) from `path`."""
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise ImportError("HF tokenizers need the [hf] extra: pip install 'alignax[hf]'") \
                from e
        directory = pathlib.Path(path)
        file = directory / "tokenizer.json"
        if not file.exists():
            raise FileNotFoundError(f"{file} not found (only fast tokenizer.json is supported)")
        tok = Tokenizer.from_file(str(file))
        cfg_file = directory / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
        template = cfg.get("chat_template")
        if isinstance(template, list):  # named templates: use "default"
            named = {t["name"]: t["template"] for t in template}
            template = named.get("default", next(iter(named.values()), None))
        jinja_file = directory / "chat_template.jinja"
        if template is None and jinja_file.exists():
            template = jinja_file.read_text()
        json_file = directory / "chat_template.json"
        if template is None and json_file.exists():
            template = json.loads(json_file.read_text()).get("chat_template")
        return cls(tok, bos_token=_token_str(cfg.get("bos_token")),
                   eos_token=_token_str(cfg.get("eos_token")),
                   pad_token=_token_str(cfg.get("pad_token")), chat_template=template)

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.tokenizer.token_to_id(token)

    @property
    def bos_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_id(self) -> int | None:
        """The pad token's id, falling back to eos (Llama-style tokenizers have no pad)."""
        pad = self._id(self.pad_token)
        return self.eos_id if pad is None else pad

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], *,
                     add_special_tokens: bool = True) -> list[list[int]]:
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [e.ids for e in encs]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode([int(i) for i in ids],
                                     skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: Sequence[Message], *,
                            add_generation_prompt: bool = False, tokenize: bool = False,
                            **kwargs) -> str | list[int]:
        """Renders the directory's chat template (as transformers does).

        Returns the text, or its ids when `tokenize=True` (no extra specials are added: the
        template already contains them).
        """
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template (tokenizer_config.json has no "
                             "chat_template and there is no chat_template.jinja)")
        text = _render_chat(self.chat_template, messages,
                            add_generation_prompt=add_generation_prompt,
                            special={"bos_token": self.bos_token, "eos_token": self.eos_token,
                                     "pad_token": self.pad_token}, **kwargs)
        return self.encode(text, add_special_tokens=False) if tokenize else text


def load_tokenizer(path: str | os.PathLike) -> HFTokenizer | ByteTokenizer:
    """`"byte"` -> `ByteTokenizer()`; a directory -> `HFTokenizer.from_dir(path)`."""
    if str(path) == "byte":
        return ByteTokenizer()
    return HFTokenizer.from_dir(path)
