"""A real `sgl serve --speculative-algorithm EAGLE3` on 127.0.0.1 with a draft head written here, driven by the
official openai client and httpx: the tokens and text of decoding without speculation, drafts verified, the pool
whole afterwards."""

from __future__ import annotations

from pathlib import Path

import openai

from tests.api.conftest import pool_is_whole, start_server
from tests.core.engine_utils import make_engine
from tests.speculative.eagle_drafts import write_eagle3_draft

PROMPT = "Once upon a time, in a land far away, there lived a"
PARAMS = {"max_new_tokens": 24, "temperature": 0.0, "ignore_eos": True}


def test_eagle3_server_answers_as_plain_decoding(demo_model_dir: Path, tmp_path: Path) -> None:
    draft = write_eagle3_draft(tmp_path / "eagle3", demo_model_dir)
    plain = make_engine(demo_model_dir)
    try:
        want = plain.generate(PROMPT, dict(PARAMS))
    finally:
        plain.shutdown()
    spec = start_server("--model-path", str(demo_model_dir), "--speculative-algorithm", "EAGLE3",
                        "--speculative-draft-model-path", str(draft), "--speculative-num-steps", "3",
                        "--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "4")
    try:
        client = openai.OpenAI(base_url=f"{spec.url}/v1", api_key="none")
        out = client.completions.create(model="default", prompt=PROMPT, max_tokens=24, temperature=0,
                                        extra_body={"ignore_eos": True})
        assert out.choices[0].text == want["text"]
        with spec.client() as http:
            got = http.post("/generate", json={"text": PROMPT, "sampling_params": PARAMS}).json()
            assert got["output_ids"] == want["output_ids"]
            assert 1 <= got["meta_info"]["spec_verify_ct"] <= 23
            info = pool_is_whole(http)
    finally:
        spec.stop()
    assert info["speculative_algorithm"] == "EAGLE3" and int(info["spec_drafted_tokens"]) > 0  # type: ignore[call-overload]
