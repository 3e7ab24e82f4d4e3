"""``pgwarden exporter --pgbouncer``: the values match what the test provoked on a real PgBouncer
(clients waiting, an exhausted pool, traffic), up 0 with one log line while it is stopped and 1
when it is back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from pgwarden.conninfo import resolve
from pgwarden.embedded import EmbeddedPostgres
from pgwarden.metrics import BouncerScraper, ServerCollector

from ..helpers import Clients
from .helpers import parse, pgwarden, total, value


def _scraper(bouncer: Any) -> BouncerScraper:
    return BouncerScraper(resolve(bouncer.admin_dsn, command="exporter"), min_interval=0.0)


def _scrape(*scrapers: BouncerScraper) -> dict[str, Any]:
    registry = CollectorRegistry()
    registry.register(ServerCollector(list(scrapers)))
    return parse(generate_latest(registry).decode())


def _until(pred: Callable[[], bool], seconds: float = 10) -> None:
    end = time.monotonic() + seconds
    while not pred():
        assert time.monotonic() < end, "condition not met"
        time.sleep(0.05)


def test_waiting_clients_and_an_exhausted_pool(make_cluster: Callable[..., EmbeddedPostgres],
                                               make_bouncer: Callable[..., Any],
                                               clients: Clients) -> None:
    pg = make_cluster(max_connections=20)
    bouncer = make_bouncer(pg, settings={"default_pool_size": 2, "reserve_pool_size": 0,
                                         "max_client_conn": 50, "max_db_connections": 5})
    s = _scraper(bouncer)
    dsn = bouncer.conninfo()
    pool = {"database": "postgres", "user": pg.user, "pool_mode": "transaction"}
    clients.open(dsn, 2, in_transaction=True)  # both server connections of the pool held
    clients.wait_in_background(dsn, 3)
    _until(lambda: value(_scrape(s), "pgwarden_pgbouncer_pool_clients", state="waiting",
                         **pool) == 3)
    time.sleep(0.3)
    m = _scrape(s)
    assert value(m, "pgwarden_pgbouncer_up") == 1
    assert value(m, "pgwarden_pgbouncer_pool_clients", state="active", **pool) == 2
    assert value(m, "pgwarden_pgbouncer_pool_servers", state="active", **pool) == 2
    assert total(m, "pgwarden_pgbouncer_pool_servers", state="idle") == 0
    assert value(m, "pgwarden_pgbouncer_pool_client_maxwait_seconds", **pool) >= 0.3
    db = {"database": "postgres", "pool_mode": "transaction"}
    assert value(m, "pgwarden_pgbouncer_database_pool_size", **db) == 2
    assert value(m, "pgwarden_pgbouncer_database_current_connections", **db) == 2
    assert value(m, "pgwarden_pgbouncer_database_max_connections", **db) == 5
    assert value(m, "pgwarden_pgbouncer_database_paused", **db) == 0
    assert value(m, "pgwarden_pgbouncer_config_max_client_connections") == 50
    assert value(m, "pgwarden_pgbouncer_config_max_db_connections") == 5
    assert value(m, "pgwarden_pgbouncer_version_info",
                 version=str(bouncer.version)) == 1
    # the holders finish: the waiting clients are served, the wait is counted
    for c in clients.conns[:2]:
        c.execute("commit")
    _until(lambda: value(_scrape(s), "pgwarden_pgbouncer_pool_clients", state="waiting",
                         **pool) == 0)
    bouncer.admin("PAUSE postgres")
    m = _scrape(s)
    assert value(m, "pgwarden_pgbouncer_database_paused", **db) == 1
    bouncer.admin("RESUME postgres")
    _until(lambda: value(_scrape(s), "pgwarden_pgbouncer_stats_client_wait_seconds_total",
                         database="postgres") >= 0.3, 5)  # SHOW STATS folds in every second
    m = _scrape(s)
    assert value(m, "pgwarden_pgbouncer_stats_transactions_pooled_total",
                 database="postgres") >= 5
    assert value(m, "pgwarden_pgbouncer_stats_received_bytes_total", database="postgres") > 0
    s.close()


def test_up_0_when_pgbouncer_stops_and_1_when_it_is_back(
        make_cluster: Callable[..., EmbeddedPostgres], make_bouncer: Callable[..., Any],
        caplog: pytest.LogCaptureFixture) -> None:
    pg = make_cluster(max_connections=20)
    bouncer = make_bouncer(pg)
    s = _scraper(bouncer)
    assert value(_scrape(s), "pgwarden_pgbouncer_up") == 1
    bouncer.stop()
    with caplog.at_level(logging.DEBUG, logger="pgwarden.metrics"):
        down = _scrape(s)
        again = _scrape(s)
    assert value(down, "pgwarden_pgbouncer_up") == 0 == value(again, "pgwarden_pgbouncer_up")
    assert "pgwarden_pgbouncer_pool_clients" not in down  # no stale numbers
    assert value(again, "pgwarden_pgbouncer_scrape_errors_total") == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "pgwarden_pgbouncer_up 0" in warnings[0]
    assert bouncer.admin_password not in warnings[0] and "\n" not in warnings[0]
    bouncer.start()
    assert value(_scrape(s), "pgwarden_pgbouncer_up") == 1
    s.close()


def test_cli_exports_postgresql_and_pgbouncer_without_mixing_labels(
        make_cluster: Callable[..., EmbeddedPostgres], make_bouncer: Callable[..., Any]
        ) -> None:
    pg = make_cluster(max_connections=20)
    bouncer = make_bouncer(pg)
    r = pgwarden("exporter", "--once", "--dsn", pg.url, "--pgbouncer", bouncer.admin_url)
    assert r.returncode == 0, r.stderr
    m = parse(r.stdout)
    assert value(m, "pgwarden_up") == 1 and value(m, "pgwarden_pgbouncer_up") == 1
    # one target of each kind: no target label on either (adding a PgBouncer does not change
    # the PostgreSQL series)
    assert all("target" not in dict(k) for k in m["pgwarden_up"])
    assert bouncer.admin_password not in r.stdout + r.stderr
    # PgBouncer alone; a second one that is down: up 0 for it, exit 3, one line, no password
    r = pgwarden("exporter", "--once", "--pgbouncer", bouncer.admin_url, "--pgbouncer",
                 "postgresql://nobody:secret-pw@127.0.0.1:1/pgbouncer")
    assert r.returncode == 3, r.stderr
    m = parse(r.stdout)
    assert "pgwarden_up" not in m
    assert sorted(m["pgwarden_pgbouncer_up"].values()) == [0.0, 1.0]
    assert "secret-pw" not in r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    # a malformed DSN: usage error, one line, no secret
    r = pgwarden("exporter", "--once", "--pgbouncer",
                 "postgresql://x:secret-pw@127.0.0.1:notaport/pgbouncer")
    assert r.returncode == 64, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "secret-pw" not in r.stderr
