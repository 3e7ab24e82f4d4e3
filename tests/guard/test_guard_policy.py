"""The pure policy on hand-built snapshots: which sessions each rule picks, what is protected."""

from __future__ import annotations

import pytest
from guard_helpers import session, snapshot

from pgwarden.guard import (
    Emergency,
    Limits,
    Policy,
    Protection,
    Rule,
    Scope,
    decide,
)


def pids(plan, kind=None):
    return sorted(a.pid for a in plan.actions if kind is None or a.kind == kind)


def skip_reasons(plan):
    return {s.session.pid: s.reason for s in plan.skipped}


def test_idle_in_transaction_rule_picks_only_old_idle_in_transaction_sessions():
    snap = snapshot([
        session(10, "idle in transaction", 700),
        session(11, "idle in transaction (aborted)", 900),
        session(12, "idle in transaction", 100),   # too young
        session(13, "idle", 5000),                 # other state
        session(14, "active", 5000),
    ])
    plan = decide(snap, Policy(rules=(Rule("iit", "idle_in_transaction", after=600),)))
    assert pids(plan, "terminate") == [10, 11]
    assert [a.rule for a in plan.actions] == ["iit", "iit"]
    assert plan.actions[0].pid == 11  # oldest first


def test_idle_rule_and_only_above_stops_at_the_level():
    # usable 100; 79 sessions + the guard = 80 used -> usage 0.8
    idle = [session(100 + i, "idle", 1000 + i) for i in range(79)]
    policy = Policy(rules=(Rule("idle", "idle", after=600, only_above=0.75),))
    plan = decide(snapshot(idle), policy)
    assert plan.usage == pytest.approx(0.80)
    # terminate oldest first while usage > 0.75: 80 -> 75 used
    assert len(plan.actions) == 5
    assert pids(plan) == [174, 175, 176, 177, 178]
    assert plan.projected_usage == pytest.approx(0.75)
    below = decide(snapshot(idle[:70]), policy)
    assert below.actions == ()


def test_active_rule_cancels_long_queries_only():
    snap = snapshot([
        session(20, "active", 400),
        session(21, "active", 10),
        session(22, "idle", 4000),
    ])
    plan = decide(snap, Policy(rules=(Rule("slow", "active", after=300),)))
    assert [(a.pid, a.kind) for a in plan.actions] == [(20, "cancel")]


def test_scope_globs_users_databases_networks():
    snap = snapshot([
        session(30, app="web-1", user="app", database="shop", client_addr="10.1.2.3"),
        session(31, app="web-2", user="app", database="shop", client_addr="192.168.1.9"),
        session(32, app="worker", user="app", database="shop", client_addr="10.1.2.4"),
        session(33, app="web-3", user="etl", database="shop", client_addr="10.1.2.5"),
        session(34, app="web-4", user="app", database="dwh", client_addr="10.1.2.6"),
        session(35, app="web-5", user="app", database="shop", client_addr=None),
    ])
    scope = Scope(applications=("web-*",), users=("app",), databases=("sh*",),
                  networks=("10.0.0.0/8",))
    plan = decide(snap, Policy(rules=(Rule("idle", "idle", after=60, scope=scope),)))
    assert pids(plan) == [30]
    local = decide(snap, Policy(rules=(Rule("idle", "idle", after=60,
                                            scope=Scope(networks=("local",))),)))
    assert pids(local) == [35]


def test_protections_cannot_be_overridden_by_any_rule():
    snap = snapshot([
        session(1, "idle", 9000, app="x"),                                  # our own pid
        session(40, "idle", 9000, backend_type="walsender", app="pg_receivewal"),
        session(41, "idle", 9000, backend_type="autovacuum worker", app=""),
        session(42, "idle", 9000, backend_type="parallel worker"),
        session(43, "idle", 9000, app="pgwarden-guard"),
        session(44, "idle", 9000, superuser=True, user="postgres"),
        session(45, "idle", 9000, replication=True, user="repl"),
        session(46, "idle", 9000, app="pg_dump"),
        session(47, "idle", 9000, app="psql"),
        session(48, "idle", 9000, app="pg_basebackup"),
        session(49, "idle", 9000, app="web"),                               # fair game
        session(50, "active", 9000, app="web"),                             # active, idle rule
    ])
    policy = Policy(rules=(Rule("idle", "idle", after=0),),
                    emergency=Emergency(at=0.01, target=0.0, min_idle=0))
    plan = decide(snap, policy, own_pids=())
    assert pids(plan) == [49]
    reasons = skip_reasons(plan)
    assert "own session" in reasons[1]
    assert "walsender is not a client backend" in reasons[40]
    assert "autovacuum worker" in reasons[41]
    assert "parallel worker" in reasons[42]
    assert "pgwarden session" in reasons[43]
    assert "superuser" in reasons[44]
    assert "replication role" in reasons[45]
    assert "protected application 'pg_dump'" in reasons[46]
    assert "'psql'" in reasons[47]
    assert "pg_basebackup" in reasons[48]
    assert 50 not in reasons and 50 not in pids(plan)


