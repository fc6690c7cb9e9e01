"""The errors a user of the command line can fix: one stderr line and exit code 2 (``sgl`` and ``sgl bench``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

USAGE_ERROR = 2


@contextmanager
def user_errors() -> Iterator[None]:
    """Turns the errors a user can fix (a bad backend, a broken plugin) into one stderr line and exit code 2."""
    from sgl.core.model.hub import ModelSourceError
    from sgl.core.plugins import BackendError, PluginContractError

    try:
        yield
    except (BackendError, PluginContractError, ModelSourceError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(USAGE_ERROR) from None
