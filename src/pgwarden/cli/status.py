"""``pgwarden status``: one screen of who holds the connection slots."""

from __future__ import annotations

import click

from ..conninfo import connect
from ..doctor.report import render_status, server_info, summary
from ..sources import postgres
from .options import connect_timeout_option, dsn_option, format_option, resolve_target
from .output import console, emit_json, report

__all__ = ["status"]


@click.command()
@dsn_option
@connect_timeout_option
@format_option
def status(dsn: str | None, connect_timeout: float, fmt: str) -> None:
    """One screen: usage of usable slots, sessions by state, application, user, database and
    client address, and the oldest idle and idle-in-transaction sessions."""
    target = resolve_target(dsn, command="status", connect_timeout=connect_timeout)
    with connect(target) as conn:
        snap = postgres.take(conn)
    server, summ = server_info(snap), summary(snap)
    with report():
        if fmt == "json":
            emit_json({"target": target.where, "server": server, "summary": summ})
        else:
            render_status(console(), server, summ)
