"""The guard daemon on real clusters: a server restart, a full server, two daemons at once."""

from __future__ import annotations

import threading

import psycopg
import pytest
from guard_helpers import add_roles, app_params, guard_dsn, live_pids, wait_until

from pgwarden.conninfo import connect, resolve
from pgwarden.errors import ServerFullError
from pgwarden.guard import Daemon, Emergency, Guard, Policy, Rule, Scope

pytestmark = [pytest.mark.timeout(120)]


def iit_policy(prefix: str, after: float = 0.3) -> Policy:
    return Policy(
        rules=(Rule("idle_in_transaction", "idle_in_transaction", after=after,
                    scope=Scope(applications=(f"{prefix}*",))),),
        interval=0.1,
        enforce=True,
    )


@pytest.mark.slow
def test_daemon_survives_a_server_restart(make_cluster, sessions):
    cluster = add_roles(make_cluster(max_connections=20))
    daemon = Daemon(guard_dsn(cluster), iit_policy("rs-"), backoff_initial=0.1,
                    backoff_max=0.5)
    thread = daemon.start_thread()
    try:
        wait_until(lambda: daemon.passes >= 1)
        cluster.restart()
        passes_before = daemon.passes
        [victim] = sessions.open(cluster, 1, application_name="rs-app",
                                 state="idle in transaction", **app_params())
        pid = victim.info.backend_pid
        wait_until(lambda: pid not in live_pids(cluster), timeout=30)
        assert daemon.failures >= 1  # the pass after the restart lost its connection
        assert daemon.passes > passes_before
        assert daemon.metrics.as_dict()["terminations_total"] == [
            {"rule": "idle_in_transaction", "application": "rs-app", "value": 1}]
    finally:
        daemon.stop()
        thread.join(10)
    assert not thread.is_alive()


@pytest.mark.slow
def test_daemon_keeps_working_when_the_server_is_full(make_cluster, sessions):
    # 13 - 3 superuser-reserved = 10 usable slots; the guard is not a superuser
    cluster = add_roles(make_cluster(max_connections=13))
    daemon = Daemon(guard_dsn(cluster), iit_policy("full-", after=1.0), backoff_initial=0.1)
    thread = daemon.start_thread()
    try:
        wait_until(lambda: daemon.passes >= 1)
        held = []
        with pytest.raises(psycopg.OperationalError, match=r"too many clients|reserved"):
            for _ in range(12):
                held += sessions.open(cluster, 1, application_name="full-app",
                                      state="idle in transaction", **app_params())
        assert len(held) == 9  # the guard kept the tenth slot
        wait_until(lambda: not (set(sessions.pids(held)) & live_pids(cluster)), timeout=30)
        # the server has room again
        with psycopg.connect(cluster.conninfo(**app_params())) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        daemon.stop()
        thread.join(10)


def test_superuser_guard_gets_into_a_full_server_through_the_reserved_slots(make_cluster,
                                                                            sessions):
    cluster = add_roles(make_cluster(max_connections=13))  # 10 usable
    pool = sessions.open(cluster, 10, application_name="pool", **app_params())
    with pytest.raises(ServerFullError):
        connect(resolve(cluster.conninfo(**app_params()), command="guard"))
    policy = Policy(rules=(), emergency=Emergency(at=0.9, target=0.5, min_idle=0))
    with Guard(cluster.dsn, policy, enforce=True) as g:
        result = g.run_pass()
    assert result.usage == pytest.approx(1.1)  # 10 + the guard, over 10 usable
    assert len(result.terminated_pids) == 6     # 11 -> 5 used
    assert set(result.terminated_pids) <= set(sessions.pids(pool))
    with psycopg.connect(cluster.conninfo(**app_params())) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.slow
def test_two_daemons_never_both_act(gpg, sessions):
    results: dict[str, list[bool]] = {"a": [], "b": []}
    lock = threading.Lock()

    def record(name):
        def on_pass(result):
            with lock:
                results[name].append(result.leader)
        return on_pass

    policy = iit_policy("pair-", after=0.2)
    a = Daemon(guard_dsn(gpg), policy, on_pass=record("a"))
    b = Daemon(guard_dsn(gpg), policy, on_pass=record("b"))
    ta, tb = a.start_thread(), b.start_thread()
    try:
        victims = sessions.open(gpg, 4, application_name="pair-app",
                                state="idle in transaction", **app_params())
        wait_until(lambda: not (set(sessions.pids(victims)) & live_pids(gpg)))
        wait_until(lambda: len(results["a"]) >= 5 and len(results["b"]) >= 5)
    finally:
        a.stop()
        b.stop()
        ta.join(10)
        tb.join(10)
    leaders = {name for name, flags in results.items() if any(flags)}
    assert len(leaders) == 1
    terminated = sum(
        r["value"] for d in (a, b) for r in d.metrics.as_dict()["terminations_total"])
    assert terminated == 4
    follower = ({"a", "b"} - leaders).pop()
    standby = (a if follower == "a" else b).metrics.as_dict()
    assert standby["terminations_total"] == [] and standby["leader"] == 0
