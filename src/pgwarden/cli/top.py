"""``pgwarden top``: a live terminal view of the sessions (docs/top.md).

On a terminal it runs the textual UI (the ``top`` extra); with ``--once``, or when stdout is
not a terminal, it prints one frame and exits (colours off off a terminal and with
``NO_COLOR``).
"""

from __future__ import annotations

import sys

import click

from ..guard.policy import Protection
from ..top.live import Source
from ..top.model import FILTER_FIELDS, SORT_KEYS, View
from ..top.render import render_frame
from .options import (
    connect_timeout_option,
    dsn_option,
    extra_module,
    holders_options,
    resolve_target,
)
from .output import console, report

__all__ = ["top"]


@click.command()
@dsn_option
@connect_timeout_option
@click.option("--once", is_flag=True,
              help="Print one frame and exit (also when stdout is not a terminal).")
@click.option("--interval", type=click.FloatRange(min=0.2, max=3600.0), default=2.0,
              show_default=True, metavar="SECONDS", help="Seconds between refreshes.")
@click.option("--sort", type=click.Choice(list(SORT_KEYS)), default="state_age",
              show_default=True, help="Sort key (longest / largest first).")
@click.option("--ascending", is_flag=True, help="Smallest first.")
@click.option("--application", default="", metavar="GLOB",
              help="Only these applications (a glob, or a substring).")
@click.option("--user", default="", metavar="GLOB", help="Only these users.")
@click.option("--database", default="", metavar="GLOB", help="Only these databases.")
@click.option("--state", default="", metavar="GLOB",
              help="Only sessions in this state (e.g. 'idle in transaction').")
@click.option("--hide-idle", is_flag=True, help="Leave idle sessions out.")
@click.option("--allow-superuser", is_flag=True,
              help="Let cancel / terminate touch superusers' sessions (protected by default).")
@holders_options
def top(dsn: str | None, connect_timeout: float, once: bool, interval: float, sort: str,
        ascending: bool, application: str, user: str, database: str, state: str,
        hide_idle: bool, allow_superuser: bool, holders: tuple[str, ...],
        holders_timeout: float) -> None:
    """A live view of the server's sessions: usage bar, sessions table (sortable, filterable),
    cancel or terminate a session after confirmation; with --holders, the application code
    holding each session. Works for a role without pg_monitor (and says what it cannot see).
    Docs: docs/top.md"""
    view = View(sort=sort, descending=not ascending, hide_idle=hide_idle)
    for name, value in zip(FILTER_FIELDS, (application, user, database, state), strict=True):
        view = view.with_filter(name, value)
    target = resolve_target(dsn, command="top", connect_timeout=connect_timeout)
    source = Source(target, protection=Protection(allow_superuser=allow_superuser),
                    holders=holders, holders_timeout=holders_timeout)
    try:
        if once or not sys.stdout.isatty():
            source.take()
            frame = source.frame(view)
            out = console()
            with report():
                out.print(render_frame(frame))
            return
        extra_module("textual", "top")
        from ..top.app import TopApp

        source.take()  # a server that cannot be reached is one line before the screen opens
        TopApp(source, view=view, interval=interval).run()
    finally:
        source.close()
