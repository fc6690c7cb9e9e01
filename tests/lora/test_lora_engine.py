"""LoRA through sgl.Engine on the CPU: greedy tokens and logits equal transformers + peft on the same adapter, a
batch mixing adapters and the base model gives each request what it gets alone, and adapters load and unload while
serving without leaking pool memory."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

import sgl
from tests.core.engine_utils import make_engine, settled_info
from tests.lora.peft_adapters import load_peft_model, make_peft_adapter, oracle_greedy

GREEDY: dict[str, Any] = {"temperature": 0.0, "max_new_tokens": 8, "ignore_eos": True}
PROMPTS = ["The quick brown fox", "Once upon a time, in a land far away,", "def fibonacci(n):"]


@pytest.fixture(scope="module")
def engine(demo_model_dir: Path, adapters: dict[str, str]) -> Any:
    eng = make_engine(demo_model_dir, lora_paths=[f"{n}={p}" for n, p in adapters.items()], max_loras_per_batch=2,
                      max_lora_rank=16)
    yield eng
    eng.shutdown()


@pytest.mark.parametrize("name", ["r4", "r16", "mlp8"])
def test_greedy_tokens_and_logprobs_equal_peft(
    engine: sgl.Engine, demo_model_dir: Path, adapters: dict[str, str], name: str
) -> None:
    oracle = load_peft_model(demo_model_dir, adapters[name])
    prompt = engine.tokenizer.encode(PROMPTS[1])
    want, first_logits = oracle_greedy(oracle, prompt, GREEDY["max_new_tokens"])
    out = engine.generate(input_ids=prompt, sampling_params=GREEDY, lora_path=name, return_logprob=True)
    assert out["output_ids"] == want
    lp = out["meta_info"]["output_token_logprobs"][0][0]
    assert math.isclose(lp, float(torch.log_softmax(first_logits, -1)[want[0]]), abs_tol=1e-4)
    base = engine.generate(input_ids=prompt, sampling_params=GREEDY)
    assert base["output_ids"] != want, "the adapter must change the output for this test to mean anything"


def test_mixed_batch_gives_each_request_what_it_gets_alone(engine: sgl.Engine) -> None:
    """Three adapters and the base model in one batch, with --max-loras-per-batch 2 (so they queue for slots)."""
    loras = ["r4", None, "r16", "mlp8", "r4", None]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(loras))]
    alone = [engine.generate(p, GREEDY, lora_path=lora)["output_ids"] for p, lora in zip(prompts, loras)]
    together = [o["output_ids"] for o in engine.generate(prompts, GREEDY, lora_path=loras)]
    assert together == alone
    assert alone[0] != alone[1] and alone[2] != alone[1]


def test_radix_cache_never_shares_kv_between_adapters(engine: sgl.Engine) -> None:
    prompt = "A long shared system prompt that every request repeats word for word, then a question:"
    engine.flush_cache()
    base = engine.generate(prompt, GREEDY)
    assert base["meta_info"]["cached_tokens"] == 0
    first = engine.generate(prompt, GREEDY, lora_path="r4")
    assert first["meta_info"]["cached_tokens"] == 0, "the adapter matched the base model's KV"
    other = engine.generate(prompt, GREEDY, lora_path="r16")
    assert other["meta_info"]["cached_tokens"] == 0, "an adapter matched another adapter's KV"
    again = engine.generate(prompt, GREEDY, lora_path="r4")
    assert again["meta_info"]["cached_tokens"] > 0, "an adapter's own prefix must still be shared"
    assert again["output_ids"] == first["output_ids"]
    assert engine.generate(prompt, GREEDY)["output_ids"] == base["output_ids"]


def test_unknown_adapter_is_refused_naming_the_loaded_ones(engine: sgl.Engine) -> None:
    out = engine.generate(PROMPTS[0], GREEDY, lora_path="nope")
    reason = out["meta_info"]["finish_reason"]
    assert reason["type"] == "abort" and "'nope'" in reason["message"] and "r4" in reason["message"]


def test_load_serve_unload_reload_leaves_the_pools_as_they_were(
    engine: sgl.Engine, demo_model_dir: Path, tmp_path: Path
) -> None:
    path = make_peft_adapter(demo_model_dir, tmp_path / "late", rank=8, seed=9)
    before = settled_info(engine)
    engine.load_lora_adapter("late", path)
    assert "late" in [a["name"] for a in engine.list_lora_adapters()]
    first = engine.generate(PROMPTS[2], GREEDY, lora_path="late")["output_ids"]
    want, _ = oracle_greedy(load_peft_model(demo_model_dir, path), engine.tokenizer.encode(PROMPTS[2]), 8)
    assert first == want
    engine.unload_lora_adapter("late")
    assert "late" not in [a["name"] for a in engine.list_lora_adapters()]
    gone = engine.generate(PROMPTS[2], GREEDY, lora_path="late")
    assert gone["meta_info"]["finish_reason"]["type"] == "abort"
    engine.load_lora_adapter("late", path)
    assert engine.generate(PROMPTS[2], GREEDY, lora_path="late")["output_ids"] == first
    engine.unload_lora_adapter("late")
    after = settled_info(engine)
    assert after["lora_adapters"] == before["lora_adapters"]
    assert after["lora_resident_slots"] <= 2
    assert after["request_owned_tokens"] == before["request_owned_tokens"] == 0
    assert after["locked_tokens"] == 0


def test_bad_adapters_are_refused_at_load_and_serving_goes_on(
    engine: sgl.Engine, demo_model_dir: Path, tmp_path: Path
) -> None:
    big = make_peft_adapter(demo_model_dir, tmp_path / "big", rank=32, seed=4)
    with pytest.raises(ValueError, match="rank 32 exceeds --max-lora-rank 16"):
        engine.load_lora_adapter("big", big)
    with pytest.raises(ValueError, match="already loaded"):
        engine.load_lora_adapter("r4", big)
    with pytest.raises(ValueError, match="no adapter_config.json"):
        engine.load_lora_adapter("missing", str(tmp_path / "nowhere"))
    # an adapter made for a model of another width: its shapes do not fit
    other = tmp_path / "wide-model"
    from tests.core.tiny_models import make_tiny_hf_model

    make_tiny_hf_model("llama", other, hidden_size=32, intermediate_size=64)
    wrong = make_peft_adapter(other, tmp_path / "wrong", rank=4, seed=5)
    with pytest.raises(ValueError, match="the base model needs"):
        engine.load_lora_adapter("wrong", wrong)
    with pytest.raises(ValueError, match="no LoRA adapter named 'ghost'"):
        engine.unload_lora_adapter("ghost")
    assert engine.generate(PROMPTS[0], GREEDY, lora_path="r4")["meta_info"]["finish_reason"]["type"] == "length"


def test_requests_on_an_adapter_being_unloaded_finish_first(
    demo_model_dir: Path, adapters: dict[str, str]
) -> None:
    eng = make_engine(demo_model_dir, lora_paths=[f"r4={adapters['r4']}"])
    try:
        params = dict(GREEDY, max_new_tokens=24)
        want = eng.generate(PROMPTS[0], params, lora_path="r4")["output_ids"]
        stream = eng.generate(PROMPTS[0], params, lora_path="r4", stream=True)
        next(stream)  # the request is running on r4
        eng.unload_lora_adapter("r4")
        chunks = list(stream)
        assert chunks[-1]["output_ids"] == want
        assert eng.generate(PROMPTS[0], GREEDY, lora_path="r4")["meta_info"]["finish_reason"]["type"] == "abort"
        info = settled_info(eng)
        assert info["lora_adapters"] == 0 and info["lora_resident_slots"] == 0
    finally:
        eng.shutdown()


@pytest.mark.parametrize("options", [
    {"disable_overlap_schedule": True},
    {"force_overlap_schedule": True},
    {"num_continuous_decode_steps": 4},
    {"disable_radix_cache": True, "chunked_prefill_size": 4},
], ids=["plain", "overlap", "decode-runs", "no-radix-chunked"])
def test_scheduling_modes_give_the_same_adapter_tokens(
    demo_model_dir: Path, adapters: dict[str, str], options: dict[str, Any]
) -> None:
    """Overlap, K-step decode runs and chunked prefill without the radix cache all see each batch's own adapters."""
    loras = ["r4", None, "mlp8", "r4"]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(loras))]
    want = [oracle_greedy(load_peft_model(demo_model_dir, adapters[x] if x else None), ids, 8)[0]
            for x, ids in zip(loras, _encode(demo_model_dir, prompts))]
    eng = make_engine(demo_model_dir, lora_paths=[f"{n}={adapters[n]}" for n in ("r4", "mlp8")], **options)
    try:
        got = [o["output_ids"] for o in eng.generate(prompts, GREEDY, lora_path=loras)]
    finally:
        eng.shutdown()
    assert got == want


