"""The pools' metrics as an application's scraper reads them: through a real prometheus_client
registry, over the HTTP helper and by a real Prometheus server. Both pgwarden pools (``kind``),
real clusters; the metrics move as the test checks out, waits, times out, leaks and returns."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from pgwarden import ConnectionPool
from pgwarden.embedded import EmbeddedPostgres
from pgwarden.errors import ConfigError, PoolTimeout
from pgwarden.metrics import (
    OTHER,
    POOL_METRICS,
    pool_samples,
    register_pool_metrics,
    serve_pool_metrics,
)
from pgwarden.metrics.pools import PoolCollector, PoolNames
from pgwarden.observe import TrackedConnection, Tracker

from ..helpers import aeventually
from ..pool.both import kind, make_pool
from .helpers import (
    Values,
    http_get,
    label_values,
    parse,
    prometheus_query,
    real_prometheus,
    value,
    wait_until,
)

__all__ = ["kind"]  # the fixture, re-exported for pytest

pytestmark = pytest.mark.timeout(120)


def scrape(registry: CollectorRegistry) -> Values:
    return parse(generate_latest(registry).decode())


class Reader:
    """One pool's samples, read from a registry at each call."""

    def __init__(self, registry: CollectorRegistry, pool: str, library: str = "pgwarden"):
        self.registry, self.labels = registry, {"pool": pool, "library": library}

    def __call__(self, name: str, **labels: str) -> float:
        return value(scrape(self.registry), name, **self.labels, **labels)


async def test_metrics_move_as_the_pool_checks_out_waits_leaks_and_times_out(
        kind: str, pg: EmbeddedPostgres) -> None:
    name = f"metrics-{kind}"
    registry = CollectorRegistry()
    register_pool_metrics(registry)
    m = Reader(registry, name)
    async with make_pool(kind, pg.dsn, min_size=1, max_size=1, name=name,
                         leak_threshold=0.3) as p:
        await p.wait()
        assert m("pgwarden_pool_connections", state="idle") == 1
        assert m("pgwarden_pool_connections", state="used") == 0
        assert m("pgwarden_pool_connections_max") == 1
        assert m("pgwarden_pool_connections_min") == 1
        assert m("pgwarden_pool_connections_opened_total") == 1
        assert m("pgwarden_pool_connect_seconds_count") == 1

        conn = await p.getconn()  # served at once
        assert m("pgwarden_pool_connections", state="used") == 1
        assert m("pgwarden_pool_connections", state="idle") == 0
        assert m("pgwarden_pool_requests_total") == 1
        assert m("pgwarden_pool_wait_seconds_count") == 1
        assert m("pgwarden_pool_wait_seconds_bucket", le="0.0001") == 1  # ~0 s: first bucket

        waiter = asyncio.ensure_future(p.getconn(30.0))  # the pool is empty: it waits
        assert await aeventually(lambda: m("pgwarden_pool_requests_waiting") == 1)

        # held past leak_threshold: reported as a leak, and still held
        assert await aeventually(lambda: m("pgwarden_pool_leaks_total") == 1)
        assert m("pgwarden_pool_leaks_current") == 1
        assert m("pgwarden_pool_holders_max_held_seconds") > 0.3

        await p.putconn(conn)  # the waiter gets it
        second = await waiter
        assert m("pgwarden_pool_requests_waiting") == 0
        assert m("pgwarden_pool_requests_waited_total") == 1
        assert m("pgwarden_pool_requests_total") == 2
        assert m("pgwarden_pool_leaks_returned_total") == 1
        assert m("pgwarden_pool_leaks_current") == 0
        assert m("pgwarden_pool_use_seconds_count") == 1
        assert m("pgwarden_pool_use_seconds_sum") > 0.3  # it was held past the threshold

        with pytest.raises(PoolTimeout):
            await p.getconn(0.2)  # still held by the waiter: times out
        assert m("pgwarden_pool_timeouts_total") == 1
        assert m("pgwarden_pool_errors_total") == 1
        # every checkout and the timeout are in the wait histogram: 2 served + 1 gave up
        assert m("pgwarden_pool_wait_seconds_count") == 3
        assert m("pgwarden_pool_wait_seconds_bucket", le="+Inf") == 3
        assert m("pgwarden_pool_wait_seconds_sum") >= 0.2
        await p.putconn(second)
        assert m("pgwarden_pool_connections", state="idle") == 1
        assert m("pgwarden_pool_use_seconds_count") == 2
    # a closed pool has no series any more
    assert name not in label_values(scrape(registry), "pgwarden_pool_connections", "pool")


def test_any_tracker_is_exported_with_its_library() -> None:
    """What pgwarden.instrument()'s adapters produce is a Tracker fed by events: exported as
    pgwarden's pools are, with its library label."""
    registry = CollectorRegistry()
    register_pool_metrics(registry)
    tracker = Tracker("adapted", library="sqlalchemy")
    rec = tracker.connected(TrackedConnection(pid=4711), 0.004)
    tracker.checkout(rec, threading.current_thread(), (), 10.0)
    m = Reader(registry, "adapted", "sqlalchemy")
    assert m("pgwarden_pool_connections", state="used") == 1
    assert m("pgwarden_pool_connect_seconds_bucket", le="0.005") == 1
    assert "pgwarden_pool_connections_max" not in {  # no bound known: no series
        n for n, series in scrape(registry).items()
        if any(dict(k).get("pool") == "adapted" for k in series)}
    tracker.checkin(rec, 10.5)
    assert m("pgwarden_pool_use_seconds_bucket", le="0.5") == 1
    assert m("pgwarden_pool_use_seconds_sum") == pytest.approx(0.5)


