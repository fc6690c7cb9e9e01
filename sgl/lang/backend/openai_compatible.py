"""Any OpenAI-compatible server through /v1/completions, with the program's prompt rendered client-side."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from sgl.lang.backend.base import DEFAULT_MAX_TOKENS, Backend, ChoiceScore, GenResult, SamplingArgs
from sgl.lang.backend.runtime_endpoint import template_from_info
from sgl.lang.backend.transport import DEFAULT_TIMEOUT_S, HttpClient
from sgl.lang.chat import ChatTemplate
from sgl.lang.errors import BackendError

# The OpenAI names of the fields that differ from the frontend's; the rest go as sglang/vLLM-style extras.
_EXTRA_FIELDS = ("top_k", "min_p", "ignore_eos", "regex", "json_schema", "stop_token_ids")


class OpenAICompatible(Backend):
    """`base_url` is the API root ending in /v1 (e.g. http://host:port/v1); `model` names the served model.

    Roles need the model's chat template: pass `chat_template`, or it is read from the server's /get_model_info
    where the server has one (sgl and SGLang do).
    """

    def __init__(
        self, base_url: str, model: str, api_key: str | None = None, *, chat_template: str | None = None,
        special_tokens: dict[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.model = model
        self.http = HttpClient(base_url, api_key, timeout)
        self._root = HttpClient(_root_of(base_url), api_key, timeout)
        self._template: ChatTemplate | None = (
            ChatTemplate(chat_template, dict(special_tokens or {})) if chat_template else None)
        self._asked = chat_template is not None
        self._lock = threading.Lock()

    def chat_template(self) -> ChatTemplate | None:
        with self._lock:
            if not self._asked:
                self._asked = True
                try:
                    self._template = template_from_info(self._root.get("/get_model_info"))
                except BackendError:
                    self._template = None  # NOTE: the interpreter raises the clear error when a role is used
            return self._template

    def _body(self, prompt: str, args: SamplingArgs) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "prompt": prompt,
                                "max_tokens": DEFAULT_MAX_TOKENS if args.max_tokens is None else args.max_tokens}
        if args.stop:
            body["stop"] = list(args.stop)
        for key in ("temperature", "top_p", "frequency_penalty", "presence_penalty", *_EXTRA_FIELDS):
            value = getattr(args, key)
            if value is not None and value != ():
                body[key] = list(value) if isinstance(value, tuple) else value
        return body

    def generate(self, prompt: str, args: SamplingArgs) -> GenResult:
        out = self.http.post("/completions", self._body(prompt, args))
        choice = out["choices"][0]
        return GenResult(choice.get("text") or "", _meta(out, choice))

    def generate_stream(self, prompt: str, args: SamplingArgs) -> Iterator[GenResult]:
        text, meta = "", {}
        for event in self.http.stream("/completions", {**self._body(prompt, args), "stream": True}):
            for choice in event.get("choices") or []:
                text += choice.get("text") or ""
                meta = _meta(event, choice)
                yield GenResult(text, meta, finished=choice.get("finish_reason") is not None)
        yield GenResult(text, meta, finished=True)

    def score(self, prompt: str, choices: Sequence[str]) -> list[ChoiceScore]:
        """Scores through echo + logprobs: the echoed tokens of prompt + choice past those it shares with prompt.

        NOTE: tokens, not character offsets, mark the split: an echo may drop special tokens from the text.
        """
        texts = [prompt + c for c in choices] + ([prompt] if prompt else [])
        out = self.http.post("/completions", {
            "model": self.model, "prompt": texts, "max_tokens": 0, "echo": True, "logprobs": 0,
            "temperature": 0.0})
        by_index = {int(c.get("index", i)): c for i, c in enumerate(out.get("choices") or [])}
        echoed = [self._echoed(by_index.get(i)) for i in range(len(texts))]
        prompt_tokens = echoed[-1][0] if prompt else []
        scores = []
        for choice, (tokens, logprobs) in zip(choices, echoed):
            shared = _common_prefix(prompt_tokens, tokens)
            values = [float(v) for v in logprobs[min(shared, len(tokens) - 1):] if v is not None]
            if not values:
                raise BackendError(f"the server scored no tokens of the choice {choice!r}")
            scores.append(ChoiceScore(choice, sum(values), sum(values) / len(values), len(values)))
        return scores

    def _echoed(self, choice: dict[str, Any] | None) -> tuple[list[str], list[float | None]]:
        lp = (choice or {}).get("logprobs")
        if not isinstance(lp, dict) or not lp.get("token_logprobs") or not lp.get("tokens"):
            raise BackendError(
                f"{self.http.base_url} returned no prompt logprobs for echo=true; select needs a server that "
                "gives them (sgl, SGLang and vLLM do; OpenAI's own API does not)")
        return list(lp["tokens"]), list(lp["token_logprobs"])

    def close(self) -> None:
        self.http.close()
        self._root.close()


def _common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _root_of(base_url: str) -> str:
    url = base_url.rstrip("/")
    return url.removesuffix("/v1")


def _meta(resp: dict[str, Any], choice: dict[str, Any]) -> dict[str, Any]:
    usage = resp.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return {"id": resp.get("id"), "finish_reason": choice.get("finish_reason"),
            "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
            "cached_tokens": details.get("cached_tokens")}
