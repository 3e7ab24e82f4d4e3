"""pgwarden.instrument on asyncpg's Pool (real PostgreSQL, real asyncpg)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import pytest

import pgwarden
from pgwarden.embedded import EmbeddedPostgres
from pgwarden.integrations.asyncpg import ExplainedAcquireTimeout
from pgwarden.observe import trackers

from ..helpers import aeventually
from .helpers import line_of, server_pids

LOG = "pgwarden.pool"
HERE = __file__


async def borrow(pool: asyncpg.Pool) -> Any:
    con = await pool.acquire()  # checkout: asyncpg
    await con.execute("begin")
    return con


async def drop_one(pool: asyncpg.Pool) -> int:
    con = await pool.acquire()  # checkout: asyncpg dropped
    return int(con.get_server_pid())


async def test_leak_logged_with_file_line_then_unleaked(pg: EmbeddedPostgres,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    async with asyncpg.create_pool(pg.url, min_size=1, max_size=2) as pool:
        handle = pgwarden.instrument(pool, name="apg-leak", leak_threshold=0.1)
        assert isinstance(pool, asyncpg.Pool)
        con = await borrow(pool)
        where = f"test_asyncpg.py:{line_of(HERE, '# checkout: asyncpg')} in borrow"
        assert await aeventually(lambda: "connection leak?" in caplog.text)
        assert "pool 'apg-leak'" in caplog.text and where in caplog.text
        [h] = handle.holders()
        assert h.pid == con.get_server_pid() and h.pid in server_pids(pg)
        assert h.holder.startswith("Task-") and h.transaction_state == "idle in transaction"
        await pool.release(con)
        assert "unleaked" in caplog.text and handle.holders() == []
        async with pool.acquire() as c:
            [h] = handle.holders()
            assert h.pid == c.get_server_pid()
        assert await pool.fetchval("select 1") == 1  # pool.fetch & co. acquire through it too
        s = handle.stats()
        assert (s.requests_total, s.leaks_total, s.leaks_returned_total) == (3, 1, 1)
        handle.remove()


async def test_exhaustion_raises_timeout_error_naming_the_holders(pg: EmbeddedPostgres) -> None:
    async with asyncpg.create_pool(pg.url, min_size=1, max_size=1) as pool:
        handle = pgwarden.instrument(pool, name="apg-full")
        held = await borrow(pool)
        with pytest.raises(asyncio.TimeoutError) as caught:
            async with pool.acquire(timeout=0.2):
                pass
        err = caught.value
        assert isinstance(err, ExplainedAcquireTimeout) and isinstance(err, TimeoutError)
        line = line_of(HERE, "# checkout: asyncpg")
        assert str(err).startswith(
            "timed out acquiring a connection from asyncpg pool 'apg-full' after 0.20 s: pool "
            "'apg-full' (asyncpg): 1/1 in use, 0 idle, 1 waiting; longest holders: backend pid "
            f"{held.get_server_pid()} held ")
        assert f"test_asyncpg.py:{line} in borrow (idle in transaction)" in str(err)
        assert err.holders[0].pid in server_pids(pg)
        with pytest.raises(ExplainedAcquireTimeout):
            await pool.acquire(timeout=0.1)
        assert handle.stats().timeouts_total == 2
        await pool.release(held)
        handle.remove()


async def test_a_dropped_proxy_is_reported_and_released(pg: EmbeddedPostgres,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    async with asyncpg.create_pool(pg.url, min_size=1, max_size=1) as pool:
        handle = pgwarden.instrument(pool, name="apg-drop")
        kept = await borrow(pool)
        await asyncio.sleep(0.1)
        assert handle.stats().collected_total == 0  # a proxy the application holds is not dropped
        await pool.release(kept)
        del kept
        pid = await drop_one(pool)  # the proxy is gone: asyncpg alone references it
        assert await aeventually(lambda: handle.stats().collected_total == 1)
        line = line_of(HERE, "# checkout: asyncpg dropped")
        assert (f"backend pid {pid} was dropped by the application without being returned"
                in caplog.text)
        assert f"test_asyncpg.py:{line} in drop_one" in caplog.text
        assert await aeventually(lambda: "released the dropped connection" in caplog.text)
        async with pool.acquire(timeout=5) as con:  # the pool of one serves again
            assert con.get_server_pid() == pid
        handle.remove()


async def test_without_reclaim_a_dropped_proxy_is_only_reported(pg: EmbeddedPostgres) -> None:
    async with asyncpg.create_pool(pg.url, min_size=1, max_size=1) as pool:
        handle = pgwarden.instrument(pool, name="apg-keep", reclaim=False)
        await drop_one(pool)
        assert await aeventually(lambda: handle.stats().collected_total == 1)
        with pytest.raises(asyncio.TimeoutError):  # as asyncpg alone: the slot stays taken
            await pool.acquire(timeout=0.2)
        handle.remove()
        pool.terminate()


async def test_remove_and_twice(pg: EmbeddedPostgres) -> None:
    async with asyncpg.create_pool(pg.url, min_size=1, max_size=1) as pool:
        original = type(pool)
        handle = pgwarden.instrument(pool)
        assert pgwarden.instrument(pool) is handle and handle.tracker in trackers()
        assert type(pool) is not original and isinstance(pool, original)
        handle.remove()
        assert type(pool) is original and handle.tracker not in trackers()
        async with pool.acquire():
            with pytest.raises(asyncio.TimeoutError) as caught:
                await pool.acquire(timeout=0.1)
        assert not isinstance(caught.value, ExplainedAcquireTimeout)
        assert handle.stats().requests_total == 0
        again = pgwarden.instrument(pool)
        assert again is not handle
        again.remove()


# -- the same behaviour with and without pgwarden ----------------------------------------------

async def restart_scenario(cluster: EmbeddedPostgres, *, instrumented: bool) -> list[str]:
    pool = await asyncpg.create_pool(cluster.url, min_size=2, max_size=3,
                                     server_settings={"application_name": "scenario"})
    handle = pgwarden.instrument(pool, leak_threshold=30) if instrumented else None
    seen = []
    try:
        cons = [await pool.acquire() for _ in range(3)]
        pids = [c.get_server_pid() for c in cons]
        await cons[0].execute("begin")  # reset on release rolls it back
        for c in cons:
            await pool.release(c)
        states = cluster.execute("select state from pg_stat_activity where pid = any(%s)",
                                 (pids,))
        seen.append(f"size={pool.get_size()} states={sorted(s for (s,) in states)}")
        await asyncio.to_thread(cluster.restart)
        for _ in range(3):
            try:
                async with pool.acquire(timeout=10) as c:
                    await c.fetchval("select 1")
                seen.append("ok")
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as e:
                seen.append(type(e).__name__)
        if handle is not None:
            assert handle.holders() == []
            assert await aeventually(
                lambda: {r.pid for r in handle.tracker.records} <= server_pids(cluster))
    finally:
        if handle is not None:
            handle.remove()
        await pool.close()
    return seen


async def test_restart_behaves_as_without_instrumentation(make_cluster: Any) -> None:
    cluster = make_cluster(max_connections=20)
    bare = await restart_scenario(cluster, instrumented=False)
    instrumented = await restart_scenario(cluster, instrumented=True)
    assert instrumented == bare
    assert bare[0] == "size=3 states=['idle', 'idle', 'idle']"
    assert len(bare) == 4
