"""What a caller of pgwarden's pools notices, asserted once for both: every test here runs
against the thread pool and the asyncio pool (``kind``; see tests/pool/both.py). Real clusters,
real failures (pg_terminate_backend, restarts, garbage collection)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import pickle
import weakref
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from pgwarden.embedded import EmbeddedPostgres
from pgwarden.errors import ConfigError, PoolClosed, PoolTimeout, TooManyRequests
from pgwarden.observe import Holder, trackers
from pgwarden.pool import AsyncConnectionPool, ConnectionPool, PoolCheckoutTimeout

from ..helpers import aeventually
from .both import Pool, kind, make_pool

__all__ = ["kind"]  # the fixture, re-exported for pytest

LOGGER = "pgwarden.pool"


async def backend_pid(p: Pool, conn: Any) -> int:
    [(pid,)] = await p.execute(conn, "select pg_backend_pid()")
    return int(pid)


def hold_a_connection(pool: ConnectionPool[Any]) -> Any:
    return pool.getconn()


async def hold_a_connection_async(pool: AsyncConnectionPool[Any]) -> Any:
    return await pool.getconn()


async def hold(p: Pool) -> Any:
    """A checkout made by a function named hold_a_connection*, for the holder's location."""
    if p.kind == "sync":
        return await p._thread(hold_a_connection, p.pool)
    return await hold_a_connection_async(p.pool)


async def all_pids(p: Pool, n: int) -> list[int]:
    conns = [await p.getconn(10.0) for _ in range(n)]
    try:
        return [c.info.backend_pid for c in conns]
    finally:
        for c in conns:
            await p.putconn(c)


async def test_psycopg_pool_api_attributes_and_stats(kind: str, pg: EmbeddedPostgres) -> None:
    async with make_pool(kind, pg.dsn, min_size=2, max_size=4, name=f"api-{kind}",
                         max_idle=123.0, max_lifetime=456.0) as p:
        pool = p.pool
        await p.wait(10)
        assert (pool.name, pool.min_size, pool.max_size, pool.closed) == (f"api-{kind}", 2, 4,
                                                                          False)
        assert (pool.max_idle, pool.max_lifetime, pool.num_workers, pool.reconnect_timeout,
                pool.kwargs) == (123.0, 456.0, 3, 300.0, None)
        async with p.connection() as conn:
            assert await p.execute(conn, "select 1") == [(1,)]
        await p.putconn(await p.getconn())
        stats = p.stats()
        for key in ("pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting",
                    "requests_num", "requests_queued", "requests_wait_ms", "requests_errors",
                    "returns_bad", "connections_num", "connections_ms", "connections_errors",
                    "connections_lost", "usage_ms", "leaks_detected", "holders_num"):
            assert key in stats
        assert stats["requests_num"] == 2 and stats["connections_num"] >= 2
        assert pool.pop_stats()["requests_num"] == 2
        assert p.stats()["requests_num"] == 0
        assert pool.tracker in trackers()
    assert pool.closed and pool.tracker not in trackers()
    with pytest.raises(PoolClosed):
        await p.getconn()


@pytest.mark.parametrize("cls", [ConnectionPool, AsyncConnectionPool])
def test_config_is_validated_eagerly(cls: Any) -> None:
    with pytest.raises(ConfigError, match="max_size"):
        cls("", min_size=5, max_size=2, open=False)
    with pytest.raises(ValueError, match="timeout"):
        cls("", timeout=-1, open=False)
    with pytest.raises(ValueError, match="leak_threshold"):
        cls("", leak_threshold=-3, open=False)


async def test_connection_defaults_applied(kind: str, pg: EmbeddedPostgres) -> None:
    async with make_pool(kind, pg.dsn, min_size=1) as p, p.connection() as conn:
        params = conn.info.get_parameters()
        assert params["keepalives_idle"] == "10" and params["tcp_user_timeout"] == "20000"
        app = conn.info.parameter_status("application_name")
        assert app is not None and app.endswith(f"-{os.getpid()}")
    # what the DSN says wins
    async with make_pool(kind, pg.conninfo(application_name="shop", keepalives_idle=7),
                         min_size=1) as p, p.connection() as conn:
        assert conn.info.parameter_status("application_name") == "shop"
        assert conn.info.get_parameters()["keepalives_idle"] == "7"


