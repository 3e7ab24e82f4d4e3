"""How the doctor's snapshot + rules time grows with the number of sessions.

Opens 100, 500 and 1000 real idle sessions on an embedded PostgreSQL (loopback only) and times,
side by side in one run:

- ``baseline``: the query people paste by hand, ``SELECT * FROM pg_stat_activity``, fetched;
- ``snapshot``: pgwarden's ``postgres.take`` (server facts, settings, activity, session counter);
- ``rules``: ``doctor.evaluate`` on that snapshot (pure Python);
- ``total``: snapshot + rules, what ``pgwarden doctor`` spends besides connecting.

Target (issue #2): total under 250 ms at 1000 backends, growing linearly.

Usage: python bench/doctor_scale.py [--runs 7] [--sizes 100,500,1000]
Writes bench/results/doctor_scale.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from _common import median_ms, open_sessions
from pgwarden.doctor import Thresholds, evaluate
from pgwarden.embedded import EmbeddedPostgres
from pgwarden.sources import postgres


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--sizes", default="100,500,1000")
    args = ap.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(","))
    rows = []
    with EmbeddedPostgres(max_connections=max(sizes) + 20) as pg:
        held: list[psycopg.Connection[Any]] = []
        with psycopg.connect(pg.conninfo(application_name="pgwarden-bench"),
                             autocommit=True) as conn:
            for n in sizes:
                held += open_sessions(pg, n - len(held), len(held))
                time.sleep(0.2)
                base_ms, _ = median_ms(
                    lambda: conn.execute(b"select * from pg_stat_activity").fetchall(), args.runs)
                snap_ms, snap = median_ms(lambda: postgres.take(conn), args.runs)
                rules_ms, findings = median_ms(lambda s=snap: evaluate(s, Thresholds()), args.runs)
                total_ms, _ = median_ms(
                    lambda: evaluate(postgres.take(conn), Thresholds()), args.runs)
                assert len(snap.client_backends) >= n, (len(snap.client_backends), n)
                rows.append({"sessions": n, "baseline_ms": round(base_ms, 2),
                             "snapshot_ms": round(snap_ms, 2), "rules_ms": round(rules_ms, 2),
                             "total_ms": round(total_ms, 2),
                             "findings": len(findings)})
        for c in held:
            c.close()
    first = rows[0]
    print(f"{'sessions':>8} {'baseline ms':>12} {'snapshot ms':>12} {'rules ms':>9} "
          f"{'total ms':>9} {'total/baseline':>15} {'us/session':>11} {'growth':>15}")
    for r in rows:
        growth = r["total_ms"] / first["total_ms"]
        scale = r["sessions"] / first["sessions"]
        r["us_per_session"] = round(r["total_ms"] * 1000 / r["sessions"], 1)
        r["growth_vs_first"] = round(growth, 2)
        r["ratio_vs_baseline"] = round(r["total_ms"] / r["baseline_ms"], 2)
        print(f"{r['sessions']:>8} {r['baseline_ms']:>12.2f} {r['snapshot_ms']:>12.2f} "
              f"{r['rules_ms']:>9.2f} {r['total_ms']:>9.2f} {r['ratio_vs_baseline']:>14.2f}x "
              f"{r['us_per_session']:>11.1f} {growth:>6.2f}x for {scale:.0f}x")
    last = rows[-1]
    ok = last["total_ms"] < 250 and last["growth_vs_first"] <= (
        last["sessions"] / first["sessions"]) * 1.5
    print(f"target: total < 250 ms at {last['sessions']} sessions and linear growth: "
          f"{'met' if ok else 'NOT met'} ({last['total_ms']:.1f} ms)")
    out = Path(__file__).parent / "results" / "doctor_scale.json"
    out.write_text(json.dumps({"rows": rows, "target_met": ok,
                               "python": sys.version.split()[0]}, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
