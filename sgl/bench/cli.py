"""The ``sgl bench`` typer sub-app: ``offline``, ``one-batch`` and ``serving``.

Every command takes every ServerArgs flag (``with_server_args``), so a bench's engine is configured exactly as
``sgl serve`` would be. Heavy imports happen inside the commands; errors a user can fix are one line, exit code 2.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer

from sgl.bench.workloads import WORKLOADS, WorkloadSpec
from sgl.cli_args import Command, Group, with_server_args
from sgl.core.config import ServerArgs

bench_app = typer.Typer(
    name="bench", cls=Group, help="Benchmarks: one-batch latency, offline throughput, online serving.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
)

PANEL = "Workload"
_DEFAULTS = WorkloadSpec()
_HELP = {
    "workload": f"random (independent prompts) or shared-prefix (system prompts shared by questions) "
                f"[{'|'.join(WORKLOADS)}]",
    "num_prompts": "random: number of requests",
    "input_len": "random: prompt tokens (the maximum when --range-ratio < 1)",
    "output_len": "output tokens of each request (exact: EOS is ignored)",
    "range_ratio": "random: lengths uniform in [len * ratio, len]; 1 makes them fixed",
    "num_groups": "shared-prefix: number of system prompts",
    "questions_per_group": "shared-prefix: questions per system prompt",
    "system_prompt_len": "shared-prefix: tokens of each system prompt",
    "question_len": "shared-prefix: tokens of each question",
    "seed": "seed of the workload's token ids and lengths",
}


def with_workload_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorates ``fn(server_args, spec: WorkloadSpec, **own)`` to take the workload flags, one place for all."""
    own = [p for name, p in inspect.signature(fn).parameters.items() if name != "spec"]
    extra = [
        inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, annotation=type(getattr(_DEFAULTS, name)),
            default=typer.Option(getattr(_DEFAULTS, name), "--" + name.replace("_", "-"), help=_HELP[name],
                                 rich_help_panel=PANEL),
        )
        for name in WorkloadSpec._fields
    ]

    @functools.wraps(fn)
    def wrapper(server_args: ServerArgs, **kwargs: Any) -> Any:
        spec = WorkloadSpec(**{k: kwargs.pop(k) for k in WorkloadSpec._fields})
        return fn(server_args, spec, **kwargs)

    wrapper.__signature__ = inspect.Signature(own + extra)  # type: ignore[attr-defined]
    return wrapper


