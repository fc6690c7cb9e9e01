"""ProgramState: the `s` of a program. Appends are queued and run in order; reads wait for them."""

from __future__ import annotations

import dataclasses
import queue
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from sgl.lang.backend.base import Backend, GenResult, SamplingArgs
from sgl.lang.chat import ChatTemplate
from sgl.lang.errors import BackendError
from sgl.lang.executor import SerialQueue
from sgl.lang.ir import Gen, RoleBegin, RoleEnd, Select, Text, flatten
from sgl.lang.ir import role as role_expr

_END = object()


class ProgramState:
    """The text, chat messages, captured values and per-gen meta info of one running program (or fork)."""

    def __init__(self, backend: Backend, defaults: SamplingArgs | None = None, stream: bool = False) -> None:
        self.backend = backend
        self.defaults = defaults or SamplingArgs()
        self._text = ""
        self._messages: list[dict[str, str]] = []
        self._role: str | None = None
        self._role_end = ""
        self._content_start = 0
        self._vars: dict[str, Any] = {}
        self._meta: dict[str, Any] = {}
        self._template: ChatTemplate | None = None
        self._queue = SerialQueue()
        self._chunks: queue.Queue[Any] | None = queue.Queue() if stream else None
        self._fork_point = 0
        self._fork_vars: frozenset[str] = frozenset()

    # appending -------------------------------------------------------------------------------------------------
    def __iadd__(self, other: Any) -> ProgramState:
        for item in flatten(other):
            if isinstance(item, ProgramState):
                item._join_into(self)
            else:
                self._queue.submit(lambda item=item: self._execute(item))
        return self

    def _execute(self, item: Any) -> None:
        if isinstance(item, Text):
            self._append(item.text)
        elif isinstance(item, Gen):
            self._gen(item)
        elif isinstance(item, Select):
            self._select(item)
        elif isinstance(item, RoleBegin):
            self._begin_role(item.role)
        elif isinstance(item, RoleEnd):
            self._end_role(item.role)
        else:
            raise TypeError(f"cannot execute {item!r}")

    def _append(self, text: str, var: str | None = None) -> None:
        self._text += text
        if self._chunks is not None and text:
            self._chunks.put((text, var))

    def _chat(self) -> ChatTemplate:
        if self._template is None:
            self._template = self.backend.chat_template()
            if self._template is None:
                raise BackendError(
                    "the server reports no chat template (/get_model_info has no chat_template), so roles cannot "
                    "be rendered; serve a model with one, or give the backend chat_template=...")
        return self._template

    def _begin_role(self, role: str) -> None:
        if self._role is not None:
            raise ValueError(f"{role}() inside {self._role}(): roles do not nest")
        texts = self._chat().role_text(self._messages, role)
        self._append(texts.begin)
        self._role, self._role_end, self._content_start = role, texts.end, len(self._text)

    def _end_role(self, role: str) -> None:
        if self._role != role:
            raise ValueError(f"{role} ends, but the open role is {self._role}")
        self._messages.append({"role": role, "content": self._text[self._content_start:]})
        self._append(self._role_end)
        self._role = None

    def _gen(self, item: Gen) -> None:
        args = item.args.with_defaults(self.defaults)
        if self._role == "assistant":
            args = args.with_stop(self._chat().end_of_turn(self._messages))
        prompt = self._text
        if self._chunks is None:
            result = self.backend.generate(prompt, args)
            self._append(result.text)
        else:
            result = GenResult("")
            for result in self.backend.generate_stream(prompt, args):
                self._append(result.text[len(self._text) - len(prompt):], item.name)
            self._text = prompt + result.text  # NOTE: the final text wins should a stream have shown a stop prefix
        if item.name is not None:
            self._vars[item.name] = result.text
            self._meta[item.name] = result.meta_info

    def _select(self, item: Select) -> None:
        scores = self.backend.score(self._text, item.choices)
        best = max(scores, key=lambda c: c.mean if item.score_by == "mean" else c.total)
        if item.name is not None:
            self._vars[item.name] = best.choice
            self._meta[item.name] = {"score_by": item.score_by, "scores": [dataclasses.asdict(s) for s in scores]}
        self._append(best.choice, item.name)

    # roles as context managers ------------------------------------------------------------------------------
    def system(self, content: Any = None) -> _RoleScope:
        return _RoleScope(self, "system", content)

    def user(self, content: Any = None) -> _RoleScope:
        return _RoleScope(self, "user", content)

    def assistant(self, content: Any = None) -> _RoleScope:
        return _RoleScope(self, "assistant", content)

    # forks ---------------------------------------------------------------------------------------------------
    def fork(self, n: int = 1) -> ForkGroup:
        """n states that continue from this one's text; with n > 1 the shared prefix is cached on the server."""
        if n < 1:
            raise ValueError(f"fork needs n >= 1, got {n}")
        self.sync()
        if n > 1:
            self.backend.cache_prefix(self._text)
        children = []
        for _ in range(n):
            child = ProgramState(self.backend, self.defaults)
            child._text, child._messages = self._text, [dict(m) for m in self._messages]
            child._role, child._role_end, child._content_start = self._role, self._role_end, self._content_start
            child._vars, child._meta, child._template = dict(self._vars), dict(self._meta), self._template
            child._fork_point, child._fork_vars = len(self._text), frozenset(self._vars)
            children.append(child)
        return ForkGroup(children, self)

    def _join_into(self, parent: ProgramState) -> None:
        """`parent += fork`: the fork's text since the fork point and the values it captured join the parent."""
        self.sync()
        text = self._text[self._fork_point:]
        new = {k: v for k, v in self._vars.items() if k not in self._fork_vars}
        meta = {k: self._meta[k] for k in new if k in self._meta}

        def op() -> None:
            parent._append(text)
            parent._vars.update(new)
            parent._meta.update(meta)
        parent._queue.submit(op)

    # reading -------------------------------------------------------------------------------------------------
    def sync(self) -> None:
        """Waits for every queued append; raises the first failure (e.g. a BackendError with the server's text)."""
        self._queue.wait()

    def text(self) -> str:
        self.sync()
        return self._text

    def messages(self) -> list[dict[str, str]]:
        self.sync()
        return [dict(m) for m in self._messages]

    def __getitem__(self, name: str) -> Any:
        return self.get_var(name)

    def get_var(self, name: str) -> Any:
        self.sync()
        if name not in self._vars:
            raise KeyError(f"no value named {name!r}; captured: {sorted(self._vars)}")
        return self._vars[name]

    def __contains__(self, name: str) -> bool:
        self.sync()
        return name in self._vars

    def get_meta_info(self, name: str) -> Any:
        """The server's meta_info for gen `name` (finish_reason, prompt/cached/completion tokens, ...)."""
        self.sync()
        if name not in self._meta:
            raise KeyError(f"no meta info for {name!r}; known: {sorted(self._meta)}")
        return self._meta[name]

    def variables(self) -> dict[str, Any]:
        self.sync()
        return dict(self._vars)

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        """The text as it arrives (run(stream=True)); with `var_name`, only that value's pieces."""
        if self._chunks is None:
            self.sync()
            yield self._vars.get(var_name, "") if var_name is not None else self._text
            return
        while True:
            chunk = self._chunks.get()
            if chunk is _END:
                self._chunks.put(_END)  # NOTE: a second iteration ends at once instead of hanging
                self.sync()
                return
            text, var = chunk
            if var_name is None or var == var_name:
                yield text

    def _finish_stream(self) -> None:
        if self._chunks is not None:
            chunks = self._chunks
            self._queue.submit(lambda: chunks.put(_END), always=True)

    def _fail(self, exc: BaseException) -> None:
        """A program body that raised stops the state like a failed append would."""
        if self._queue.error is None:
            self._queue.error = exc

    def __repr__(self) -> str:
        return f"ProgramState(text={self._text[-60:]!r}, vars={sorted(self._vars)})"


