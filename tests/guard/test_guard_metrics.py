"""The guard's counters as Prometheus metrics with real labels, served by --metrics-listen."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
from guard_helpers import app_params, guard_dsn, live_pids, wait_until
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from pgwarden.guard import Daemon, GuardMetrics, Policy, Rule, Scope
from pgwarden.metrics import GuardCollector, serve

pytestmark = pytest.mark.timeout(120)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback only
        return str(resp.read().decode())


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_labels_are_labels() -> None:
    m = GuardMetrics(max_applications=1)
    m.record_outcome(rule="idle", application="web/1", action="terminate",
                     outcome="terminated", skip=None)
    m.record_outcome(rule="idle", application="psql", action="terminate", outcome="skipped",
                     skip="protected")
    registry = CollectorRegistry()
    registry.register(GuardCollector(m))
    with serve(registry, ("127.0.0.1", 0)) as server:
        s = _samples(_get(server.url))
    # a '/' in an application name stays in its label; nothing is joined
    assert s["pgwarden_guard_terminations_total"] == [
        ({"rule": "idle", "application": "web/1"}, 1.0)]
    assert ({"rule": "idle", "application": "(other)", "action": "terminate",
             "outcome": "skipped"}, 1.0) in s["pgwarden_guard_actions_total"]
    assert s["pgwarden_guard_skipped_total"] == [({"rule": "idle", "skip": "protected"}, 1.0)]
    assert s["pgwarden_guard_passes_total"] == [({}, 0.0)]
    assert s["pgwarden_guard_pass_duration_seconds_count"] == [({}, 0.0)]


def test_daemon_counters_over_http(gpg, sessions) -> None:
    [victim] = sessions.open(gpg, 1, application_name="gm-app", state="idle in transaction",
                             **app_params())
    pid = victim.info.backend_pid
    policy = Policy(rules=(Rule("slow_tx", "idle_in_transaction", after=0.2,
                                scope=Scope(applications=("gm-*",))),),
                    enforce=True, interval=0.2)
    daemon = Daemon(guard_dsn(gpg), policy, audit=[os.devnull])
    registry = CollectorRegistry()
    registry.register(GuardCollector(daemon.metrics))
    thread = daemon.start_thread()
    try:
        with serve(registry, "127.0.0.1:0") as server:
            wait_until(lambda: pid not in live_pids(gpg))
            s = wait_until(lambda: (lambda x: x if x.get(
                "pgwarden_guard_terminations_total") else None)(_samples(_get(server.url))))
    finally:
        daemon.stop()
        thread.join(10)
    assert s["pgwarden_guard_terminations_total"] == [
        ({"rule": "slow_tx", "application": "gm-app"}, 1.0)]
    assert ({"rule": "slow_tx", "application": "gm-app", "action": "terminate",
             "outcome": "terminated"}, 1.0) in s["pgwarden_guard_actions_total"]
    assert s["pgwarden_guard_leader"] == [({}, 1.0)]
    assert s["pgwarden_guard_passes_total"][0][1] >= 1
    assert s["pgwarden_guard_slots_usable"] == [({}, 37.0)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cli_metrics_listen(gpg) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    res = subprocess.run([sys.executable, "-m", "pgwarden", "guard", "--once",
                          "--metrics-listen", "127.0.0.1:0", "--dsn", guard_dsn(gpg)],
                         capture_output=True, text=True, env=env, timeout=60, check=False)
    assert res.returncode == 64 and "does not go with --once" in res.stderr
    res = subprocess.run([sys.executable, "-m", "pgwarden", "guard", "--metrics-listen", "x:y",
                          "--dsn", guard_dsn(gpg)],
                         capture_output=True, text=True, env=env, timeout=60, check=False)
    assert res.returncode == 64 and res.stderr.startswith("pgwarden: error: --metrics-listen")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pgwarden", "guard", "--interval", "0.2",
                             "--metrics-listen", str(port), "--dsn", guard_dsn(gpg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        text = wait_until(lambda: _try_get(f"http://127.0.0.1:{port}/metrics"))
        s = wait_until(lambda: (lambda x: x if x["pgwarden_guard_passes_total"][0][1] >= 1
                                else None)(_samples(_get(f"http://127.0.0.1:{port}/metrics"))))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "pgwarden_guard_passes_total" in text
    assert s["pgwarden_guard_errors_total"] == [({}, 0.0)]
    assert proc.returncode == 0, err
    assert f"metrics on http://127.0.0.1:{port}/metrics" in err


def _try_get(url: str) -> str | None:
    try:
        return _get(url)
    except OSError:
        return None
