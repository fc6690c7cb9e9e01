"""A deterministic stand-in for `sgl serve` (native routes and /v1/completions) on a free port, stdlib only.

Tokens are characters (id = ord). Generation answers `REPLY` cut at the first stop string and at max_new_tokens.
A character's prompt logprob is -0.1 for a vowel and -1.0 otherwise, so select's pick is known in advance.
cached_tokens is the longest prefix shared with any earlier prompt. A prompt containing FAIL is refused (400).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPLY = "lorem ipsum dolor\nsit amet"
CHATML = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def char_logprob(c: str) -> float:
    return -0.1 if c in "aeiou" else -1.0


class FakeServer:
    def __init__(self, chat_template: str | None = CHATML, stream_chunk: int = 3) -> None:
        self.chat_template = chat_template
        self.stream_chunk = stream_chunk
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._seen: list[str] = []
        self._lock = threading.Lock()

    # behaviour ------------------------------------------------------------------------------------------------
    def cached(self, prompt: str) -> int:
        with self._lock:
            best = 0
            for old in self._seen:
                n = 0
                while n < min(len(old), len(prompt)) and old[n] == prompt[n]:
                    n += 1
                best = max(best, n)
            self._seen.append(prompt)
            return best

    def reply(self, prompt: str, sp: dict[str, Any]) -> tuple[str, str]:
        text, reason = REPLY, "length"
        for stop in sp.get("stop") or []:
            if stop in text:
                text, reason = text[: text.index(stop)], "stop"
        limit = int(sp.get("max_new_tokens", 128))
        if len(text) > limit:
            text, reason = text[:limit], "length"
        elif reason != "stop":
            reason = "stop"
        return text, reason

    def one(self, prompt: str, body: dict[str, Any], start: int | None) -> dict[str, Any]:
        sp = body.get("sampling_params") or {}
        text, reason = self.reply(prompt, sp)
        meta: dict[str, Any] = {"id": "r", "finish_reason": {"type": reason}, "prompt_tokens": len(prompt),
                                "completion_tokens": len(text), "cached_tokens": self.cached(prompt)}
        if body.get("return_logprob"):
            begin = start or 0
            meta["input_token_logprobs"] = [
                [None if i == 0 else char_logprob(prompt[i]), ord(prompt[i]), None] for i in range(begin, len(prompt))]
            meta["output_token_logprobs"] = [[char_logprob(c), ord(c), None] for c in text]
        return {"text": text, "output_ids": [ord(c) for c in text], "meta_info": meta}


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": {"message": message, "type": "invalid_request_error"}})

    def do_GET(self) -> None:
        fake: FakeServer = self.server.fake
        if self.path == "/get_model_info":
            self._json(200, {"model_path": "fake", "chat_template": fake.chat_template, "bos_token": "<s>"})
        elif self.path == "/health":
            self._json(200, {})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        fake: FakeServer = self.server.fake
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        fake.requests.append((self.path, body))
        if self.path == "/tokenize":
            prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
            tokens = [[ord(c) for c in p] for p in prompts]
            self._json(200, {"tokens": tokens if isinstance(body["prompt"], list) else tokens[0]})
        elif self.path == "/generate":
            self._generate(fake, body)
        elif self.path == "/v1/completions":
            self._completions(fake, body)
        else:
            self._error(404, f"no route {self.path}")

    def _generate(self, fake: FakeServer, body: dict[str, Any]) -> None:
        raw = body.get("text") if body.get("text") is not None else body.get("input_ids")
        batched = isinstance(raw, list) and (not raw or not isinstance(raw[0], int))
        prompts = [p if isinstance(p, str) else "".join(map(chr, p)) for p in (raw if batched else [raw])]
        if any("FAIL" in p for p in prompts):
            return self._error(400, "the prompt contains FAIL")
        regex = (body.get("sampling_params") or {}).get("regex")
        if regex == "NO_GRAMMAR":
            return self._error(400, "grammar is unavailable: install sgl[grammar]")
        starts = body.get("logprob_start_len")
        starts = starts if isinstance(starts, list) else [starts] * len(prompts)
        if body.get("stream"):
            return self._stream(fake, prompts[0], body)
        outs = [fake.one(p, body, s) for p, s in zip(prompts, starts)]
        self._json(200, outs if batched else outs[0])

    def _stream(self, fake: FakeServer, prompt: str, body: dict[str, Any]) -> None:
        final = fake.one(prompt, body, None)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        text = final["text"]
        for end in range(fake.stream_chunk, len(text) + fake.stream_chunk, fake.stream_chunk):
            meta = {**final["meta_info"], "finish_reason": None if end < len(text) else final["meta_info"]["finish_reason"]}
            event = {**final, "text": text[:end], "meta_info": meta}
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()
            if "BREAK" in prompt:
                self.wfile.write(b'data: {"error": {"message": "the scheduler died"}}\n\n')
                break
        self.wfile.write(b"data: [DONE]\n\n")

    def _completions(self, fake: FakeServer, body: dict[str, Any]) -> None:
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        choices = []
        for i, p in enumerate(prompts):
            text, reason = fake.reply(p, {"max_new_tokens": body.get("max_tokens", 16), "stop": body.get("stop")})
            choice: dict[str, Any] = {"index": i, "text": (p if body.get("echo") else "") + text,
                                      "finish_reason": reason, "logprobs": None}
            if body.get("echo") and body.get("logprobs") is not None and fake.chat_template != "NO_ECHO":
                choice["logprobs"] = {"tokens": list(p), "text_offset": list(range(len(p))),
                                      "token_logprobs": [None] + [char_logprob(c) for c in p[1:]]}
            choices.append(choice)
        usage = {"prompt_tokens": len(prompts[0]), "completion_tokens": 1, "total_tokens": 1}
        self._json(200, {"id": "cmpl", "object": "text_completion", "choices": choices, "usage": usage})


@contextmanager
def serve_fake(fake: FakeServer | None = None) -> Iterator[tuple[str, FakeServer]]:
    """Yields (base url, fake) for a server on a free port, shut down afterwards."""
    fake = fake or FakeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.fake = fake  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", fake
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
