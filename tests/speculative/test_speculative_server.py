"""A real `sgl serve --speculative-algorithm NGRAM` on 127.0.0.1, driven by the official openai client: the tokens of
a server without speculation, meta_info.spec_verify_ct on /generate, and the acceptance where SGLang's clients read
it (/get_server_info, top level and internal_states)."""

from __future__ import annotations

import openai

from sgl.bench.serving import run_serving
from sgl.bench.workloads import WorkloadSpec
from tests.api.conftest import pool_is_whole, start_server

PROMPT = "1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2,"


def _completion_tokens(url: str) -> list[str]:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
    out = client.completions.create(model="default", prompt=PROMPT, max_tokens=24, temperature=0, logprobs=0)
    return list(out.choices[0].logprobs.tokens)  # type: ignore[union-attr]


def test_ngram_server_answers_as_a_plain_server_and_reports_acceptance() -> None:
    plain = start_server()
    try:
        want = _completion_tokens(plain.url)
    finally:
        plain.stop()
    spec = start_server("--speculative-algorithm", "NGRAM", "--speculative-num-draft-tokens", "6")
    try:
        assert _completion_tokens(spec.url) == want
        with spec.client() as client:
            body = {"text": PROMPT, "sampling_params": {"max_new_tokens": 16, "temperature": 0, "ignore_eos": True}}
            meta = client.post("/generate", json=body).json()["meta_info"]
            assert 1 <= meta["spec_verify_ct"] <= 15
            info = pool_is_whole(client)
            metrics = client.get("/metrics").text
        bench = run_serving(spec.url, WorkloadSpec(num_prompts=2, input_len=8, output_len=4).build(200),
                            progress=False)
    finally:
        spec.stop()
    assert info["speculative_algorithm"] == "NGRAM" and info["spec_verify_steps"] > 0
    internal = info["internal_states"][0]  # type: ignore[index]
    assert internal["avg_spec_accept_length"] >= 1.0 and "spec_accept_rate" in internal
    gauge = [line for line in metrics.splitlines() if line.startswith("sgl_spec_accept_length ")]
    assert gauge and float(gauge[0].split()[1]) >= 1.0
    assert bench.completed == 2 and bench.accept_length is not None and bench.accept_length >= 1.0
    assert "Accept length:" in bench.format()
