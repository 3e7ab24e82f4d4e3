"""What only the asyncio pool has: cancellation at every await, task names as holders, the
event loop rules (the shared behaviours are in test_behaviour.py)."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import psycopg
import pytest

from pgwarden.errors import PoolTimeout
from pgwarden.pool import AsyncConnectionPool, PoolCheckoutTimeout

from ..helpers import aeventually

LOGGER = "pgwarden.pool"


async def backend_pid(conn: psycopg.AsyncConnection[Any]) -> int:
    cur = await conn.execute("select pg_backend_pid()")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.slow
async def test_outage_timeout_then_fast_recovery(make_cluster: Any) -> None:
    cluster = make_cluster(max_connections=20)
    loop = asyncio.get_running_loop()
    async with AsyncConnectionPool(cluster.dsn, min_size=1, name="aoutage") as pool:
        await pool.wait(10)
        await loop.run_in_executor(None, cluster.stop)
        with pytest.raises(PoolTimeout) as info:
            await pool.getconn(timeout=0.8)
        assert isinstance(info.value, PoolCheckoutTimeout)
        assert "cannot reach the server" in str(info.value)

        async def later() -> int:
            async with pool.connection(timeout=20) as conn:
                return await backend_pid(conn)

        waiter = asyncio.create_task(later())
        await asyncio.sleep(0.5)
        await loop.run_in_executor(None, cluster.start)
        up = time.monotonic()
        assert await waiter > 0
        assert time.monotonic() - up < 2.0


async def test_cancellation_never_loses_a_connection(pg: Any) -> None:
    async with AsyncConnectionPool(pg.dsn, min_size=1, max_size=1, name="acancel") as pool:
        await pool.wait(10)

        async def busy() -> None:
            async with pool.connection() as conn:
                await conn.execute("select pg_sleep(30)")

        # cancelled mid-query: the connection is discarded and replaced
        t = asyncio.create_task(busy(), name="busy-task")
        await asyncio.sleep(0.2)
        assert [h.holder for h in pool.holders()] == ["busy-task"]
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        # cancelled while waiting in the queue
        conn = await pool.getconn()
        waiters = [asyncio.create_task(pool.getconn(timeout=5)) for _ in range(3)]
        await asyncio.sleep(0.05)
        for w in waiters:
            w.cancel()
        await pool.putconn(conn)
        await asyncio.gather(*waiters, return_exceptions=True)
        # the single connection is still usable, none lost
        async with pool.connection(timeout=5) as conn:
            cur = await conn.execute("select 1")
            assert await cur.fetchone() == (1,)
        st = pool.get_stats()
        assert st["pool_size"] == 1 and st["holders_num"] == 0


async def test_transaction_rolls_back_on_cancellation(pg: Any) -> None:
    pg.execute("create table if not exists apool_tx (x int)")
    pg.execute("truncate apool_tx")
    async with AsyncConnectionPool(pg.dsn, min_size=1, max_size=1, name="atx") as pool:
        async with pool.transaction() as conn:
            await conn.execute("insert into apool_tx values (1)")

        async def slow() -> None:
            async with pool.transaction() as conn:
                await conn.execute("insert into apool_tx values (2)")
                await asyncio.sleep(10)

        t = asyncio.create_task(slow())
        await asyncio.sleep(0.1)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert pg.execute("select x from apool_tx order by x") == [(1,)]
        assert pool.get_stats()["pool_available"] == 1


@pytest.mark.slow
async def test_async_stress(pg: Any) -> None:
    max_size = 5
    async with AsyncConnectionPool(pg.dsn, min_size=1, max_size=max_size,
                                   name="astress") as pool:
        in_use: set[int] = set()
        problems: list[str] = []
        stop = time.monotonic() + 3.0
        sizes: list[int] = []

        async def worker(seed: int) -> None:
            rnd = random.Random(seed)
            while time.monotonic() < stop:
                try:
                    async with pool.connection(timeout=rnd.choice([0.01, 0.5])) as conn:
                        if id(conn) in in_use:
                            problems.append("twice")
                        in_use.add(id(conn))
                        try:
                            await conn.execute("select pg_sleep(%s)", (rnd.random() * 0.01,))
                        finally:
                            in_use.discard(id(conn))
                except (PoolTimeout, psycopg.OperationalError):
                    pass
                sizes.append(pool.get_stats()["pool_size"])

        async def canceller() -> None:
            while time.monotonic() < stop:
                t = asyncio.create_task(worker(99))
                await asyncio.sleep(random.random() * 0.05)
                t.cancel()
                await asyncio.gather(t, return_exceptions=True)

        async def killer() -> None:
            loop = asyncio.get_running_loop()
            while time.monotonic() < stop:
                await asyncio.sleep(0.3)
                pids = [h.pid for h in pool.holders()][:1]
                if pids:
                    await loop.run_in_executor(
                        None, pg.execute, "select pg_terminate_backend(%s)", (pids[0],))

        await asyncio.gather(*(worker(i) for i in range(12)), canceller(), killer())
        assert problems == []
        assert max(sizes) <= max_size
        assert await aeventually(lambda: pool.get_stats()["holders_num"] == 0, 5)
        conns = [await pool.getconn(timeout=10) for _ in range(max_size)]
        assert len({c.info.backend_pid for c in conns}) == max_size
        for c in conns:
            await pool.putconn(c)


async def test_holder_is_the_task_name(pg: Any) -> None:
    async with AsyncConnectionPool(pg.dsn, min_size=1, name="atask") as pool:

        async def handler() -> Any:
            return await pool.getconn()

        conn = await asyncio.create_task(handler(), name="handler-7")
        [holder] = pool.holders()
        assert holder.holder == "handler-7" and holder.function == "handler"
        await pool.putconn(conn)


def test_open_true_outside_a_running_loop_raises_as_psycopg_pool() -> None:
    with pytest.raises(RuntimeError, match="running event loop"):
        AsyncConnectionPool("", open=True)
    # open=None (the default) and open=False wait for the loop instead
    pool = AsyncConnectionPool("")
    assert not pool.closed
    AsyncConnectionPool("", open=False)
