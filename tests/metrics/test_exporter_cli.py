"""``pgwarden exporter`` as users run it (a real process), bad input, and a real Prometheus
server scraping it on loopback and answering PromQL about it."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from pgwarden.embedded import EmbeddedPostgres

from ..conftest import Sessions
from .helpers import (
    MON_PASSWORD,
    app,
    free_port,
    http_get,
    mon_dsn,
    parse,
    pgwarden,
    prometheus_query,
    real_prometheus,
    start_pgwarden,
    value,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize("args, code, says", [
    (["--listen", "bogus"], 64, "--listen: 'bogus': expected HOST:PORT"),
    (["--listen", "127.0.0.1:99999"], 64, "port from 0 to 65535"),
    (["--listen", "::1:9187"], 64, "IPv6 address in brackets"),
    (["--listen", "http://127.0.0.1:9187"], 64, "expected HOST:PORT without a scheme"),
    (["--listen", "127.0.0.1:9187:1"], 64, "expected HOST:PORT, for example 127.0.0.1:9187"),
    (["--listen", ":9187"], 64, "give the host too, for example 127.0.0.1:9187"),
    (["--listen", "256.1.1.1:9187"], 64, "256.1.1.1 is not an IPv4 address"),
    (["--dsn", "postgresql://u:s3cret@h:99999/db"], 64, "invalid connection parameter"),
    (["--dsn", "not a dsn = = ="], 64, "malformed DSN"),
    (["--max-applications", "0"], 64, "--max-applications"),
    (["--min-interval", "-1"], 64, "--min-interval"),
])
def test_bad_input_is_one_line_and_exit_64(args: list[str], code: int, says: str) -> None:
    res = pgwarden("exporter", *args)
    assert res.returncode == code, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], res.stderr
    assert "Traceback" not in res.stderr and "s3cret" not in res.stderr


def test_port_in_use_is_exit_74(mpg: EmbeddedPostgres) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = pgwarden("exporter", "--dsn", mon_dsn(mpg), "--listen", f"127.0.0.1:{port}")
    assert res.returncode == 74
    assert res.stderr.strip() == (f"pgwarden: error: cannot listen on 127.0.0.1:{port}: "
                                  "the port is in use (another process listens there: choose "
                                  "another port, or 0 for any free one)")
    assert MON_PASSWORD not in res.stderr


def test_once_prints_metrics_and_exits_3_when_a_target_is_down(mpg: EmbeddedPostgres) -> None:
    res = pgwarden("exporter", "--once", "--dsn", mon_dsn(mpg))
    assert res.returncode == 0, res.stderr
    assert value(parse(res.stdout), "pgwarden_up") == 1
    down = "host=127.0.0.1 port=1 user=x password=s3cret connect_timeout=2"
    res = pgwarden("exporter", "--once", "--dsn", mon_dsn(mpg), "--dsn", down)
    assert res.returncode == 3
    v = parse(res.stdout)
    assert value(v, "pgwarden_up", target="x@127.0.0.1:1/x") == 0
    assert value(v, "pgwarden_up", target=f"exp_mon@127.0.0.1:{mpg.port}/postgres") == 1
    assert "s3cret" not in res.stdout + res.stderr and MON_PASSWORD not in res.stdout
    [line] = res.stderr.strip().splitlines()
    assert "x@127.0.0.1:1/x: pgwarden_up 0: cannot connect" in line


@pytest.mark.slow
def test_a_real_prometheus_scrapes_the_exporter(mpg: EmbeddedPostgres, sessions: Sessions,
                                                tmp_path: Path) -> None:
    sessions.open(mpg, 3, application_name="prom-app", state="idle in transaction", **app())
    exp_port = free_port()
    exporter = start_pgwarden("exporter", "--dsn", mon_dsn(mpg), "--listen",
                              f"127.0.0.1:{exp_port}")
    try:
        with real_prometheus(tmp_path, "pgwarden", f"127.0.0.1:{exp_port}") as base:
            wait_until(lambda: "pgwarden_up 1.0" in http_get(
                f"http://127.0.0.1:{exp_port}/metrics"))
            result = wait_until(lambda: prometheus_query(
                base, 'sum(pgwarden_sessions{application="prom-app",'
                      'state="idle in transaction"})'), timeout=60)
            assert float(result[0]["value"][1]) == 3
            [up] = wait_until(lambda: prometheus_query(base, 'pgwarden_up{job="pgwarden"}'))
            assert up["value"][1] == "1"
            [scrape_up] = prometheus_query(base, 'up{job="pgwarden"}')
            assert scrape_up["value"][1] == "1"
            [age] = prometheus_query(
                base, 'pgwarden_oldest_idle_in_transaction_seconds{application="prom-app"}')
            assert float(age["value"][1]) >= 0
    finally:
        exporter.send_signal(signal.SIGTERM)
        out, err = exporter.communicate(timeout=30)
    assert exporter.returncode == 0, err
    assert f"serving http://127.0.0.1:{exp_port}/metrics" in err
    assert MON_PASSWORD not in out + err
