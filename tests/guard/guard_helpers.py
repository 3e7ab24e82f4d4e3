"""Hand-built snapshots for the pure policy tests, and small waits for the live ones."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from pgwarden.activity.records import Server, Session, Settings, Snapshot

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