async def test_callable_conninfo_and_kwargs(kind: str, pg: EmbeddedPostgres) -> None:
    calls: list[int] = []

    def conninfo() -> str:
        calls.append(1)
        return str(pg.dsn)

    async with make_pool(kind, conninfo, kwargs=lambda: {"autocommit": True}, min_size=1,
                         name="callable") as p, p.connection() as conn:
        assert conn.autocommit
    assert calls


async def test_killed_idle_connection_is_replaced_without_error(
        kind: str, pg: EmbeddedPostgres) -> None:
    async with make_pool(kind, pg.dsn, min_size=3, name="killed-idle") as p:
        await p.wait(10)
        async with p.connection() as conn:
            old = await backend_pid(p, conn)
        pg.execute("select pg_terminate_backend(%s)", (old,))
        await asyncio.sleep(0.1)
        async with p.connection() as conn:
            assert await backend_pid(p, conn) != old  # no error
        assert p.stats()["requests_errors"] == 0


async def test_killed_mid_query_one_error_and_never_reused(kind: str,
                                                           pg: EmbeddedPostgres) -> None:
    async with make_pool(kind, pg.dsn, min_size=2, name="killed-busy") as p:
        await p.wait(10)
        conn = await p.getconn()
        pid = conn.info.backend_pid
        await p.execute(conn, "select 1")  # not the first statement: never replayed
        await p.commit(conn)
        sleeper = asyncio.create_task(p.execute(conn, "select pg_sleep(30)"))
        await aeventually(lambda: bool(pg.execute(
            "select 1 from pg_stat_activity where pid = %s and state = 'active'", (pid,))))
        pg.execute("select pg_terminate_backend(%s)", (pid,))
        # one session ended while the server stays up: somebody meant to stop that statement
        with pytest.raises(psycopg.OperationalError, match="terminating connection"):
            await sleeper
        await p.putconn(conn)
        assert p.stats()["statements_replayed"] == 0 and p.stats()["returns_bad"] == 1
        seen = set()
        for _ in range(10):
            async with p.connection() as c:
                seen.add(await backend_pid(p, c))
        assert pid not in seen


@pytest.mark.slow
async def test_restart_with_all_connections_stale(
        kind: str, make_cluster: Callable[..., EmbeddedPostgres]) -> None:
    cluster = make_cluster(max_connections=20)
    async with make_pool(kind, cluster.dsn, min_size=4, name="restart") as p:
        await p.wait(10)
        before = set(await all_pids(p, 4))
        await asyncio.to_thread(cluster.restart)

        async def work() -> int:
            async with p.connection(10.0) as conn:
                pid = await backend_pid(p, conn)
                await asyncio.sleep(0.05)
                return pid

        after = await asyncio.gather(*(work() for _ in range(8)))
        assert not before & set(after)
        assert p.stats()["generations_invalidated"] >= 1
        assert p.stats()["requests_errors"] == 0


@pytest.mark.slow
async def test_server_down_longer_than_timeout_says_unreachable_and_retries_in_rounds(
        kind: str, make_cluster: Callable[..., EmbeddedPostgres]) -> None:
    cluster = make_cluster(max_connections=20)
    gave_up: list[Any] = []

    def reconnect_failed(pool: Any) -> None:
        gave_up.append(pool)

    async with make_pool(kind, cluster.dsn, min_size=2, name="outage", reconnect_timeout=0.5,
                         reconnect_failed=reconnect_failed) as p:
        await p.wait(10)
        await asyncio.to_thread(cluster.stop)
        with pytest.raises(PoolTimeout) as info:
            await p.getconn(1.0)
        err = info.value
        assert isinstance(err, PoolCheckoutTimeout) and err.server_unreachable
        msg = str(err)
        assert "cannot reach the server" in msg and cluster.password not in msg
        # attempts were bounded: one in flight, at most 100/s while callers wait
        assert p.stats()["connections_errors"] <= 120
        # psycopg_pool's documented default: reconnect_failed is called after each
        # reconnect_timeout of failures, and a new round of attempts starts (psycopg #370)
        assert gave_up and all(x is p.pool for x in gave_up)
        before = len(gave_up)
        assert await aeventually(lambda: len(gave_up) > before, 5.0)
        await asyncio.to_thread(cluster.start)
        async with p.connection(10.0) as conn:  # it came back by itself
            assert await p.execute(conn, "select 1") == [(1,)]


