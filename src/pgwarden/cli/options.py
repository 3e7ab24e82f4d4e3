"""Options every command shares, and where a command says which server it talks to.

:func:`resolve_target` is how a command resolves its ``--dsn``: it records the target so that
the error boundary can name the server in its one line when the command loses it mid-run.
"""

from __future__ import annotations

import contextvars
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

import click

from ..conninfo import Target, resolve
from ..errors import ConfigError

__all__ = [
    "connect_timeout_option",
    "current_target",
    "dsn_option",
    "extra_module",
    "format_option",
    "holders_options",
    "resolve_target",
    "seconds_option",
]

_F = TypeVar("_F", bound=Callable[..., Any])

_target: contextvars.ContextVar[Target | None] = contextvars.ContextVar(
    "pgwarden_cli_target", default=None)


def resolve_target(dsn: str | None, *, command: str, connect_timeout: float | None,
                   option: str = "--dsn", **params: Any) -> Target:
    """:func:`pgwarden.conninfo.resolve` for a command (``application_name=pgwarden-<command>``)
    whose server the error boundary may then name; ``option`` is the option ``dsn`` came from
    (``--pgbouncer``), named in every message about it.

    Raises:
        ConfigError: a malformed DSN or an invalid parameter value.
    """
    target = resolve(dsn, command=command, connect_timeout=connect_timeout, option=option,
                     **params)
    _target.set(target)
    return target


def current_target() -> Target | None:
    """The target the running command resolved last, or ``None``."""
    return _target.get()


def dsn_option(func: _F) -> _F:
    """``--dsn``: where to connect (else $DATABASE_URL, else libpq's PG* environment)."""
    return click.option(
        "--dsn",
        envvar=None,
        default=None,
        metavar="DSN",
        help="postgresql:// URL or 'key=value' conninfo; default $DATABASE_URL, then libpq's "
        "PG* variables and the local socket.",
    )(func)


def connect_timeout_option(func: _F) -> _F:
    """``--connect-timeout SECONDS`` (libpq's ``connect_timeout``, default 5)."""
    return click.option(
        "--connect-timeout",
        type=click.FloatRange(min=1.0, max=3600.0),
        default=5.0,
        show_default=True,
        metavar="SECONDS",
        help="Seconds to wait for the server (libpq connect_timeout).",
    )(func)


def format_option(func: _F) -> _F:
    """``--format text|json``."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Output format.",
    )(func)


def holders_options(func: _F) -> _F:
    """``--holders URL`` (repeatable) and ``--holders-timeout SECONDS``: applications'
    holders endpoints (:func:`pgwarden.metrics.serve_holders`), joined to the server's sessions
    by backend pid. A URL that fails is a warning line in the report, never an error."""
    func = click.option(
        "--holders-timeout", type=click.FloatRange(min=0.1, max=60.0), default=2.0,
        show_default=True, metavar="SECONDS",
        help="Seconds to wait for the --holders URLs' whole answers (all fetched at once).")(func)
    return click.option(
        "--holders", "holders", multiple=True, metavar="URL",
        help="An application's holders endpoint (pgwarden.metrics.serve_holders), e.g. "
        "http://127.0.0.1:9188/holders; repeatable (one per process). Shows next to each "
        "backend pid the pool, thread or task, file:line and function holding it, and for how "
        "long.")(func)


def seconds_option(name: str, default: float, help_: str) -> Callable[[_F], _F]:
    """An option taking seconds (a float > 0)."""
    return click.option(name, type=click.FloatRange(min=0.001, max=1e9), default=default,
                        show_default=True, metavar="SECONDS", help=help_)


def extra_module(name: str, extra: str) -> ModuleType:
    """Import ``name``, an optional dependency of pgwarden's ``extra``.

    Raises:
        ConfigError: it is not installed (a usage error naming the pip command).
    """
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(f"this command needs {name}: pip install \"pgwarden[{extra}]\"") from None