@contextmanager
def _bench_errors() -> Iterator[None]:
    from sgl.cli_errors import USAGE_ERROR, user_errors

    with user_errors():
        try:
            yield
        except (ValueError, RuntimeError, FileNotFoundError, MemoryError, TimeoutError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(USAGE_ERROR) from None


def _public(args: ServerArgs) -> dict[str, Any]:
    """Server args for the JSON, without secrets."""
    d = dataclasses.asdict(args)
    d.pop("api_key", None)
    return d


def _save(path: str | None, result: dict[str, Any]) -> None:
    if path:
        from sgl.bench.report import write_json

        typer.echo(f"wrote {write_json(path, result)}")


RESULT_JSON = typer.Option(None, "--result-json", help="Write the results to this JSON file.")
DISABLE_TQDM = typer.Option(False, "--disable-tqdm", help="Do not show the progress bar.")
MORE_BATCH_SIZES = typer.Argument(None, help="More batch sizes (after --batch-size).", show_default=False)
BATCH_SIZE = typer.Option(["1"], "--batch-size", help="Batch sizes to run: --batch-size 1 8 32.")


@bench_app.command("offline", cls=Command)
@with_server_args()
@with_workload_options
def offline_command(
    server_args: ServerArgs, spec: WorkloadSpec,
    compare_radix: bool = typer.Option(
        False, "--compare-radix", help="Run twice in fresh engines, radix cache on then off; print the speed-up."
    ),
    result_json: str | None = RESULT_JSON,
    disable_tqdm: bool = DISABLE_TQDM,
) -> None:
    """Offline throughput of an in-process Engine over a synthetic workload (all requests at once)."""
    from sgl.bench import offline
    from sgl.core.model.shipped import resolve_shipped as resolve_server_args

    with _bench_errors():
        args = resolve_server_args(server_args)
        base = {"bench": "offline", "workload": spec.describe(), "server_args": _public(args)}
        if compare_radix:
            cmp = offline.compare_radix(args, spec, progress=not disable_tqdm)
            typer.echo(cmp.format())
            _save(result_json, {**base, **cmp.as_dict()})
        else:
            res = offline.run_offline(args, spec, progress=not disable_tqdm)
            typer.echo(res.format())
            _save(result_json, {**base, "result": res.as_dict()})


def _batch_sizes(first: list[str], more: list[str] | None) -> list[int]:
    """``--batch-size 1 8 32``, ``--batch-size 1 --batch-size 8`` and ``--batch-size 1,8,32`` all work."""
    try:
        return [int(x) for item in [*first, *(more or [])] for x in str(item).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"batch sizes must be integers; got {[*first, *(more or [])]}") from None


@bench_app.command("one-batch", cls=Command)
@with_server_args()
def one_batch_command(
    server_args: ServerArgs,
    more_batch_sizes: list[str] | None = MORE_BATCH_SIZES,
    batch_size: list[str] = BATCH_SIZE,
    input_len: int = typer.Option(512, "--input-len", help="Prompt tokens of every request."),
    output_len: int = typer.Option(32, "--output-len", help="Output tokens (one prefill step, then decode steps)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the prompt token ids."),
    result_json: str | None = RESULT_JSON,
) -> None:
    """Latency of one prefill of a whole batch and of its decode steps, through the real Scheduler."""
    from sgl.core.model.shipped import resolve_shipped as resolve_server_args
    from sgl.bench.one_batch import format_results, run_one_batch

    with _bench_errors():
        args = resolve_server_args(server_args)
        sizes = _batch_sizes(batch_size, more_batch_sizes)
        results = run_one_batch(args, sizes, input_len, output_len, seed)
        typer.echo(format_results(results))
        _save(result_json, {"bench": "one-batch", "server_args": _public(args),
                            "results": [r.as_dict() for r in results]})


@bench_app.command("serving", cls=Command)
@with_server_args()
@with_workload_options
def serving_command(
    server_args: ServerArgs, spec: WorkloadSpec,
    base_url: str | None = typer.Option(None, "--base-url", help="Server to benchmark (default: --host/--port)."),
    launch_server: bool = typer.Option(False, "--launch-server", help="Start `sgl serve` with the server args."),
    backend_api: str = typer.Option("sgl", "--backend-api", help="sgl (/generate) or openai (/v1/completions)."),
    request_rate: float = typer.Option(math.inf, "--request-rate", help="Poisson arrivals per second; inf = all "
                                       "at once."),
    max_concurrency: int | None = typer.Option(None, "--max-concurrency", help="At most this many in flight."),
    model: str | None = typer.Option(None, "--model", help="openai: the model name (default: from /v1/models)."),
    vocab_size: int | None = typer.Option(
        None, "--vocab-size", help="Token ids are drawn below this (default: from --model-path's config)."
    ),
    launch_timeout: float = typer.Option(300.0, "--launch-timeout", help="Seconds to wait for a launched server."),
    compare_offline: bool = typer.Option(
        False, "--compare-offline", help="Run the offline Engine on the workload, then launch the server and run it "
        "there at request rate inf; print both output tok/s, their ratio and the CPU per token of each process."
    ),
    result_json: str | None = RESULT_JSON,
    disable_tqdm: bool = DISABLE_TQDM,
) -> None:
    """Online serving: stream a workload to a server, report TTFT, ITL, latency and throughput."""
    from sgl.bench import serving
    from sgl.bench.launch import launched_server
    from sgl.bench.models import workload_vocab
    from sgl.core.model.shipped import resolve_shipped as resolve_server_args

    with _bench_errors():
        if launch_server and base_url:
            raise ValueError("give --base-url or --launch-server, not both")
        if compare_offline and (base_url or not math.isinf(request_rate) or max_concurrency):
            raise ValueError("--compare-offline launches its own server and sends at request rate inf: "
                             "drop --base-url, --request-rate and --max-concurrency")
        args = resolve_server_args(server_args, require_dummy=launch_server or compare_offline)
        vocab = vocab_size or workload_vocab(args)
        if compare_offline:
            from sgl.bench.compare_offline import compare_offline as run_compare

            cmp = run_compare(args, spec, vocab, backend_api, launch_timeout, not disable_tqdm)
            typer.echo(cmp.format())
            _save(result_json, {"bench": "serving-vs-offline", "workload": spec.describe(),
                                "server_args": _public(args), **cmp.as_dict()})
            return
        reqs = spec.build(vocab)

        def run(url: str) -> serving.ServingResult:
            name = model or (serving.discover_model(url, args.api_key) if backend_api == "openai" else None)
            return serving.run_serving(url, reqs, backend_api, request_rate, max_concurrency, name, spec.seed,
                                       not disable_tqdm, args.api_key)

        if launch_server:
            with launched_server(args, launch_timeout) as url:
                result = run(url)
        else:
            result = run(base_url or f"http://{args.host}:{args.port}")
        typer.echo(result.format())
        _save(result_json, {"bench": "serving", "workload": spec.describe(), **result.as_dict()})
