"""``pgwarden status``: one screen of who holds the connection slots (and, with
``--pgbouncer``, PgBouncer's pools and which client holds which server session)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from ..conninfo import connect
from ..doctor.report import (
    bouncer_summary,
    render_bouncer,
    render_holders,
    render_status,
    server_info,
    summary,
)
from ..sources import holders as holders_source
from ..sources import pgbouncer as bouncer_source
from ..sources import postgres
from .options import (
    connect_timeout_option,
    dsn_option,
    format_option,
    holders_options,
    resolve_target,
)
from .output import console, emit_json, report

__all__ = ["pgbouncer_option", "run_status", "status"]


def pgbouncer_option(func: Any) -> Any:
    """``--pgbouncer DSN``: a PgBouncer admin console (database ``pgbouncer``)."""
    return click.option(
        "--pgbouncer", "pgbouncer_dsn", default=None, metavar="DSN",
        help="A PgBouncer admin console: postgresql://USER@HOST:6432/pgbouncer (USER in "
        "admin_users or stats_users). Alone (no --dsn), only PgBouncer is shown.")(func)


def run_status(dsn: str | None, pgbouncer_dsn: str | None, connect_timeout: float,
               fmt: str, holders: Sequence[str] = (),
               holders_timeout: float = holders_source.DEFAULT_TIMEOUT) -> None:
    """Print the status of PostgreSQL (unless only ``pgbouncer_dsn`` is given) and of
    PgBouncer (when ``pgbouncer_dsn`` is given); with ``holders`` (applications' ``/holders``
    URLs), the application code holding each session."""
    out: dict[str, Any] = {}
    snap = None
    joined = None
    if dsn is not None or pgbouncer_dsn is None:
        target = resolve_target(dsn, command="status", connect_timeout=connect_timeout)
        # the applications' holders are fetched while the snapshot is taken (same moment)
        pending = (holders_source.start_fetch_all(holders, timeout=holders_timeout)
                   if holders else None)
        with connect(target) as conn:
            snap = postgres.take(conn)
        if pending is not None:
            joined = holders_source.join(snap.client_backends, pending.result())
        out = {"target": target.where, "server": server_info(snap),
               "summary": summary(snap, holders=joined)}
    elif holders:
        joined = holders_source.join((), holders_source.fetch_all(holders,
                                                                  timeout=holders_timeout))
    if joined is not None:
        out["holders"] = joined.as_dict()
    if pgbouncer_dsn is not None:
        bt = resolve_target(pgbouncer_dsn, command="status", connect_timeout=connect_timeout,
                            option="--pgbouncer")
        with bouncer_source.connect(bt) as conn:
            b = bouncer_source.take(conn)
        out["pgbouncer"] = {"target": bt.where, **bouncer_summary(b, snap)}
    with report():
        if fmt == "json":
            emit_json(out)
        else:
            c = console()
            if "server" in out:
                render_status(c, out["server"], out["summary"])
            if "pgbouncer" in out:
                render_bouncer(c, out["pgbouncer"])
            if joined is not None:
                render_holders(c, joined)


@click.command()
@dsn_option
@pgbouncer_option
@connect_timeout_option
@format_option
@holders_options
def status(dsn: str | None, pgbouncer_dsn: str | None, connect_timeout: float,
           fmt: str, holders: tuple[str, ...], holders_timeout: float) -> None:
    """One screen: usage of usable slots, sessions by state, application, user, database and
    client address, and the oldest idle and idle-in-transaction sessions; with --pgbouncer,
    PgBouncer's pools and which client holds which server session; with --holders, the
    application code holding each session."""
    run_status(dsn, pgbouncer_dsn, connect_timeout, fmt, holders, holders_timeout)
