"""pgwarden.instrument on SQLAlchemy engines and pools: real PostgreSQL, real SQLAlchemy
(psycopg for the sync engine, asyncpg for the AsyncEngine)."""

from __future__ import annotations

import gc
import logging
import warnings
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool, QueuePool, StaticPool

import pgwarden
from pgwarden.embedded import EmbeddedPostgres
from pgwarden.integrations.sqlalchemy import ExplainedTimeoutError
from pgwarden.observe import trackers

from ..helpers import aeventually, eventually
from .helpers import line_of, server_pids, url

LOG = "pgwarden.pool"
HERE = __file__


def engine_for(pg: EmbeddedPostgres, **kwargs: Any) -> sa.Engine:
    return sa.create_engine(url(pg, "psycopg"), **kwargs)


def hold_connection(engine: sa.Engine) -> sa.Connection:
    return engine.connect()  # checkout: sqlalchemy sync


def hold_session(engine: sa.Engine) -> Session:
    session = Session(engine)
    session.execute(sa.text("select 1"))  # checkout: sqlalchemy session
    return session


async def hold_async_session(engine: Any) -> AsyncSession:
    session = AsyncSession(engine)
    await session.execute(sa.text("select 1"))  # checkout: sqlalchemy async
    return session


def drop_a_connection(engine: sa.Engine) -> None:
    conn = engine.connect()  # checkout: sqlalchemy dropped
    conn.execute(sa.text("select 1"))


