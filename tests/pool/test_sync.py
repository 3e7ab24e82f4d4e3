"""What only the thread pool has: fork safety, get_pool, many threads at once, and the
interruption of a transaction block (the shared behaviours are in test_behaviour.py)."""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any

import psycopg
import pytest

from pgwarden.errors import ConfigError, PoolTimeout
from pgwarden.pool import ConnectionPool

from ..helpers import eventually

LOGGER = "pgwarden.pool"


def backend_pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def _all_pids(pool: ConnectionPool[Any], n: int) -> list[int]:
    conns = [pool.getconn() for _ in range(n)]
    try:
        return [c.info.backend_pid for c in conns]
    finally:
        for c in conns:
            pool.putconn(c)


def test_transaction_rolls_back_on_keyboard_interrupt(pg: Any) -> None:
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
    assert eventually(lambda: pool.get_stats()["holders_num"] == 0, 5)
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