def _encode(model_dir: Path, prompts: list[str]) -> list[list[int]]:
    from sgl.core.tokenizer.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(model_dir)
    return [tok.encode(p) for p in prompts]


def test_adapters_outside_the_model_or_the_target_modules_are_refused(
    demo_model_dir: Path, adapters: dict[str, str], tmp_path: Path
) -> None:
    """--lora-target-modules alone turns LoRA on; an adapter on another projection, or on a layer the model does not
    have, is refused at load; one within them serves as peft does."""
    import shutil

    from safetensors.torch import load_file, save_file

    qv = make_peft_adapter(demo_model_dir, tmp_path / "qv", rank=4, seed=6, target_modules=("q_proj", "v_proj"))
    ghost = tmp_path / "ghost"
    shutil.copytree(qv, ghost)
    tensors = load_file(str(ghost / "adapter_model.safetensors"))
    save_file({k.replace("layers.0.", "layers.99."): v for k, v in tensors.items()},
              str(ghost / "adapter_model.safetensors"))
    eng = make_engine(demo_model_dir, lora_target_modules=["q_proj", "v_proj"], max_lora_rank=16)
    try:
        with pytest.raises(ValueError, match=r"layers\.99\.self_attn\.[qv]_proj' does not exist in the base model"):
            eng.load_lora_adapter("ghost", str(ghost))
        with pytest.raises(ValueError, match="which --lora-target-modules"):
            eng.load_lora_adapter("r4", adapters["r4"])
        eng.load_lora_adapter("qv", qv)
        prompt = eng.tokenizer.encode(PROMPTS[0])
        want, _ = oracle_greedy(load_peft_model(demo_model_dir, qv), prompt, 8)
        assert eng.generate(input_ids=prompt, sampling_params=GREEDY, lora_path="qv")["output_ids"] == want
        assert [a["name"] for a in eng.list_lora_adapters()] == ["qv"]
    finally:
        eng.shutdown()
