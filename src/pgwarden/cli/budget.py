"""``pgwarden budget``: do all pools of all services fit the server's usable slots?

Exit codes (the doctor's): 0 fits (worst case up to 80 % of the available slots), 1 tight (up
to 100 %), 2 over; 3 cannot connect; 64 bad option; 78 bad budget file.
"""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from ..budget import Budget, evaluate, load_budget, slots_for
from ..budget.discover import observe
from ..budget.report import as_dict, render
from ..budget.rules import Observation
from ..conninfo import connect
from .boundary import EXIT
from .options import connect_timeout_option, format_option, resolve_target
from .output import console, emit_json, report

__all__ = ["budget"]


@click.command()
@click.argument("budget_file", required=False, type=click.Path(dir_okay=False, path_type=Path),
                metavar="[BUDGET_FILE]")
@click.option("--dsn", default=None, metavar="DSN",
              help="Read the slots from this live server (and, with --sample, the peak "
              "sessions of each application).")
@connect_timeout_option
@click.option("--sample", type=click.FloatRange(min=0.0, max=3600.0), default=0.0,
              show_default=True, metavar="SECONDS",
              help="With --dsn: watch the server this long for each application's peak "
              "sessions (0: one look).")
@format_option
@click.pass_context
def budget(ctx: click.Context, budget_file: Path | None, dsn: str | None,
           connect_timeout: float, sample: float, fmt: str) -> None:
    """Add up every service's pools (replicas x processes x pool max) against the server's
    usable slots minus a headroom: a verdict, the services that overflow, sizes that fit, and
    the PgBouncer configuration that fits where no sizes can. BUDGET_FILE: docs/budget.md.

    Exit code: 0 fits (up to 80 % of the available slots), 1 tight (up to 100 %), 2 over,
    3 cannot connect, 64 bad option (--sample without --dsn), 78 bad budget file."""
    if budget_file is None and dsn is None:
        raise click.UsageError("give a BUDGET_FILE, --dsn DSN to discover from a live server, "
                               "or both")
    if dsn is None and ctx.get_parameter_source("sample") is not ParameterSource.DEFAULT:
        raise click.UsageError("--sample watches a live server: give --dsn DSN with it, or "
                               "leave --sample out to judge the file alone")
    plan = load_budget(budget_file) if budget_file is not None else Budget(services=())
    source = str(budget_file) if budget_file is not None else ""
    observation: Observation | None = None
    database = "postgres"
    if dsn is not None:
        target = resolve_target(dsn, command="budget", connect_timeout=connect_timeout)
        database = target.dbname
        source = f"{source} + {target.where}" if source else target.where
        with connect(target) as conn:
            settings, observation = observe(conn, sample=sample)
        slots = slots_for(plan, max_connections=settings.max_connections,
                          superuser_reserved_connections=settings.superuser_reserved_connections,
                          reserved_connections=settings.reserved_connections, source="server")
    else:
        slots = slots_for(plan)
    result = evaluate(plan, slots, observation, default_database=database, source=source)
    with report():
        if fmt == "json":
            emit_json(as_dict(result))
        else:
            render(console(), result)
    ctx.exit(EXIT[result.status])
