"""What a failing connection attempt means decides how the pool retries and what its timeout
says (issue 8's pool cases), the same for the sync and the asyncio pool."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from pgwarden.embedded import EmbeddedPostgres
from pgwarden.errors import ConfigError, PoolTimeout
from pgwarden.pool import ConnectionPool, PoolCheckoutTimeout

from ..conftest import Sessions
from ..faultproxy import FaultProxy
from ..helpers import aeventually
from .both import kind, make_pool

__all__ = ["kind"]  # the fixture, re-exported for pytest

pytestmark = pytest.mark.slow


async def _timeout_of(pool: Any, timeout: float) -> PoolCheckoutTimeout:
    with pytest.raises(PoolTimeout) as info:
        await pool.getconn(timeout)
    assert isinstance(info.value, PoolCheckoutTimeout)
    return info.value


async def test_2_a_full_server_for_an_ordinary_role_is_full_not_unreachable(
        kind: str, make_cluster: Callable[..., EmbeddedPostgres], sessions: Sessions) -> None:
    # PostgreSQL 15's "remaining connection slots are reserved for non-replication superuser
    # connections": the usable slots are taken, only the superuser reserve is left
    cluster = make_cluster(max_connections=8, superuser_reserved_connections=3)
    cluster.execute("create role plain login password 'plainpw'")
    hogs = sessions.open(cluster, 5, user="plain", password="plainpw", application_name="hog")
    dsn = cluster.conninfo(user="plain", password="plainpw")
    async with make_pool(kind, dsn, min_size=0, max_size=4, name="ordinary") as pool:
        err = await _timeout_of(pool, 1.0)
        assert err.server_full and not err.server_unreachable
        assert err.connect_failure == "server_full"
        msg = str(err)
        assert "no free connection slot" in msg and "reserved" in msg
        assert "cannot reach" not in msg and "plainpw" not in msg
        await asyncio.sleep(2.0)
        # about once a second, not every 10-40 ms (that was ~30 attempts a second)
        assert pool.stats()["connections_errors"] <= 6
        # 3. growth resumes by itself when slots free up (no resize(), no expiry)
        for c in hogs:
            c.close()
        conns = [await pool.getconn(10.0) for _ in range(4)]
        assert pool.stats()["pool_size"] == 4
        for c in conns:
            await pool.putconn(c)


async def test_3_growth_resumes_after_too_many_clients(
        kind: str, make_cluster: Callable[..., EmbeddedPostgres], sessions: Sessions) -> None:
    cluster = make_cluster(max_connections=6, superuser_reserved_connections=0)
    others = sessions.open(cluster, 4, application_name="others")
    async with make_pool(kind, cluster.dsn, min_size=0, max_size=8, name="grower") as pool:
        first = [await pool.getconn(5.0) for _ in range(2)]
        err = await _timeout_of(pool, 1.5)  # the server says "too many clients already"
        assert err.server_full and "too many clients" in str(err)
        for c in others:
            c.close()
        # the other clients are gone: the callers get connections, the pool grows past 2
        more = [await pool.getconn(10.0) for _ in range(4)]
        assert pool.stats()["pool_size"] >= 6
        for c in first + more:
            await pool.putconn(c)


async def test_4_a_deaf_server_is_reported_unreachable_before_connect_timeout(
        kind: str, pg: EmbeddedPostgres, fault_proxy: Callable[..., FaultProxy]) -> None:
    deaf = fault_proxy(pg.port, "deaf")
    # the pool's default connect_timeout (5 s) is longer than the checkout timeout (3 s)
    dsn = pg.conninfo(**deaf.dsn_params)
    async with make_pool(kind, dsn, min_size=0, max_size=2, name="deaf") as pool:
        err = await _timeout_of(pool, 3.0)
        assert err.server_unreachable
        msg = str(err)
        assert "cannot reach the server" in msg and "no answer" in msg
        assert "slow" not in msg


async def test_a_wrong_password_stops_the_fast_cadence(kind: str, pg: EmbeddedPostgres) -> None:
    dsn = pg.conninfo(password="not-the-password")
    async with make_pool(kind, dsn, min_size=0, max_size=2, name="badpw") as pool:
        err = await _timeout_of(pool, 3.0)
        assert err.connect_failure == "rejected" and not err.server_unreachable
        msg = str(err)
        assert "rejects" in msg and "password authentication failed" in msg
        assert "not-the-password" not in msg
        # 2 s, then 4 s...: one or two attempts in 3 s, not ~100
        assert pool.stats()["connections_errors"] <= 3


async def test_a_reset_at_connect_is_retried_fast_and_recovers(
        kind: str, pg: EmbeddedPostgres, fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(pg.port, "reset")
    dsn = pg.conninfo(**proxy.dsn_params)
    async with make_pool(kind, dsn, min_size=0, max_size=2, name="reset") as pool:
        err = await _timeout_of(pool, 0.5)
        assert err.server_unreachable
        proxy.set_mode("pass")
        conn = await pool.getconn(5.0)
        assert await pool.execute(conn, "select 1") == [(1,)]
        await pool.putconn(conn)


async def test_a_delayed_network_still_serves(kind: str, pg: EmbeddedPostgres,
                                              fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(pg.port, "delay", delay=0.05)
    async with make_pool(kind, pg.conninfo(**proxy.dsn_params), min_size=1, max_size=1,
                         name="slow-net") as pool:
        conn = await pool.getconn(10.0)
        assert await pool.execute(conn, "select 41 + 1") == [(42,)]
        await pool.putconn(conn)
        assert await aeventually(lambda: pool.stats()["connections_errors"] == 0, 0.1)


@pytest.mark.parametrize("bad", [
    "connect_timeout=abc", "sslmode=bogus", "target_session_attrs=bogus", "port=99999",
])
def test_invalid_parameter_values_are_rejected_at_construction(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        ConnectionPool(f"host=127.0.0.1 password=hunter2 {bad}", open=False)
    assert bad.split("=")[0] in str(info.value) and "hunter2" not in str(info.value)
    with pytest.raises(ConfigError):
        ConnectionPool("host=127.0.0.1", kwargs={"sslmode": "bogus"}, open=False)
