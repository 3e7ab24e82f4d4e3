"""The doctor's PgBouncer rules: pure functions from a PgBouncer snapshot (and, when the doctor
also reads PostgreSQL, its snapshot) to findings.

=================================  ========================================================
id                                 when
=================================  ========================================================
``pgbouncer_clients_waiting``      a pool has clients waiting for a server (``cl_waiting``)
                                   for ``pgbouncer_wait_after`` (1 s) or more; critical once
                                   the oldest waited half of ``query_wait_timeout``
``pgbouncer_pool_exhausted``       a pool holds its ``pool_size`` (+ reserve) servers and
                                   clients wait
``pgbouncer_max_db_connections``   a database's server connections reached
                                   ``max_db_connections`` and clients wait
``pgbouncer_server_slots``         PgBouncer's server connections reached PostgreSQL's usable
                                   slots (critical), or its pools together may open more
                                   than them (warning)
``pgbouncer_session_mode_idle``    session mode: ``pgbouncer_idle_clients`` (5) or more
                                   clients idle past ``pgbouncer_idle_after`` (60 s), each
                                   holding a server connection
``pgbouncer_prepared_statements``  transaction/statement mode on a PgBouncer that does not
                                   track prepared statements (before 1.21, or
                                   ``max_prepared_statements`` = 0): warning when PgBouncer's
                                   own counters (1.24+ ``SHOW STATS``) show clients preparing
                                   statements, else info with what each driver needs
=================================  ========================================================

What PgBouncer cannot show: before 1.24 its admin console counts no prepared statements, and
the errors a driver gets ("prepared statement "_pg3_0" does not exist", SQLSTATE 26000 /
42P05) go from PostgreSQL to that client only; ``pgwarden explain`` maps them to the driver
setting that fixes them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..pgbouncer.drivers import tracks_prepared_statements
from ..sources.pgbouncer.records import BouncerSnapshot, Pool
from ..sources.postgres.records import Snapshot
from .rules import Finding

__all__ = ["BouncerThresholds", "evaluate_pgbouncer"]


@dataclass(frozen=True, slots=True)
class BouncerThresholds:
    """Where the PgBouncer rules start to speak (seconds as floats).

    ``wait_after`` 1 s: a client waiting a second for a server is a queue, not a blip.
    ``idle_after`` 60 s and ``idle_clients`` 5: session-mode clients idle a minute hold a
    server connection each for nothing; transaction mode would share them.
    """

    wait_after: float = 1.0
    idle_after: float = 60.0
    idle_clients: int = 5

    def validate(self) -> BouncerThresholds:
        if self.wait_after < 0 or self.idle_after <= 0 or self.idle_clients < 1:
            raise ValueError("pgbouncer thresholds: wait_after >= 0, idle_after > 0 and "
                             "idle_clients >= 1")
        return self


def _pool_size(b: BouncerSnapshot, pool: Pool) -> tuple[int, int]:
    """(pool_size, reserve) of ``pool``: its database's, else the defaults."""
    db = b.database(pool.database)
    size = db.pool_size if db is not None and db.pool_size else b.setting_int(
        "default_pool_size", 20)
    reserve = db.reserve_pool if db is not None and db.reserve_pool else b.setting_int(
        "reserve_pool_size", 0)
    return size, reserve


def _apps_of(b: BouncerSnapshot, pool: Pool, state: str | None = None) -> tuple[str, ...]:
    apps = Counter(c.application_name or "(no application_name)" for c in b.clients
                   if c.database == pool.database and c.user == pool.user
                   and (state is None or c.state == state))
    return tuple(a for a, _ in apps.most_common())


