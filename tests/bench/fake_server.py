"""A stdlib SSE server that speaks sgl's /generate and OpenAI's /v1/completions streams with known timings.

Tests use it so the serving client is checked against exact event schedules, independent of the real server.
Run as a script (``python fake_server.py --port N``) it serves until terminated, for the launcher's test.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL_ID = "fake-model"


class FakeConfig:
    """Event schedule: the first event after ``ttft`` s, each later one ``itl`` s apart.

    ``bursts`` gives the number of new tokens per sgl event (its sum is the output length), so a test can check
    that tokens are counted from output_ids, not from events.
    """

    def __init__(self, ttft: float = 0.15, itl: float = 0.05, bursts: tuple[int, ...] = (1, 2, 1),
                 fail_every: int = 0, text: str = "x") -> None:
        self.ttft = ttft
        self.itl = itl
        self.bursts = bursts
        self.fail_every = fail_every  # every k-th request gets HTTP 400 (0: never)
        self.text = text  # each token's text in sgl events, sent unescaped as the real server sends it
        self.bodies: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()


def _handler(cfg: FakeConfig) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, code: int, obj: object) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._json(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": MODEL_ID, "object": "model"}]})
            else:
                self._json(404, {"error": "not found"})

        def _event(self, obj: object) -> None:
            data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
            chunk = f"data: {data}\n\n".encode()
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.flush()

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with cfg.lock:
                cfg.bodies.append(body)
                index = len(cfg.bodies)
                cfg.in_flight += 1
                cfg.max_in_flight = max(cfg.max_in_flight, cfg.in_flight)
            try:
                if cfg.fail_every and index % cfg.fail_every == 0:
                    self._json(400, {"error": {"message": "bad request from the fake"}})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                if self.path == "/generate":
                    self._stream_sgl(body)
                else:
                    self._stream_openai()
                self._event("[DONE]")
                self.wfile.write(b"0\r\n\r\n")
            finally:
                with cfg.lock:
                    cfg.in_flight -= 1

        def _stream_sgl(self, body: dict[str, Any]) -> None:
            prompt = len(body["input_ids"])
            ids: list[int] = []
            time.sleep(cfg.ttft)
            for k, n in enumerate(cfg.bursts):
                if k:
                    time.sleep(cfg.itl)
                ids += list(range(len(ids), len(ids) + n))
                done = k == len(cfg.bursts) - 1
                meta = {"prompt_tokens": prompt, "completion_tokens": len(ids), "cached_tokens": 0,
                        "finish_reason": {"type": "length"} if done else None}
                self._event({"text": cfg.text * len(ids), "output_ids": ids, "meta_info": meta})

        def _stream_openai(self) -> None:
            total = sum(cfg.bursts)
            time.sleep(cfg.ttft)
            for k in range(total):
                if k:
                    time.sleep(cfg.itl)
                self._event({"object": "text_completion", "choices": [{"index": 0, "text": "x",
                                                                      "finish_reason": None}]})
            self._event({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]})
            self._event({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": total}})

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # NOTE: clients closing keep-alive connections are normal here, not errors worth a traceback


def start(cfg: FakeConfig, port: int = 0) -> ThreadingHTTPServer:
    server = _Server(("127.0.0.1", port), _handler(cfg))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    srv = _Server(("127.0.0.1", parser.parse_args().port), _handler(FakeConfig()))
    srv.serve_forever()