def test_pgwarden_sessions_stay_protected_even_when_the_list_is_replaced():
    snap = snapshot([session(60, app="pgwarden-top"), session(61, app="psql"),
                     session(62, superuser=True, user="postgres")])
    policy = Policy(rules=(Rule("idle", "idle", after=0),),
                    protection=Protection(applications=(), allow_superuser=True))
    plan = decide(snap, policy)
    assert pids(plan) == [61, 62]


def test_protected_users_databases_networks():
    snap = snapshot([
        session(70, user="admin"), session(71, database="billing"),
        session(72, client_addr="172.16.0.9"), session(73),
    ])
    policy = Policy(rules=(Rule("idle", "idle", after=0),),
                    protection=Protection(users=("adm*",), databases=("billing",),
                                          networks=("172.16.0.0/12",)))
    plan = decide(snap, policy)
    assert pids(plan) == [73]
    reasons = skip_reasons(plan)
    assert "protected user 'admin'" in reasons[70]
    assert "protected database 'billing'" in reasons[71]
    assert "protected network 172.16.0.0/12" in reasons[72]


def test_emergency_brings_usage_to_target_oldest_first_sparing_young_sessions():
    # usable 20 (23 - 3); 17 sessions + guard = 18 -> 0.9
    old = [session(100 + i, "idle", 600 + i * 10) for i in range(12)]
    young = [session(200 + i, "idle", 5) for i in range(5)]
    policy = Policy(rules=(), emergency=Emergency(at=0.8, target=0.5, min_idle=60))
    plan = decide(snapshot(old + young, max_connections=23), policy)
    assert plan.emergency and plan.usage == pytest.approx(0.9)
    # 18 -> 10 used: 8 terminations, the oldest 8
    assert pids(plan) == [104 + i for i in range(8)]
    assert plan.projected_usage == pytest.approx(0.5)
    assert all(a.rule == "emergency" for a in plan.actions)


def test_emergency_below_threshold_does_nothing():
    idle = [session(100 + i, "idle", 600) for i in range(10)]
    policy = Policy(rules=(), emergency=Emergency(at=0.8, target=0.5))
    plan = decide(snapshot(idle, max_connections=23), policy)
    assert not plan.emergency and plan.actions == ()


def test_limits_per_pass_and_per_minute():
    snap = snapshot([session(100 + i, "idle in transaction", 700 + i) for i in range(8)])
    policy = Policy(rules=(Rule("iit", "idle_in_transaction", after=600),),
                    limits=Limits(max_per_pass=3, max_per_minute=5))
    plan = decide(snap, policy)
    assert len(plan.actions) == 3
    assert {s.code for s in plan.skipped} == {"limit_per_pass"}
    later = decide(snap, policy, recent_actions=4)
    assert len(later.actions) == 1
    assert {s.code for s in later.skipped} == {"limit_per_minute"}
    assert len(later.skipped) == 7


def test_first_matching_rule_wins_and_sessions_are_chosen_once():
    snap = snapshot([session(80, "idle", 4000, app="web")])
    policy = Policy(rules=(Rule("web", "idle", after=60, scope=Scope(applications=("web",))),
                           Rule("all", "idle", after=60)),
                    emergency=Emergency(at=0.001, target=0.0, min_idle=0))
    plan = decide(snap, policy)
    assert [(a.pid, a.rule) for a in plan.actions] == [(80, "web")]


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "x", "kind": "sleepy", "after": 1}, "rule kind"),
    ({"name": "x", "kind": "idle", "after": -1}, "after"),
    ({"name": "x", "kind": "active", "after": 1, "only_above": 0.5}, "only_above"),
    ({"name": "emergency", "kind": "idle", "after": 1}, "reserved"),
])
def test_invalid_rules_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Rule(**kwargs)


def test_invalid_network_and_emergency_raise_value_error():
    with pytest.raises(ValueError, match="not a network"):
        Scope(networks=("10.0.0.300/8",))
    with pytest.raises(ValueError, match="target"):
        Emergency(at=0.7, target=0.8)
