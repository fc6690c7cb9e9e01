"""A Hugging Face tokenizer directory read with `tokenizers` alone, giving the same ids as transformers."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken

from sgl.core.tokenizer.chat_template import render_chat_template, select_chat_template
from sgl.core.tokenizer.length_bound import max_token_bytes

# NOTE: `tokenizers` holds the GIL through `encode` but releases it in `encode_batch`; a text this long is encoded
# through the latter, so a server's event loop keeps answering while another thread tokenizes it.
GIL_FREE_CHARS = 16384

# The named special tokens transformers exposes to chat templates (its `special_tokens_map`).
_NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _token_content(value: Any) -> str | None:
    """A special token given as a string or as an AddedToken dict ({"content": ...})."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    raise ValueError(f"cannot read a special token from {value!r}")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict):
        return data
    raise ValueError(f"{path} does not hold a JSON object")


def _read_chat_templates(directory: Path, config: Mapping[str, Any]) -> dict[str, str]:
    """Named templates; separate template files win over tokenizer_config.json, as in transformers."""
    templates: dict[str, str] = {}
    raw = config.get("chat_template")
    legacy = _read_json(directory / "chat_template.json").get("chat_template")
    raw = legacy if legacy is not None else raw
    if isinstance(raw, str):
        templates["default"] = raw
    elif isinstance(raw, list):
        for entry in raw:
            templates[str(entry["name"])] = str(entry["template"])
    elif raw is not None:
        raise ValueError(f"chat_template must be a string or a list of {{name, template}}, got {type(raw).__name__}")
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        templates["default"] = jinja_file.read_text(encoding="utf-8")
    extra_dir = directory / "additional_chat_templates"
    if extra_dir.is_dir():
        for file in sorted(extra_dir.glob("*.jinja")):
            templates[file.stem] = file.read_text(encoding="utf-8")
    return templates


def choose_chat_template(templates: Mapping[str, str], choice: str) -> dict[str, str]:
    """``--chat-template``: a template file replaces the model's templates; a name makes that one of them the only
    template, so it serves every request (with tools or without), as SGLang's flag does."""
    path = Path(choice).expanduser()
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            data = json.loads(text)
            if not isinstance(data, dict) or not isinstance(data.get("chat_template"), str):
                raise ValueError(f"{path} is not a Hugging Face chat_template.json (an object with a 'chat_template' "
                                 "string); SGLang's conversation-template JSON is not supported: give a Jinja file")
            text = data["chat_template"]
        return {"default": text}
    if choice in templates:
        return {"default": templates[choice]}
    names = ", ".join(sorted(templates)) or "none"
    raise ValueError(f"chat template {choice!r} is neither a file nor one of the model's templates ({names}); "
                     "SGLang's built-in template names are not supported: give a .jinja file")


def _no_fast_tokenizer(directory: Path) -> str:
    slow = [n for n in ("tokenizer.model", "vocab.json", "merges.txt", "vocab.txt") if (directory / n).is_file()]
    fix = ("convert it once with transformers (AutoTokenizer.from_pretrained(path).save_pretrained(path) writes "
           "tokenizer.json) or give --tokenizer-path a directory that has tokenizer.json")
    if slow:
        return f"{directory} has a slow tokenizer only ({', '.join(slow)}, no tokenizer.json); sgl reads fast " \
               f"tokenizers only: {fix}"
    return f"{directory} has no tokenizer.json, the fast tokenizer that sgl reads: {fix}"


