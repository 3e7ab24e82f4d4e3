"""A black-holed connection (packets silently dropped, as by a dead NAT entry or a pulled cable),
made real with iptables on the loopback interface: the kernel, not a proxy, stops delivering the
connection's packets, so only TCP keepalives and tcp_user_timeout can notice."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from pgwarden.pool import ConnectionPool

IPTABLES = shutil.which("iptables")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(IPTABLES is None or os.geteuid() != 0,
                       reason="needs root and iptables (apt-get install iptables)"),
]


def _local_port(conn: psycopg.Connection[Any]) -> int:
    sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


@pytest.fixture
def blackhole() -> Iterator[Callable[[int, int], None]]:
    """``blackhole(client_port, server_port)``: drop that connection's packets on lo, both ways
    (127.0.0.1 only; rules removed at the end of the test)."""
    rules: list[list[str]] = []

    def add(client_port: int, server_port: int) -> None:
        for sport, dport in ((client_port, server_port), (server_port, client_port)):
            rule = ["INPUT", "-i", "lo", "-s", "127.0.0.1", "-d", "127.0.0.1", "-p", "tcp",
                    "--sport", str(sport), "--dport", str(dport), "-j", "DROP"]
            res = subprocess.run([str(IPTABLES), "-I", *rule], capture_output=True, text=True)
            if res.returncode != 0:
                pytest.skip(f"iptables unusable here: {res.stderr.strip()}")
            rules.append(rule)

    yield add
    for rule in rules:
        subprocess.run([str(IPTABLES), "-D", *rule], capture_output=True)


FAST_TCP = {"keepalives_idle": 1, "keepalives_interval": 1, "keepalives_count": 2,
            "tcp_user_timeout": 2000}


def test_query_on_blackholed_connection_fails_within_tcp_user_timeout(
    pg: Any, blackhole: Callable[[int, int], None]
) -> None:
    """Without tcp_user_timeout a query sent into a black hole waits for TCP's retransmission
    limit (~15 min on Linux); with it the caller gets an error within the bound."""
    with ConnectionPool(pg.dsn, min_size=1, max_size=2, name="bh-query", kwargs=FAST_TCP) as pool:
        pool.wait(10)
        conn = pool.getconn()
        assert conn.info.get_parameters()["tcp_user_timeout"] == "2000"
        blackhole(_local_port(conn), pg.port)
        t0 = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
        elapsed = time.monotonic() - t0
        assert elapsed < 10, elapsed  # 2 s tcp_user_timeout, retransmission granularity
        pool.putconn(conn)  # broken: discarded, never handed out again
        assert pool.get_stats()["returns_bad"] == 1
        with pool.connection(timeout=10) as fresh:
            assert fresh.execute("select 1").fetchone() == (1,)


def test_idle_blackholed_connection_is_dropped_by_keepalives_before_checkout(
    pg: Any, blackhole: Callable[[int, int], None]
) -> None:
    """An idle connection whose peer vanished is noticed by keepalives (1 + 2 x 1 s here) and
    the next checkout gets a working connection: no error, no wait for a validation timeout."""
    with ConnectionPool(pg.dsn, min_size=1, max_size=1, name="bh-idle", kwargs=FAST_TCP,
                        validation_window=3600) as pool:
        pool.wait(10)
        with pool.connection() as conn:
            dead_pid = conn.info.backend_pid
            port = _local_port(conn)
        blackhole(port, pg.port)
        time.sleep(5)  # past keepalives_idle + interval * count: the kernel reports the error
        t0 = time.monotonic()
        with pool.connection(timeout=10) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            assert conn.info.backend_pid != dead_pid
        assert time.monotonic() - t0 < 5
        stats = pool.get_stats()
        assert stats["connections_lost"] == 1