def clients_waiting(b: BouncerSnapshot, t: BouncerThresholds) -> list[Finding]:
    qwt = b.setting_seconds("query_wait_timeout", 120.0)
    out = []
    for p in b.pools:
        if p.cl_waiting <= 0 or p.maxwait < t.wait_after:
            continue
        critical = qwt > 0 and p.maxwait >= qwt / 2
        size, reserve = _pool_size(b, p)
        out.append(Finding(
            id="pgbouncer_clients_waiting",
            severity="critical" if critical else "warning",
            title=f"PgBouncer pool {p.key}: {p.cl_waiting} client(s) waiting for a server, "
                  f"the oldest for {p.maxwait:.1f} s"
                  + (f" (query_wait_timeout {qwt:g} s disconnects them)" if qwt else ""),
            applications=_apps_of(b, p, "waiting") or _apps_of(b, p),
            evidence={"database": p.database, "user": p.user, "cl_waiting": p.cl_waiting,
                      "cl_active": p.cl_active, "maxwait_seconds": round(p.maxwait, 3),
                      "servers": p.servers, "sv_active": p.sv_active, "sv_idle": p.sv_idle,
                      "pool_size": size, "reserve_pool_size": reserve,
                      "query_wait_timeout": qwt, "pool_mode": p.pool_mode},
            fix="Find what holds the servers: long transactions (in transaction mode a server "
                "is held for a whole transaction; see pgwarden doctor on PostgreSQL for idle "
                "in transaction sessions). Then keep transactions short, or raise "
                "default_pool_size / reserve_pool_size within PostgreSQL's usable slots "
                "(`pgwarden budget`).",
        ))
    return out


def pool_exhausted(b: BouncerSnapshot, t: BouncerThresholds) -> list[Finding]:
    out = []
    for p in b.pools:
        size, reserve = _pool_size(b, p)
        if p.cl_waiting <= 0 or p.servers < size:
            continue
        out.append(Finding(
            id="pgbouncer_pool_exhausted",
            severity="warning",
            title=f"PgBouncer pool {p.key} is exhausted: {p.servers} server connections of "
                  f"pool_size {size}" + (f" + reserve {reserve}" if reserve else "")
                  + f", {p.cl_waiting} client(s) waiting",
            applications=_apps_of(b, p),
            evidence={"database": p.database, "user": p.user, "servers": p.servers,
                      "pool_size": size, "reserve_pool_size": reserve,
                      "cl_waiting": p.cl_waiting, "cl_active": p.cl_active,
                      "maxwait_seconds": round(p.maxwait, 3)},
            fix=f"Raise pool_size for {p.database} (or default_pool_size) if PostgreSQL has "
                "usable slots to spare (`pgwarden budget --dsn ...`), add reserve_pool_size "
                "for bursts, or shorten the transactions that hold the servers.",
        ))
    return out


def max_db_connections(b: BouncerSnapshot, t: BouncerThresholds) -> list[Finding]:
    out = []
    waiting: Counter[str] = Counter()
    for p in b.pools:
        waiting[p.database] += p.cl_waiting
    for db in b.databases:
        cap = db.max_connections or b.setting_int("max_db_connections", 0)
        if cap <= 0 or db.current_connections < cap or waiting[db.name] <= 0:
            continue
        out.append(Finding(
            id="pgbouncer_max_db_connections",
            severity="warning",
            title=f"PgBouncer database {db.name}: {db.current_connections} server connections "
                  f"reached max_db_connections {cap}; {waiting[db.name]} client(s) waiting",
            evidence={"database": db.name, "current_connections": db.current_connections,
                      "max_db_connections": cap, "cl_waiting": waiting[db.name]},
            fix="max_db_connections caps the servers of all users of this database: raise it "
                "within PostgreSQL's usable slots, or shorten transactions.",
        ))
    return out


def server_slots(b: BouncerSnapshot, pg: Snapshot | None) -> list[Finding]:
    if pg is None:
        return []
    usable = pg.usable_slots
    ours = b.server_connections
    remote = {s.remote_pid for s in b.servers}
    others = sum(1 for s in pg.client_backends if s.pid not in remote)
    waiting = sum(p.cl_waiting for p in b.pools)
    potential = 0
    for p in b.pools:
        size, reserve = _pool_size(b, p)
        potential += size + reserve
    cap = b.setting_int("max_db_connections", 0)
    if cap:
        potential = min(potential, cap * max(1, len({p.database for p in b.pools})))
    evidence = {"server_connections": ours, "usable_slots": usable,
                "other_sessions": others, "cl_waiting": waiting,
                "pools_may_open": potential}
    if ours + others >= usable:
        return [Finding(
            id="pgbouncer_server_slots",
            severity="critical",
            title=f"PostgreSQL is full: PgBouncer holds {ours} server connections and "
                  f"{others} other sessions take the rest of the {usable} usable slots"
                  + (f"; {waiting} client(s) wait in PgBouncer" if waiting else ""),
            evidence=evidence,
            fix="Cap PgBouncer below the usable slots minus the direct consumers: "
                "max_db_connections (and default_pool_size) in pgbouncer.ini, sized by "
                "`pgwarden budget` / `pgwarden pgbouncer init`; PgBouncer's server logins "
                "otherwise fail with 'too many clients already'.",
        )]
    if potential > usable - others:
        return [Finding(
            id="pgbouncer_server_slots",
            severity="warning",
            title=f"PgBouncer's pools may open {potential} server connections, more than the "
                  f"{usable - others} usable slots the other sessions leave",
            evidence=evidence,
            fix="Set max_db_connections (per database) so PgBouncer never asks PostgreSQL for "
                "more than it has (`pgwarden pgbouncer init` sizes it).",
        )]
    return []


