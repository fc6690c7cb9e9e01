"""NEXTN: DeepSeek-V3's multi-token-prediction layer, read from the target's own checkpoint, drafts as an EAGLE head.

The checkpoint is made here: a tiny V3 (transformers' own) whose MTP layer ``model.layers.3`` is a fourth decoder
layer of a second tiny V3 (so its attention and experts are in the real layout) plus the MTP parts (``enorm``,
``hnorm``, ``eh_proj``, ``shared_head``), seeded. The draft is random, so exactness cannot lean on acceptance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.core.engine_utils import make_engine, settled_info
from tests.models.tiny_moe import make_tiny_moe_model

pytest.importorskip("transformers")

PARAMS = {"temperature": 0.0, "max_new_tokens": 12, "ignore_eos": True}


def write_v3_with_mtp(root: Path) -> Path:
    target = Path(make_tiny_moe_model("deepseek_v3", root / "target", seed=7, num_hidden_layers=3))
    donor = load_file(str(Path(make_tiny_moe_model("deepseek_v3", root / "donor", seed=8, num_hidden_layers=4))
                          / "model.safetensors"))
    weights = load_file(str(target / "model.safetensors"))
    config = json.loads((target / "config.json").read_text())
    h, vocab = config["hidden_size"], config["vocab_size"]
    gen = torch.Generator().manual_seed(9)
    mtp = {k: v for k, v in donor.items() if k.startswith("model.layers.3.")}
    mtp.update({
        "model.layers.3.enorm.weight": 1 + 0.1 * torch.randn(h, generator=gen),
        "model.layers.3.hnorm.weight": 1 + 0.1 * torch.randn(h, generator=gen),
        "model.layers.3.eh_proj.weight": 0.1 * torch.randn(h, 2 * h, generator=gen),
        "model.layers.3.shared_head.norm.weight": 1 + 0.1 * torch.randn(h, generator=gen),
        "model.layers.3.shared_head.head.weight": 0.1 * torch.randn(vocab, h, generator=gen),
        "model.layers.3.embed_tokens.weight": weights["model.embed_tokens.weight"].clone(),
    })
    save_file({**weights, **mtp}, str(target / "model.safetensors"))
    config["num_nextn_predict_layers"] = 1
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.fixture(scope="module")
def v3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_v3_with_mtp(tmp_path_factory.mktemp("nextn"))


def test_nextn_gives_the_greedy_tokens_of_plain_decoding(v3: Path, demo_model_dir: Path) -> None:
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (5, 17, 9)]
    kw = {"tokenizer_path": str(demo_model_dir)}
    with make_engine(v3, **kw) as plain:
        want = [o["output_ids"] for o in plain.generate(input_ids=prompts, sampling_params=PARAMS)]
    with make_engine(v3, speculative_algorithm="NEXTN", speculative_num_steps=3, disable_speculative_gate=True,
                     **kw) as engine:
        head = engine.runtime.scheduler.features[-1].head
        got = [o["output_ids"] for o in engine.generate(input_ids=prompts, sampling_params=PARAMS)]
        again = [o["output_ids"] for o in engine.generate(input_ids=prompts[:2], sampling_params=PARAMS)]
        info = settled_info(engine)
        draft_pool = engine.runtime.scheduler.features[-1].draft.kv_pool
    assert got == want and again == want[:2]
    assert info["speculative_algorithm"] == "NEXTN" and info["spec_drafted_tokens"] >= 3 * info["spec_verify_steps"] > 0
    assert info["request_owned_tokens"] == 0 and info["locked_tokens"] == 0
    assert len(draft_pool.k_buffer) == 1  # the draft caches its one layer, in the latent layout
    written = load_file(str(v3 / "model.safetensors"))
    torch.testing.assert_close(head.model.layers[0].eh_proj.weight, written["model.layers.3.eh_proj.weight"])


def test_nextn_needs_a_checkpoint_with_an_mtp_layer(tmp_path: Path, demo_model_dir: Path) -> None:
    plain_v3 = make_tiny_moe_model("deepseek_v3", tmp_path / "v3", seed=1)
    with pytest.raises(ValueError, match="has no multi-token-prediction layer"):
        make_engine(plain_v3, tokenizer_path=str(demo_model_dir), speculative_algorithm="NEXTN").shutdown()
    with pytest.raises(ValueError, match="is a LlamaForCausalLM checkpoint; --speculative-algorithm NEXTN reads"):
        make_engine(demo_model_dir, speculative_algorithm="NEXTN").shutdown()
