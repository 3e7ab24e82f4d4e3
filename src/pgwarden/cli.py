"""The ``pgwarden`` command line (click).

Exit codes (documented in ``pgwarden --help`` and docs/cli.md):

====  ==========================================================================
0     ok (doctor: no finding above ``info``; check: every step passed)
1     doctor: a ``warning`` finding; explain: no known error matched
2     doctor: a ``critical`` finding (a full server is critical)
3     cannot judge: could not connect (unreachable, auth failed, no database, ...)
4     permission missing (the role lacks a privilege the command needs)
64    usage error: unknown option, malformed DSN, invalid value
78    configuration file error (the message names the file and key)
130   interrupted (Ctrl-C)
====  ==========================================================================

Every message goes through :func:`pgwarden.conninfo.redact`; no traceback is shown for expected
errors (set ``PGWARDEN_DEBUG=1`` to see one).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from . import __version__
from .errors import ConfigError, ConfigFileError, ConnectError, PermissionMissing, PgwardenError

__all__ = ["EXIT", "fail", "main"]

EXIT = {
    "ok": 0,
    "warning": 1,
    "no_match": 1,
    "critical": 2,
    "cannot_connect": 3,
    "permission": 4,
    "usage": 64,
    "config": 78,
    "interrupted": 130,
}

#: Subcommands living in their own modules, imported only when used ("name": "module:attr").
_LAZY_COMMANDS = {
    "check": "pgwarden.commands:check",
    "status": "pgwarden.commands:status",
    "doctor": "pgwarden.commands:doctor",
    "explain": "pgwarden.commands:explain",
    "demo": "pgwarden.demo:demo",
    "guard": "pgwarden.guard.command:guard",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _LAZY_COMMANDS:
            module_name, attr = _LAZY_COMMANDS[cmd_name].split(":")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name and module_name.startswith(exc.name):
                    return None
                raise
            cmd = getattr(module, attr)
            assert isinstance(cmd, click.Command)
            return cmd
        return super().get_command(ctx, cmd_name)


def fail(message: str, code: str) -> NoReturn:
    """Print ``pgwarden: error: <message>`` on stderr and exit with ``EXIT[code]``."""
    from .conninfo import redact

    click.echo(f"pgwarden: error: {redact(message)}", err=True)
    sys.exit(EXIT[code])


def dsn_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--dsn``: where to connect (else $DATABASE_URL, else libpq's PG* environment)."""
    return click.option(
        "--dsn",
        envvar=None,
        default=None,
        metavar="DSN",
        help="postgresql:// URL or 'key=value' conninfo; default $DATABASE_URL, then libpq's "
        "PG* variables and the local socket.",
    )(func)


def connect_timeout_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--connect-timeout",
        type=click.FloatRange(min=1.0),
        default=5.0,
        show_default=True,
        metavar="SECONDS",
        help="Seconds to wait for the server (libpq connect_timeout).",
    )(func)


def format_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Output format.",
    )(func)


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Exit codes: 0 ok, 1 warning, 2 critical, 3 cannot connect, 4 permission missing, "
    "64 usage error, 78 config file error. Docs: docs/cli.md",
)
@click.version_option(__version__, prog_name="pgwarden")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """pgwarden keeps PostgreSQL connections healthy: see who holds the slots, free them by
    policy, pool without leaks."""
    level = logging.WARNING - 10 * min(verbose, 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("pgwarden")
    root.handlers[:] = [handler]
    root.setLevel(level)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the CLI, maps errors to one line and an exit code."""
    try:
        rv = cli.main(args=argv, prog_name="pgwarden", standalone_mode=False)
        if isinstance(rv, int):
            sys.exit(rv)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("pgwarden: interrupted", err=True)
        sys.exit(EXIT["interrupted"])
    except click.UsageError as exc:
        hint = ""
        if exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        fail(f"{exc.format_message()}{hint}", "usage")
    except click.ClickException as exc:
        fail(exc.format_message(), "usage")
    except KeyboardInterrupt:
        click.echo("pgwarden: interrupted", err=True)
        sys.exit(EXIT["interrupted"])
    except ConnectError as exc:
        fail(str(exc), "cannot_connect")
    except PermissionMissing as exc:
        fail(str(exc), "permission")
    except ConfigFileError as exc:
        fail(str(exc), "config")
    except ConfigError as exc:
        fail(str(exc), "usage")
    except PgwardenError as exc:
        if os.environ.get("PGWARDEN_DEBUG"):
            raise
        fail(str(exc), "cannot_connect")
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