class Tokenizer:
    """Encode/decode, special-token ids and chat templates for one model."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        special_tokens: Mapping[str, str | None] | None = None,
        extra_special_tokens: Sequence[str] = (),
        chat_templates: Mapping[str, str] | None = None,
        add_bos_token: bool | None = None,
        add_eos_token: bool | None = None,
    ) -> None:
        self._backend = backend
        self._special = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        self._chat_templates = dict(chat_templates or {})
        # NOTE: None means "whatever tokenizer.json's post-processor does"; True adds the token if it did not.
        self._add_bos = add_bos_token
        self._add_eos = add_eos_token
        self.bos_token_id = self._id_of(self._special.get("bos_token"))
        self.eos_token_id = self._id_of(self._special.get("eos_token"))
        self.pad_token_id = self._id_of(self._special.get("pad_token"))
        self.unk_token_id = self._id_of(self._special.get("unk_token"))
        named = {self._id_of(t) for t in [*self._special.values(), *extra_special_tokens]}
        flagged = {i for i, tok in backend.get_added_tokens_decoder().items() if tok.special}
        self.all_special_ids: set[int] = {i for i in named | flagged if i is not None}
        self._max_token_bytes: int | None | bool = False  # False: not computed yet

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str], chat_template: str | None = None) -> Tokenizer:
        """Loads tokenizer.json plus tokenizer_config.json (and special_tokens_map.json, chat template files).

        ``chat_template``: a template file or one of the model's template names (see choose_chat_template)."""
        directory = Path(path)
        if not directory.is_dir():
            raise FileNotFoundError(f"tokenizer directory {str(directory)!r} does not exist")
        tokenizer_file = directory / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(_no_fast_tokenizer(directory))
        backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        config = _read_json(directory / "tokenizer_config.json")
        special_map = _read_json(directory / "special_tokens_map.json")
        _add_declared_tokens(backend, config.get("added_tokens_decoder") or {})
        special = {
            name: _token_content(config[name] if config.get(name) is not None else special_map.get(name))
            for name in _NAMED_SPECIAL
        }
        extra: list[str] = []
        for key in ("additional_special_tokens", "extra_special_tokens"):
            for source in (special_map, config):
                value = source.get(key) or []
                values = value.values() if isinstance(value, Mapping) else value
                extra.extend(t for t in (_token_content(v) for v in values) if t is not None)
        templates = _read_chat_templates(directory, config)
        return cls(
            backend,
            special_tokens=special,
            extra_special_tokens=extra,
            chat_templates=templates if chat_template is None else choose_chat_template(templates, chat_template),
            add_bos_token=config.get("add_bos_token"),
            add_eos_token=config.get("add_eos_token"),
        )

    # --- ids and tokens ---

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self._backend.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        """Base vocabulary plus added tokens (transformers' `len(tokenizer)`)."""
        return int(self._backend.get_vocab_size(with_added_tokens=True))

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return dict(self._special)

    @property
    def max_token_bytes(self) -> int | None:
        """The most input bytes one token stands for (a prompt of B bytes has >= B / this tokens); None: no bound."""
        if self._max_token_bytes is False:
            self._max_token_bytes = max_token_bytes(self._backend)
        return self._max_token_bytes  # type: ignore[return-value]

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(token_id)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str | None]:
        return [self._backend.id_to_token(int(i)) for i in ids]

    # --- text ---

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if len(text) >= GIL_FREE_CHARS:
            ids: list[int] = self._backend.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids
        else:
            ids = self._backend.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens:
            bos, eos = self.bos_token_id, self.eos_token_id
            if self._add_bos and bos is not None and (not ids or ids[0] != bos):
                ids.insert(0, bos)
            if self._add_eos and eos is not None and (not ids or ids[-1] != eos):
                ids.append(eos)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        # NOTE: no clean_up_tokenization_spaces: it rewrites text (" ." -> ".") and would break the
        # prefix property the incremental detokenizer relies on.
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # --- chat ---

    @property
    def chat_template(self) -> str | None:
        """The default template's text (None when the model has none or only named ones)."""
        return self._chat_templates.get("default")

    @property
    def chat_templates(self) -> dict[str, str]:
        return dict(self._chat_templates)

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        *,
        chat_template: str | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        **template_kwargs: Any,
    ) -> str | list[int]:
        """Renders messages with the model's template (or `chat_template`, a name or template text).

        Tokenized output does not add special tokens again: the template already writes them.
        """
        template = select_chat_template(self._chat_templates, chat_template, has_tools=tools is not None)
        text = render_chat_template(
            template,
            messages,
            add_generation_prompt=add_generation_prompt,
            special_tokens=self._special,
            tools=tools,
            documents=documents,
            **template_kwargs,
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text


def _add_declared_tokens(backend: tokenizers.Tokenizer, declared: Mapping[str, Any]) -> None:
    """Adds tokens that tokenizer_config.json declares but tokenizer.json lacks (transformers does the same)."""
    missing: list[tuple[int, AddedToken]] = []
    for key, spec in declared.items():
        content = _token_content(spec)
        if content is None or backend.token_to_id(content) is not None:
            continue
        opts = spec if isinstance(spec, Mapping) else {}
        token = AddedToken(
            content,
            single_word=bool(opts.get("single_word", False)),
            lstrip=bool(opts.get("lstrip", False)),
            rstrip=bool(opts.get("rstrip", False)),
            normalized=bool(opts.get("normalized", not opts.get("special", False))),
            special=bool(opts.get("special", False)),
        )
        missing.append((int(key), token))
    # NOTE: ids are assigned in order of addition, so add in declared-id order to land on the declared ids.
    for _, token in sorted(missing, key=lambda item: item[0]):
        if token.special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])
