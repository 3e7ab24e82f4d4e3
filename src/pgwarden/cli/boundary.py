"""The one error boundary every command ends through: any exception becomes one line on stderr
and a documented exit code; no command can end in a traceback (``PGWARDEN_DEBUG=1`` shows it).

Exit codes (``pgwarden --help``, docs/cli.md):

====  ==========================================================================================
0     ok (doctor: no finding above ``info``; check: every step passed)
1     doctor: a ``warning`` finding; explain: no known error matched; guard --once: an action
      failed
2     doctor: a ``critical`` finding (a full server is critical)
3     cannot judge: could not connect, or lost the server mid-run (unreachable, restarting,
      authentication failed, no database, server full for pgwarden's role, ...)
4     permission missing (the role lacks a privilege the command needs)
64    usage error: unknown option, malformed DSN, invalid connection parameter or value
70    internal error: a bug in pgwarden (one line; ``PGWARDEN_DEBUG=1`` prints the traceback)
74    I/O error: an output or audit destination cannot be written (the guard stops rather than
      act without an audit record); a metrics endpoint cannot listen (port in use)
78    configuration file error (the message names the file and the key)
130   interrupted (Ctrl-C)
====  ==========================================================================================

What a database failure means is decided by :func:`pgwarden.diagnose.classify`, never here.
Every message goes through :func:`pgwarden.conninfo.redact`.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Sequence

import click
import psycopg

from ..conninfo import redact
from ..diagnose import classify
from ..errors import (
    AuditError,
    ConfigError,
    ConfigFileError,
    ConnectError,
    ListenError,
    PermissionMissing,
    PgwardenError,
)
from . import output
from .options import current_target

__all__ = ["EXIT", "exit_for", "one_line", "run"]

EXIT = {
    "ok": 0,
    "warning": 1,
    "no_match": 1,
    "critical": 2,
    "cannot_connect": 3,
    "permission": 4,
    "usage": 64,
    "internal": 70,
    "io": 74,
    "config": 78,
    "interrupted": 130,
}

#: Exit code of each failure kind of :data:`pgwarden.diagnose.KINDS` met after connecting.
_EXIT_OF_KIND = {
    "invalid": "usage",
    "permission": "permission",
    "unreachable": "cannot_connect",
    "going_down": "cannot_connect",
    "server_full": "cannot_connect",
    "rejected": "cannot_connect",
    "session_ended": "cannot_connect",
    "query": "cannot_connect",
}


def _database_error(exc: psycopg.Error) -> tuple[str, str]:
    """A psycopg error that escaped a command: what it means, by the one classifier."""
    failure = classify(exc)
    code = _EXIT_OF_KIND.get(failure.kind)
    if code is None or (failure.diagnosis is None and failure.kind == "query"):
        return "internal", (f"internal error: a statement pgwarden ran failed: {failure.said} "
                            "(please report it; PGWARDEN_DEBUG=1 shows the traceback)")
    target = current_target()
    where = f" {target.where}" if target is not None else ""
    meaning = f" ({failure.title})" if failure.title else ""
    if failure.kind == "permission":
        return code, f"permission missing on{where}: {failure.said}; {failure.fix}"
    if failure.kind in ("session_ended", "unreachable", "going_down"):
        return code, (f"lost the connection to{where or ' the server'} mid-run: {failure.said}"
                      f"{meaning}; run the command again once the server is back")
    return code, f"{failure.said}{meaning}"


def exit_for(exc: BaseException) -> tuple[int, str | None]:
    """The exit code and the one-line message (``None``: print nothing) for ``exc``."""
    if isinstance(exc, click.exceptions.Exit):
        return exc.exit_code, None
    if isinstance(exc, (click.exceptions.Abort, KeyboardInterrupt)):
        return EXIT["interrupted"], "interrupted"
    if isinstance(exc, click.UsageError):
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return EXIT["usage"], f"{exc.format_message()}{hint}"
    if isinstance(exc, click.ClickException):
        return EXIT["usage"], exc.format_message()
    if isinstance(exc, ConnectError):
        return EXIT["cannot_connect"], str(exc)
    if isinstance(exc, PermissionMissing):
        return EXIT["permission"], str(exc)
    if isinstance(exc, ConfigFileError):
        return EXIT["config"], str(exc)
    if isinstance(exc, ConfigError):
        return EXIT["usage"], str(exc)
    if isinstance(exc, (AuditError, ListenError)):
        return EXIT["io"], str(exc)
    if isinstance(exc, PgwardenError):
        return EXIT["cannot_connect"], str(exc)
    if isinstance(exc, psycopg.Error):
        code, message = _database_error(exc)
        return EXIT[code], message
    if isinstance(exc, BrokenPipeError):
        # the reader of our output went away (``| head -1``); nothing left to say to it
        output.discard_stdout()
        return EXIT["ok"], None
    if isinstance(exc, OSError):
        name = f" {exc.filename}" if exc.filename else ""
        return EXIT["io"], f"cannot write{name}: {exc.strerror or exc}"
    return EXIT["internal"], (f"internal error: {type(exc).__name__}: {exc} (please report "
                              "it; PGWARDEN_DEBUG=1 shows the traceback)")


def one_line(text: str) -> str:
    """``text`` as one printable line: whitespace runs folded to a space, other characters
    that are not printable (controls, U+0085, U+2028, ...) written as escapes, so that user
    input echoed in a message (a database name, a DSN) cannot break it into several lines."""
    out = []
    for ch in " ".join(text.split()):
        out.append(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def run(command: click.Command, argv: Sequence[str] | None) -> int:
    """Run ``command`` with ``argv``; return its exit code. Never raises (but SystemExit)."""
    try:
        rv = command.main(args=list(argv) if argv is not None else None, prog_name="pgwarden",
                          standalone_mode=False)
        return rv if isinstance(rv, int) else EXIT["ok"]
    except click.exceptions.NoArgsIsHelpError as exc:
        # bare ``pgwarden``: the help is what was asked for, not an error
        with output.report():
            click.echo(exc.ctx.get_help())
        return EXIT["ok"]
    except BaseException as exc:  # the boundary: everything ends here
        if isinstance(exc, SystemExit):
            raise
        code, message = exit_for(exc)
        if os.environ.get("PGWARDEN_DEBUG") and code in (EXIT["internal"], EXIT["io"]):
            traceback.print_exc()
        if message is not None:
            # (if stderr is gone too, the exit code still says it)
            with contextlib.suppress(OSError, ValueError):
                click.echo(f"pgwarden: error: {one_line(redact(message))}", err=True)
        return code
