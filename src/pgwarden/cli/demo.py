"""``pgwarden demo``: the failures pgwarden exists for, on a throwaway PostgreSQL."""

from __future__ import annotations

import click

from .output import console

__all__ = ["demo"]


@click.command()
def demo() -> None:
    """Show the failures pgwarden exists for on a throwaway PostgreSQL (about 15 s): a leaking
    worker, an idle transaction holding a lock, a connection-per-request bot filling the
    server; then the doctor naming each culprit, the guard freeing the slots, a pgwarden
    pool riding through a server restart, and 60 clients refused directly but all served
    through a PgBouncer that pgwarden configures (needs pgbouncer installed)."""
    from ..demo import Demo

    out = console()
    with out.status("starting a throwaway PostgreSQL ..."):
        d = Demo(out)
    with d:
        d.run()
