"""The pools' metrics in prometheus_client's multiprocess mode, for real: worker processes with
PROMETHEUS_MULTIPROC_DIR set (as gunicorn's), each with a pgwarden pool, publishing into one
directory; a MultiProcessCollector over it (and one worker's serve_pool_metrics) answers
with the sums over the workers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from pgwarden.embedded import EmbeddedPostgres
from pgwarden.errors import ConfigError
from pgwarden.metrics import publish_pool_metrics

from .helpers import Values, http_get, parse, value

pytestmark = pytest.mark.timeout(120)

WORKER = Path(__file__).with_name("mp_worker.py")


class Worker:
    def __init__(self, dsn: str, hold: int, directory: Path, *flags: str) -> None:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
        self.proc = subprocess.Popen([sys.executable, str(WORKER), dsn, str(hold), *flags],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        ready = self.proc.stdout.readline().split()
        assert ready and ready[0] == "ready", ready if ready else self.proc.stderr.read()
        self.url = ready[1]

    def send(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(30)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    made: list[Worker] = []
    yield made
    for w in made:
        w.stop()
        if w.proc.poll() is None:
            w.proc.kill()


def read(directory: Path) -> Values:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return parse(generate_latest(registry).decode())


def mp(values: Values, name: str, **labels: str) -> float:
    return value(values, name, pool="mp-api", library="pgwarden", **labels)


def test_workers_metrics_are_summed(pg: EmbeddedPostgres, tmp_path: Path,
                                    workers: list[Worker]) -> None:
    directory = tmp_path / "multiproc"
    directory.mkdir()
    a = Worker(pg.dsn, 2, directory, "--timeout")
    workers.append(a)
    b = Worker(pg.dsn, 1, directory, "--serve")
    workers.append(b)

    v = read(directory)
    assert mp(v, "pgwarden_pool_connections", state="used") == 3
    assert mp(v, "pgwarden_pool_connections", state="idle") == 0
    assert mp(v, "pgwarden_pool_connections_max") == 3  # 2 + 1: the capacity of the fleet
    assert mp(v, "pgwarden_pool_requests_total") == 3
    assert mp(v, "pgwarden_pool_timeouts_total") == 1
    assert mp(v, "pgwarden_pool_errors_total") == 1
    assert mp(v, "pgwarden_pool_connections_opened_total") == 3
    # 3 checkouts served at once (first bucket) + 1 that gave up after 0.1 s
    assert mp(v, "pgwarden_pool_wait_seconds_count") == 4
    assert mp(v, "pgwarden_pool_wait_seconds_bucket", le="0.0001") == 3
    assert mp(v, "pgwarden_pool_wait_seconds_sum") >= 0.1
    assert mp(v, "pgwarden_pool_connect_seconds_count") == 3
    # gauges are summed over the live workers: no per-process series
    assert all("pid" not in dict(k) for k in v["pgwarden_pool_connections"])

    # what one worker's serve_pool_metrics answers: every worker's
    over_http = parse(http_get(b.url))
    assert mp(over_http, "pgwarden_pool_connections", state="used") == 3
    assert mp(over_http, "pgwarden_pool_requests_total") == 3

    assert a.send("return") == "returned"
    v = read(directory)
    assert mp(v, "pgwarden_pool_connections", state="used") == 1
    assert mp(v, "pgwarden_pool_connections", state="idle") == 2
    assert mp(v, "pgwarden_pool_use_seconds_count") == 2

    a.stop()  # a normal exit: its counters stay in the sums; its gauges until marked dead
    assert a.proc.returncode == 0, a.proc.stderr.read() if a.proc.stderr else ""
    mark_process_dead(a.proc.pid, str(directory))  # gunicorn's child_exit hook does this
    v = read(directory)
    assert mp(v, "pgwarden_pool_connections", state="used") == 1
    assert mp(v, "pgwarden_pool_connections", state="idle") == 0
    assert mp(v, "pgwarden_pool_connections_max") == 1
    assert mp(v, "pgwarden_pool_requests_total") == 3
    assert mp(v, "pgwarden_pool_timeouts_total") == 1
    assert mp(v, "pgwarden_pool_use_seconds_count") == 2


def test_publisher_says_what_multiprocess_mode_needs(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)
    with pytest.raises(ConfigError, match="PROMETHEUS_MULTIPROC_DIR is not set"):
        publish_pool_metrics()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="is not a directory"):
        publish_pool_metrics()
    # this test process imported prometheus_client without the variable: its metrics live in
    # memory, and setting it now changes nothing
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="imported before PROMETHEUS_MULTIPROC_DIR"):
        publish_pool_metrics()
    with pytest.raises(ConfigError, match="interval"):
        publish_pool_metrics(interval=0)


def test_an_endpoint_that_cannot_listen_starts_no_publisher(tmp_path: Path) -> None:
    code = """
import socket, threading
from pgwarden.errors import ListenError
from pgwarden.metrics import serve_pool_metrics
taken = socket.socket()
taken.bind(("127.0.0.1", 0))
taken.listen()
try:
    serve_pool_metrics(taken.getsockname()[1])
except ListenError as e:
    print("ListenError", e)
print("threads", sorted(t.name for t in threading.enumerate() if t.name.startswith("pgwarden")))
"""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60)
    assert "ListenError" in out.stdout and "port is in use" in out.stdout, out.stderr
    assert "threads []" in out.stdout
    assert not list(tmp_path.iterdir())  # and nothing published
