"""Online serving: stream a workload to a running server and measure what its users see.

Two protocols: sgl's native ``POST /generate`` (SSE ``data: {json}`` events, each holding the cumulative
``output_ids`` and ``meta_info``, ending with ``data: [DONE]``) and OpenAI's ``POST /v1/completions`` with
``stream: true``. TTFT is the time to the first event carrying a token, ITL the gap between later token-carrying
events, end-to-end latency the time to the end of the stream; all from the client's clock.
"""

from __future__ import annotations

import dataclasses
import asyncio
import json
import math
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sgl.bench import http_stream
from sgl.bench.report import Summary, format_kv, summarize
from sgl.bench.workloads import BenchRequest

BACKEND_APIS = ("sgl", "openai")


@dataclass
class RequestOutcome:
    """One request as the client saw it; ``itl`` holds one gap per token-carrying event after the first."""

    prompt_len: int
    output_len: int = 0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def arrival_offsets(n: int, request_rate: float, seed: int = 0) -> list[float]:
    """Send times (seconds from the start) of a Poisson process at ``request_rate``; all zero for inf."""
    if request_rate <= 0:
        raise ValueError(f"request_rate must be > 0 (inf for all at once); got {request_rate}")
    if math.isinf(request_rate):
        return [0.0] * n
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(request_rate)
    return out


