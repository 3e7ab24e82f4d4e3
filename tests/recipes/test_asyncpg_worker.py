"""Recipe: an asyncpg worker with one process-wide pool (examples/asyncpg_worker.py)."""

from __future__ import annotations

import asyncio

import asyncpg

import asyncpg_worker
from pgwarden.embedded import EmbeddedPostgres
from pgwarden.integrations import instrumentation_of

from ..helpers import aeventually


async def test_one_instrumented_pool_per_process(pg: EmbeddedPostgres) -> None:
    try:
        done = asyncio.create_task(asyncpg_worker.run_worker(pg.url, list(range(8)),
                                                             concurrency=3, seconds=0.3))
        pool = await asyncpg_worker.get_pool(pg.url)
        assert await asyncpg_worker.get_pool(pg.url) is pool and isinstance(pool, asyncpg.Pool)
        handle = instrumentation_of(pool)
        assert handle is not None and handle.name == "worker"
        assert await aeventually(lambda: len(handle.holders()) == 3)
        holders = handle.holders()
        assert {h.holder for h in holders} == {"consumer-0", "consumer-1", "consumer-2"}
        assert {h.function for h in holders} == {"handle_job"}
        assert all(h.file.endswith("asyncpg_worker.py") for h in holders)
        assert await done == list(range(8))
        assert handle.stats().requests_total == 8 and handle.holders() == []
    finally:
        await asyncpg_worker.close_pool()
    assert instrumentation_of(pool) is None
