"""The ``pgwarden`` click group and the console entry point.

Subcommands live one per module in this package and are imported only when used. Exit codes and
the error boundary: :mod:`pgwarden.cli.boundary`.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from .. import __version__
from .boundary import run

__all__ = ["cli", "main"]

#: Subcommands, each in its own module, imported only when used ("name": "module:attr").
COMMANDS = {
    "check": "pgwarden.cli.check:check",
    "status": "pgwarden.cli.status:status",
    "doctor": "pgwarden.cli.doctor:doctor",
    "explain": "pgwarden.cli.explain:explain",
    "guard": "pgwarden.cli.guard:guard",
    "demo": "pgwarden.cli.demo:demo",
    "exporter": "pgwarden.cli.exporter:exporter",
    "top": "pgwarden.cli.top:top",
    "budget": "pgwarden.cli.budget:budget",
    "pgbouncer": "pgwarden.cli.pgbouncer:pgbouncer",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            module_name, attr = COMMANDS[cmd_name].split(":")
            cmd = getattr(importlib.import_module(module_name), attr)
            assert isinstance(cmd, click.Command)
            return cmd
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Exit codes: 0 ok, 1 warning, 2 critical, 3 cannot connect or lost the server, "
    "4 permission missing, 64 usage error, 70 internal error, 74 I/O error, 78 config file "
    "error, 130 interrupted. Docs: docs/cli.md",
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
    """Console entry point: runs the CLI through the error boundary and exits with its code."""
    sys.exit(run(cli, argv))
