"""Shared fixtures: real PostgreSQL clusters (no mocks).

- ``pg``: one embedded cluster for the whole run (max_connections=60). Tests that change server
  state in ways others would notice (restart, fill it up) take their own with ``make_cluster``.
- ``make_cluster(**settings)``: a fresh cluster, closed at the end of the test.
- ``sessions``: opens real client sessions with a given application_name and state, closed at the
  end of the test.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from pgwarden.embedded import EmbeddedPostgres

from .faultproxy import FaultProxy
from .helpers import Clients


@pytest.fixture(scope="session")
def pg() -> Iterator[EmbeddedPostgres]:
    cluster = EmbeddedPostgres(max_connections=60)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., EmbeddedPostgres]]:
    made: list[EmbeddedPostgres] = []

    def make(**kwargs: Any) -> EmbeddedPostgres:
        cluster = EmbeddedPostgres(**kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


class Sessions:
    """Real client sessions in chosen states, for provoking findings and guard rules."""

    def __init__(self) -> None:
        self.conns: list[psycopg.Connection[Any]] = []
        self.threads: list[threading.Thread] = []

    def open(
        self,
        cluster: EmbeddedPostgres,
        n: int = 1,
        *,
        application_name: str = "app",
        state: str = "idle",
        **params: Any,
    ) -> list[psycopg.Connection[Any]]:
        """Open ``n`` sessions; ``state`` is ``idle``, ``idle in transaction`` or ``active``
        (an ``active`` session runs ``pg_sleep(600)`` in a thread until the test ends)."""
        out = []
        for _ in range(n):
            conn = psycopg.connect(
                cluster.conninfo(application_name=application_name, **params), autocommit=True
            )
            self.conns.append(conn)
            if state == "idle in transaction":
                conn.execute("begin")
                conn.execute("select txid_current()")
            elif state == "active":
                t = threading.Thread(target=self._sleep, args=(conn,), daemon=True)
                t.start()
                self.threads.append(t)
            out.append(conn)
        return out

    @staticmethod
    def _sleep(conn: psycopg.Connection[Any]) -> None:
        with contextlib.suppress(psycopg.Error):
            conn.execute("select pg_sleep(600)")

    def pids(self, conns: list[psycopg.Connection[Any]]) -> list[int]:
        return [c.info.backend_pid for c in conns]

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.cancel_safe(timeout=2)
            with contextlib.suppress(Exception):
                conn.close()
        for t in self.threads:
            t.join(timeout=5)


@pytest.fixture
def sessions() -> Iterator[Sessions]:
    s = Sessions()
    yield s
    s.close()


@pytest.fixture
def fault_proxy() -> Iterator[Callable[..., FaultProxy]]:
    """``fault_proxy(upstream_port, mode="pass", delay=0.0)``: a loopback :class:`FaultProxy`
    (pass / reset / blackhole / delay / deaf, drop after N answers), closed at the end."""
    made: list[FaultProxy] = []

    def make(upstream_port: int, mode: str = "pass", *, delay: float = 0.0) -> FaultProxy:
        p = FaultProxy(upstream_port, mode, delay=delay)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture
def make_bouncer() -> Iterator[Callable[..., Any]]:
    """``make_bouncer(server, **kwargs)``: a real PgBouncer (the system's), closed at the end
    of the test; skips only where pgbouncer is not installed (``.ci/run`` installs it)."""
    from pgwarden.embedded_pgbouncer import EmbeddedPgBouncer, pgbouncer_available

    if not pgbouncer_available():
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    made: list[EmbeddedPgBouncer] = []

    def make(server: EmbeddedPostgres | None = None, **kwargs: Any) -> EmbeddedPgBouncer:
        bouncer = EmbeddedPgBouncer(server, **kwargs)
        made.append(bouncer)
        return bouncer

    yield make
    for bouncer in made:
        bouncer.close()


# hypothesis: fixed examples in CI (a landing must not depend on luck); random elsewhere
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    _hypothesis_settings.load_profile("ci")


@pytest.fixture
def clients() -> Iterator[Clients]:
    """Client connections a test opens (:class:`tests.helpers.Clients`), closed after it."""
    c = Clients()
    yield c
    c.close()