class _RoleScope:
    """`s += s.user("hi")` or `with s.user(): s += ...`: with content it appends at once; as a scope it brackets."""

    def __init__(self, state: ProgramState, role: str, content: Any) -> None:
        self._state, self._role, self._content = state, role, content
        if content is not None:
            state += role_expr(role, content)

    def __enter__(self) -> ProgramState:
        if self._content is not None:
            raise ValueError(f"with s.{self._role}(...) takes no content; append inside the block")
        self._state += RoleBegin(self._role)
        return self._state

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if et is None:
            self._state += RoleEnd(self._role)


class ForkGroup(list[ProgramState]):
    """The states fork() returned; join() brings their values back into the parent."""

    def __init__(self, states: list[ProgramState], parent: ProgramState) -> None:
        super().__init__(states)
        self.parent = parent

    def __iadd__(self, other: Any) -> ForkGroup:  # type: ignore[override, misc]
        """`forks += gen("x")` appends the same thing to every branch."""
        for state in self:
            state += other
        return self

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return [state[key] for state in self]
        return super().__getitem__(key)

    def join(self, mode: str = "gather") -> None:
        """"gather": each value the branches captured becomes a list in the parent (branch order);
        "concat": additionally the branches' new texts are appended to the parent in branch order."""
        if mode not in ("gather", "concat"):
            raise ValueError(f"join mode must be 'gather' or 'concat', got {mode!r}")
        for state in self:
            state.sync()
        names = list(dict.fromkeys(k for s in self for k in s._vars if k not in s._fork_vars))
        gathered = {k: [s._vars.get(k) for s in self] for k in names}
        metas = {k: [s._meta.get(k) for s in self] for k in names}
        texts = [s._text[s._fork_point:] for s in self] if mode == "concat" else []
        parent = self.parent

        def op() -> None:
            for text in texts:
                parent._append(text)
            parent._vars.update(gathered)
            parent._meta.update(metas)
        parent._queue.submit(op)
