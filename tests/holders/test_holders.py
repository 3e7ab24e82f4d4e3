"""Holders joined to server sessions across two processes, as users run it: an application
process (tests/holders/app.py) holds connections through a pgwarden pool and serves its
holders; ``pgwarden doctor``, ``status`` and ``top --once`` run with ``--holders URL`` and show
the application's file:line next to the right backend pid. A URL that is dead, slow, not
pgwarden's or malformed is a warning line, and the command still works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgwarden import ConnectionPool
from pgwarden.conninfo import connect, resolve
from pgwarden.embedded import EmbeddedPostgres
from pgwarden.metrics import serve_holders, serve_pool_metrics
from pgwarden.sources import holders as holders_source
from pgwarden.sources import postgres

from ..faultproxy import FaultProxy

pytestmark = pytest.mark.timeout(180)

APP = Path(__file__).with_name("app.py")
ROOT = Path(__file__).resolve().parents[2]


def marker_line(function: str) -> int:
    """The line of app.py's checkout in ``function`` (marked ``# CHECKOUT <function>``)."""
    for n, line in enumerate(APP.read_text().splitlines(), 1):
        if line.rstrip().endswith(f"# CHECKOUT {function}"):
            return n
    raise AssertionError(function)


class App:
    """tests/holders/app.py in its own process (cwd: the repository, so its file is
    ``tests/holders/app.py``)."""

    def __init__(self, dsn: str, pool: str, *flags: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(APP), dsn, pool, *flags],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(self.proc.stderr.read() if self.proc.stderr else "no output")
        info = json.loads(line)
        self.url: str = info["url"]
        self.in_tx_pid: int = info["in_tx_pid"]
        self.idle_pid: int = info["idle_pid"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def start_app() -> Iterator[Callable[..., App]]:
    made: list[App] = []

    def start(dsn: str, pool: str = "api", *flags: str) -> App:
        app = App(dsn, pool, *flags)
        made.append(app)
        return app

    yield start
    for app in made:
        app.stop()


def pgwarden(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "pgwarden", *args], capture_output=True,
                          text=True, timeout=120, env=env, check=False, cwd=ROOT)


def one_line(text: str, *parts: str) -> str:
    """The one line of ``text`` that has every part."""
    found = [ln for ln in text.splitlines() if all(p in ln for p in parts)]
    assert len(found) == 1, (parts, text)
    return found[0]


def test_doctor_status_and_top_show_the_code_holding_each_pid(
        pg: EmbeddedPostgres, start_app: Callable[..., App]) -> None:
    app = start_app(pg.dsn, "api")
    tx_at = f"tests/holders/app.py:{marker_line('sync_orders')} in sync_orders"
    idle_at = f"tests/holders/app.py:{marker_line('main')} in main"

    res = pgwarden("doctor", "--dsn", pg.dsn, "--idle-in-transaction-after", "0.001",
                   "--holders", app.url)
    assert res.returncode == 1, res.stdout + res.stderr  # the idle-in-transaction warning
    line = one_line(res.stdout, f"pid {app.in_tx_pid} (api) idle in transaction")
    assert f"checked out at {tx_at} by worker-3, held " in line
    assert "2 checked-out connections reported by 1 of 1 --holders URL; 2 held sessions " \
           "on this server" in res.stdout
    assert pg.password not in res.stdout + res.stderr

    res = pgwarden("status", "--dsn", pg.dsn, "--holders", app.url)
    assert res.returncode == 0, res.stderr
    line = one_line(res.stdout, f"pid {app.in_tx_pid} (api) idle in transaction")
    assert f"checked out at {tx_at} by worker-3" in line
    line = one_line(res.stdout, f"pid {app.idle_pid} (api) idle ")
    assert f"checked out at {idle_at} by MainThread" in line

    res = pgwarden("top", "--once", "--dsn", pg.dsn, "--holders", app.url)
    assert res.returncode == 0, res.stderr
    row = one_line(res.stdout, f"{app.in_tx_pid} │")
    assert f"api: {tx_at} by worker-3" in row and "idle in transaction" in row
    row = one_line(res.stdout, f"{app.idle_pid} │")
    assert f"api: {idle_at} by MainThread" in row


def test_json_output_carries_the_holder_objects(pg: EmbeddedPostgres,
                                                start_app: Callable[..., App]) -> None:
    app = start_app(pg.dsn, "orders")
    res = pgwarden("doctor", "--dsn", pg.dsn, "--format", "json",
                   "--idle-in-transaction-after", "0.001", "--holders", app.url)
    report = json.loads(res.stdout)
    [finding] = [f for f in report["findings"] if f["id"] == "idle_in_transaction"]
    [held] = [h for h in finding["holders"] if h["pid"] == app.in_tx_pid]
    [holder] = held["holders"]
    assert holder["pool"] == "orders" and holder["library"] == "pgwarden"
    assert holder["function"] == "sync_orders" and holder["holder"] == "worker-3"
    assert holder["line"] == marker_line("sync_orders")
    assert holder["file"] == "tests/holders/app.py"
    assert holder["transaction_state"] == "idle in transaction"
    assert holder["process_pid"] == app.proc.pid and holder["held_seconds"] >= 0
    assert report["holders"]["sources"][0]["ok"] is True
    brief = report["summary"]["oldest_idle_in_transaction"][0]
    assert brief["pid"] == app.in_tx_pid and brief["holder"]["function"] == "sync_orders"

    res = pgwarden("status", "--dsn", pg.dsn, "--format", "json", "--holders", app.url)
    out = json.loads(res.stdout)
    by_pid = {s["pid"]: s for s in out["holders"]["sessions"]}
    assert by_pid[app.idle_pid]["holders"][0]["function"] == "main"
    assert by_pid[app.idle_pid]["state"] == "idle"
    assert out["holders"]["warnings"] == [] and pg.password not in res.stdout


