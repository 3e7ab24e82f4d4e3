"""Hand-built snapshots for the pure policy tests, and small waits for the live ones."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pgwarden.embedded import EmbeddedPostgres
from pgwarden.sources.postgres.records import Server, Session, Settings, Snapshot

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.timezone.utc)


def session(
    pid: int,
    state: str | None = "idle",
    age: float = 1000.0,
    *,
    app: str = "web",
    user: str = "app",
    database: str = "shop",
    client_addr: str | None = "10.0.0.5",
    backend_type: str | None = "client backend",
    superuser: bool = False,
    replication: bool = False,
    query_age: float | None = None,
) -> Session:
    started = NOW - dt.timedelta(seconds=age + 10)
    changed = NOW - dt.timedelta(seconds=age)
    in_xact = state is not None and state.startswith("idle in transaction")
    return Session(
        pid=pid,
        database=database,
        user=user,
        application=app,
        client_addr=client_addr,
        client_port=5000 + pid if client_addr else None,
        backend_type=backend_type,
        state=state,
        backend_start=started,
        xact_start=changed if in_xact or state == "active" else None,
        query_start=changed,
        state_change=changed,
        backend_age=age + 10,
        xact_age=age if in_xact or state == "active" else None,
        query_age=query_age if query_age is not None else age,
        state_age=age,
        wait_event_type=None,
        wait_event=None,
        query="select 1",
        blocking_pids=(),
        is_superuser=superuser,
        is_replication_role=replication,
    )


def snapshot(sessions: list[Session], *, max_connections: int = 103, reserved: int = 3,
             self_pid: int = 1) -> Snapshot:
    return Snapshot(
        taken_at=NOW,
        server=Server(
            version_num=150000,
            version="15.0",
            self_pid=self_pid,
            role="pgwarden_guard",
            is_superuser=False,
            has_pg_monitor=True,
            has_pg_signal_backend=True,
            has_pg_use_reserved_connections=False,
            in_recovery=False,
        ),
        settings=Settings(max_connections=max_connections,
                          superuser_reserved_connections=reserved),
        sessions=tuple(sessions),
    )


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, step: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)


APP_PASSWORD = "app-pw"
GUARD_PASSWORD = "guard-pw"


def add_roles(cluster: EmbeddedPostgres) -> EmbeddedPostgres:
    """Roles every guard test cluster has: ``app`` (plain) and ``pgwarden_guard`` (least
    privilege, the SQL of docs/guard.md)."""
    cluster.execute(f"create role app login password '{APP_PASSWORD}'")
    cluster.execute(f"create role pgwarden_guard login password '{GUARD_PASSWORD}'")
    cluster.execute("grant pg_monitor, pg_signal_backend to pgwarden_guard")
    return cluster


def app_params() -> dict[str, Any]:
    return {"user": "app", "password": APP_PASSWORD}


def guard_dsn(cluster: EmbeddedPostgres) -> str:
    return cluster.conninfo(user="pgwarden_guard", password=GUARD_PASSWORD)


def live_pids(cluster: EmbeddedPostgres) -> set[int]:
    rows = cluster.execute("select pid from pg_stat_activity where backend_type = 'client backend'"
                           " and pid <> pg_backend_pid()")
    return {r[0] for r in rows}


def read_audit(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
