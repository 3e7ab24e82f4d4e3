"""``pgwarden doctor``: findings about who holds the connection slots, with the fix."""

from __future__ import annotations

import click

from ..doctor.pgbouncer_rules import BouncerThresholds
from ..doctor.report import render_report
from ..doctor.rules import Thresholds
from ..doctor.run import examine
from ..errors import ConfigError
from .boundary import EXIT
from .options import (
    connect_timeout_option,
    dsn_option,
    format_option,
    holders_options,
    resolve_target,
    seconds_option,
)
from .output import console, emit_json, report

__all__ = ["doctor"]


@click.command()
@dsn_option
@connect_timeout_option
@format_option
@seconds_option("--idle-after", 300.0, "Idle sessions older than this count as hoarded.")
@seconds_option("--idle-in-transaction-after", 60.0,
                "Report sessions idle in a transaction longer.")
@seconds_option("--long-query-after", 300.0, "Report active queries running longer.")
@click.option("--idle-min-sessions", type=click.IntRange(min=1), default=5, show_default=True,
              help="Long-idle sessions one application must hold to be reported.")
@click.option("--saturation-warning", type=click.FloatRange(0.01, 1.5), default=0.8,
              show_default=True, help="Usage of usable slots that is a warning.")
@click.option("--saturation-critical", type=click.FloatRange(0.01, 1.5), default=0.95,
              show_default=True, help="Usage of usable slots that is critical.")
@click.option("--churn-rate", type=click.FloatRange(min=0.01, max=1e9), default=5.0,
              show_default=True, metavar="PER_SECOND",
              help="New sessions per second that count as churn.")
@click.option("--sample", type=click.FloatRange(min=0.0, max=60.0), default=0.0,
              show_default=True, metavar="SECONDS",
              help="Take two snapshots this far apart to measure the rate of new sessions.")
@click.option("--pgbouncer", "pgbouncer_dsn", default=None, metavar="DSN",
              help="Also judge this PgBouncer: its admin console (database pgbouncer, a user "
              "in admin_users or stats_users). Alone (no --dsn), only PgBouncer is judged.")
@click.option("--pgbouncer-wait-after", type=click.FloatRange(min=0.0, max=1e9), default=1.0,
              show_default=True, metavar="SECONDS",
              help="PgBouncer clients waiting this long for a server are a finding.")
@seconds_option("--pgbouncer-idle-after", 60.0,
                "Session-mode PgBouncer clients idle longer count as holding a server idly.")
@click.option("--pgbouncer-idle-clients", type=click.IntRange(min=1), default=5,
              show_default=True, help="Idle session-mode clients one pool must have.")
@holders_options
@click.pass_context
def doctor(ctx: click.Context, dsn: str | None, connect_timeout: float, fmt: str,
           idle_after: float, idle_in_transaction_after: float, long_query_after: float,
           idle_min_sessions: int, saturation_warning: float, saturation_critical: float,
           churn_rate: float, sample: float, pgbouncer_dsn: str | None,
           pgbouncer_wait_after: float, pgbouncer_idle_after: float,
           pgbouncer_idle_clients: int, holders: tuple[str, ...],
           holders_timeout: float) -> None:
    """Findings about who holds the connection slots, most severe first, each with the
    evidence (applications, backend pids, ages) and the fix; with --holders, the application
    code holding each pid (pool, thread or task, file:line, how long).

    Exit code: 0 ok or info only, 1 warning, 2 critical, 3 cannot connect or lost the server."""
    try:
        thresholds = Thresholds(
            idle_after=idle_after,
            idle_in_transaction_after=idle_in_transaction_after,
            long_query_after=long_query_after,
            idle_hoarding_min_sessions=idle_min_sessions,
            saturation_warning=saturation_warning,
            saturation_critical=saturation_critical,
            churn_rate=churn_rate,
        ).validate()
        bouncer_thresholds = BouncerThresholds(
            wait_after=pgbouncer_wait_after, idle_after=pgbouncer_idle_after,
            idle_clients=pgbouncer_idle_clients).validate()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    bouncer = None
    if pgbouncer_dsn is not None:
        bouncer = resolve_target(pgbouncer_dsn, command="doctor",
                                 connect_timeout=connect_timeout, option="--pgbouncer")
    target = None
    if dsn is not None or bouncer is None:
        target = resolve_target(dsn, command="doctor", connect_timeout=connect_timeout)
    result = examine(target, thresholds=thresholds, sample=sample, pgbouncer=bouncer,
                     bouncer_thresholds=bouncer_thresholds, holders=holders,
                     holders_timeout=holders_timeout)
    with report():
        if fmt == "json":
            emit_json(result.as_dict())
        else:
            render_report(console(), result)
    ctx.exit(EXIT[result.status] if result.status != "ok" else EXIT["ok"])
