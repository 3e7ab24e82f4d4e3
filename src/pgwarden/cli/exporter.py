"""``pgwarden exporter``: Prometheus metrics of one or more servers and PgBouncers
(docs/exporter.md).

One long-lived connection per server (``application_name=pgwarden-exporter``), one snapshot
per scrape at most every ``--min-interval`` seconds, ``pgwarden_up 0`` and one log line while a
server is down, full or refuses the role. Serves ``/metrics`` on ``--listen`` (loopback by
default) until SIGTERM (exit 0) or SIGINT (exit 130); ``--once`` prints the metrics once.

Exit codes: 64 for a bad ``--listen``, ``--dsn`` or cap; 74 when the address cannot be bound
(the port is in use, the address is not on this host).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import click

from .boundary import EXIT
from .options import connect_timeout_option, extra_module, resolve_target
from .output import report

__all__ = ["DEFAULT_LISTEN", "exporter"]

#: Where the exporter listens by default: loopback, postgres_exporter's port.
DEFAULT_LISTEN = "127.0.0.1:9187"
# (documented defaults; the metrics package itself needs the optional prometheus_client)
DEFAULT_MIN_INTERVAL = 1.0
DEFAULT_MAX_LABELS = 20


@click.command()
@click.option("--dsn", "dsns", multiple=True, metavar="DSN",
              help="A server to export (repeatable; a target label is added when there are "
              "several). Default $DATABASE_URL, then libpq's PG* variables.")
@click.option("--pgbouncer", "bouncers", multiple=True, metavar="DSN",
              help="A PgBouncer admin console to export (database pgbouncer, a user in "
              "admin_users or stats_users; repeatable, a target label when several). With "
              "--pgbouncer and no --dsn only PgBouncer is exported.")
@connect_timeout_option
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="HOST:PORT",
              help="Where to serve /metrics; a non-loopback address only when given here.")
@click.option("--min-interval", type=click.FloatRange(min=0.0, max=3600.0),
              default=DEFAULT_MIN_INTERVAL, show_default=True, metavar="SECONDS",
              help="Reuse a snapshot for scrapes within this many seconds (0: one per scrape).")
@click.option("--max-applications", type=click.IntRange(min=1, max=10000),
              default=DEFAULT_MAX_LABELS, show_default=True, metavar="N",
              help="Applications with their own label value; the rest are '(other)'.")
@click.option("--max-users", type=click.IntRange(min=1, max=10000), default=DEFAULT_MAX_LABELS,
              show_default=True, metavar="N", help="Users with their own label value.")
@click.option("--max-databases", type=click.IntRange(min=1, max=10000),
              default=DEFAULT_MAX_LABELS, show_default=True, metavar="N",
              help="Databases with their own label value.")
@click.option("--once", is_flag=True, help="Print the metrics once on stdout and exit.")
@click.pass_context
def exporter(ctx: click.Context, /, dsns: tuple[str, ...], bouncers: tuple[str, ...],
             connect_timeout: float, listen: str, min_interval: float, max_applications: int,
             max_users: int, max_databases: int, once: bool) -> None:
    """Prometheus metrics of PostgreSQL servers: slots, sessions by state and application,
    oldest idle and idle-in-transaction sessions, lock waits, new sessions, the doctor's
    findings; and of PgBouncers (--pgbouncer): pools, clients waiting, stats, limits.
    Docs: docs/exporter.md"""
    prom = extra_module("prometheus_client", "metrics")
    from ..metrics.pgbouncer import BouncerScraper
    from ..metrics.registry import parse_listen, serve
    from ..metrics.server import Caps, ServerCollector, TargetScraper

    address = parse_listen(listen)
    caps = Caps(applications=max_applications, users=max_users, databases=max_databases)
    targets = [resolve_target(d, command="exporter", connect_timeout=connect_timeout)
               for d in (dsns or (() if bouncers else (None,)))]
    bouncer_targets = [resolve_target(d, command="exporter", connect_timeout=connect_timeout,
                                      option="--pgbouncer")
                       for d in bouncers]
    # one collector per kind: a target label only where there are several of that kind, so
    # adding a PgBouncer does not change the PostgreSQL series
    collectors = []
    if targets:
        collectors.append(ServerCollector([TargetScraper(t, min_interval=min_interval,
                                                         caps=caps) for t in targets]))
    if bouncer_targets:
        collectors.append(ServerCollector([BouncerScraper(t, min_interval=min_interval,
                                                          caps=caps) for t in bouncer_targets]))
    registry = prom.CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    scrapers = [s for c in collectors for s in c.scrapers]
    for scraper in scrapers:
        scraper.check_target()
    if once:
        try:
            text = prom.generate_latest(registry).decode()
        finally:
            for collector in collectors:
                collector.close()
        with report():
            click.echo(text, nl=False)
        ctx.exit(EXIT["ok"] if all(s.up for s in scrapers) else EXIT["cannot_connect"])

    stop = threading.Event()
    stopped_by: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopped_by.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with serve(registry, address) as server:
            where = ", ".join(s.label for s in scrapers)
            click.echo(f"pgwarden exporter: serving {server.url} for {where}; SIGTERM stops",
                       err=True)
            stop.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for collector in collectors:
            collector.close()
    ctx.exit(EXIT["interrupted"] if stopped_by and stopped_by[0] == signal.SIGINT
             else EXIT["ok"])
