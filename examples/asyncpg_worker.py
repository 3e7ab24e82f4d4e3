"""An asyncpg worker with one process-wide pool, instrumented by pgwarden.

The pool is created once per process, on first use, and instrumented in place: asyncpg's
``Pool`` has ``__slots__`` and no hook that sees an acquire time out, so ``pgwarden.instrument``
switches the pool object to a subclass of its class (``isinstance(pool, asyncpg.Pool)`` holds);
the code that acquires connections does not change. A job that forgets ``release()`` is logged
as a leak after ``leak_threshold`` seconds; if it also drops the connection, pgwarden reports
it and releases it back to the pool.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

import pgwarden

_pool: asyncpg.Pool | None = None
_creating: asyncio.Lock | None = None


async def get_pool(dsn: str, **options: Any) -> asyncpg.Pool:
    """The process-wide pool (created and instrumented on first use)."""
    global _pool, _creating
    if _pool is None:
        if _creating is None:
            _creating = asyncio.Lock()
        async with _creating:
            if _pool is None:
                pool = await asyncpg.create_pool(dsn, **options)
                pgwarden.instrument(pool, name="worker", leak_threshold=30.0)
                _pool = pool
    return _pool


async def close_pool() -> None:
    """At shutdown: wait for the jobs' connections, close them."""
    global _pool, _creating
    if _pool is not None:
        pool, _pool, _creating = _pool, None, None
        instrumentation = pgwarden.instrument(pool)  # its handle: instrumenting is idempotent
        await pool.close()
        instrumentation.remove()


async def handle_job(dsn: str, job: int, seconds: float = 0.0) -> int:
    """One job: a connection for as long as it needs one."""
    pool = await get_pool(dsn)
    async with pool.acquire() as con:
        row = await con.fetchrow("select $1::int as job, pg_sleep($2::float8)", job, seconds)
        return int(row["job"])


async def run_worker(dsn: str, jobs: list[int], *, concurrency: int = 4,
                     seconds: float = 0.0) -> list[int]:
    """Run ``jobs`` with ``concurrency`` tasks sharing the process-wide pool."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for j in jobs:
        queue.put_nowait(j)
    results: list[int] = []

    async def consumer() -> None:
        while not queue.empty():
            results.append(await handle_job(dsn, queue.get_nowait(), seconds))

    await asyncio.gather(*(asyncio.create_task(consumer(), name=f"consumer-{i}")
                           for i in range(concurrency)))
    return sorted(results)
