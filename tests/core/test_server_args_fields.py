"""No silent flags: every ServerArgs field is read by the engine, and every SGLang flag that is not a field is either
accepted (sgl already does what it asks) or refused with one line."""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

import sgl
from sgl.core.config import ServerArgs
from sgl.core.sglang_flags import SGLANG_FLAGS, SGLangFlag

SGL = Path(sgl.__file__).parent
# NOTE: the engine is everything but the flag's own definition, the command line that parses it and the benchmarks
# (a client of the engine: its reading of --host proves nothing about the server's).
NOT_THE_ENGINE = ("core/config.py", "cli.py", "cli_args.py", "bench/")
# A receiver that holds ServerArgs: args, server_args, self.args, state.args, s.args, self.server_args, ...
ARGS_RECEIVER = re.compile(r"(^|\.)(server_)?args$")


def _engine_files() -> list[Path]:
    return [p for p in SGL.rglob("*.py") if not p.relative_to(SGL).as_posix().startswith(NOT_THE_ENGINE)]


def _properties_reading(fields: set[str]) -> dict[str, set[str]]:
    """ServerArgs properties and the fields each reads (``origins`` reads ``allowed_origins``)."""
    tree = ast.parse((SGL / "core" / "config.py").read_text())
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "ServerArgs")
    props: dict[str, set[str]] = {}
    for fn in cls.body:
        if isinstance(fn, ast.FunctionDef) and any(ast.unparse(d) == "property" for d in fn.decorator_list):
            props[fn.name] = {
                n.attr for n in ast.walk(fn)
                if isinstance(n, ast.Attribute) and ast.unparse(n.value) == "self" and n.attr in fields
            }
    return props


def unread_fields(fields: Iterable[str], files: Iterable[Path]) -> list[str]:
    """The fields no engine code reads as ``<args>.field`` (directly or through a ServerArgs property)."""
    fields = set(fields)
    read: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                if ARGS_RECEIVER.search(ast.unparse(node.value)):
                    read.add(node.attr)
    for prop, reads in _properties_reading(fields).items():
        if prop in read:
            read |= reads
    return sorted(fields - read)


def test_every_server_args_field_is_read_by_the_engine() -> None:
    names = [f.name for f in dataclasses.fields(ServerArgs)]
    assert unread_fields(names, _engine_files()) == [], (
        "a ServerArgs field nobody reads is a silent flag: wire it where it acts, or refuse it in "
        "sgl/core/sglang_flags.py"
    )


def test_the_scan_reports_a_field_nobody_reads() -> None:
    """The scan above can fail: a made-up field is reported, a real one read only through a property is not."""
    assert unread_fields(["no_code_reads_this_flag", "allowed_origins", "page_size"], _engine_files()) == [
        "no_code_reads_this_flag"
    ]


def test_no_sglang_flag_is_also_a_server_args_field() -> None:
    """A feature that lands moves its flag from the table into ServerArgs; it must not stay in both."""
    both = sorted(set(SGLANG_FLAGS) & {f.name for f in dataclasses.fields(ServerArgs)})
    assert both == [], f"remove {both} from sgl/core/sglang_flags.py: they are ServerArgs fields now"


def _other_value(flag: SGLangFlag) -> Any:
    if flag.type is bool:
        return not flag.default
    if flag.type is int:
        return (flag.default or 0) + 2
    if flag.type is float:
        return (flag.default or 0.0) + 0.5
    return "something"


@pytest.mark.parametrize("flag", list(SGLANG_FLAGS.values()), ids=list(SGLANG_FLAGS))
def test_every_sglang_flag_is_accepted_or_refused_with_one_line(flag: SGLangFlag) -> None:
    value = _other_value(flag)
    ServerArgs.from_kwargs(**{flag.name: flag.default})  # the value that matches sgl changes nothing
    if flag.accepted:
        ServerArgs.from_kwargs(**{flag.name: value})
        return
    with pytest.raises(ValueError) as exc:
        ServerArgs.from_kwargs(**{flag.name: value})
    message = str(exc.value)
    assert "\n" not in message and message.startswith(flag.flag)
    assert "not supported" in message
    assert (f"(issue {flag.issue})" in message) == (flag.issue is not None)


def test_every_sglang_flag_is_refused_or_accepted_on_the_command_line() -> None:
    """Each flag parses with its type (a flag, an int, a string) and then gets its one line, exit code 2."""
    from typer.testing import CliRunner

    from sgl.cli import app

    runner = CliRunner()
    for flag in SGLANG_FLAGS.values():
        if flag.accepted:
            continue
        value = _other_value(flag)
        argv = [flag.flag] if flag.type is bool else [flag.flag, str(value)]
        result = runner.invoke(app, ["serve", *argv])
        assert result.exit_code == 2, (flag.name, result.output)
        lines = result.output.strip().splitlines()
        assert lines == [f"error: {flag.refusal(value)}"], (flag.name, result.output)


def test_random_seed_makes_unseeded_sampling_repeatable(demo_model_dir: Path) -> None:
    """--random-seed seeds the device generator that unseeded sampling draws from, as SGLang's does."""
    from tests.core.engine_utils import make_engine

    params = {"temperature": 1.0, "max_new_tokens": 16, "ignore_eos": True}
    prompts = ["The quick brown fox", "Once upon a time"]

    def sampled(seed: int) -> list[list[int]]:
        engine = make_engine(demo_model_dir, random_seed=seed, disable_overlap_schedule=True)
        try:
            return [o["output_ids"] for o in engine.generate(prompts, dict(params))]
        finally:
            engine.shutdown()

    first = sampled(7)
    assert sampled(7) == first
    assert sampled(8) != first
