"""Programmatic dependent launch: the launch policy (on where the device can unless turned off; asked for, on only
where the device can), the CUDA plugin's ``--cuda-pdl`` / ``--no-cuda-pdl`` option and its refusals. The kernels' PDL path itself needs an sm90+ GPU:
tests/gpu/test_pdl_gpu.py. Under the interpreter every kernel runs its ``USE_PDL=False`` variant, which the kernel
tests cover."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from sgl.core.config import ServerArgs
from sgl.kernels import pdl
from sgl.plugins.cuda import plugin as cuda_plugin
from sgl.plugins.cuda.args import CudaArgs
from sgl.plugins.cuda.platform import configure_pdl


@pytest.fixture(autouse=True)
def _policy_restored() -> Iterator[None]:
    before = pdl.enabled()
    yield
    pdl.configure(before)


def _on_a_hopper(monkeypatch: pytest.MonkeyPatch, capable: bool = True) -> None:
    """A stand-in for an sm90+ CUDA device (no GPU here): the capability probe answers ``capable``."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(pdl, "_device_supports", lambda index: capable)


CUDA0 = SimpleNamespace(device=torch.device("cuda", 0))  # what launch_options reads of a tensor


def test_plain_launches_when_the_policy_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    _on_a_hopper(monkeypatch)
    pdl.configure(False)
    assert pdl.launch_options(CUDA0) == {"USE_PDL": False}  # type: ignore[arg-type]
    assert ServerArgs().plugin_args.get("cuda") is None and CudaArgs().pdl is None  # unset: the platform decides


@pytest.mark.parametrize(("asked", "graphs", "capable", "on"), [
    (None, True, True, True),  # the default on a Hopper with decode graphs (H100: +17% Qwen3-0.6B, +5% Llama-3.1-8B)
    (None, True, False, False),
    (None, False, True, False),
    (False, True, True, False),
    (True, True, True, True),
    (True, True, False, False),  # asked for on an older GPU: logged, plain launches
])
def test_wanted_follows_the_device_unless_asked(asked: bool | None, graphs: bool, capable: bool, on: bool) -> None:
    assert CudaArgs(pdl=asked).wanted(graphs=graphs, capable=capable) is on


def test_on_where_asked_and_the_device_can(monkeypatch: pytest.MonkeyPatch) -> None:
    _on_a_hopper(monkeypatch)
    pdl.configure(True)
    assert pdl.launch_options(CUDA0) == {"USE_PDL": True, "launch_pdl": True}  # type: ignore[arg-type]


