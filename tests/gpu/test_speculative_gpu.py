"""Speculative decoding on a real GPU (Triton attention, graphs for the plain decode steps): the greedy tokens of
plain decoding, for NGRAM and for STANDALONE with the target drafting for itself (which must accept nearly all)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a GPU", allow_module_level=True)

import sgl
from tests.core.engine_utils import GREEDY, PROMPTS

pytestmark = pytest.mark.gpu


def run(model: Path, **kw: object) -> tuple[list[list[int]], dict[str, object]]:
    # NOTE: fp32, so a verify forward (extend kernels) and a decode step (decode kernels) agree to far below a tie
    with sgl.Engine(model_path=str(model), backend="cuda", dtype="float32", max_total_tokens=16384,
                    context_length=2048, debug_invariants=True, **kw) as e:  # type: ignore[arg-type]
        ids = [o["output_ids"] for o in e.generate(PROMPTS, GREEDY)]
        return ids, e.get_server_info()


@pytest.mark.parametrize("page_size", [1, 16])
def test_speculation_on_the_gpu_gives_the_tokens_of_plain_decoding(demo_model_dir: Path, page_size: int) -> None:
    plain, _ = run(demo_model_dir, page_size=page_size)
    ngram, info = run(demo_model_dir, page_size=page_size, speculative_algorithm="NGRAM")
    assert ngram == plain and info["spec_verify_steps"] > 0
    own, info = run(demo_model_dir, page_size=page_size, speculative_algorithm="STANDALONE",
                    speculative_draft_model_path=str(demo_model_dir), speculative_num_steps=4)
    assert own == plain
    assert info["spec_accept_rate"] >= 0.95, info


@pytest.mark.parametrize("topk", [1, 2])
def test_eagle_chains_and_trees_on_triton_attention_give_the_tokens_of_plain_decoding(
    demo_model_dir: Path, tmp_path: Path, topk: int
) -> None:
    """topk 2: the tree mask in the Triton extend kernel (tests/kernels/test_verify_attention.py checks it against the
    reference under the interpreter)."""
    from tests.speculative.eagle_drafts import write_eagle_draft

    draft = write_eagle_draft(tmp_path / "eagle", demo_model_dir)
    plain, _ = run(demo_model_dir)
    eagle, info = run(demo_model_dir, speculative_algorithm="EAGLE", speculative_draft_model_path=str(draft),
                      speculative_num_steps=3, speculative_eagle_topk=topk, disable_speculative_gate=True)
    assert eagle == plain and info["spec_verify_steps"] > 0


@pytest.mark.parametrize(("algorithm", "topk"), [("STANDALONE", 1), ("EAGLE", 1), ("EAGLE3", 1), ("EAGLE", 2)])
def test_verify_graphs_on_and_off_give_the_same_greedy_tokens(
    demo_model_dir: Path, tmp_path: Path, algorithm: str, topk: int
) -> None:
    """Verify forwards replayed from graphs (chains, and EAGLE-2 trees), and the draft's decode steps replayed from
    its runner's decode graphs, give the tokens of the eager forwards and of plain decoding; the replays really ran."""
    from tests.speculative.eagle_drafts import write_eagle3_draft, write_eagle_draft

    drafts = {"STANDALONE": lambda: demo_model_dir,
              "EAGLE": lambda: write_eagle_draft(tmp_path / "e1", demo_model_dir),
              "EAGLE3": lambda: write_eagle3_draft(tmp_path / "e3", demo_model_dir)}
    kw = {"speculative_algorithm": algorithm, "speculative_draft_model_path": str(drafts[algorithm]()),
          "speculative_num_steps": 3, "speculative_eagle_topk": topk if algorithm != "STANDALONE" else None,
          "disable_speculative_gate": True, "cuda_graph_max_bs": 16}
    plain, _ = run(demo_model_dir, cuda_graph_max_bs=16)
    eager, _ = run(demo_model_dir, disable_cuda_graph=True, **kw)
    with sgl.Engine(model_path=str(demo_model_dir), backend="cuda", dtype="float32", max_total_tokens=16384,
                    context_length=2048, debug_invariants=True, **kw) as e:  # type: ignore[arg-type]
        graphed = [o["output_ids"] for o in e.generate(PROMPTS, GREEDY)]
        scheduler = e.runtime.scheduler
        graphs = scheduler.runner.verify_graphs
        assert graphs is not None and graphs.replays > 0 and graphs.tree == (topk > 1)
        assert graphs.tokens == (7 if topk > 1 else 4)  # a tree: 3 steps x top-2 nodes, and the root
        assert len(graphs.hidden_layers) == (3 if algorithm == "EAGLE3" else 0)
        assert scheduler.runner.graph_runner.hidden_layers == graphs.hidden_layers  # EAGLE3: its plain decodes too
        spec = next(f for f in scheduler.features if f.name == "speculative")
        draft = getattr(spec, "draft")  # noqa: B009  # STANDALONE: a DraftModel; EAGLE: the head's runner
        draft_runner = draft.runner if algorithm == "STANDALONE" else draft
        assert draft_runner.graph_runner is not None
        if algorithm != "STANDALONE":  # the head's catch-up extends after a verify replay graphs too
            catch_up = draft_runner.verify_graphs
            assert catch_up is not None and catch_up.mode.value == "extend" and catch_up.replays > 0
    assert graphed == eager == plain
