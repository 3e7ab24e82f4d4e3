"""pgwarden.instrument on psycopg_pool's ConnectionPool and AsyncConnectionPool (real
PostgreSQL, real psycopg_pool)."""

from __future__ import annotations

import gc
import logging
import threading
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

import pgwarden
from pgwarden.embedded import EmbeddedPostgres
from pgwarden.integrations.psycopg_pool import ExplainedPoolTimeout
from pgwarden.observe import trackers

from ..helpers import aeventually, eventually
from .helpers import line_of, server_pids

LOG = "pgwarden.pool"
HERE = __file__


def borrow(pool: ConnectionPool[Any]) -> psycopg.Connection[Any]:
    conn = pool.getconn()  # checkout: psycopg_pool sync
    conn.execute("begin")
    return conn


async def aborrow(pool: AsyncConnectionPool[Any]) -> psycopg.AsyncConnection[Any]:
    conn = await pool.getconn()  # checkout: psycopg_pool async
    return conn


def drop_one(pool: ConnectionPool[Any]) -> None:
    conn = pool.getconn()  # checkout: psycopg_pool dropped
    conn.execute("select 1")


def test_leak_logged_with_file_line_then_unleaked(pg: EmbeddedPostgres,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    with ConnectionPool(pg.dsn, min_size=1, max_size=2, name="pp-leak") as pool:
        handle = pgwarden.instrument(pool, leak_threshold=0.1)
        conn = borrow(pool)
        where = f"test_psycopg_pool.py:{line_of(HERE, '# checkout: psycopg_pool sync')} in borrow"
        assert eventually(lambda: "connection leak?" in caplog.text)
        assert "pool 'pp-leak'" in caplog.text and where in caplog.text
        [h] = handle.holders()
        assert h.pid == conn.info.backend_pid and h.pid in server_pids(pg)
        assert h.transaction_state == "idle in transaction" and h.holder == "MainThread"
        pool.putconn(conn)
        assert "unleaked" in caplog.text and handle.holders() == []
        with pool.connection() as c:  # the context manager goes through the same methods
            [h] = handle.holders()
            assert h.pid == c.info.backend_pid and h.function == \
                "test_leak_logged_with_file_line_then_unleaked"
        s = handle.stats()
        assert (s.requests_total, s.leaks_total, s.leaks_returned_total) == (2, 1, 1)
        handle.remove()


async def test_async_leak_logged_then_unleaked(pg: EmbeddedPostgres,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    async with AsyncConnectionPool(pg.dsn, min_size=1, max_size=2, name="pp-aleak") as pool:
        handle = pgwarden.instrument(pool, leak_threshold=0.1)
        conn = await aborrow(pool)
        where = f"test_psycopg_pool.py:{line_of(HERE, '# checkout: psycopg_pool async')} in " \
                "aborrow"
        assert await aeventually(lambda: "connection leak?" in caplog.text)
        assert where in caplog.text
        [h] = handle.holders()
        assert h.holder.startswith("Task-") and h.pid in server_pids(pg)
        await pool.putconn(conn)
        assert "unleaked" in caplog.text
        handle.remove()


def test_exhaustion_raises_pool_timeout_naming_the_holders(pg: EmbeddedPostgres) -> None:
    with ConnectionPool(pg.dsn, min_size=1, max_size=1, timeout=0.2, name="pp-full") as pool:
        handle = pgwarden.instrument(pool)
        held = borrow(pool)
        with pytest.raises(PoolTimeout) as caught:
            pool.getconn()
        err = caught.value
        assert isinstance(err, ExplainedPoolTimeout) and isinstance(err, psycopg.OperationalError)
        line = line_of(HERE, "# checkout: psycopg_pool sync")
        assert str(err).startswith(
            "couldn't get a connection after 0.20 sec: pool 'pp-full' (psycopg_pool): 1/1 in "
            f"use, 0 idle, 1 waiting; longest holders: backend pid {held.info.backend_pid} held ")
        assert f"test_psycopg_pool.py:{line} in borrow (idle in transaction)" in str(err)
        assert err.holders[0].pid in server_pids(pg)
        with pytest.raises(ExplainedPoolTimeout), pool.connection(timeout=0.1):
            pass
        assert handle.stats().timeouts_total == 2
        pool.putconn(held)
        handle.remove()


async def test_async_exhaustion_names_the_holders(pg: EmbeddedPostgres) -> None:
    async with AsyncConnectionPool(pg.dsn, min_size=1, max_size=1, timeout=0.2) as pool:
        handle = pgwarden.instrument(pool, name="pp-afull")
        held = await aborrow(pool)
        with pytest.raises(PoolTimeout) as caught:
            async with pool.connection():
                pass
        assert isinstance(caught.value, ExplainedPoolTimeout)
        assert "in aborrow (idle)" in str(caught.value)
        assert caught.value.holders[0].pid == held.info.backend_pid
        await pool.putconn(held)
        handle.remove()


def test_a_dropped_connection_is_reported(pg: EmbeddedPostgres,
                                          caplog: pytest.LogCaptureFixture) -> None:
    with ConnectionPool(pg.dsn, min_size=1, max_size=2, name="pp-gc") as pool:
        handle = pgwarden.instrument(pool)
        drop_one(pool)
        gc.collect()
        assert eventually(lambda: handle.stats().collected_total == 1)
        line = line_of(HERE, "# checkout: psycopg_pool dropped")
        assert "garbage-collected without being returned" in caplog.text
        assert f"test_psycopg_pool.py:{line} in drop_one" in caplog.text
        assert handle.holders() == []
        handle.remove()


def test_remove_and_twice(pg: EmbeddedPostgres) -> None:
    with ConnectionPool(pg.dsn, min_size=1, max_size=1, timeout=0.1, name="pp-rm") as pool:
        handle = pgwarden.instrument(pool)
        assert pgwarden.instrument(pool) is handle and handle.tracker in trackers()
        handle.remove()
        assert handle.tracker not in trackers()
        assert not {"getconn", "putconn", "_connect"} & set(vars(pool))
        with pool.connection(), pytest.raises(PoolTimeout) as caught:
            pool.getconn()
        assert type(caught.value) is PoolTimeout
        assert handle.stats().requests_total == 0


def test_connections_opened_later_and_threads(pg: EmbeddedPostgres) -> None:
    with ConnectionPool(pg.dsn, min_size=0, max_size=3, name="pp-grow") as pool:
        handle = pgwarden.instrument(pool)
        got: list[psycopg.Connection[Any]] = []
        threads = [threading.Thread(target=lambda: got.append(borrow(pool)), name=f"job-{i}")
                   for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        holders = handle.holders()
        assert sorted(h.holder for h in holders) == ["job-0", "job-1", "job-2"]
        assert {h.pid for h in holders} == {c.info.backend_pid for c in got}
        assert handle.stats().connections_opened_total == 3  # opened through _connect
        for c in got:
            pool.putconn(c)
        handle.remove()


# -- the same behaviour with and without pgwarden ----------------------------------------------

def restart_scenario(cluster: EmbeddedPostgres, *, instrumented: bool, check: bool) -> list[str]:
    pool = ConnectionPool(cluster.conninfo(application_name="scenario"), min_size=2,
                          max_size=3, timeout=5,
                          check=ConnectionPool.check_connection if check else None)
    handle = pgwarden.instrument(pool, leak_threshold=30) if instrumented else None
    seen = []
    with pool:
        pool.wait()
        conns = [pool.getconn() for _ in range(3)]  # grows past min_size
        pids = [c.info.backend_pid for c in conns]
        conns[0].execute("select 1")  # a transaction left open: rolled back on return
        for c in conns:
            pool.putconn(c)
        assert eventually(lambda: pool.get_stats()["pool_available"] == 3)
        states = cluster.execute("select state from pg_stat_activity where pid = any(%s)",
                                 (pids,))
        seen.append(f"size={pool.get_stats()['pool_size']} states={sorted(s for (s,) in states)}")
        cluster.restart()
        for _ in range(3):
            try:
                with pool.connection() as c:
                    c.execute("select 1")
                seen.append("ok")
            except psycopg.OperationalError as e:
                seen.append(type(e).__name__)
        if handle is not None:
            assert handle.holders() == []
            handle.remove()
    return seen


@pytest.mark.parametrize("check", [True, False])
def test_restart_behaves_as_without_instrumentation(make_cluster: Any, check: bool) -> None:
    cluster = make_cluster(max_connections=20)
    bare = restart_scenario(cluster, instrumented=False, check=check)
    instrumented = restart_scenario(cluster, instrumented=True, check=check)
    assert instrumented == bare
    assert bare[0] == "size=3 states=['idle', 'idle', 'idle']"
    if check:  # check= recovers: no caller sees the restart
        assert bare[1:] == ["ok", "ok", "ok"]
    else:  # without check= a dead idle connection is handed out: the caller sees the restart
        assert bare[1] == "AdminShutdown"
