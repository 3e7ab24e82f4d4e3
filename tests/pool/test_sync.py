"""ConnectionPool on real clusters: what a caller notices."""

from __future__ import annotations

import gc
import logging
import os
import random
import threading
import time
from typing import Any

import psycopg
import pytest

from pgwarden.errors import ConfigError, PoolClosed, PoolTimeout, TooManyRequests
from pgwarden.pool import ConnectionPool, Holder, PoolCheckoutTimeout

LOGGER = "pgwarden.pool"


def wait_until(pred: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return bool(pred())


def backend_pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def test_psycopg_pool_api_and_stats(pg: Any) -> None:
    with ConnectionPool(pg.dsn, min_size=2, max_size=4, name="api") as pool:
        pool.wait(10)
        assert (pool.name, pool.min_size, pool.max_size, pool.closed) == ("api", 2, 4, False)
        with pool.connection() as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        conn = pool.getconn()
        pool.putconn(conn)
        stats = pool.get_stats()
        for key in ("pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting",
                    "requests_num", "requests_queued", "requests_wait_ms", "requests_errors",
                    "returns_bad", "connections_num", "connections_ms", "connections_errors",
                    "connections_lost", "usage_ms", "leaks_detected", "holders_num"):
            assert key in stats
        assert stats["requests_num"] == 2
        assert pool.pop_stats()["requests_num"] == 2
        assert pool.get_stats()["requests_num"] == 0
    assert pool.closed
    with pytest.raises(PoolClosed):
        pool.getconn()


def test_config_is_validated_eagerly() -> None:
    with pytest.raises(ConfigError, match="max_size"):
        ConnectionPool("", min_size=5, max_size=2, open=False)
    with pytest.raises(ValueError, match="timeout"):
        ConnectionPool("", timeout=-1, open=False)
    with pytest.raises(ValueError, match="leak_threshold"):
        ConnectionPool("", leak_threshold=-3, open=False)


def test_connection_defaults_applied(pg: Any) -> None:
    with ConnectionPool(pg.dsn, min_size=1) as pool, pool.connection() as conn:
        params = conn.info.get_parameters()
        assert params["keepalives_idle"] == "10"
        assert params["tcp_user_timeout"] == "20000"
        app = conn.info.parameter_status("application_name")
        assert app is not None and app.endswith(f"-{os.getpid()}")
    # what the DSN says wins
    with ConnectionPool(pg.conninfo(application_name="shop", keepalives_idle=7),
                        min_size=1) as pool, pool.connection() as conn:
        assert conn.info.parameter_status("application_name") == "shop"
        assert conn.info.get_parameters()["keepalives_idle"] == "7"


def test_killed_idle_connection_is_replaced_without_error(pg: Any) -> None:
    with ConnectionPool(pg.dsn, min_size=3, name="killed-idle") as pool:
        pool.wait(10)
        with pool.connection() as conn:
            old = backend_pid(conn)
        pg.execute("select pg_terminate_backend(pid) from pg_stat_activity where pid = %s",
                   (old,))
        time.sleep(0.1)
        with pool.connection() as conn:
            new = backend_pid(conn)  # no error
        assert new != old
        assert pool.get_stats()["requests_errors"] == 0


def test_killed_mid_query_one_error_and_never_reused(pg: Any) -> None:
    with ConnectionPool(pg.dsn, min_size=2, name="killed-busy") as pool:
        pool.wait(10)
        errors: list[BaseException] = []
        pids: list[int] = []

        def victim() -> None:
            try:
                with pool.connection() as conn:
                    pids.append(conn.info.backend_pid)
                    conn.execute("select pg_sleep(30)")
            except psycopg.Error as exc:
                errors.append(exc)

        t = threading.Thread(target=victim)
        t.start()
        assert wait_until(lambda: pids)
        time.sleep(0.2)
        pg.execute("select pg_terminate_backend(%s)", (pids[0],))
        t.join(10)
        # one session ended while the server stays up: somebody meant to stop that statement,
        # so it is not run again (see test_replay.py for a server shutdown)
        assert len(errors) == 1 and "terminating connection" in str(errors[0])
        assert pool.get_stats()["statements_replayed"] == 0
        seen = set()
        for _ in range(20):
            with pool.connection() as conn:
                seen.add(backend_pid(conn))
        assert pids[0] not in seen
        assert pool.get_stats()["returns_bad"] == 1


@pytest.mark.slow
def test_restart_with_all_connections_stale(make_cluster: Any) -> None:
    cluster = make_cluster(max_connections=20)
    with ConnectionPool(cluster.dsn, min_size=4, name="restart") as pool:
        pool.wait(10)
        before = {h for h in _all_pids(pool, 4)}
        cluster.restart()
        errors: list[BaseException] = []
        after: list[int] = []

        def work() -> None:
            try:
                with pool.connection(timeout=10) as conn:
                    after.append(backend_pid(conn))
                    time.sleep(0.05)
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert errors == []
        assert len(after) == 8
        assert not before & set(after)
        assert pool.get_stats()["generations_invalidated"] >= 1


def _all_pids(pool: ConnectionPool[Any], n: int) -> list[int]:
    conns = [pool.getconn() for _ in range(n)]
    try:
        return [c.info.backend_pid for c in conns]
    finally:
        for c in conns:
            pool.putconn(c)


@pytest.mark.slow
def test_server_down_longer_than_timeout_says_unreachable(make_cluster: Any) -> None:
    cluster = make_cluster(max_connections=20)
    gave_up: list[Any] = []
    with ConnectionPool(cluster.dsn, min_size=2, name="outage", reconnect_timeout=0.5,
                        reconnect_failed=gave_up.append) as pool:
        pool.wait(10)
        cluster.stop()
        t0 = time.monotonic()
        with pytest.raises(PoolTimeout) as info, pool.connection(timeout=1.0) as conn:
            conn.execute("select 1")
        assert time.monotonic() - t0 < 5
        err = info.value
        assert isinstance(err, PoolCheckoutTimeout)
        assert err.server_unreachable
        msg = str(err)
        assert "cannot reach the server" in msg
        assert "refused" in msg.lower() or "shut" in msg.lower()
        assert cluster.password not in msg
        # attempts were bounded: one in flight, at most 100/s while callers wait
        assert pool.get_stats()["connections_errors"] <= 120
        assert gave_up == [pool]  # psycopg_pool's reconnect_failed, called once
        cluster.start()
        t0 = time.monotonic()
        with pool.connection(timeout=10) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        assert time.monotonic() - t0 < 5


@pytest.mark.slow
def test_blackholed_connection_detected(pg: Any, fault_proxy: Any) -> None:
    proxy = fault_proxy(pg.port)
    dsn = pg.conninfo(port=proxy.port, connect_timeout=2)
    with ConnectionPool(dsn, min_size=1, name="blackhole", validation_window=0.2,
                        validation_timeout=1.0) as pool:
        pool.wait(10)
        with pool.connection() as conn:
            conn.execute("select 1")
        proxy.set_mode("blackhole")
        time.sleep(0.3)
        t0 = time.monotonic()
        with pytest.raises(PoolTimeout) as info:
            pool.getconn(timeout=4.0)
        elapsed = time.monotonic() - t0
        # validation_timeout (1 s) + connect_timeout (2 s) bound the detection, with slack
        assert elapsed < 8
        msg = str(info.value)
        assert "cannot reach the server" in msg and "timeout expired" in msg
        assert pool.get_stats()["validations_failed"] == 1
        proxy.set_mode("pass")
        with pool.connection(timeout=10) as conn:
            assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.slow
def test_too_many_clients_while_growing(make_cluster: Any, sessions: Any) -> None:
    cluster = make_cluster(max_connections=10, superuser_reserved_connections=0)
    sessions.open(cluster, 7)
    with ConnectionPool(cluster.dsn, min_size=0, max_size=8, name="full") as pool:
        held: list[Any] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def grab() -> None:
            try:
                conn = pool.getconn(timeout=2.0)
                with lock:
                    held.append(conn)
            except PoolTimeout as exc:
                with lock:
                    errors.append(exc)

        threads = [threading.Thread(target=grab) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(held) == 3
        assert len(errors) == 5
        assert all("too many clients" in str(e) for e in errors)
        assert all(isinstance(e, PoolCheckoutTimeout) and e.server_full for e in errors)
        # no thundering herd: a handful of refused attempts, not one per caller per tick
        assert pool.get_stats()["connections_errors"] <= 8
        for conn in held:
            pool.putconn(conn)


def hold_a_connection(pool: ConnectionPool[Any]) -> Any:
    return pool.getconn()


def test_leak_warning_names_the_stack_then_unleaked(pg: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with ConnectionPool(pg.dsn, min_size=1, name="leaky", leak_threshold=0.2) as pool:
        conn = hold_a_connection(pool)
        conn.execute("select 1")  # now idle in transaction
        assert wait_until(lambda: pool.get_stats()["leaks_detected"] == 1, 5)
        # the maintenance thread counts the leak, then logs it outside the pool's lock
        assert wait_until(
            lambda: any("connection leak?" in r.getMessage() for r in caplog.records), 5)
        warn = [r for r in caplog.records if "connection leak?" in r.getMessage()]
        assert warn and warn[0].levelno == logging.WARNING
        text = warn[0].getMessage()
        assert "hold_a_connection" in text
        assert "test_sync.py" in text
        assert f"pid {conn.info.backend_pid}" in text
        (holder,) = pool.holders()
        assert isinstance(holder, Holder)
        assert holder.leaked and holder.holder == threading.current_thread().name
        assert holder.transaction_state == "idle in transaction"
        assert "hold_a_connection" in holder.location
        conn.rollback()
        pool.putconn(conn)
        assert any("unleaked" in r.getMessage() for r in caplog.records)
        assert pool.get_stats()["leaks_unleaked"] == 1


def forget_a_connection(pool: ConnectionPool[Any]) -> int:
    conn = pool.getconn()
    return conn.info.backend_pid


def test_garbage_collected_connection_is_reclaimed(pg: Any, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with ConnectionPool(pg.dsn, min_size=1, max_size=1, name="gc") as pool:
        pid = forget_a_connection(pool)
        gc.collect()
        # the slot comes back: the only connection is available again
        with pool.connection(timeout=5) as conn:
            assert backend_pid(conn) != pid
        assert pool.get_stats()["connections_reclaimed"] == 1
        msgs = [r.getMessage() for r in caplog.records if "garbage-collected" in r.getMessage()]
        assert msgs and "forget_a_connection" in msgs[0]


def test_return_inside_transaction_is_rolled_back(pg: Any, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with ConnectionPool(pg.dsn, min_size=1, max_size=1, name="rb") as pool:
        conn = pool.getconn()
        conn.execute("create temp table t_rb (x int)")
        conn.execute("insert into t_rb values (1)")
        pool.putconn(conn)
        assert any("returned inside a transaction" in r.getMessage()
                   and "test_return_inside_transaction" in r.getMessage()
                   for r in caplog.records)
        with pool.connection() as conn2:
            assert conn2.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            with pytest.raises(psycopg.errors.UndefinedTable):
                conn2.execute("select * from t_rb")
        assert pool.get_stats()["returns_rolled_back"] == 1


def test_transaction_commits_and_rolls_back(pg: Any) -> None:
    pg.execute("create table if not exists pool_tx (x int)")
    pg.execute("truncate pool_tx")
    with ConnectionPool(pg.dsn, min_size=1, max_size=1, name="tx",
                        kwargs={"autocommit": True}) as pool:
        with pool.transaction() as conn:
            conn.execute("insert into pool_tx values (1)")
        with pytest.raises(ZeroDivisionError), pool.transaction() as conn:
            conn.execute("insert into pool_tx values (2)")
            raise ZeroDivisionError
        with pytest.raises(KeyboardInterrupt), pool.transaction() as conn:
            conn.execute("insert into pool_tx values (3)")
            raise KeyboardInterrupt
        assert pg.execute("select x from pool_tx order by x") == [(1,)]
        assert pool.get_stats()["pool_available"] == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_child_starts_clean(pg: Any) -> None:
    with ConnectionPool(pg.dsn, min_size=2, name="forky") as pool:
        pool.wait(10)
        parent_pids = set(_all_pids(pool, 2))
        r, w = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                with pool.connection(timeout=10) as conn:
                    pid = backend_pid(conn)
                code = 0 if pid not in parent_pids else 2
                os.write(w, str(pid).encode())
            finally:
                os._exit(code)
        os.close(w)
        _, status = os.waitpid(child, 0)
        child_pid = int(os.read(r, 100) or b"0")
        os.close(r)
        assert os.waitstatus_to_exitcode(status) == 0
        assert child_pid not in parent_pids
        # the parent's sessions were not disturbed
        assert set(_all_pids(pool, 2)) == parent_pids
        with pool.connection() as conn:
            conn.execute("select 1")
        assert pool.get_stats()["validations_failed"] == 0


def test_max_waiting(pg: Any) -> None:
    with ConnectionPool(pg.dsn, min_size=1, max_size=1, max_waiting=1, name="mw") as pool:
        conn = pool.getconn()
        t = threading.Thread(target=lambda: pool.putconn(pool.getconn(timeout=5)))
        t.start()
        assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
        with pytest.raises(TooManyRequests, match="max_waiting=1"):
            pool.getconn(timeout=5)
        pool.putconn(conn)
        t.join(5)


def test_resize(pg: Any) -> None:
    with ConnectionPool(pg.dsn, min_size=1, max_size=1, name="rs") as pool:
        pool.resize(3, 3)
        conns = [pool.getconn(timeout=5) for _ in range(3)]
        assert len({c.info.backend_pid for c in conns}) == 3
        pool.resize(1, 1)
        for c in conns:
            pool.putconn(c)
        st = pool.get_stats()
        assert st["pool_size"] == 1 and st["pool_max"] == 1


def test_timeout_names_the_holders(pg: Any) -> None:
    with ConnectionPool(pg.dsn, min_size=2, name="api") as pool:
        held = [hold_a_connection(pool) for _ in range(2)]
        held[0].execute("select 1")
        with pytest.raises(PoolTimeout) as info:
            pool.getconn(timeout=0.3)
        msg = str(info.value)
        assert msg.startswith("couldn't get a connection after 0.30 s: pool 'api' is exhausted "
                              "(2/2 in use, 0 idle, 1 waiting")
        assert "longest holders: pid " in msg and "hold_a_connection" in msg
        assert "(idle in transaction)" in msg
        err = info.value
        assert isinstance(err, PoolCheckoutTimeout)
        assert err.in_use == 2 and len(err.holders) == 2
        for c in held:
            pool.putconn(c)


def test_callable_conninfo_and_kwargs(pg: Any) -> None:
    calls: list[int] = []

    def conninfo() -> str:
        calls.append(1)
        return str(pg.dsn)

    with ConnectionPool(conninfo, kwargs=lambda: {"autocommit": True}, min_size=1,
                        name="callable") as pool, pool.connection() as conn:
        assert conn.autocommit
        app = conn.info.parameter_status("application_name")
        assert app is not None and app.endswith(f"-{os.getpid()}")
    assert calls


def test_putconn_foreign_connection(pg: Any) -> None:
    with (
        ConnectionPool(pg.dsn, min_size=1, name="p1") as pool,
        pg.connect() as other,
        pytest.raises(ValueError, match="doesn't come from any pool"),
    ):
        pool.putconn(other)


@pytest.mark.slow
def test_concurrency_stress(pg: Any) -> None:
    max_size = 6
    pool = ConnectionPool(pg.conninfo(application_name="pool-stress"), min_size=2,
                          max_size=max_size, name="stress")
    in_use: set[int] = set()
    lock = threading.Lock()
    problems: list[str] = []
    sizes: list[int] = []
    stop = time.monotonic() + 4.0
    errors = {"timeout": 0, "db": 0}

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        while time.monotonic() < stop:
            try:
                with pool.connection(timeout=rnd.choice([0.01, 0.2, 2.0])) as conn:
                    key = id(conn)
                    with lock:
                        if key in in_use:
                            problems.append("handed out twice")
                        in_use.add(key)
                    try:
                        conn.execute("select pg_sleep(%s)", (rnd.random() * 0.01,))
                    finally:
                        with lock:
                            in_use.discard(key)
            except PoolTimeout:
                errors["timeout"] += 1
            except psycopg.OperationalError:
                errors["db"] += 1

    def killer() -> None:
        rnd = random.Random(1)
        while time.monotonic() < stop:
            time.sleep(0.3)
            pg.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                       "where application_name = 'pool-stress' and random() < 0.5")
            sizes.append(pool.get_stats()["pool_size"])
            _ = rnd

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    threads.append(threading.Thread(target=killer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert problems == []
    assert max(sizes) <= max_size
    assert errors["timeout"] > 0  # the short timeouts did fire
    # settle: every connection came back, nothing lost
    assert wait_until(lambda: pool.get_stats()["holders_num"] == 0, 5)
    st = pool.get_stats()
    assert st["pool_size"] <= max_size
    conns = [pool.getconn(timeout=10) for _ in range(max_size)]
    assert len({c.info.backend_pid for c in conns}) == max_size
    for c in conns:
        pool.putconn(c)
    pool.close()


def test_get_pool_is_one_per_process(pg: Any) -> None:
    from pgwarden.pool import get_pool
    from pgwarden.pool.registry import close_all

    env = {"DATABASE_URL": pg.url, "PGWARDEN_POOL_MIN_SIZE": "1",
           "PGWARDEN_POOL_MAX_SIZE": "3", "PGWARDEN_POOL_TIMEOUT": "2.5"}
    try:
        a = get_pool(environ=env)
        b = get_pool(environ=env)
        assert a is b
        assert (a.min_size, a.max_size, a.timeout) == (1, 3, 2.5)
        assert get_pool(environ=env, name="reports") is not a
        with a.connection() as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        with pytest.raises(ConfigError, match="PGWARDEN_POOL_MAX_SIZE"):
            get_pool(pg.dsn, name="bad", environ={"PGWARDEN_POOL_MAX_SIZE": "lots"})
    finally:
        close_all()
    assert a.closed


def test_check_finds_dead_idle_connections(pg: Any) -> None:
    with ConnectionPool(pg.dsn, min_size=3, name="chk") as pool:
        pool.wait(10)
        pids = _all_pids(pool, 3)
        pg.execute("select pg_terminate_backend(pid) from unnest(%s::int[]) as pid", (pids,))
        time.sleep(0.1)
        pool.check()
        st = pool.get_stats()
        assert st["connections_lost"] == 3 and st["validations_failed"] == 3
        pool.wait(10)
        assert not set(_all_pids(pool, 3)) & set(pids)


def test_max_lifetime_replaces_connections(pg: Any) -> None:
    with ConnectionPool(pg.dsn, min_size=2, name="life", max_lifetime=0.3,
                        leak_threshold=0.2) as pool:
        pool.wait(10)
        first = set(_all_pids(pool, 2))
        # expired connections are replaced (jittered: within 10 % below max_lifetime)
        assert wait_until(lambda: not set(_all_pids(pool, 2)) & first, 5)
        assert pool.get_stats()["pool_size"] == 2
