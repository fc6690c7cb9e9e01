"""--ep-size through the whole engine: two gloo ranks (this process and one follower), each holding half the experts
of a tiny MoE model, give the greedy tokens of one rank holding them all; --ep-size on a dense model is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import sgl
from sgl.core.config import ServerArgs
from sgl.core.model.moe import FusedMoE
from tests.models.tiny_moe import make_tiny_moe_model

pytest.importorskip("transformers")

ARGS = {"max_total_tokens": 2048, "context_length": 256, "debug_invariants": True}


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
def test_ep2_over_two_ranks_gives_the_single_rank_tokens(tmp_path: Path, demo_model_dir: Path, arch: str) -> None:
    model = make_tiny_moe_model(arch, tmp_path / arch, seed=5)
    g = torch.Generator().manual_seed(6)
    prompts = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (4, 11)]
    params = {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True}
    kw = {"model_path": model, "tokenizer_path": str(demo_model_dir), **ARGS}
    with sgl.Engine(**kw) as one:
        want = [o["output_ids"] for o in one.generate(input_ids=prompts, sampling_params=params)]
    with sgl.Engine(tp_size=2, ep_size=2, **kw) as ep:
        assert ep.runtime.scheduler.runner.parallel.ep_size == 2
        experts = next(m for m in ep.runtime.scheduler.runner.model.modules() if isinstance(m, FusedMoE))
        assert experts.w13_weight.shape[0] == experts.num_experts // 2  # this rank holds half, whole
        got = [o["output_ids"] for o in ep.generate(input_ids=prompts, sampling_params=params)]
    assert got == want


def test_ep_size_must_be_one_or_the_tp_size_and_needs_experts(demo_model_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"ep_size must be 1 or tp_size \(2\)"):
        ServerArgs(tp_size=2, ep_size=4)
    with pytest.raises(Exception, match="--ep-size 2: LlamaForCausalLM has no experts"):
        sgl.Engine(model_path=str(demo_model_dir), tp_size=2, ep_size=2, **ARGS)