def _payload(api: str, req: BenchRequest, model: str | None) -> tuple[str, dict[str, Any]]:
    if api == "sgl":
        params = {"max_new_tokens": req.output_len, "ignore_eos": True, "temperature": 0.0}
        return "/generate", {"input_ids": req.input_ids, "sampling_params": params, "stream": True}
    body = {"model": model or "default", "prompt": req.input_ids, "max_tokens": req.output_len,
            "temperature": 0.0, "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}
    return "/v1/completions", body


class _Tokens:
    """How many new tokens each event carries, per protocol; ``total`` is the final completion count."""

    def __init__(self, api: str) -> None:
        self.api = api
        self.seen = 0
        self.usage: int | None = None

    def new_tokens_raw(self, data: bytes) -> int:
        """``new_tokens`` of one event's JSON text; an sgl event's cumulative text is never parsed (see sgl_counts)."""
        fast = sgl_counts(data) if self.api == "sgl" else None
        if fast is None:
            return self.new_tokens(json.loads(data))
        return self._sgl(*fast)

    def new_tokens(self, event: dict[str, Any]) -> int:
        if "error" in event:
            err = event["error"]
            raise RuntimeError(err.get("message", str(err)) if isinstance(err, dict) else str(err))
        if self.api == "sgl":
            return self._sgl(len(event.get("output_ids") or []), event.get("meta_info") or {})
        usage = event.get("usage")
        if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
            self.usage = int(usage["completion_tokens"])
        # NOTE: an OpenAI chunk does not say how many tokens it holds; each chunk with a choice counts as one.
        choices = event.get("choices") or []
        if choices and (choices[0].get("text") or not choices[0].get("finish_reason")):
            self.seen += 1
            return 1
        return 0

    def _sgl(self, count: int, meta: dict[str, Any]) -> int:
        reason = meta.get("finish_reason") or {}
        if isinstance(reason, dict) and reason.get("type") == "abort":
            raise RuntimeError(f"aborted: {reason.get('message')}")
        if not count and "completion_tokens" in meta:
            count = int(meta["completion_tokens"])
        new, self.seen = max(0, count - self.seen), max(self.seen, count)
        return new

    @property
    def total(self) -> int:
        return self.usage if self.usage is not None else self.seen


_DECODER = json.JSONDecoder()


def sgl_counts(data: bytes) -> tuple[int, dict[str, Any]] | None:
    """(len(output_ids), meta_info) of a /generate event, without parsing its text; None when it has not that shape.

    Why: every event repeats the whole text and output ids so far, so ``json.loads`` of it costs the client in
    proportion to the output length, per token; at 1024 output tokens that made the client, not the server, the
    bound. Ids are integers, so their count is the commas between the brackets plus one. NOTE: inside a JSON string
    every quote is escaped, so ``"output_ids":`` and ``"meta_info":`` with bare quotes can only be the keys.
    """
    i = data.find(b'"output_ids":')
    j = data.rfind(b'"meta_info":')
    if i < 0 or j < 0:
        return None
    try:
        lo = data.index(b"[", i)
        if data[i + 13:lo].strip():
            return None  # NOTE: not a list (null): the bracket found belongs to something later
        hi = data.index(b"]", lo)
        meta, _ = _DECODER.raw_decode(data[j + 12:].decode("utf-8").lstrip())
    except ValueError:
        return None
    if not isinstance(meta, dict):
        return None
    ids = data[lo + 1:hi].strip()
    return (ids.count(b",") + 1 if ids else 0), meta


async def sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The payload of each ``data:`` line of an event stream, split on LF as SSE's servers here write it.

    NOTE: not httpx's ``aiter_lines``: it decodes to str and splits on every Unicode line break, so a JSON string
    holding U+2028 or U+0085 (legal unescaped JSON, which the server sends with ensure_ascii=False) cut an event in
    two and failed the request; bytes split on b"\n" cost the client less per token as well.
    """
    tail = b""
    async for chunk in chunks:
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        for line in lines:
            if line.startswith(b"data:"):
                yield line[5:].strip()
    if tail.startswith(b"data:"):
        yield tail[5:].strip()


async def stream_request(
    base_url: str, api: str, req: BenchRequest, model: str | None, headers: dict[str, str] | None = None,
) -> RequestOutcome:
    """Sends one streaming request; never raises, so one failure does not end the run."""
    path, body = _payload(api, req, model)
    out = RequestOutcome(prompt_len=len(req.input_ids))
    tokens = _Tokens(api)
    payload = json.dumps(body).encode()
    start = last = time.perf_counter()
    try:
        async with http_stream.post(base_url.rstrip("/") + path, payload, headers) as resp:
            if resp.status != 200:
                text = (await resp.read()).decode("utf-8", "replace")
                out.error = f"HTTP {resp.status}: {text[:200]}"
                return out
            async for data in sse_data(resp.chunks()):
                if data == b"[DONE]":
                    break
                new = tokens.new_tokens_raw(data)
                now = time.perf_counter()
                if new:
                    if out.ttft == 0.0:
                        out.ttft = now - start
                    else:
                        out.itl.append(now - last)
                    last = now
        out.latency = time.perf_counter() - start
        out.output_len = tokens.total
    except Exception as exc:  # noqa: BLE001 (a broken stream is this request's failure, reported in the results)
        out.error = f"{type(exc).__name__}: {exc}"
    return out


@dataclass(frozen=True)
class ServingResult:
    backend_api: str
    request_rate: float
    max_concurrency: int | None
    completed: int
    failed: int
    input_tokens: int
    output_tokens: int
    duration_s: float
    ttft: Summary
    itl: Summary
    tpot: Summary
    e2e: Summary
    errors: tuple[str, ...] = ()
    accept_length: float | None = None  # speculative decoding's mean acceptance length, from the server's info

    @property
    def request_throughput(self) -> float:
        return self.completed / self.duration_s if self.duration_s else 0.0

    @property
    def input_throughput(self) -> float:
        return self.input_tokens / self.duration_s if self.duration_s else 0.0

    @property
    def output_throughput(self) -> float:
        return self.output_tokens / self.duration_s if self.duration_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "backend_api": self.backend_api,
            "request_rate": "inf" if math.isinf(self.request_rate) else self.request_rate,
            "max_concurrency": self.max_concurrency, "completed": self.completed, "failed": self.failed,
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens, "duration_s": self.duration_s,
            "request_throughput": self.request_throughput, "input_throughput": self.input_throughput,
            "output_throughput": self.output_throughput,
            "total_throughput": self.input_throughput + self.output_throughput, "errors": list(self.errors),
            "accept_length": self.accept_length,
        }
        for name in ("ttft", "itl", "tpot", "e2e"):
            for k, v in getattr(self, name).as_ms().items():
                d[f"{name}_{k}"] = v
        return d

    def format(self) -> str:
        rows: list[tuple[str, Any]] = [
            ("Backend API:", self.backend_api),
            ("Request rate (req/s):", "inf" if math.isinf(self.request_rate) else self.request_rate),
            ("Max concurrency:", self.max_concurrency if self.max_concurrency else "unlimited"),
            ("Successful requests:", self.completed), ("Failed requests:", self.failed),
            ("Duration (s):", self.duration_s), ("Input tokens:", self.input_tokens),
            ("Output tokens:", self.output_tokens),
            ("Request throughput (req/s):", self.request_throughput),
            ("Input token throughput (tok/s):", self.input_throughput),
            ("Output token throughput (tok/s):", self.output_throughput),
        ]
        if self.accept_length is not None:
            rows.append(("Accept length:", self.accept_length))
        for title, s in (("TTFT", self.ttft), ("ITL", self.itl), ("TPOT", self.tpot), ("E2E latency", self.e2e)):
            ms = s.as_ms()
            rows += [(f"Mean {title} (ms):", ms["mean_ms"]), (f"Median {title} (ms):", ms["median_ms"]),
                     (f"P99 {title} (ms):", ms["p99_ms"])]
        return format_kv("Serving Benchmark Result", rows)


def summarize_outcomes(
    outcomes: Sequence[RequestOutcome], duration: float, api: str, request_rate: float, max_concurrency: int | None
) -> ServingResult:
    good = [o for o in outcomes if o.ok]
    tpot = [(o.latency - o.ttft) / (o.output_len - 1) for o in good if o.output_len > 1]
    return ServingResult(
        backend_api=api, request_rate=request_rate, max_concurrency=max_concurrency,
        completed=len(good), failed=len(outcomes) - len(good),
        input_tokens=sum(o.prompt_len for o in good), output_tokens=sum(o.output_len for o in good),
        duration_s=duration,
        ttft=summarize([o.ttft for o in good]), itl=summarize([g for o in good for g in o.itl]),
        tpot=summarize(tpot), e2e=summarize([o.latency for o in good]),
        errors=tuple(sorted({o.error for o in outcomes if o.error is not None}))[:10],
    )


async def _run(
    base_url: str, api: str, reqs: Sequence[BenchRequest], request_rate: float, max_concurrency: int | None,
    model: str | None, seed: int, progress: bool, api_key: str | None,
) -> tuple[list[RequestOutcome], float]:
    from tqdm import tqdm

    gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    offsets = arrival_offsets(len(reqs), request_rate, seed)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    with tqdm(total=len(reqs), desc="requests", unit="req", disable=not progress) as bar:

        async def one(r: BenchRequest) -> RequestOutcome:
            if gate is None:
                res = await stream_request(base_url, api, r, model, headers)
            else:
                async with gate:
                    res = await stream_request(base_url, api, r, model, headers)
            bar.update(1)
            return res

        start = time.perf_counter()
        tasks = []
        for r, at in zip(reqs, offsets):
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(r)))
        outcomes = list(await asyncio.gather(*tasks))
        return outcomes, time.perf_counter() - start


def run_serving(
    base_url: str, reqs: Sequence[BenchRequest], api: str = "sgl", request_rate: float = math.inf,
    max_concurrency: int | None = None, model: str | None = None, seed: int = 0, progress: bool = True,
    api_key: str | None = None,
) -> ServingResult:
    if api not in BACKEND_APIS:
        raise ValueError(f"backend_api must be one of {', '.join(BACKEND_APIS)}; got {api!r}")
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1; got {max_concurrency}")
    outcomes, duration = asyncio.run(
        _run(base_url, api, reqs, request_rate, max_concurrency, model, seed, progress, api_key)
    )
    result = summarize_outcomes(outcomes, duration, api, request_rate, max_concurrency)
    return dataclasses.replace(result, accept_length=server_accept_length(base_url, api_key))


def server_accept_length(base_url: str, api_key: str | None = None, timeout: float = 10.0) -> float | None:
    """Speculative decoding's mean acceptance length, where SGLang's bench_serving reads it
    (``/get_server_info`` -> ``internal_states[0].avg_spec_accept_length``); None without speculation."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    try:
        resp = httpx.get(base_url.rstrip("/") + "/get_server_info", timeout=timeout, trust_env=False, headers=headers)
        if resp.status_code != 200:
            return None
        states = resp.json().get("internal_states") or [{}]
        value = states[0].get("avg_spec_accept_length")
        return float(value) if value else None
    except (httpx.HTTPError, ValueError, TypeError, AttributeError, IndexError):
        return None


def discover_model(base_url: str, api_key: str | None = None, timeout: float = 10.0) -> str | None:
    """The first model id the server lists at /v1/models, for OpenAI requests that must name one."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    try:
        resp = httpx.get(base_url.rstrip("/") + "/v1/models", timeout=timeout, trust_env=False, headers=headers)
        data = resp.json().get("data") or []
        return str(data[0]["id"]) if resp.status_code == 200 and data else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
        return None
