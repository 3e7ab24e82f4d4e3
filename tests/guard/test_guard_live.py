"""The guard on real clusters: rules, protections, emergency, races, dry run, permissions."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
import threading
import time

import psycopg
import pytest
from guard_helpers import add_roles, app_params, guard_dsn, live_pids, read_audit, wait_until

from pgwarden.errors import PermissionMissing
from pgwarden.guard import Emergency, Guard, Policy, Rule, Scope
from pgwarden.sources.postgres import take

pytestmark = pytest.mark.timeout(120)


def scoped(prefix: str, **rules: float) -> Policy:
    """A policy whose rules only see applications starting with ``prefix``."""
    scope = Scope(applications=(f"{prefix}*",))
    out = []
    for kind, after in rules.items():
        out.append(Rule(kind, kind, after=after, scope=scope))
    return Policy(rules=tuple(out), limits=dataclasses.replace(Policy().limits,
                                                               max_per_pass=50,
                                                               max_per_minute=100))


def test_each_rule_picks_exactly_its_sessions_dry_run_first_then_enforced(gpg, sessions,
                                                                          tmp_path):
    iit = sessions.open(gpg, 2, application_name="r1-iit", state="idle in transaction",
                        **app_params())
    idle = sessions.open(gpg, 2, application_name="r1-idle", **app_params())
    active = sessions.open(gpg, 1, application_name="r1-active", state="active", **app_params())
    time.sleep(2.0)
    fresh = sessions.open(gpg, 1, application_name="r1-fresh", state="idle in transaction",
                          **app_params())
    fresh += sessions.open(gpg, 1, application_name="r1-fresh", **app_params())
    policy = scoped("r1-", idle_in_transaction=1.5, idle=1.5, active=1.5)
    audit = tmp_path / "audit.jsonl"

    before = live_pids(gpg)
    with Guard(guard_dsn(gpg), policy, audit=[str(audit)]) as g:
        dry = g.run_pass()
    assert not dry.enforce
    assert sorted(dry.would_pids) == sorted(sessions.pids(iit + idle + active))
    assert dry.terminated_pids == [] and dry.cancelled_pids == []
    assert before <= live_pids(gpg)  # dry run changed nothing
    lines = read_audit(audit)
    assert {ln["outcome"] for ln in lines} == {"would_terminate", "would_cancel"}
    assert all(ln["dry_run"] for ln in lines)

    with Guard(guard_dsn(gpg), policy, enforce=True, audit=[str(audit)]) as g:
        result = g.run_pass()
    assert sorted(result.terminated_pids) == sorted(sessions.pids(iit + idle))
    assert result.cancelled_pids == sessions.pids(active)
    gone = set(sessions.pids(iit + idle))
    wait_until(lambda: not (gone & live_pids(gpg)))
    alive = live_pids(gpg)
    assert set(sessions.pids(fresh + active)) <= alive  # cancelled, not terminated
    with pytest.raises(psycopg.OperationalError):
        idle[0].execute("select 1")
    wait_until(lambda: active[0].info.transaction_status == psycopg.pq.TransactionStatus.IDLE)
    assert active[0].execute("select 1").fetchone() == (1,)

    records = read_audit(audit)[len(lines):]
    by_pid = {r["pid"]: r for r in records}
    rec = by_pid[iit[0].info.backend_pid]
    assert rec["outcome"] == "terminated" and rec["rule"] == "idle_in_transaction"
    assert rec["action"] == "terminate" and rec["dry_run"] is False
    assert rec["user"] == "app" and rec["database"] == "postgres"
    assert rec["application"] == "r1-iit" and rec["client_addr"] == "127.0.0.1"
    assert rec["state"] == "idle in transaction" and rec["idle_age"] > 1.5
    assert rec["xact_age"] > 1.5 and rec["time"].endswith("Z")
    assert by_pid[active[0].info.backend_pid]["outcome"] == "cancelled"


def test_protected_sessions_are_never_touched(make_cluster, sessions, tmp_path):
    cluster = add_roles(make_cluster(max_connections=30))
    waldir = tmp_path / "wal"
    waldir.mkdir()
    receiver = subprocess.Popen(
        [cluster.bin("pg_receivewal"), "-h", "127.0.0.1", "-p", str(cluster.port),
         "-U", "postgres", "-D", str(waldir)],
        env={**os.environ, "PGPASSWORD": cluster.password},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        walsender = wait_until(lambda: cluster.execute(
            "select pid from pg_stat_activity where backend_type = 'walsender'"))[0][0]
        superuser = sessions.open(cluster, 1, application_name="admin-console")  # postgres
        psql = sessions.open(cluster, 1, application_name="psql", **app_params())
        dump = sessions.open(cluster, 1, application_name="pg_dump", state="idle in transaction",
                             **app_params())
        running = sessions.open(cluster, 1, application_name="web", state="active",
                                **app_params())
        victim = sessions.open(cluster, 1, application_name="web", **app_params())
        time.sleep(0.5)
        policy = Policy(
            rules=(
                Rule("idle", "idle", after=0),
                Rule("idle_in_transaction", "idle_in_transaction", after=0),
                # would cancel the walsender ("active") if it were not protected
                Rule("receivers", "active", after=0,
                     scope=Scope(applications=("pg_receivewal",))),
            ),
            emergency=Emergency(at=0.01, target=0.0, min_idle=0),
        )
        audit = tmp_path / "audit.jsonl"
        # as a superuser: protection, not missing privilege, is what spares them
        with Guard(cluster.dsn, policy, enforce=True, audit=[str(audit)]) as g:
            result = g.run_pass()
        assert result.terminated_pids == sessions.pids(victim)
        assert result.cancelled_pids == []
        reasons = {o.pid: o.reason for o in result.skipped}
        assert "walsender is not a client backend" in reasons[walsender]
        assert "superuser" in reasons[superuser[0].info.backend_pid]
        assert "protected application 'psql'" in reasons[psql[0].info.backend_pid]
        assert "protected application 'pg_dump'" in reasons[dump[0].info.backend_pid]
        assert running[0].info.backend_pid not in reasons  # no idle rule matches a query
        time.sleep(0.3)
        assert receiver.poll() is None
        alive = live_pids(cluster)
        assert set(sessions.pids(superuser + psql + dump + running)) <= alive
        assert cluster.execute("select count(*) from pg_stat_activity where "
                               "backend_type = 'walsender'")[0][0] == 1
        skipped = [r for r in read_audit(audit) if r["outcome"] == "skipped"]
        assert {r["skip"] for r in skipped} == {"protected"}
        assert walsender in {r["pid"] for r in skipped}
    finally:
        receiver.terminate()
        receiver.wait(10)


def test_emergency_brings_usage_to_target_in_one_pass(make_cluster, sessions):
    cluster = add_roles(make_cluster(max_connections=23))  # 20 usable slots
    old = sessions.open(cluster, 15, application_name="pool", **app_params())
    time.sleep(1.2)
    young = sessions.open(cluster, 3, application_name="pool", **app_params())
    policy = Policy(rules=(), emergency=Emergency(at=0.8, target=0.5, min_idle=1.0))
    with Guard(guard_dsn(cluster), policy, enforce=True) as g:
        result = g.run_pass()
        assert result.plan.emergency
        assert result.usage == pytest.approx(19 / 20)
        assert len(result.terminated_pids) == 9  # 19 used -> 10 used
        assert set(result.terminated_pids) <= set(sessions.pids(old))
        wait_until(lambda: take(g.connect()).usage <= 0.5)
        after = take(g.connect())
    # 9 sessions left; the guard's own (the tenth in its plan) is not in Snapshot.usage
    assert after.usage == pytest.approx(9 / 20)
    assert set(sessions.pids(young)) <= live_pids(cluster)


def test_state_change_or_pid_reuse_between_choosing_and_acting_is_not_hit(gpg, sessions,
                                                                          tmp_path):
    used, moved, reused, gone = sessions.open(gpg, 4, application_name="race", **app_params())
    time.sleep(0.3)
    audit = tmp_path / "audit.jsonl"
    with Guard(guard_dsn(gpg), scoped("race", idle=0.1), enforce=True,
               audit=[str(audit)]) as g:
        snapshot, plan, _ = g.plan()
        assert sorted(a.pid for a in plan.actions) == sorted(
            sessions.pids([used, moved, reused, gone]))
        used.execute("select 1")                     # idle again, but used since chosen
        t = threading.Thread(target=lambda: moved.execute("select pg_sleep(2)"))
        t.start()                                    # now active
        gone_pid = gone.info.backend_pid
        gone.close()                                 # session ended
        wait_until(lambda: gone_pid not in live_pids(gpg))
        wait_until(lambda: gpg.execute(
            "select state from pg_stat_activity where pid = %s",
            (moved.info.backend_pid,)) == [("active",)])
        # the pid of `reused` now stands for another session (different backend_start)
        actions = []
        for a in plan.actions:
            if a.pid == reused.info.backend_pid:
                older = a.session.backend_start - dt.timedelta(seconds=1)
                a = dataclasses.replace(a, session=dataclasses.replace(a.session,
                                                                       backend_start=older))
            actions.append(a)
        result = g.act(snapshot, dataclasses.replace(plan, actions=tuple(actions)))
        t.join()
    assert result.terminated_pids == []
    skips = {o.pid: o for o in result.skipped}
    assert skips[used.info.backend_pid].skip == "state_changed"
    assert "used since it was chosen" in skips[used.info.backend_pid].reason
    assert skips[moved.info.backend_pid].skip == "state_changed"
    assert "now 'active'" in skips[moved.info.backend_pid].reason
    assert skips[reused.info.backend_pid].skip == "pid_reused"
    assert skips[gone_pid].skip == "gone"
    assert set(sessions.pids([used, moved, reused])) <= live_pids(gpg)
    assert used.execute("select 1").fetchone() == (1,)
    logged = {r["pid"]: r for r in read_audit(audit)}
    assert logged[reused.info.backend_pid]["outcome"] == "skipped"
    assert logged[reused.info.backend_pid]["skip"] == "pid_reused"


def test_two_guards_never_both_act_and_the_standby_takes_over(gpg, sessions):
    policy = scoped("two", idle=0.0)
    first = sessions.open(gpg, 2, application_name="two", **app_params())
    g1 = Guard(guard_dsn(gpg), policy, enforce=True)
    g2 = Guard(guard_dsn(gpg), policy, enforce=True)
    try:
        r1 = g1.run_pass()
        assert r1.leader and sorted(r1.terminated_pids) == sorted(sessions.pids(first))
        second = sessions.open(gpg, 2, application_name="two", **app_params())
        r2 = g2.run_pass()
        assert not r2.leader and r2.leader_pid == r1.guard_pid
        assert r2.terminated_pids == []
        assert {o.skip for o in r2.outcomes} == {"standby"}
        assert set(sessions.pids(second)) <= live_pids(gpg)
        g1.close()  # the acting guard's session ends: the lock is free
        r3 = g2.run_pass()
        assert r3.leader and sorted(r3.terminated_pids) == sorted(sessions.pids(second))
    finally:
        g1.close()
        g2.close()


def test_missing_permissions_name_the_grant(gpg, sessions):
    gpg.execute("create role weak login password 'weak-pw'")
    gpg.execute("create role watcher login password 'watcher-pw' in role pg_monitor")
    sessions.open(gpg, 1, application_name="perm", state="idle in transaction", **app_params())
    with Guard(gpg.conninfo(user="weak", password="weak-pw"), Policy()) as g, \
            pytest.raises(PermissionMissing, match="GRANT pg_monitor TO weak;"):
        g.run_pass()
    policy = scoped("perm", idle_in_transaction=0)
    with Guard(gpg.conninfo(user="watcher", password="watcher-pw"), policy,
               enforce=True) as g, \
            pytest.raises(PermissionMissing, match="GRANT pg_signal_backend TO watcher;"):
        g.run_pass()
    with Guard(gpg.conninfo(user="watcher", password="watcher-pw"), policy) as g:
        dry = g.run_pass()
    assert len(dry.would_pids) == 1
    assert any("pg_signal_backend" in w for w in dry.warnings)