def test_pool_label_is_capped_and_same_names_add_up() -> None:
    trackers = [Tracker(n, library="psycopg_pool", register=False)
                for n in ("cap-a", "cap-b", "cap-c", "cap-d", "cap-a")]
    for t in trackers:
        t.connected(TrackedConnection(), 0.001)
    names = PoolNames(2)
    samples = pool_samples([t.stats() for t in trackers], names)
    opened = {s.labels[0]: s.value for s in samples
              if s.spec.name == "pgwarden_pool_connections_opened"}
    # the first two names keep theirs (the two cap-a trackers add up), the rest are (other)
    assert opened == {"cap-a": 2, "cap-b": 1, OTHER: 2}
    assert names("cap-b") == "cap-b" and names("cap-e") == OTHER  # for the process's life
    connect = [s for s in samples if s.spec.name == "pgwarden_pool_connect_seconds"]
    assert {s.labels[0]: s.buckets[-1][1] for s in connect} == opened  # +Inf bucket = count


def test_register_is_idempotent_and_refuses_multiprocess_mode(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    first = register_pool_metrics(registry)
    assert register_pool_metrics(registry) is first
    # the collector declares its names: a second one on the same registry is refused
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(PoolCollector())
    assert {spec.name for spec in POOL_METRICS} <= {
        m.name for m in PoolCollector().describe()}
    with pytest.raises(ConfigError, match="max_pools"):
        register_pool_metrics(CollectorRegistry(), max_pools=0)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="publish_pool_metrics"):
        register_pool_metrics(CollectorRegistry())


def test_http_helper_serves_the_pools_on_loopback(pg: EmbeddedPostgres) -> None:
    with ConnectionPool(pg.dsn, min_size=2, name="http-pool") as pool:
        pool.wait()
        conn = pool.getconn()
        with serve_pool_metrics(0) as endpoint:
            assert endpoint.host == "127.0.0.1"
            v = parse(http_get(endpoint.url("/metrics")))
            labels = {"pool": "http-pool", "library": "pgwarden"}
            assert value(v, "pgwarden_pool_connections", state="used", **labels) == 1
            assert value(v, "pgwarden_pool_connections", state="idle", **labels) == 1
            assert value(v, "pgwarden_pool_requests_total", **labels) == 1
            # holders are off unless asked for
            with pytest.raises(urllib.error.HTTPError) as err:
                http_get(endpoint.url("/holders"))
            assert err.value.code == 404
            assert pg.password not in http_get(endpoint.url("/metrics"))
        with serve_pool_metrics(0, holders=True) as endpoint:
            body = http_get(endpoint.url("/holders"))
            assert f'"pid": {conn.info.backend_pid}' in body
            assert "test_pool_metrics.py" in body and pg.password not in body
        pool.putconn(conn)
    with pytest.raises(urllib.error.URLError):  # closed: the port is released
        urllib.request.urlopen(endpoint.url("/metrics"), timeout=2)  # noqa: S310


def test_http_helper_bad_port_and_port_in_use() -> None:
    from pgwarden.errors import ListenError

    with pytest.raises(ConfigError, match="0 to 65535"):
        serve_pool_metrics(70000)
    with serve_pool_metrics(0) as taken, pytest.raises(ListenError, match="port is in use"):
        serve_pool_metrics(taken.port)
    for addr in ("", "  ", None):
        with pytest.raises(ConfigError, match="addr must be an address of this host"):
            serve_pool_metrics(0, addr=addr)  # type: ignore[arg-type]


def test_pgwarden_imports_without_prometheus_client() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "import pgwarden, pgwarden.metrics\n"
        "from pgwarden.metrics import serve_holders\n"
        "with serve_holders(0) as e: print(e.url())\n"
        "try:\n"
        "    from pgwarden.metrics import register_pool_metrics\n"
        "except ImportError:\n"
        "    print('register_pool_metrics needs prometheus_client')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0, res.stderr
    assert "http://127.0.0.1:" in res.stdout
    assert "register_pool_metrics needs prometheus_client" in res.stdout


@pytest.mark.slow
def test_a_real_prometheus_scrapes_the_pool_metrics(pg: EmbeddedPostgres, tmp_path: Path
                                                    ) -> None:
    with ConnectionPool(pg.dsn, min_size=2, max_size=3, name="prom-pool") as pool:
        pool.wait()
        held: list[Any] = [pool.getconn(), pool.getconn()]  # both idle: served at once
        with serve_pool_metrics(0) as endpoint, real_prometheus(
                tmp_path, "app", f"127.0.0.1:{endpoint.port}") as base:
            used = wait_until(lambda: prometheus_query(
                base, 'sum(pgwarden_pool_connections{pool="prom-pool",state="used"})'),
                timeout=60)
            assert float(used[0]["value"][1]) == 2
            [requests] = prometheus_query(
                base, 'pgwarden_pool_requests_total{job="app",pool="prom-pool"}')
            assert float(requests["value"][1]) == 2
            [waits] = prometheus_query(
                base, 'pgwarden_pool_wait_seconds_count{pool="prom-pool",library="pgwarden"}')
            assert float(waits["value"][1]) == 2
            [quantile] = prometheus_query(
                base, 'histogram_quantile(0.5, pgwarden_pool_wait_seconds_bucket'
                      '{pool="prom-pool"})')
            assert float(quantile["value"][1]) <= 0.0001  # both served at once
        for conn in held:
            pool.putconn(conn)


def test_loopback_is_recognised_in_every_form_the_socket_binds() -> None:
    from pgwarden.metrics.listen import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1", "localhost", "::1", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.1", "::", "example.com"))