def session_mode_idle(b: BouncerSnapshot, t: BouncerThresholds) -> list[Finding]:
    out = []
    for p in b.pools:
        if p.pool_mode != "session":
            continue
        idle = [c for c in b.clients
                if c.database == p.database and c.user == p.user and c.state == "active"
                and c.link and c.request_time is not None
                and (b.taken_at - c.request_time).total_seconds() >= t.idle_after]
        if len(idle) < t.idle_clients:
            continue
        apps = Counter(c.application_name or "(no application_name)" for c in idle)
        out.append(Finding(
            id="pgbouncer_session_mode_idle",
            severity="warning",
            title=f"PgBouncer pool {p.key} is in session mode: {len(idle)} clients idle for "
                  f"{t.idle_after:g} s or more each hold a server connection",
            applications=tuple(a for a, _ in apps.most_common()),
            evidence={"database": p.database, "user": p.user, "idle_clients": len(idle),
                      "servers": p.servers, "by_application": dict(apps),
                      "idle_after_seconds": t.idle_after},
            fix="Use pool_mode = transaction for these clients (a server is then held only "
                "during a transaction; mind the drivers' settings: `pgwarden pgbouncer init`), "
                "or close idle connections in the clients' pools (max_idle).",
        ))
    return out


def prepared_statements(b: BouncerSnapshot, t: BouncerThresholds) -> list[Finding]:
    modes = {p.pool_mode for p in b.pools} | {b.pool_mode}
    if not modes & {"transaction", "statement"}:
        return []
    mps = b.setting_int("max_prepared_statements", 0) if b.setting(
        "max_prepared_statements") is not None else None
    if tracks_prepared_statements(b.version, mps):
        return []
    parses = sum(s.total_client_parse_count or 0 for s in b.stats)
    pools = [p.key for p in b.pools if p.pool_mode in ("transaction", "statement")]
    observed = parses > 0
    return [Finding(
        id="pgbouncer_prepared_statements",
        severity="warning" if observed else "info",
        title=(f"clients prepared {parses} statements through PgBouncer {b.version} in "
               "transaction mode, which does not track them"
               if observed else
               f"PgBouncer {b.version} in transaction mode does not track prepared statements: "
               "drivers must not use them"),
        evidence={"version": str(b.version), "max_prepared_statements": mps,
                  "transaction_mode_pools": pools, "client_parse_count": parses if observed
                  else None},
        fix="Per driver: psycopg prepare_threshold=None; asyncpg statement_cache_size=0; "
            "SQLAlchemy+asyncpg connect_args statement_cache_size=0, "
            "prepared_statement_cache_size=0 and a unique prepared_statement_name_func; "
            "PostgREST db-prepared-statements=false (`pgwarden pgbouncer init` prints them); "
            "or PgBouncer 1.21+ with max_prepared_statements = 200. Otherwise clients fail "
            "intermittently with 'prepared statement \"...\" does not exist' (SQLSTATE 26000) "
            "or '... already exists' (42P05); `pgwarden explain` maps those errors.",
    )]


def evaluate_pgbouncer(b: BouncerSnapshot, pg: Snapshot | None = None,
                       thresholds: BouncerThresholds | None = None) -> list[Finding]:
    """Every PgBouncer rule; findings in rule order (the doctor sorts by severity)."""
    t = thresholds or BouncerThresholds()
    findings: list[Finding] = []
    findings += clients_waiting(b, t)
    findings += pool_exhausted(b, t)
    findings += max_db_connections(b, t)
    findings += server_slots(b, pg)
    findings += session_mode_idle(b, t)
    findings += prepared_statements(b, t)
    return findings
