"""A first statement killed by a server shutdown is run again; everything else still fails.

Each test restarts or stops its own cluster while statements are in flight (``pg_sleep``), so
the shutdown always lands mid-statement.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import psycopg
import pytest

from pgwarden.pool import AsyncConnectionPool, ConnectionPool

LOGGER = "pgwarden.pool"
SLEEP = 1.5


def wait_active(cluster: Any, n: int, timeout: float = 10.0) -> None:
    """Until ``n`` sessions run a pg_sleep (the statements are in flight)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = cluster.execute(
            "select count(*) from pg_stat_activity where state = 'active' "
            "and query like %s", ("%pg_sleep%",))[0]
        if row[0] >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"{n} statements did not start")


@pytest.mark.slow
def test_first_statements_survive_a_fast_restart(make_cluster: Any, caplog: Any) -> None:
    cluster = make_cluster(max_connections=20)
    cluster.execute("create table t (x int)")
    caplog.set_level(logging.INFO, logger=LOGGER)
    results: dict[str, Any] = {}

    def run(name: str, fn: Any) -> None:
        try:
            results[name] = fn()
        except Exception as exc:
            results[name] = exc

    with ConnectionPool(cluster.dsn, min_size=4, max_size=4, name="replay") as pool:
        pool.wait(10)

        def insert() -> int:  # conn.execute, with a write: it must happen exactly once
            with pool.connection() as conn:
                pid = conn.info.backend_pid
                conn.execute(f"insert into t select 1 from pg_sleep({SLEEP})")
                return pid

        def cursor() -> tuple[int, int]:  # a cursor, psycopg2 style
            with pool.connection() as conn, conn.cursor() as cur:
                before = conn.info.backend_pid
                cur.execute(f"select pg_backend_pid() from pg_sleep({SLEEP})")
                row = cur.fetchone()
                assert row is not None
                return before, row[0]

        def second_statement() -> None:  # a transaction already open: not replayed
            with pool.connection() as conn:
                conn.execute("select 1")
                conn.execute(f"select pg_sleep({SLEEP})")

        def autocommit() -> None:  # might have committed: not replayed
            with pool.connection() as conn:
                conn.autocommit = True
                conn.execute(f"select pg_sleep({SLEEP})")

        threads = [threading.Thread(target=run, args=(n, f)) for n, f in [
            ("insert", insert), ("cursor", cursor), ("second", second_statement),
            ("autocommit", autocommit)]]
        for t in threads:
            t.start()
        wait_active(cluster, 4)
        cluster.restart()
        for t in threads:
            t.join(30)

        assert isinstance(results["insert"], int), results["insert"]
        before, after = results["cursor"]
        assert before != after  # it ran on a new server session
        assert isinstance(results["second"], psycopg.OperationalError)
        assert isinstance(results["autocommit"], psycopg.OperationalError)
        assert cluster.execute("select count(*) from t")[0] == (1,)
        stats = pool.get_stats()
        assert stats["statements_replayed"] == 2
        assert stats["requests_errors"] == 0  # the two errors were statements, not checkouts
        # the pool is whole again: 4 distinct live sessions
        conns = [pool.getconn(timeout=10) for _ in range(4)]
        assert len({c.execute("select pg_backend_pid()").fetchone() for c in conns}) == 4
        for c in conns:
            pool.putconn(c)
        assert stats["pool_size"] <= 4
    assert "ran the statement again on connection pid" in caplog.text


@pytest.mark.slow
def test_first_statement_waits_out_an_outage(make_cluster: Any) -> None:
    cluster = make_cluster(max_connections=20)
    with ConnectionPool(cluster.dsn, min_size=1, max_size=2, name="outage-replay",
                        timeout=20) as pool:
        pool.wait(10)
        # psycopg prepares a statement run 5 times; the new session must not assume it exists
        for _ in range(6):
            with pool.connection() as conn:
                conn.execute("select pg_sleep(%s)", (0,))
        out: list[Any] = []
        notices: list[str] = []
        holders: list[Any] = []

        def first() -> None:
            try:
                with pool.connection() as conn:
                    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
                    out.append(conn.execute("select pg_sleep(%s)", (SLEEP,)).fetchone())
                    # the same connection object, on its new session: notices still reach it,
                    # and the pool's record of the holder follows it
                    conn.execute("do $$ begin raise notice 'after replay'; end $$")
                    holders.extend(pool.holders())
                    out.append(conn.info.backend_pid)
            except Exception as exc:
                out.append(exc)

        t = threading.Thread(target=first)
        t.start()
        wait_active(cluster, 1)
        cluster.stop()
        time.sleep(2.0)
        cluster.start()
        t.join(30)
        assert out[0] == ("",), out
        assert notices == ["after replay"]
        [h] = holders
        assert h.pid == out[1] and "in first" in h.location
        assert pool.get_stats()["statements_replayed"] == 1


@pytest.mark.slow
async def test_async_first_statements_survive_a_fast_restart(make_cluster: Any) -> None:
    cluster = make_cluster(max_connections=20)
    async with AsyncConnectionPool(cluster.dsn, min_size=3, max_size=3,
                                   name="areplay") as pool:
        await pool.wait(10)

        async def first() -> tuple[int, int]:
            async with pool.connection() as conn:
                before = conn.info.backend_pid
                cur = await conn.execute(f"select pg_backend_pid() from pg_sleep({SLEEP})")
                row = await cur.fetchone()
                assert row is not None
                return before, row[0]

        async def second() -> None:
            async with pool.connection() as conn:
                await conn.execute("select 1")
                await conn.execute(f"select pg_sleep({SLEEP})")

        tasks = [asyncio.create_task(first()), asyncio.create_task(first()),
                 asyncio.create_task(second())]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, wait_active, cluster, 3)
        await loop.run_in_executor(None, cluster.restart)
        res = await asyncio.gather(*tasks, return_exceptions=True)
        for before, after in res[:2]:  # type: ignore[misc]
            assert before != after
        assert isinstance(res[2], psycopg.OperationalError)
        assert pool.get_stats()["statements_replayed"] == 2