async def test_leak_warning_names_the_stack_then_unleaked(
        kind: str, pg: EmbeddedPostgres, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with make_pool(kind, pg.dsn, min_size=1, name=f"leaky-{kind}",
                         leak_threshold=0.2) as p:
        conn = await hold(p)
        await p.execute(conn, "select 1")  # now idle in transaction
        assert await aeventually(lambda: p.stats()["leaks_detected"] == 1)
        assert await aeventually(lambda: "connection leak?" in caplog.text)
        warn = [r for r in caplog.records if "connection leak?" in r.getMessage()]
        assert warn[0].levelno == logging.WARNING
        text = warn[0].getMessage()
        assert "hold_a_connection" in text and "test_behaviour.py" in text
        assert f"backend pid {conn.info.backend_pid}" in text
        (holder,) = p.holders()
        assert isinstance(holder, Holder) and holder.leaked
        assert holder.transaction_state == "idle in transaction"
        assert holder.function.startswith("hold_a_connection")
        await p.rollback(conn)
        await p.putconn(conn)
        assert "unleaked" in caplog.text
        assert p.stats()["leaks_unleaked"] == 1


def forget_a_connection(pool: ConnectionPool[Any]) -> int:
    return int(pool.getconn().info.backend_pid)


async def forget_a_connection_async(pool: AsyncConnectionPool[Any]) -> int:
    return int((await pool.getconn()).info.backend_pid)


async def test_garbage_collected_connection_is_reclaimed(
        kind: str, pg: EmbeddedPostgres, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    async with make_pool(kind, pg.dsn, min_size=1, max_size=1, name="gc") as p:
        if kind == "sync":
            pid = await p._thread(forget_a_connection, p.pool)
        else:
            pid = await forget_a_connection_async(p.pool)
        gc.collect()
        # the slot comes back: the only connection is available again
        async with p.connection(5.0) as conn:
            assert await backend_pid(p, conn) != pid
        assert p.stats()["connections_reclaimed"] == 1
        assert "garbage-collected" in caplog.text and "forget_a_connection" in caplog.text


async def test_return_inside_transaction_is_rolled_back(
        kind: str, pg: EmbeddedPostgres, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    async with make_pool(kind, pg.dsn, min_size=1, max_size=1, name="rb") as p:
        conn = await hold(p)
        await p.execute(conn, "create temp table t_rb (x int)")
        await p.putconn(conn)
        assert "returned inside a transaction" in caplog.text
        assert "hold_a_connection" in caplog.text
        async with p.connection() as conn2:
            with pytest.raises(psycopg.errors.UndefinedTable):
                await p.execute(conn2, "select * from t_rb")
        assert p.stats()["returns_rolled_back"] == 1


async def test_transaction_commits_and_rolls_back(kind: str, pg: EmbeddedPostgres) -> None:
    table = f"pool_tx_{kind}"
    pg.execute(f"create table if not exists {table} (x int)")
    pg.execute(f"truncate {table}")
    async with make_pool(kind, pg.dsn, min_size=1, max_size=1, name="tx",
                         kwargs={"autocommit": True}) as p:
        async with p.transaction() as conn:
            await p.execute(conn, f"insert into {table} values (1)")
        with pytest.raises(ZeroDivisionError):
            async with p.transaction() as conn:
                await p.execute(conn, f"insert into {table} values (2)")
                raise ZeroDivisionError
        assert pg.execute(f"select x from {table} order by x") == [(1,)]
        assert p.stats()["pool_available"] == 1


async def test_max_waiting(kind: str, pg: EmbeddedPostgres) -> None:
    async with make_pool(kind, pg.dsn, min_size=1, max_size=1, max_waiting=1,
                         name="mw") as p:
        conn = await p.getconn()
        waiting = asyncio.create_task(p.getconn(5.0))
        assert await aeventually(lambda: p.stats()["requests_waiting"] == 1)
        with pytest.raises(TooManyRequests, match="max_waiting=1"):
            await p.getconn(5.0)
        await p.putconn(conn)
        await p.putconn(await waiting)


async def test_resize(kind: str, pg: EmbeddedPostgres) -> None:
    async with make_pool(kind, pg.dsn, min_size=1, max_size=1, name="rs") as p:
        await p.resize(3, 3)
        conns = [await p.getconn(5.0) for _ in range(3)]
        assert len({c.info.backend_pid for c in conns}) == 3
        await p.resize(1, 1)
        for c in conns:
            await p.putconn(c)
        st = p.stats()
        assert st["pool_size"] == 1 and st["pool_max"] == 1


async def test_timeout_names_the_holders(kind: str, pg: EmbeddedPostgres) -> None:
    async with make_pool(kind, pg.dsn, min_size=2, name="api") as p:
        held = [await hold(p) for _ in range(2)]
        await p.execute(held[0], "select 1")
        with pytest.raises(PoolTimeout) as info:
            await p.getconn(0.3)
        msg = str(info.value)
        assert msg.startswith("couldn't get a connection after 0.30 s: pool 'api' is exhausted "
                              "(2/2 in use, 0 idle, 1 waiting")
        assert "longest holders: backend pid " in msg and "hold_a_connection" in msg
        assert "(idle in transaction)" in msg
        err = info.value
        assert isinstance(err, PoolCheckoutTimeout)
        assert err.in_use == 2 and len(err.holders) == 2
        # it crosses a process boundary whole (ProcessPoolExecutor, Celery pickle exceptions)
        copy = pickle.loads(pickle.dumps(err))  # noqa: S301  (our own bytes)
        assert type(copy) is PoolCheckoutTimeout and str(copy) == msg
        assert (copy.in_use, copy.pool_name, copy.holders[0].location) == (
            2, "api", err.holders[0].location)
        for c in held:
            await p.putconn(c)


async def test_an_empty_name_gets_a_generated_one_as_in_psycopg_pool(
        kind: str, pg: EmbeddedPostgres) -> None:
    async with make_pool(kind, pg.dsn, min_size=1, name="") as p:
        assert p.pool.name.startswith("pool-")


async def test_putconn_foreign_connection(kind: str, pg: EmbeddedPostgres) -> None:
    async with make_pool(kind, pg.dsn, min_size=1, name="p1") as p:
        with pg.connect() as other, pytest.raises(ValueError, match="doesn't come from any"):
            await p.putconn(other)


async def test_check_finds_dead_idle_connections_and_retires_old_ones(
        kind: str, pg: EmbeddedPostgres) -> None:
    async with make_pool(kind, pg.dsn, min_size=3, name="chk") as p:
        await p.wait(10)
        pids = await all_pids(p, 3)
        pg.execute("select pg_terminate_backend(pid) from unnest(%s::int[]) as pid", (pids,))
        await asyncio.sleep(0.1)
        await p.check()
        st = p.stats()
        assert st["connections_lost"] == 3 and st["validations_failed"] == 3
        await p.wait(10)
        assert not set(await all_pids(p, 3)) & set(pids)
    # check() retires connections past max_lifetime too (psycopg_pool 3.2)
    async with make_pool(kind, pg.dsn, min_size=2, name="chk-life", max_lifetime=0.2) as p:
        await p.wait(10)
        first = set(await all_pids(p, 2))
        await asyncio.sleep(0.3)
        await p.check()
        await p.wait(10)
        assert not set(await all_pids(p, 2)) & first


async def test_max_lifetime_replaces_connections(kind: str, pg: EmbeddedPostgres) -> None:
    async with make_pool(kind, pg.dsn, min_size=2, name="life", max_lifetime=0.3,
                         leak_threshold=0.2) as p:
        await p.wait(10)
        first = set(await all_pids(p, 2))

        async def replaced() -> bool:
            return not set(await all_pids(p, 2)) & first

        for _ in range(100):
            if await replaced():
                break
            await asyncio.sleep(0.05)
        assert await replaced()
        assert p.stats()["pool_size"] == 2


async def test_a_burst_of_short_requests_grows_the_pool_one_at_a_time(
        kind: str, pg: EmbeddedPostgres) -> None:
    # psycopg_pool's test_grow: 50 short requests against min 2 / max 20 keep it small; a pool
    # that opens one connection per waiting caller would take every slot it may
    async with make_pool(kind, pg.dsn, min_size=2, max_size=20, name="burst") as p:
        await p.wait(10)

        async def short() -> None:
            async with p.connection(10.0) as conn:
                await p.execute(conn, "select pg_sleep(0.01)")

        await asyncio.gather(*(short() for _ in range(50)))
        # (psycopg_pool ends at 12-14 on the 2-core CI machine, as pgwarden does)
        assert 2 <= p.stats()["pool_size"] < 20


async def test_a_failing_reset_is_a_warning_and_the_connection_is_replaced(
        kind: str, pg: EmbeddedPostgres, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)

    def reset(conn: Any) -> None:
        raise RuntimeError("reset exploded")

    async def areset(conn: Any) -> None:
        raise RuntimeError("reset exploded")

    async with make_pool(kind, pg.dsn, min_size=1, max_size=1, name="rst",
                         reset=reset if kind == "sync" else areset) as p:
        conn = await p.getconn()
        pid = conn.info.backend_pid
        await p.putconn(conn)
        record = next(r for r in caplog.records if "reset exploded" in r.getMessage())
        assert record.levelno == logging.WARNING
        assert p.stats()["returns_bad"] == 1
        conn = await p.getconn(5.0)
        assert conn.info.backend_pid != pid  # replaced
        await p.putconn(conn)


async def test_a_pool_dropped_without_close_is_collected(kind: str, pg: EmbeddedPostgres
                                                         ) -> None:
    p = make_pool(kind, pg.dsn, min_size=1, name="dropped")
    await p.open(wait=True)
    ref = weakref.ref(p.pool)
    del p
    for _ in range(50):
        gc.collect()
        if ref() is None:
            break
        await asyncio.sleep(0.02)
    assert ref() is None


@pytest.mark.parametrize("how", ["read_only", "default_transaction_read_only", "read_write"])
async def test_the_commit_guarantee(kind: str, how: str, pg: EmbeddedPostgres,
                                    caplog: pytest.LogCaptureFixture) -> None:
    """A COMMIT that meets a session the server ended is reported, unless the transaction was
    one the server enforced as read-only: then nothing was lost and the block ends normally."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    conninfo = (pg.conninfo(options="-c default_transaction_read_only=on")
                if how == "default_transaction_read_only" else pg.dsn)
    async with make_pool(kind, conninfo, min_size=1, max_size=1, name=f"commit-{how}") as p:

        async def block() -> None:
            async with p.connection() as conn:
                if how == "read_only":
                    if kind == "sync":
                        conn.read_only = True
                    else:
                        await conn.set_read_only(True)
                await p.execute(conn, "select 1")
                await p.execute(conn, "select 2")  # the second statement: never replayed
                pg.execute("select pg_terminate_backend(%s)", (conn.info.backend_pid,))
                await asyncio.sleep(0.1)

        if how == "read_write":
            with pytest.raises(psycopg.OperationalError):
                await block()
            assert p.stats()["commits_read_only"] == 0
        else:
            await block()  # no error: nothing could have been written
            assert p.stats()["commits_read_only"] == 1
            assert "read-only transaction; nothing was lost" in caplog.text
        async with p.connection(5.0) as conn:  # and the pool is whole
            assert await p.execute(conn, "select 1") == [(1,)]


@pytest.mark.slow
async def test_a_blackholed_idle_connection_is_detected_at_checkout(
        kind: str, pg: EmbeddedPostgres, fault_proxy: Callable[..., Any]) -> None:
    proxy = fault_proxy(pg.port)
    dsn = pg.conninfo(**proxy.dsn_params, connect_timeout=2)
    async with make_pool(kind, dsn, min_size=1, name="blackhole", validation_window=0.2,
                         validation_timeout=1.0) as p:
        await p.wait(10)
        async with p.connection() as conn:
            await p.execute(conn, "select 1")
        proxy.set_mode("blackhole")
        await asyncio.sleep(0.3)
        with pytest.raises(PoolTimeout) as info:
            await p.getconn(4.0)
        assert "cannot reach the server" in str(info.value)
        assert p.stats()["validations_failed"] == 1
        proxy.set_mode("pass")
        async with p.connection(10.0) as conn:
            assert await p.execute(conn, "select 1") == [(1,)]


async def test_a_returned_connection_kept_by_the_application_does_not_hold_the_pool(
        kind: str, pg: EmbeddedPostgres) -> None:
    """psycopg_pool's rule: a connection points at its pool only while checked out."""
    async with make_pool(kind, pg.dsn, min_size=1, name="ref") as p:
        conn = await p.getconn()
        assert conn._pool is p.pool
        await p.putconn(conn)
        assert conn._pool is None
        with pytest.raises(ValueError, match="doesn't come from any pool"):
            await p.putconn(conn)  # returned twice: as psycopg_pool


async def test_requests_queued_counts_callers_as_they_start_waiting(
        kind: str, pg: EmbeddedPostgres) -> None:
    async with make_pool(kind, pg.dsn, min_size=1, max_size=1, name="queued") as p:
        conn = await p.getconn()
        waiting = asyncio.create_task(p.getconn(5.0))
        assert await aeventually(lambda: p.stats()["requests_queued"] == 1)
        await p.putconn(conn)
        await p.putconn(await waiting)


async def test_a_pool_never_opened_says_so(kind: str, pg: EmbeddedPostgres) -> None:
    p = make_pool(kind, pg.dsn)
    with pytest.raises(PoolClosed, match="is not open yet"):
        await p.getconn()
    await p.open()
    await p.close()
    with pytest.raises(PoolClosed, match="is already closed"):
        await p.getconn()


async def test_a_returned_connection_says_why_it_is_discarded(
        kind: str, pg: EmbeddedPostgres, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    async with make_pool(kind, pg.dsn, min_size=0, max_size=2, name="why") as p:
        ended = await p.getconn(10.0)
        pid = await backend_pid(p, ended)
        pg.execute("select pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg.OperationalError):
            await p.execute(ended, "select 1")
        await p.putconn(ended)
        closed = await p.getconn(10.0)
        await (p._thread(closed.close) if kind == "sync" else closed.close())
        await p.putconn(closed)
    lines = [r.getMessage() for r in caplog.records if "discarding returned" in r.getMessage()]
    assert len(lines) == 2, lines
    assert f"pid {pid}: lost (the server ended the session or the network failed)" in lines[0]
    assert "closed by its holder" in lines[1]


@pytest.mark.parametrize("setting", ["dict_row", "namedtuple_row", "client_cursor",
                                     "raw_cursor", "autocommit", "prepare_always"])
async def test_the_applications_connection_settings_are_the_applications(
        kind: str, pg: EmbeddedPostgres, setting: str) -> None:
    """Whatever the application's kwargs make of a connection (row_factory=dict_row is
    common), the pool's own queries (its first connection's pooler detection, the backend
    pid) work, and the application's statements get what it asked for."""
    from psycopg.rows import dict_row, namedtuple_row

    sync = kind == "sync"
    kwargs: dict[str, Any] = {
        "dict_row": {"row_factory": dict_row},
        "namedtuple_row": {"row_factory": namedtuple_row},
        "client_cursor": {"cursor_factory": psycopg.ClientCursor if sync
                          else psycopg.AsyncClientCursor},
        "raw_cursor": {"cursor_factory": psycopg.RawCursor if sync else psycopg.AsyncRawCursor},
        "autocommit": {"autocommit": True},
        "prepare_always": {"prepare_threshold": 0},
    }[setting]
    async with make_pool(kind, pg.dsn, min_size=2, name=f"kw-{setting}", kwargs=kwargs) as p:
        await p.wait(10)
        async with p.connection() as conn:
            [row] = await p.execute(conn, "select 1 as x")
        assert p.stats()["connections_errors"] == 0
    assert row == ({"x": 1} if setting == "dict_row" else (1,))
    if setting == "namedtuple_row":
        assert row.x == 1


async def test_code_that_fails_on_each_new_connection_is_not_an_unreachable_server(
        kind: str, pg: EmbeddedPostgres, caplog: pytest.LogCaptureFixture) -> None:
    def broken(conn: Any) -> None:
        raise KeyError(0)

    async def abroken(conn: Any) -> None:
        raise KeyError(0)

    caplog.set_level(logging.WARNING, logger=LOGGER)
    async with make_pool(kind, pg.dsn, min_size=1, name="cfg",
                         configure=broken if kind == "sync" else abroken) as p:
        with pytest.raises(PoolTimeout) as info:
            await p.getconn(1.5)
        msg = str(info.value)
        assert "cannot open connections: the server accepts them, then code run on each " \
            "new one fails" in msg and "last: KeyError: 0" in msg
        assert "cannot reach the server" not in msg
        assert p.stats()["connections_errors"] <= 3  # retried slowly, not every 10-40 ms
    assert any(r.exc_info and "KeyError" in r.getMessage() for r in caplog.records)
