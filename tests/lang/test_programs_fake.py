"""Programs against the deterministic fake server: wire format, roles, select, forks, batches, streams, errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from fake_server import CHATML, REPLY, FakeServer, serve_fake

from sgl.lang import (
    BackendError,
    OpenAICompatible,
    RuntimeEndpoint,
    assistant,
    function,
    gen,
    select,
    set_default_backend,
    system,
    user,
)
from sgl.lang.chat import ChatTemplate


@pytest.fixture()
def server() -> Iterator[tuple[RuntimeEndpoint, FakeServer]]:
    with serve_fake() as (url, fake):
        backend = RuntimeEndpoint(url)
        yield backend, fake
        backend.close()


@function
def qa(s, question):  # type: ignore[no-untyped-def]
    s += system("You are terse.")
    s += user(question)
    s += assistant(gen("answer", max_tokens=32, stop="\n"))


def test_chat_program_text_equals_template_rendering_of_its_messages(server) -> None:
    backend, fake = server
    set_default_backend(backend)
    state = qa.run(question="What is 2+2?")
    assert state["answer"] == "lorem ipsum dolor"
    assert state.messages() == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "lorem ipsum dolor"},
    ]
    rendered = ChatTemplate(CHATML, {"bos_token": "<s>"}).render(state.messages())
    assert state.text() == rendered
    route, body = fake.requests[-1]
    assert route == "/generate"
    assert body["text"] == ChatTemplate(CHATML, {"bos_token": "<s>"}).render(state.messages()[:2], True)
    # NOTE: gen inside assistant() also stops at the template's end-of-turn text.
    assert body["sampling_params"] == {"max_new_tokens": 32, "stop": ["\n", "<|im_end|>"]}


def test_sampling_arguments_reach_the_server_in_native_names(server) -> None:
    backend, fake = server

    @function
    def prog(s):  # type: ignore[no-untyped-def]
        s += "Q:" + gen("a", max_tokens=5, temperature=0.5, top_p=0.9, regex="[a-z]+", top_k=3)
        s += gen("b", json_schema={"type": "object"})

    state = prog.run(backend=backend, temperature=0.0, max_new_tokens=7)
    assert state["a"] == REPLY[:5]
    sent = [b["sampling_params"] for r, b in fake.requests if r == "/generate"]
    assert sent[0] == {"max_new_tokens": 5, "temperature": 0.5, "top_p": 0.9, "top_k": 3, "regex": "[a-z]+"}
    assert sent[1] == {"max_new_tokens": 7, "temperature": 0.0, "json_schema": '{"type": "object"}'}
    assert state.text() == "Q:" + REPLY[:5] + REPLY[:7]
    assert state.get_meta_info("a")["completion_tokens"] == 5


def test_select_picks_the_highest_mean_logprob_and_total_when_asked(server) -> None:
    backend, fake = server

    @function
    def prog(s):  # type: ignore[no-untyped-def]
        s += "pick: "
        s += select("mean", ["xx", "aaab"])
        s += " then "
        s += select("total", ["x", "aaab"], score_by="total")
        s += " or " + gen("by_choices", choices=["zzz", "oo"])

    state = prog.run(backend=backend)
    # vowels score -0.1 and other characters -1.0: "aaab" has mean -0.325 but total -1.3; "x" totals -1.0.
    assert state["mean"] == "aaab"
    assert state["total"] == "x"
    assert state["by_choices"] == "oo"
    assert state.text() == "pick: aaab then x or oo"
    scores = {c["choice"]: c for c in state.get_meta_info("mean")["scores"]}
    assert scores["aaab"]["total"] == pytest.approx(-1.3) and scores["aaab"]["num_tokens"] == 4
    scoring = [b for r, b in fake.requests if r == "/generate" and b.get("return_logprob")]
    assert scoring[0]["sampling_params"] == {"max_new_tokens": 0}
    assert scoring[0]["logprob_start_len"] == [len("pick: ")] * 2


def test_forks_share_the_prefix_and_join_gathers_their_values(server) -> None:
    backend, fake = server

    @function
    def prog(s):  # type: ignore[no-untyped-def]
        s += "A long shared prefix. "
        forks = s.fork(4)
        for i, f in enumerate(forks):
            f += f"branch {i}: " + gen("x", max_tokens=3 + i)
        forks.join()
        s += "done"
        s.forks = forks

    state = prog.run(backend=backend)
    assert state["x"] == [REPLY[: 3 + i] for i in range(4)]
    assert state.text() == "A long shared prefix. done"
    for i, f in enumerate(state.forks):
        assert f.text() == f"A long shared prefix. branch {i}: " + REPLY[: 3 + i]
        assert f.get_meta_info("x")["cached_tokens"] >= len("A long shared prefix. ")


def test_appending_a_fork_continues_from_that_branch(server) -> None:
    backend, _ = server

    @function
    def prog(s):  # type: ignore[no-untyped-def]
        s += "P "
        a, b = s.fork(2)
        a += gen("v", max_tokens=2)
        b += gen("w", max_tokens=4)
        s += b

    state = prog.run(backend=backend)
    assert state.text() == "P " + REPLY[:4]
    assert state["w"] == REPLY[:4] and "v" not in state


def test_roles_work_as_context_managers(server) -> None:
    backend, _ = server

    @function
    def prog(s):  # type: ignore[no-untyped-def]
        with s.user():
            s += "Hi " + "there"
        with s.assistant():
            s += gen("reply", max_tokens=5)

    state = prog.run(backend=backend)
    assert state.messages() == [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "lorem"}]
    assert state.text() == "<s><|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nlorem<|im_end|>\n"


def test_run_batch_returns_states_in_input_order(server) -> None:
    backend, fake = server

    @function
    def prog(s, n):  # type: ignore[no-untyped-def]
        s += f"n={n} " + gen("a", max_tokens=n)

    states = prog.run_batch([{"n": n} for n in range(1, 17)], backend=backend, num_threads=4, progress_bar=True)
    assert [st["a"] for st in states] == [REPLY[:n] for n in range(1, 17)]
    assert len([r for r, _ in fake.requests if r == "/generate"]) == 16


def test_streaming_yields_the_text_in_pieces_that_add_up(server) -> None:
    backend, _ = server

    @function
    def prog(s):  # type: ignore[no-untyped-def]
        s += "Story: " + gen("story", max_tokens=20)

    state = prog.run(backend=backend, stream=True)
    pieces = list(state.text_iter())
    assert len(pieces) > 3
    assert "".join(pieces) == state.text() == "Story: " + REPLY[:20]
    assert list(state.text_iter()) == []  # NOTE: a drained stream ends at once instead of hanging
    again = prog.run(backend=backend, stream=True)
    assert "".join(again.text_iter("story")) == REPLY[:20]


def test_server_errors_raise_with_the_servers_message(server) -> None:
    backend, _ = server

    @function
    def prog(s, q):  # type: ignore[no-untyped-def]
        s += q + gen("a", max_tokens=4)
        s += gen("b", max_tokens=4)

    with pytest.raises(BackendError, match="the prompt contains FAIL") as info:
        prog.run(backend=backend, q="please FAIL")
    assert info.value.status == 400 and info.value.message == "the prompt contains FAIL"
    with pytest.raises(BackendError, match="FAIL"):
        prog.run_batch([{"q": "ok"}, {"q": "FAIL"}], backend=backend)
    mixed = prog.run_batch([{"q": "ok"}, {"q": "FAIL"}], backend=backend, return_exceptions=True)
    assert mixed[0]["a"] == REPLY[:4] and isinstance(mixed[1], BackendError)
    streamed = prog.run(backend=backend, stream=True, q="BREAK")
    with pytest.raises(BackendError, match="the scheduler died"):
        list(streamed.text_iter())


def test_grammar_refusal_is_a_backend_error(server) -> None:
    backend, _ = server

    @function
    def prog(s):  # type: ignore[no-untyped-def]
        s += gen("a", regex="NO_GRAMMAR")

    with pytest.raises(BackendError, match="grammar is unavailable") as info:
        prog.run(backend=backend)
    assert info.value.status == 400


def test_a_server_without_chat_template_fails_roles_clearly() -> None:
    with serve_fake(FakeServer(chat_template=None)) as (url, _):
        with pytest.raises(BackendError, match="no chat template"):
            qa.run(backend=RuntimeEndpoint(url), question="hi")


def test_nested_roles_and_bad_arguments_are_refused(server) -> None:
    backend, _ = server

    @function
    def nested(s):  # type: ignore[no-untyped-def]
        s += user("a" + assistant("b"))

    with pytest.raises(ValueError, match="roles do not nest"):
        nested.run(backend=backend)
    with pytest.raises(TypeError):
        qa.run(backend=backend, wrong="x")
    with pytest.raises(ValueError):
        select("x", [])
    with pytest.raises(ValueError):
        gen("x", regex="a", json_schema="{}")


def test_unreachable_server_raises_backend_error() -> None:
    with serve_fake() as (url, _):
        pass
    with pytest.raises(BackendError, match="cannot reach"):
        qa.run(backend=RuntimeEndpoint(url, timeout=2.0), question="hi")


def test_forks_run_their_gens_concurrently() -> None:
    """Four forks against a server that holds each /generate until four are in flight: serial would deadlock."""
    barrier = threading.Barrier(4, timeout=10)

    class Gate(FakeServer):
        def reply(self, prompt, sp):  # type: ignore[no-untyped-def]
            if sp.get("max_new_tokens") == 9:
                barrier.wait()
            return super().reply(prompt, sp)

    with serve_fake(Gate()) as (url, _):
        @function
        def prog(s):  # type: ignore[no-untyped-def]
            forks = s.fork(4)
            for f in forks:
                f += gen("x", max_tokens=9)
            forks.join()

        assert prog.run(backend=RuntimeEndpoint(url))["x"] == [REPLY[:9]] * 4


def test_openai_compatible_generates_and_selects_through_echo_logprobs() -> None:
    with serve_fake() as (url, fake):
        backend = OpenAICompatible(url + "/v1", model="fake")

        @function
        def prog(s):  # type: ignore[no-untyped-def]
            s += user("hi")
            s += assistant(gen("a", max_tokens=5))
            s += select("c", ["xx", "aaab"])

        state = prog.run(backend=backend)
        assert state["a"] == "lorem" and state["c"] == "aaab"
        body = [b for r, b in fake.requests if r == "/v1/completions"][0]
        assert body["prompt"] == "<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        assert body["model"] == "fake" and body["stop"] == ["<|im_end|>"]


def test_openai_compatible_without_echo_logprobs_says_select_needs_them() -> None:
    with serve_fake(FakeServer(chat_template="NO_ECHO")) as (url, _):
        backend = OpenAICompatible(url + "/v1", model="fake", chat_template=CHATML)

        @function
        def prog(s):  # type: ignore[no-untyped-def]
            s += "q " + select("c", ["a", "b"])

        with pytest.raises(BackendError, match="select needs"):
            prog.run(backend=backend)
