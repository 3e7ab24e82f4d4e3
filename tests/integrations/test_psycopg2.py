"""pgwarden.instrument on psycopg2's SimpleConnectionPool and ThreadedConnectionPool (real
PostgreSQL, real psycopg2)."""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg2
import psycopg2.pool
import pytest

import pgwarden
from pgwarden.embedded import EmbeddedPostgres
from pgwarden.integrations.psycopg2 import ExplainedPoolError
from pgwarden.observe import trackers

from ..helpers import eventually
from .helpers import line_of, server_pids

LOG = "pgwarden.pool"
HERE = __file__
POOLS = [psycopg2.pool.SimpleConnectionPool, psycopg2.pool.ThreadedConnectionPool]


def borrow(pool: Any) -> Any:
    conn = pool.getconn()  # checkout: psycopg2
    conn.cursor().execute("select 1")
    return conn


def drop_one(pool: Any) -> int:
    conn = pool.getconn()  # checkout: psycopg2 dropped
    return int(conn.get_backend_pid())


@pytest.mark.parametrize("cls", POOLS)
def test_leak_logged_with_file_line_then_unleaked(pg: EmbeddedPostgres, cls: Any,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    pool = cls(1, 2, pg.dsn)
    handle = pgwarden.instrument(pool, name="p2-leak", leak_threshold=0.1)
    try:
        conn = borrow(pool)
        where = f"test_psycopg2.py:{line_of(HERE, '# checkout: psycopg2')} in borrow"
        assert eventually(lambda: "connection leak?" in caplog.text)
        assert "pool 'p2-leak'" in caplog.text and where in caplog.text
        [h] = handle.holders()
        assert h.pid == conn.get_backend_pid() and h.pid in server_pids(pg)
        assert h.transaction_state == "idle in transaction" and h.holder == "MainThread"
        pool.putconn(conn)
        assert "unleaked" in caplog.text and handle.holders() == []
        s = handle.stats()
        assert (s.leaks_total, s.leaks_returned_total, s.connections) == (1, 1, 1)
    finally:
        handle.remove()
        pool.closeall()


@pytest.mark.parametrize("cls", POOLS)
def test_exhaustion_raises_pool_error_naming_the_holders(pg: EmbeddedPostgres, cls: Any) -> None:
    pool = cls(1, 1, pg.dsn)
    handle = pgwarden.instrument(pool, name="p2-full")
    try:
        held = borrow(pool)
        with pytest.raises(psycopg2.pool.PoolError) as caught:
            pool.getconn()
        err = caught.value
        assert isinstance(err, ExplainedPoolError) and isinstance(err, psycopg2.Error)
        line = line_of(HERE, "# checkout: psycopg2")
        assert str(err).startswith(
            "connection pool exhausted: pool 'p2-full' (psycopg2): 1/1 in use, 0 idle, 0 "
            f"waiting; longest holders: backend pid {held.get_backend_pid()} held ")
        assert f"test_psycopg2.py:{line} in borrow (idle in transaction)" in str(err)
        assert err.holders[0].pid in server_pids(pg)
        pool.putconn(held)
        assert handle.stats().timeouts_total == 1
    finally:
        handle.remove()
        pool.closeall()


@pytest.mark.parametrize("cls", POOLS)
def test_a_dropped_connection_is_reported_and_returned(
        pg: EmbeddedPostgres, cls: Any, caplog: pytest.LogCaptureFixture) -> None:
    pool = cls(1, 1, pg.dsn)
    handle = pgwarden.instrument(pool, name="p2-drop")
    try:
        kept = borrow(pool)
        time.sleep(0.1)
        assert handle.stats().collected_total == 0  # held by the test: not dropped
        pool.putconn(kept)
        del kept
        pid = drop_one(pool)
        assert eventually(lambda: handle.stats().collected_total == 1)
        line = line_of(HERE, "# checkout: psycopg2 dropped")
        assert (f"backend pid {pid} was dropped by the application without being returned"
                in caplog.text)
        assert f"test_psycopg2.py:{line} in drop_one" in caplog.text
        conn = pool.getconn()  # returned with putconn before this checkout: served again
        assert conn.get_backend_pid() == pid
        assert "returned the dropped connection" in caplog.text
        pool.putconn(conn)
    finally:
        handle.remove()
        pool.closeall()


def test_remove_and_twice(pg: EmbeddedPostgres) -> None:
    pool = psycopg2.pool.ThreadedConnectionPool(1, 1, pg.dsn)
    handle = pgwarden.instrument(pool)
    assert pgwarden.instrument(pool) is handle and handle.tracker in trackers()
    handle.remove()
    assert handle.tracker not in trackers()
    assert not {"getconn", "putconn", "closeall", "_connect"} & set(vars(pool))
    conn = pool.getconn()
    with pytest.raises(psycopg2.pool.PoolError) as caught:
        pool.getconn()
    assert type(caught.value) is psycopg2.pool.PoolError
    assert handle.stats().requests_total == 0
    pool.putconn(conn)
    pool.closeall()


def test_keys_close_and_closeall(pg: EmbeddedPostgres) -> None:
    pool = psycopg2.pool.ThreadedConnectionPool(0, 2, pg.dsn)
    handle = pgwarden.instrument(pool, name="p2-keys")
    a = pool.getconn("a")
    assert pool.getconn("a") is a and len(handle.holders()) == 1  # the same checkout
    assert handle.stats().connections_opened_total == 1
    pool.putconn(key="a", close=True)
    assert handle.holders() == [] and handle.stats().connections_closed_total == 1
    pool.getconn()
    pool.closeall()
    s = handle.stats()
    assert (s.connections_closed_total, len(handle.tracker.records)) == (2, 0)
    handle.remove()


# -- the same behaviour with and without pgwarden ----------------------------------------------

def restart_scenario(cluster: EmbeddedPostgres, *, instrumented: bool) -> list[str]:
    pool = psycopg2.pool.ThreadedConnectionPool(2, 3, cluster.dsn, application_name="scenario")
    handle = pgwarden.instrument(pool, leak_threshold=30) if instrumented else None
    seen = []
    try:
        conns = [pool.getconn() for _ in range(3)]
        pids = [c.get_backend_pid() for c in conns]
        conns[0].cursor().execute("select 1")  # a transaction left open: rolled back on return
        for c in conns:
            pool.putconn(c)  # the third is closed: minconn=2 are kept
        states = cluster.execute("select state from pg_stat_activity where pid = any(%s)",
                                 (pids[:2],))  # the third was closed on return
        seen.append(f"kept={len(pool._pool)} states={sorted(s for (s,) in states)}")
        cluster.restart()
        for _ in range(3):
            conn = pool.getconn()
            try:
                conn.cursor().execute("select 1")
                seen.append("ok")
            except psycopg2.Error as e:
                seen.append(type(e).__name__)
            pool.putconn(conn)
        if handle is not None:
            assert handle.holders() == []
            assert {r.pid for r in handle.tracker.records} <= server_pids(cluster)
    finally:
        if handle is not None:
            handle.remove()
        pool.closeall()
    return seen


def test_restart_behaves_as_without_instrumentation(make_cluster: Any) -> None:
    cluster = make_cluster(max_connections=20)
    bare = restart_scenario(cluster, instrumented=False)
    instrumented = restart_scenario(cluster, instrumented=True)
    assert instrumented == bare
    assert bare[0] == "kept=2 states=['idle', 'idle']"
    # psycopg2's pool hands out the dead connections: each caller sees the restart once
    assert bare[1:3] == ["OperationalError", "OperationalError"] and bare[3] == "ok"
