"""How one guard pass (snapshot + policy) grows with the number of sessions.

Opens 100, 500 and 1000 real idle sessions on an embedded PostgreSQL (loopback only,
max_connections = largest size + 100) and times, side by side in one run, medians of ``--runs``:

- ``script``: what the hand-written cron script runs: ``pg_stat_activity`` rows of client
  backends, fetched (no settings, no privileges, no protection);
- ``snapshot``: pgwarden's ``postgres.take`` (server facts, settings, activity, session counter);
- ``policy``: ``guard.decide`` on that snapshot (pure Python), with a worst-case policy: every
  session is a candidate of the ``idle`` rule (protection check, sort, limits for all of them),
  plus the idle-in-transaction and active rules and the emergency mode;
- ``pass``: snapshot + policy, the issue's "one pass";
- ``dry-run pass``: ``Guard.run_pass()`` in a dry run, i.e. also auditing every decision (the 10
  it would take and the ~N skipped by ``max_per_pass``) to /dev/null.

Target (issue #4): pass under 100 ms at 1000 sessions, growing linearly.

Usage: python bench/guard_scale.py [--runs 7] [--sizes 100,500,1000]
Writes bench/results/guard_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from _common import median_ms, open_sessions
from pgwarden.embedded import EmbeddedPostgres
from pgwarden.guard import Emergency, Guard, Policy, Rule, Scope, decide
from pgwarden.sources import postgres

POLICY = Policy(
    rules=(
        Rule("idle_in_transaction", "idle_in_transaction", after=600.0),
        Rule("idle", "idle", after=0.0, scope=Scope(applications=("svc-*",))),
        Rule("active", "active", after=300.0),
    ),
    emergency=Emergency(at=0.95, target=0.9, min_idle=60.0),
)

SCRIPT_SQL = (b"select pid, usename, application_name, state, state_change "
              b"from pg_stat_activity where backend_type = 'client backend'")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--sizes", default="100,500,1000")
    args = ap.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(","))
    rows = []
    deadline = time.monotonic() + 600
    with EmbeddedPostgres(max_connections=max(sizes) + 100) as pg:
        pg.execute("create role app login password 'app'")
        held: list[psycopg.Connection[Any]] = []
        with psycopg.connect(pg.conninfo(application_name="pgwarden-bench"),
                             autocommit=True) as conn, \
                Guard(conn, POLICY, audit=[os.devnull]) as guard:
            for n in sizes:
                if time.monotonic() > deadline:
                    print("bench: out of time", file=sys.stderr)
                    break
                held += open_sessions(pg, n - len(held), len(held), threads=4, user="app", password="app")
                time.sleep(0.2)
                script_ms, _ = median_ms(lambda: conn.execute(SCRIPT_SQL).fetchall(), args.runs)
                snap_ms, snap = median_ms(lambda: postgres.take(conn), args.runs)
                policy_ms, plan = median_ms(lambda s=snap: decide(s, POLICY), args.runs)
                pass_ms, _ = median_ms(lambda: decide(postgres.take(conn), POLICY), args.runs)
                run_ms, result = median_ms(guard.run_pass, args.runs)
                assert len(snap.client_backends) >= n, (len(snap.client_backends), n)
                assert plan.candidates >= n and not result.enforce
                rows.append({"sessions": n, "script_ms": round(script_ms, 2),
                             "snapshot_ms": round(snap_ms, 2), "policy_ms": round(policy_ms, 2),
                             "pass_ms": round(pass_ms, 2), "dry_run_pass_ms": round(run_ms, 2),
                             "candidates": plan.candidates, "actions": len(plan.actions)})
        for c in held:
            c.close()
    first = rows[0]
    print(f"{'sessions':>8} {'script ms':>10} {'snapshot ms':>12} {'policy ms':>10} "
          f"{'pass ms':>8} {'dry-run pass ms':>16} {'pass/script':>12} {'us/session':>11} "
          f"{'growth':>15}")
    for r in rows:
        growth = r["pass_ms"] / first["pass_ms"]
        scale = r["sessions"] / first["sessions"]
        r["us_per_session"] = round(r["pass_ms"] * 1000 / r["sessions"], 1)
        r["growth_vs_first"] = round(growth, 2)
        r["per_session_growth"] = round(growth / scale, 2)
        r["ratio_vs_script"] = round(r["pass_ms"] / r["script_ms"], 2)
        print(f"{r['sessions']:>8} {r['script_ms']:>10.2f} {r['snapshot_ms']:>12.2f} "
              f"{r['policy_ms']:>10.2f} {r['pass_ms']:>8.2f} {r['dry_run_pass_ms']:>16.2f} "
              f"{r['ratio_vs_script']:>11.2f}x {r['us_per_session']:>11.1f} "
              f"{growth:>6.2f}x for {scale:.0f}x")
    last = rows[-1]
    ok = last["pass_ms"] < 100 and last["growth_vs_first"] <= (
        last["sessions"] / first["sessions"]) * 1.5
    print(f"target: pass < 100 ms at {last['sessions']} sessions and linear growth: "
          f"{'met' if ok else 'NOT met'} ({last['pass_ms']:.1f} ms)")
    out = Path(__file__).parent / "results" / "guard_scale.json"
    out.write_text(json.dumps({"rows": rows, "target_met": ok, "runs": args.runs,
                               "python": sys.version.split()[0]}, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
