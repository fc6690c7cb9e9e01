"""The event loop never blocks on a huge prompt: /health keeps answering while megabytes are tokenized, and a prompt
whose byte length alone proves it too long for the context is refused before it is tokenized at all."""

from __future__ import annotations

import random
import string
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.api.conftest import ServerProc, start_server

BIG_BODY = str(32 * 1024 * 1024)
HEALTH_BUDGET_S = 0.5  # "well under a second", with room for a loaded 2-core machine


@pytest.fixture(scope="module")
def big_server() -> Iterator[ServerProc]:
    srv = start_server("--max-request-bytes", BIG_BODY)
    try:
        yield srv
    finally:
        srv.stop()


def _words(size: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocab = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(5000)]
    parts: list[str] = []
    total = 0
    while total < size:
        w = rng.choice(vocab)
        parts.append(w)
        total += len(w) + 1
    return " ".join(parts)[:size]


class HealthProbe:
    """Polls /health on its own thread and records how long each answer took."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as c:
            while not self._stop.is_set():
                t0 = time.monotonic()
                assert c.get(f"{self.url}/health").status_code == 200
                self.latencies.append(time.monotonic() - t0)
                time.sleep(0.02)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_health_answers_while_megabytes_are_tokenized(big_server: ServerProc) -> None:
    prompt = _words(3 * 1024 * 1024)
    with HealthProbe(big_server.url) as probe, httpx.Client(timeout=300) as c:
        time.sleep(0.2)
        t0 = time.monotonic()
        resp = c.post(f"{big_server.url}/tokenize", json={"prompt": prompt})
        took = time.monotonic() - t0
        time.sleep(0.1)
    assert resp.status_code == 200
    assert resp.json()["count"] > 1_000_000
    assert took > 1.0, "the prompt was tokenized too fast for this test to mean anything"
    assert len(probe.latencies) > 10
    # NOTE: a blocked loop answers after the whole tokenisation (``took``); on a loaded machine one answer may still
    # wait for a time slice, so the bound is the budget or a third of ``took``, whichever is larger
    assert max(probe.latencies) < max(HEALTH_BUDGET_S, took / 3), (took, sorted(probe.latencies)[-5:])


@pytest.mark.parametrize("route, body", [
    ("/v1/completions", lambda p: {"model": "m", "prompt": p, "max_tokens": 4}),
    ("/generate", lambda p: {"text": p, "sampling_params": {"max_new_tokens": 4}}),
    ("/v1/chat/completions", lambda p: {"model": "m", "messages": [{"role": "user", "content": p}]}),
])
def test_a_10mb_prompt_is_refused_at_once_naming_the_context_length(big_server: ServerProc, route: str,
                                                                   body: object) -> None:
    payload = body(_words(10 * 1024 * 1024, seed=1))  # type: ignore[operator]
    with HealthProbe(big_server.url) as probe, httpx.Client(timeout=60) as c:
        t0 = time.monotonic()
        resp = c.post(f"{big_server.url}{route}", json=payload)
        took = time.monotonic() - t0
    assert resp.status_code == 400, resp.text[:300]
    message = resp.json()["error"]["message"]
    assert "at least" in message and "context length is 1024" in message, message
    assert took < 2.0  # uploading and parsing 10 MB; tokenizing it would take ~15 s
    assert not probe.latencies or max(probe.latencies) < HEALTH_BUDGET_S


def test_a_prompt_within_the_byte_bound_but_over_the_context_is_refused_after_tokenizing(
    big_server: ServerProc,
) -> None:
    with httpx.Client(timeout=60) as c:
        resp = c.post(f"{big_server.url}/v1/completions", json={"prompt": _words(8000, seed=2), "max_tokens": 1})
    assert resp.status_code == 400
    message = resp.json()["error"]["message"]
    assert "at least" not in message and "context length is 1024" in message, message
