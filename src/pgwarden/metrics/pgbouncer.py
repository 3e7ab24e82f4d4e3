"""PgBouncer's metrics: one look at its admin console per scrape per target
(:func:`pgwarden.sources.pgbouncer.take`), turned into Prometheus samples.

- :func:`bouncer_samples` is pure: one :class:`~pgwarden.sources.pgbouncer.BouncerSnapshot` ->
  :class:`~pgwarden.metrics.registry.Sample` records (:data:`PGBOUNCER_METRICS`, documented
  in docs/exporter.md with the pgbouncer_exporter name of each).
- :class:`BouncerScraper` is the server's :class:`~pgwarden.metrics.server.TargetScraper` for
  an admin console: the same long-lived connection, the same cache (one look at most every
  ``min_interval`` seconds) and the same rule for a target that is down
  (``pgwarden_pgbouncer_up 0`` and one log line, never an exception).

Names: ``pgwarden_pgbouncer_*``, pgwarden's prefix and conventions (base units, ``_total``
counters, states as a ``state`` label), not pgbouncer_exporter's ``pgbouncer_*``: both can
run side by side on one Prometheus without colliding, and one query such as
``{__name__=~"pgwarden_.*"}`` finds everything pgwarden exports. docs/exporter.md maps every
name to pgbouncer_exporter's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import psycopg

from ..sources import pgbouncer as source
from ..sources.pgbouncer import BouncerSnapshot
from .registry import LabelCap, MetricSpec, Sample, info_sample
from .server import Caps, TargetScraper

__all__ = ["PGBOUNCER_METRICS", "BouncerScraper", "bouncer_samples"]

_P = "pgwarden_pgbouncer_"
_POOL = ("database", "user", "pool_mode")

UP = MetricSpec(_P + "up", "gauge", (),
                "1 if the last look at PgBouncer's admin console succeeded, 0 if PgBouncer is "
                "down or refused the exporter's user")
SCRAPE_DURATION = MetricSpec(_P + "scrape_duration_seconds", "gauge", (),
                             "Seconds the last look at the admin console took")
SNAPSHOTS = MetricSpec(_P + "snapshots", "counter", (),
                       "Looks at the admin console taken (scrapes within --min-interval reuse "
                       "the last one)")
SCRAPE_ERRORS = MetricSpec(_P + "scrape_errors", "counter", (),
                           "Looks at the admin console that failed (down, refused, lost)")
VERSION = MetricSpec(_P + "version", "info", ("version",),
                     "PgBouncer's version (SHOW VERSION)")
CLIENTS = MetricSpec(_P + "pool_clients", "gauge", (*_POOL, "state"),
                     "Client connections per pool by state (SHOW POOLS cl_*): active (linked "
                     "to a server or idle), waiting (sent a query, no server yet), "
                     "active_cancel_req, waiting_cancel_req")
SERVERS = MetricSpec(_P + "pool_servers", "gauge", (*_POOL, "state"),
                     "Server connections per pool by state (SHOW POOLS sv_*): active (linked "
                     "to a client), idle, used, tested, login, active_cancel, being_canceled")
MAXWAIT = MetricSpec(_P + "pool_client_maxwait_seconds", "gauge", _POOL,
                     "Seconds the oldest waiting client of the pool has waited (maxwait + "
                     "maxwait_us)")
QUERIES = MetricSpec(_P + "stats_queries_pooled", "counter", ("database",),
                     "SQL queries pooled (SHOW STATS total_query_count)")
TRANSACTIONS = MetricSpec(_P + "stats_transactions_pooled", "counter", ("database",),
                          "SQL transactions pooled (total_xact_count)")
RECEIVED = MetricSpec(_P + "stats_received_bytes", "counter", ("database",),
                      "Bytes received from clients (total_received)")
SENT = MetricSpec(_P + "stats_sent_bytes", "counter", ("database",),
                  "Bytes sent to clients (total_sent)")
QUERY_TIME = MetricSpec(_P + "stats_queries_duration_seconds", "counter", ("database",),
                        "Seconds spent connected to PostgreSQL running queries "
                        "(total_query_time)")
XACT_TIME = MetricSpec(_P + "stats_server_in_transaction_seconds", "counter", ("database",),
                       "Seconds spent connected to PostgreSQL in a transaction, idle in "
                       "transaction included (total_xact_time)")
WAIT_TIME = MetricSpec(_P + "stats_client_wait_seconds", "counter", ("database",),
                       "Seconds clients spent waiting for a server (total_wait_time)")
DB_POOL_SIZE = MetricSpec(_P + "database_pool_size", "gauge", ("database", "pool_mode"),
                          "Most server connections per pool of the database (pool_size or "
                          "default_pool_size; SHOW DATABASES)")
DB_RESERVE = MetricSpec(_P + "database_reserve_pool_size", "gauge", ("database", "pool_mode"),
                        "Extra server connections after reserve_pool_timeout (reserve_pool)")
DB_MIN = MetricSpec(_P + "database_min_pool_size", "gauge", ("database", "pool_mode"),
                    "Server connections kept open (min_pool_size)")
DB_MAX = MetricSpec(_P + "database_max_connections", "gauge", ("database", "pool_mode"),
                    "max_db_connections of the database (0: unlimited)")
DB_CURRENT = MetricSpec(_P + "database_current_connections", "gauge",
                        ("database", "pool_mode"),
                        "Server connections the database has now")
DB_PAUSED = MetricSpec(_P + "database_paused", "gauge", ("database", "pool_mode"),
                       "1 if the database is paused (PAUSE)")
DB_DISABLED = MetricSpec(_P + "database_disabled", "gauge", ("database", "pool_mode"),
                         "1 if the database is disabled (DISABLE)")
MAX_CLIENT_CONN = MetricSpec(_P + "config_max_client_connections", "gauge", (),
                             "max_client_conn: client connections PgBouncer accepts")
MAX_USER_CONN = MetricSpec(_P + "config_max_user_connections", "gauge", (),
                           "max_user_connections: server connections per user (0: unlimited)")
MAX_DB_CONN = MetricSpec(_P + "config_max_db_connections", "gauge", (),
                         "max_db_connections: server connections per database (0: unlimited)")
QUERY_WAIT_TIMEOUT = MetricSpec(_P + "config_query_wait_timeout_seconds", "gauge", (),
                                "query_wait_timeout: seconds a client may wait for a server "
                                "before it gets an error (0: forever)")

#: Every PgBouncer metric, in the order of docs/exporter.md.
PGBOUNCER_METRICS = (UP, SCRAPE_DURATION, SNAPSHOTS, SCRAPE_ERRORS, VERSION, CLIENTS, SERVERS,
                     MAXWAIT, QUERIES, TRANSACTIONS, RECEIVED, SENT, QUERY_TIME, XACT_TIME,
                     WAIT_TIME, DB_POOL_SIZE, DB_RESERVE, DB_MIN, DB_MAX, DB_CURRENT,
                     DB_PAUSED, DB_DISABLED, MAX_CLIENT_CONN, MAX_USER_CONN, MAX_DB_CONN,
                     QUERY_WAIT_TIMEOUT)

_CLIENT_STATES = (("active", "cl_active"), ("waiting", "cl_waiting"),
                  ("active_cancel_req", "cl_active_cancel_req"),
                  ("waiting_cancel_req", "cl_waiting_cancel_req"))
_SERVER_STATES = (("active", "sv_active"), ("idle", "sv_idle"), ("used", "sv_used"),
                  ("tested", "sv_tested"), ("login", "sv_login"),
                  ("active_cancel", "sv_active_cancel"), ("being_canceled", "sv_being_canceled"))
_STATS = ((QUERIES, "total_query_count"), (TRANSACTIONS, "total_xact_count"),
          (RECEIVED, "total_received"), (SENT, "total_sent"), (QUERY_TIME, "total_query_time"),
          (XACT_TIME, "total_xact_time"), (WAIT_TIME, "total_wait_time"))


def bouncer_samples(snap: BouncerSnapshot, caps: Caps | None = None) -> list[Sample]:
    """PgBouncer's samples for one look at its admin console (pure; no I/O). Seconds are
    floats (PgBouncer's microseconds converted by the source). Databases and users past
    ``caps.databases`` / ``caps.users`` are summed (maxwait: the longest) under ``(other)``;
    the admin console's own ``pgbouncer`` database is left out (the source drops it)."""
    caps = caps or Caps()
    # (databases ranked by their clients; those with none, from SHOW STATS / DATABASES, last)
    db_counts = Counter({d.name: 0 for d in snap.databases})
    db_counts.update({s.database: 0 for s in snap.stats})
    for p in snap.pools:
        db_counts[p.database] += p.clients
    db_of = LabelCap(db_counts, caps.databases)
    user_of = LabelCap(Counter(p.user for p in snap.pools), caps.users)
    mode = snap.pool_mode
    out: list[Sample] = [info_sample(VERSION, (str(snap.version),),
                                     {"version_text": snap.version_text})]
    clients: Counter[tuple[str, ...]] = Counter()
    servers: Counter[tuple[str, ...]] = Counter()
    maxwait: dict[tuple[str, ...], float] = {}
    for p in snap.pools:
        key = (db_of(p.database), user_of(p.user), p.pool_mode or mode)
        for state, column in _CLIENT_STATES:
            clients[(*key, state)] += getattr(p, column)
        for state, column in _SERVER_STATES:
            servers[(*key, state)] += getattr(p, column)
        maxwait[key] = max(maxwait.get(key, 0.0), p.maxwait)
    out.extend(Sample(CLIENTS, k, n) for k, n in sorted(clients.items()))
    out.extend(Sample(SERVERS, k, n) for k, n in sorted(servers.items()))
    out.extend(Sample(MAXWAIT, k, w) for k, w in sorted(maxwait.items()))
    for spec, column in _STATS:
        per_db: Counter[str] = Counter()
        for st in snap.stats:
            per_db[db_of(st.database)] += getattr(st, column)
        out.extend(Sample(spec, (db,), v) for db, v in sorted(per_db.items()))
    per_database: dict[MetricSpec, Counter[tuple[str, ...]]] = {}
    for d in snap.databases:
        db_key = (db_of(d.name), d.pool_mode or mode)
        for spec, value in ((DB_POOL_SIZE, d.pool_size), (DB_RESERVE, d.reserve_pool),
                            (DB_MIN, d.min_pool_size), (DB_MAX, d.max_connections),
                            (DB_CURRENT, d.current_connections), (DB_PAUSED, d.paused),
                            (DB_DISABLED, d.disabled)):
            per_database.setdefault(spec, Counter())[db_key] += int(value)
    for spec, values in per_database.items():
        out.extend(Sample(spec, k, v) for k, v in sorted(values.items()))
    out.extend(_config(snap))
    return out


def _config(snap: BouncerSnapshot) -> Iterable[Sample]:
    for spec, key in ((MAX_CLIENT_CONN, "max_client_conn"),
                      (MAX_USER_CONN, "max_user_connections"),
                      (MAX_DB_CONN, "max_db_connections")):
        if snap.setting(key) is not None:
            yield Sample(spec, (), snap.setting_int(key))
    if snap.setting("query_wait_timeout") is not None:
        yield Sample(QUERY_WAIT_TIMEOUT, (), snap.setting_seconds("query_wait_timeout"))


class BouncerScraper(TargetScraper):
    """Looks at one PgBouncer's admin console for the exporter (thread-safe): the server's
    :class:`~pgwarden.metrics.server.TargetScraper` with PgBouncer's source and metrics.

    Args:
        target: the admin console (database ``pgbouncer``, a user in ``admin_users`` or
            ``stats_users``), resolved with ``command="exporter"``.
        min_interval: seconds a look is reused for (>= 0).
        caps: label caps for ``database`` and ``user``.

    Raises:
        ConfigError: ``min_interval`` below 0.
    """

    _specs = (UP, SCRAPE_DURATION, SNAPSHOTS, SCRAPE_ERRORS)

    def _body(self) -> list[Sample]:
        return bouncer_samples(self._snapshot(), self.caps)  # type: ignore[arg-type]

    def _open(self) -> psycopg.Connection[Any]:
        return source.connect(self.target)

    def _take(self, conn: psycopg.Connection[Any]) -> Any:
        return source.take(conn)