@pytest.mark.parametrize("where", ["cpu", "interpreter", "older gpu"])
def test_plain_launches_where_the_device_cannot(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    _on_a_hopper(monkeypatch, capable=where != "older gpu")
    pdl.configure(True)
    t: object = CUDA0
    if where == "cpu":
        t = torch.zeros(1)
    if where == "interpreter":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert pdl.launch_options(t) == {"USE_PDL": False}  # type: ignore[arg-type]


def test_the_platform_sets_the_policy_from_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    _on_a_hopper(monkeypatch)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    configure_pdl(ServerArgs(plugin_args={"cuda": CudaArgs(pdl=False)}), pdl)
    assert not pdl.enabled()
    configure_pdl(ServerArgs(), pdl)
    assert pdl.enabled()
    configure_pdl(ServerArgs(plugin_args={"cuda": CudaArgs(pdl=True)}), pdl)
    assert pdl.enabled()
    _on_a_hopper(monkeypatch, capable=False)
    configure_pdl(ServerArgs(), pdl)  # unset on an older GPU: quietly plain
    assert not pdl.enabled()


def test_an_older_gpu_is_logged_and_keeps_plain_launches(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    _on_a_hopper(monkeypatch, capable=False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    configure_pdl(ServerArgs(plugin_args={"cuda": CudaArgs(pdl=True)}), pdl)
    assert "cannot launch dependent kernels" in caplog.text
    assert pdl.launch_options(CUDA0) == {"USE_PDL": False}  # type: ignore[arg-type]


def test_refused_where_it_would_change_nothing() -> None:
    on = {"cuda": CudaArgs(pdl=True)}
    with pytest.raises(ValueError, match="--cuda-pdl applies to the decode graphs"):
        cuda_plugin.sgl_startup_check(ServerArgs(plugin_args=on, disable_cuda_graph=True))
    with pytest.raises(ValueError, match="--cuda-pdl needs the cuda backend; this run is on 'cpu'"):
        cuda_plugin.sgl_startup_check(ServerArgs(plugin_args=on, backend="cpu"))
    cuda_plugin.sgl_startup_check(ServerArgs(backend="cpu"))  # unset: follows the device, nothing to refuse
    cuda_plugin.sgl_startup_check(ServerArgs(backend="cpu", plugin_args={"cuda": CudaArgs(pdl=False)}))


def test_the_option_is_a_cli_flag_of_the_cuda_plugin() -> None:
    from sgl.plugin_args import plugin_groups

    groups = {g.plugin: g for g in plugin_groups()}
    assert [o.flag for _, o in groups["cuda"].options] == ["--cuda-pdl"]


@pytest.mark.parametrize(("argv", "want"), [([], None), (["--cuda-pdl"], True), (["--no-cuda-pdl"], False)])
def test_the_cli_parses_on_off_and_unset(monkeypatch: pytest.MonkeyPatch, argv: list[str], want: bool | None) -> None:
    from typer.testing import CliRunner

    import sgl.api.server
    from sgl.core.plugin_options import plugin_args

    seen: list[ServerArgs] = []
    monkeypatch.setattr(sgl.api.server, "serve", lambda server_args: seen.append(server_args) or 0)  # parse only
    from sgl.cli import app

    result = CliRunner().invoke(app, ["serve", "--model-path", "m", *argv])
    assert result.exit_code == 0, result.output
    assert plugin_args(seen[0], CudaArgs).pdl is want


@pytest.fixture(scope="module")
def sm90_rows() -> list[dict[str, Any]]:
    """The decode-path kernels compiled for an sm90 target here (no GPU needed: Triton's own ptxas)."""
    from tests.kernels.compiled_rows import compiled_rows

    return compiled_rows("sm90")


def test_every_pdl_kernel_waits_before_its_first_global_access_when_compiled_for_sm90(
    sm90_rows: list[dict[str, Any]],
) -> None:
    """In each PDL-aware kernel's PTX griddepcontrol.wait comes before any global load, store or atomic (a read
    before it could see the previous kernel's stale output), the bf16 skinny GEMM asks L2 for its first weight tiles
    before waiting, and the plain variant has neither."""
    for r in (r for r in sm90_rows if "wait_line" in r):
        assert r["wait_line"] is not None and r["first_global_access_line"] is not None, r
        assert r["wait_line"] < r["first_global_access_line"], r
        assert not r["plain_variant_waits"], r
        assert (r["prefetches_before_wait"] > 0) == r["kernel"].startswith("skinny_gemm"), r


def test_kernels_do_not_spill_registers_on_sm90(sm90_rows: list[dict[str, Any]]) -> None:
    """No stack or local memory in any Triton kernel, in the tiles its wrapper picks and with the 16-byte alignment a
    launch on real tensors gives (a spill slows a kernel, and the interpreter cannot see it).

    The one known spill: MLA's extend attention (576-wide latent, 32 x 16 tile on 4 warps), 56 bytes a thread. 8
    warps still spill 16; 32 x 32 on 8 warps or 16 x 16 spill none. Which is fastest is for a GPU to say, so the tile
    is unchanged and pinned here: a change to it, or a new spill anywhere, fails this test."""
    if any(None in r["spilled_bytes"] for r in sm90_rows):
        pytest.skip("this Triton has no bundled cuobjdump")
    spilled = {r["kernel"]: r["spilled_bytes"] for r in sm90_rows if any(r["spilled_bytes"])}  # [with PDL, plain]
    assert spilled == {"extend_attention_mla": [56]}, spilled