def test_leak_logged_with_file_line_then_unleaked(pg: EmbeddedPostgres,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    engine = engine_for(pg, pool_size=2)
    handle = pgwarden.instrument(engine, name="sa-leak", leak_threshold=0.1)
    try:
        session = hold_session(engine)
        where = f"test_sqlalchemy.py:{line_of(HERE, '# checkout: sqlalchemy session')} in " \
                "hold_session"
        assert eventually(lambda: "connection leak?" in caplog.text)
        leak = next(r for r in caplog.records if "connection leak?" in r.getMessage())
        assert leak.levelname == "WARNING" and "pool 'sa-leak'" in leak.getMessage()
        assert where in leak.getMessage() and "idle in transaction" in leak.getMessage()
        [h] = handle.holders()
        assert h.leaked and h.pid in server_pids(pg) and h.location.endswith(where)
        assert h.holder == "MainThread" and h.library == "sqlalchemy"
        session.close()
        assert "unleaked" in caplog.text and handle.holders() == []
        s = handle.stats()
        assert (s.leaks_total, s.leaks_returned_total, s.in_use) == (1, 1, 0)
    finally:
        handle.remove()
        engine.dispose()


async def test_async_engine_leak_and_unleaked(pg: EmbeddedPostgres,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    engine = create_async_engine(url(pg, "asyncpg"), pool_size=2)
    handle = pgwarden.instrument(engine, name="sa-async-leak", leak_threshold=0.1)
    try:
        session = await hold_async_session(engine)
        where = f"test_sqlalchemy.py:{line_of(HERE, '# checkout: sqlalchemy async')} in " \
                "hold_async_session"
        assert await aeventually(lambda: "connection leak?" in caplog.text)
        assert where in caplog.text
        [h] = handle.holders()
        assert h.holder.startswith("Task-") and h.pid in server_pids(pg)
        assert h.transaction_state == "idle in transaction"
        await session.close()
        assert "unleaked" in caplog.text and handle.holders() == []
    finally:
        handle.remove()
        await engine.dispose()


def test_exhaustion_raises_sqlalchemys_timeout_naming_the_holders(pg: EmbeddedPostgres) -> None:
    engine = engine_for(pg, pool_size=1, max_overflow=0, pool_timeout=0.2)
    handle = pgwarden.instrument(engine, name="sa-full")
    held = hold_connection(engine)
    try:
        with pytest.raises(sa.exc.TimeoutError) as caught:
            engine.connect()
        err = caught.value
        assert isinstance(err, ExplainedTimeoutError) and isinstance(err, pgwarden.integrations
                                                                     .ExplainedError)
        text = str(err)
        assert text.startswith("QueuePool limit of size 1 overflow 0 reached, connection timed "
                               "out, timeout 0.20: pool 'sa-full' (sqlalchemy): 1/1 in use, "
                               "0 idle, 1 waiting; longest holders: backend pid ")
        line = line_of(HERE, "# checkout: sqlalchemy sync")
        assert f"test_sqlalchemy.py:{line} in hold_connection (idle)" in text
        [h] = err.holders
        assert h.pid in server_pids(pg) and f"backend pid {h.pid} " in text
        assert handle.stats().timeouts_total == 1
    finally:
        held.close()
        handle.remove()
        engine.dispose()


async def test_async_exhaustion_names_the_holders(pg: EmbeddedPostgres) -> None:
    engine = create_async_engine(url(pg, "asyncpg"), pool_size=1, max_overflow=0,
                                 pool_timeout=0.2)
    handle = pgwarden.instrument(engine, name="sa-async-full")
    session = await hold_async_session(engine)
    try:
        with pytest.raises(sa.exc.TimeoutError) as caught:
            async with engine.connect():
                pass
        assert isinstance(caught.value, ExplainedTimeoutError)
        assert "in hold_async_session (idle in transaction)" in str(caught.value)
        assert caught.value.holders[0].pid in server_pids(pg)
    finally:
        await session.close()
        handle.remove()
        await engine.dispose()


def test_a_dropped_connection_is_reported_with_its_checkout_stack(
        pg: EmbeddedPostgres, caplog: pytest.LogCaptureFixture) -> None:
    engine = engine_for(pg, pool_size=1, max_overflow=0)
    handle = pgwarden.instrument(engine, name="sa-gc")
    try:
        drop_a_connection(engine)
        gc.collect()
        assert "garbage-collected without being returned" in caplog.text
        line = line_of(HERE, "# checkout: sqlalchemy dropped")
        assert f"test_sqlalchemy.py:{line} in drop_a_connection" in caplog.text
        assert handle.stats().collected_total == 1 and handle.holders() == []
        with engine.connect() as conn:  # SQLAlchemy returned it: the pool of one serves again
            assert conn.execute(sa.text("select 1")).scalar() == 1
    finally:
        handle.remove()
        engine.dispose()


async def test_async_dropped_connection_is_reported(pg: EmbeddedPostgres,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    engine = create_async_engine(url(pg, "asyncpg"), pool_size=1, max_overflow=0)
    handle = pgwarden.instrument(engine, name="sa-async-gc")
    try:
        session = await hold_async_session(engine)
        del session
        with warnings.catch_warnings():  # SQLAlchemy warns about it too (2.0.x: some versions)
            warnings.simplefilter("ignore")
            gc.collect()
        assert "garbage-collected without being returned" in caplog.text
        assert "in hold_async_session" in caplog.text
        assert handle.stats().collected_total == 1
    finally:
        handle.remove()
        await engine.dispose()


def test_remove_restores_sqlalchemy(pg: EmbeddedPostgres) -> None:
    engine = engine_for(pg, pool_size=1, max_overflow=0, pool_timeout=0.1)
    handle = pgwarden.instrument(engine, name="sa-removed")
    assert pgwarden.instrument(engine) is handle
    assert pgwarden.instrument(engine.pool) is handle
    assert handle.tracker in trackers()
    handle.remove()
    handle.remove()  # idempotent
    assert handle.tracker not in trackers()
    assert not {"connect", "_do_return_conn", "recreate"} & set(vars(engine.pool))
    with engine.connect(), pytest.raises(sa.exc.TimeoutError) as caught:
        engine.connect()
    assert type(caught.value) is sa.exc.TimeoutError
    assert handle.stats().requests_total == 0  # the events stopped
    again = pgwarden.instrument(engine)
    assert again is not handle
    again.remove()
    engine.dispose()


async def test_async_engine_is_instrumented_through_its_sync_engine(pg: EmbeddedPostgres) -> None:
    engine = create_async_engine(url(pg, "asyncpg"))
    handle = pgwarden.instrument(engine)
    try:
        assert pgwarden.instrument(engine.sync_engine) is handle
        assert pgwarden.instrument(engine) is handle
        assert handle.name == f"postgres@127.0.0.1:{pg.port}/postgres"
        assert pg.password not in repr(handle) and pg.password not in handle.explain()
    finally:
        handle.remove()
        await engine.dispose()


def test_dispose_keeps_the_instrumentation(pg: EmbeddedPostgres) -> None:
    engine = engine_for(pg, pool_size=1, max_overflow=0, pool_timeout=0.1)
    handle = pgwarden.instrument(engine, name="sa-dispose")
    try:
        with engine.connect():
            pass
        engine.dispose()  # a new pool: listeners are copied, the timeout is wrapped again
        held = hold_connection(engine)
        assert [h.function for h in handle.holders()] == ["hold_connection"]
        with pytest.raises(ExplainedTimeoutError):
            engine.connect()
        held.close()
        assert handle.stats().connections_closed_total >= 1
    finally:
        handle.remove()
        engine.dispose()
    with engine.connect(), pytest.raises(sa.exc.TimeoutError) as caught:
        engine.connect()
    assert type(caught.value) is sa.exc.TimeoutError
    engine.dispose()


@pytest.mark.parametrize("poolclass", [NullPool, StaticPool])
def test_other_pools(pg: EmbeddedPostgres, poolclass: type[sa.pool.Pool]) -> None:
    engine = engine_for(pg, poolclass=poolclass)
    handle = pgwarden.instrument(engine, name=f"sa-{poolclass.__name__}")
    try:
        held = hold_connection(engine)
        [h] = handle.holders()
        assert h.function == "hold_connection" and h.pid in server_pids(pg)
        held.close()
        assert handle.holders() == []
        if poolclass is NullPool:  # every return closes its connection
            assert handle.stats().connections_closed_total == 1
    finally:
        handle.remove()
        engine.dispose()


def test_instrumenting_a_pool(pg: EmbeddedPostgres) -> None:
    pool = QueuePool(lambda: __import__("psycopg").connect(pg.dsn), pool_size=1, max_overflow=0,
                     timeout=0.1)
    handle = pgwarden.instrument(pool, name="sa-bare-pool")
    try:
        conn = pool.connect()
        [h] = handle.holders()
        assert h.pid in server_pids(pg)
        with pytest.raises(ExplainedTimeoutError, match="sa-bare-pool"):
            pool.connect()
        conn.close()
    finally:
        handle.remove()
        pool.dispose()


# -- the same behaviour with and without pgwarden ----------------------------------------------

def restart_scenario(cluster: EmbeddedPostgres, *, instrumented: bool,
                     pre_ping: bool) -> list[str]:
    """Overflow, reset on return, a server restart and what the next checkouts see."""
    engine = engine_for(cluster, pool_size=2, max_overflow=1, pool_timeout=5,
                        pool_pre_ping=pre_ping, connect_args={"application_name": "scenario"})
    handle = pgwarden.instrument(engine, leak_threshold=30) if instrumented else None
    seen = []
    try:
        conns = [engine.connect() for _ in range(3)]
        pids = [c.exec_driver_sql("select pg_backend_pid()").scalar() for c in conns]
        for c in conns:
            c.rollback()
        seen.append(f"overflow={engine.pool.overflow()} out={engine.pool.checkedout()}")
        conns[0].execute(sa.text("select 1"))  # a transaction left open: reset on return
        for c in conns:
            c.close()
        states = cluster.execute("select state from pg_stat_activity where pid = any(%s)",
                                 (pids[:2],))  # the overflow's third was closed on return
        seen.append(f"in={engine.pool.checkedin()} states={sorted(s for (s,) in states)}")
        cluster.restart()
        for _ in range(3):
            try:
                with engine.connect() as c:
                    c.execute(sa.text("select 1"))
                seen.append("ok")
            except sa.exc.DBAPIError as e:
                seen.append(f"{type(e).__name__} invalidated={e.connection_invalidated}")
        seen.append(f"in={engine.pool.checkedin()} out={engine.pool.checkedout()}")
        if handle is not None:
            assert handle.holders() == []
            assert {r.pid for r in handle.tracker.records} <= server_pids(cluster)
    finally:
        if handle is not None:
            handle.remove()
        engine.dispose()
    return seen


@pytest.mark.parametrize("pre_ping", [True, False])
def test_restart_behaves_as_without_instrumentation(make_cluster: Any, pre_ping: bool) -> None:
    cluster = make_cluster(max_connections=20)
    bare = restart_scenario(cluster, instrumented=False, pre_ping=pre_ping)
    instrumented = restart_scenario(cluster, instrumented=True, pre_ping=pre_ping)
    assert instrumented == bare
    assert bare[0] == "overflow=1 out=3" and bare[1] == "in=2 states=['idle', 'idle']"
    if pre_ping:  # pre-ping recovers: no caller sees the restart
        assert bare[2:5] == ["ok", "ok", "ok"]
    else:  # the first caller gets the disconnect, the pool is invalidated, the next are served
        assert bare[2] == "OperationalError invalidated=True" and bare[3:5] == ["ok", "ok"]