def test_holders_next_to_metrics_join_the_same(pg: EmbeddedPostgres,
                                               start_app: Callable[..., App]) -> None:
    app = start_app(pg.dsn, "both", "--metrics")
    assert app.url.endswith("/holders")
    with urllib.request.urlopen(app.url.replace("/holders", "/metrics"),  # noqa: S310
                                timeout=10) as resp:
        assert b"pgwarden_pool_connections" in resp.read()
    res = pgwarden("status", "--dsn", pg.dsn, "--holders", app.url.removesuffix("/holders"))
    assert f"pid {app.in_tx_pid} (both) idle in transaction" in res.stdout


def test_bad_and_dead_urls_are_warnings(pg: EmbeddedPostgres, start_app: Callable[..., App],
                                        fault_proxy: Callable[..., FaultProxy]) -> None:
    app = start_app(pg.dsn, "api")
    deaf = fault_proxy(pg.port, "deaf")
    with serve_pool_metrics(0) as metrics:
        bad = {
            "http://127.0.0.1:1/holders": "connection refused",
            f"http://127.0.0.1:{deaf.port}/holders": "no answer within 0.5 s",
            metrics.url("/metrics"): "not JSON",
            metrics.url("/nothing"): "HTTP 404",
            "ftp://127.0.0.1/holders": "only http:// and https:// URLs are read",
            "http://user:s3cret-pw@127.0.0.1:1/holders": "credentials in the URL are not "
                                                         "supported",
        }
        flags = [x for url in bad for x in ("--holders", url)]
        for command in (["doctor"], ["status"], ["top", "--once"]):
            plain = pgwarden(*command, "--dsn", pg.dsn)
            res = pgwarden(*command, "--dsn", pg.dsn, "--holders-timeout", "0.5", *flags,
                           "--holders", app.url)
            assert res.returncode == plain.returncode, res.stdout + res.stderr
            assert "Traceback" not in res.stderr and res.stderr == plain.stderr
            for says in bad.values():
                one_line(res.stdout, "--holders ", says)
            assert "s3cret-pw" not in res.stdout + res.stderr
            # the URL that works still joins
            assert "reported by 1 of 7 --holders URLs; 2 held sessions on this server" \
                in res.stdout


def test_the_endpoint_is_json_on_loopback_and_get_only(pg: EmbeddedPostgres) -> None:
    with ConnectionPool(pg.dsn, min_size=1, name="ep") as pool, serve_holders(0) as endpoint:
        conn = pool.getconn()
        assert endpoint.host == "127.0.0.1" and endpoint.url().endswith("/holders")
        with urllib.request.urlopen(endpoint.url(), timeout=10) as resp:  # noqa: S310
            assert resp.headers["Content-Type"] == "application/json"
            doc = json.loads(resp.read())
        assert doc["format"] == "pgwarden-holders/1" and doc["process_pid"] == os.getpid()
        [pool_doc] = [p for p in doc["pools"] if p["pool"] == "ep"]
        [holder] = pool_doc["holders"]
        assert holder["pid"] == conn.info.backend_pid
        assert holder["function"] == "test_the_endpoint_is_json_on_loopback_and_get_only"
        assert pg.password not in json.dumps(doc)
        request = urllib.request.Request(endpoint.url(), data=b"{}", method="POST")  # noqa: S310
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=10)  # noqa: S310
        assert err.value.code == 405
        pool.putconn(conn)


def test_join_by_pid_keeps_unmatched_and_conflicting_claims(pg: EmbeddedPostgres) -> None:
    with ConnectionPool(pg.dsn, min_size=1, name="join") as pool:
        conn = pool.getconn()
        pid = conn.info.backend_pid
        with serve_holders(0) as endpoint:
            [source] = holders_source.fetch_all([endpoint.url()])
        with connect(resolve(pg.dsn, command="status")) as c:
            snap = postgres.take(c)
        pool.putconn(conn)
    mine = [h for h in source.holders if h.pid == pid]
    ghost = holders_source.AppHolder(
        pid=999_999, pool="elsewhere", library="psycopg2", holder="t", file="a.py", line=1,
        function="f", held_seconds=1.0, started_at=0.0, transaction_state="idle",
        leaked=False, stack=(), process_pid=1, source="http://x/holders")
    rival = holders_source.HolderSource("http://other/holders", (
        replace(ghost, pid=pid, held_seconds=0.0), ghost))
    joined = holders_source.join(snap.client_backends, [source, rival])
    held = joined.of(pid)
    assert held is not None and held.holder == mine[0]  # longest held first
    assert len(held.holders) == 2 and "+1 other claims on this pid" in held.describe()
    assert ghost in joined.unmatched
    assert "with a pid that is no session here" in joined.summary()


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda kids: st.lists(kids) | st.dictionaries(st.text(), kids)))
def test_any_json_answer_is_a_source_never_an_exception(doc: Any) -> None:
    source = holders_source.parse_document(doc, "http://x/holders")
    assert source.error is not None or isinstance(source.holders, tuple)


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_any_url_text_is_a_warning_never_a_secret(text: str) -> None:
    secret = f"Zq{text}qZ"
    quoted = secret.replace("\\", "\\\\").replace("'", "\\'")
    for url in (f"http://me:{secret}@127.0.0.1:1/holders", f"me:{secret}@127.0.0.1:1",
                f"postgresql://me:{secret}@db/x", f"host=db password='{quoted}'"):
        source = holders_source.fetch(url, timeout=0.5)
        assert source.error is not None
        warning = source.warning or ""
        assert "Zq" not in warning and "qZ" not in warning, warning
