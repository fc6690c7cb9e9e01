"""sgl's (and SGLang's) native API: /generate, /tokenize and /get_model_info."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from sgl.lang.backend.base import Backend, ChoiceScore, GenResult, SamplingArgs
from sgl.lang.backend.transport import DEFAULT_TIMEOUT_S, HttpClient
from sgl.lang.chat import ChatTemplate
from sgl.lang.errors import BackendError


class RuntimeEndpoint(Backend):
    """A running `sgl serve` (or SGLang server) at `base_url`; `chat_template` overrides the server's."""

    def __init__(
        self, base_url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT_S, *,
        chat_template: str | None = None, special_tokens: dict[str, str] | None = None,
    ) -> None:
        self.http = HttpClient(base_url, api_key, timeout)
        self._override = ChatTemplate(chat_template, dict(special_tokens or {})) if chat_template else None
        self._info: dict[str, Any] | None = None
        self._lock = threading.Lock()

    @property
    def model_info(self) -> dict[str, Any]:
        """GET /get_model_info, asked once."""
        with self._lock:
            if self._info is None:
                self._info = dict(self.http.get("/get_model_info"))
            return self._info

    def chat_template(self) -> ChatTemplate | None:
        return self._override or template_from_info(self.model_info)

    def generate(self, prompt: str, args: SamplingArgs) -> GenResult:
        out = self.http.post("/generate", {"text": prompt, "sampling_params": args.native()})
        return GenResult(out["text"], dict(out.get("meta_info") or {}))

    def generate_stream(self, prompt: str, args: SamplingArgs) -> Iterator[GenResult]:
        body = {"text": prompt, "sampling_params": args.native(), "stream": True}
        last = GenResult("", {}, finished=False)
        for event in self.http.stream("/generate", body):
            meta = dict(event.get("meta_info") or {})
            last = GenResult(event.get("text", ""), meta, finished=meta.get("finish_reason") is not None)
            yield last
        if not last.finished:
            yield GenResult(last.text, last.meta_info, finished=True)

    def score(self, prompt: str, choices: Sequence[str]) -> list[ChoiceScore]:
        # NOTE: token ids, not text, go to /generate so the scored span is exactly the tokens after the shared
        # prefix; a choice whose first token merges with the prompt's last is scored from the merge point.
        tokenized = self.http.post("/tokenize", {"prompt": [prompt, *(prompt + c for c in choices)]})["tokens"]
        prompt_ids, full = tokenized[0], tokenized[1:]
        starts = [min(_common_prefix(prompt_ids, ids), len(ids) - 1) for ids in full]
        out = self.http.post("/generate", {
            "input_ids": full, "sampling_params": {"max_new_tokens": 0}, "return_logprob": True,
            "logprob_start_len": starts})
        return [score_of(c, r["meta_info"].get("input_token_logprobs")) for c, r in zip(choices, out)]

    def cache_prefix(self, prompt: str) -> None:
        if prompt:
            self.http.post("/generate", {"text": prompt, "sampling_params": {"max_new_tokens": 0}})

    def close(self) -> None:
        self.http.close()


def template_from_info(info: dict[str, Any]) -> ChatTemplate | None:
    """The chat template and special tokens from a /get_model_info answer."""
    source = info.get("chat_template")
    if not isinstance(source, str) or not source:
        return None
    special = dict(info.get("special_tokens") or {})
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        if isinstance(info.get(key), str):
            special.setdefault(key, info[key])
    return ChatTemplate(source, {k: v for k, v in special.items() if isinstance(v, str)})


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def score_of(choice: str, logprobs: Any) -> ChoiceScore:
    """A ChoiceScore from [[logprob | null, token_id, text | null], ...] entries (nulls have no prefix to score)."""
    if not isinstance(logprobs, list):
        raise BackendError("the server returned no input_token_logprobs; select needs prompt logprobs")
    values = [float(e[0]) for e in logprobs if e and e[0] is not None]
    if not values:
        raise BackendError(f"the server scored no tokens of the choice {choice!r}")
    return ChoiceScore(choice, sum(values), sum(values) / len(values), len(values))
