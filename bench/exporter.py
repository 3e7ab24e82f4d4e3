"""One exporter scrape at 100, 500 and 1000 sessions: pgwarden exporter side by side with
Debian's prometheus-postgres-exporter (its default collectors), in one run, against the same
embedded PostgreSQL (loopback only, max_connections = largest size + 100).

Both exporters run as their own processes on free loopback ports, connect as the superuser,
and are asked for ``/metrics`` over HTTP ``--runs`` times per size (medians; pgwarden with
``--min-interval 0`` so that every scrape takes a snapshot). Also printed: the server-side
time each reports for its last scrape (``pgwarden_scrape_duration_seconds``,
``pg_exporter_last_scrape_duration_seconds``) and the number of samples each serves.

Targets (issue #10): pgwarden's scrape < 50 ms at 1000 sessions, at most 1.0x
postgres_exporter's, growing linearly.

Usage: python bench/exporter.py [--runs 15] [--sizes 100,500,1000]
Writes bench/results/exporter.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import psycopg

from _common import open_sessions
from pgwarden.embedded import EmbeddedPostgres

POSTGRES_EXPORTER = "prometheus-postgres-exporter"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - loopback only
        return str(resp.read().decode())


def wait_ready(url: str, needle: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: {url} exited with {proc.returncode}")
        try:
            if needle in get(url):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"bench: {url} did not serve {needle!r}")


def scrape_ms(url: str, runs: int) -> tuple[float, str]:
    text = get(url)  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        text = get(url)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), text


def gauge(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def samples(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--sizes", default="100,500,1000")
    args = ap.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(","))
    binary = shutil.which(POSTGRES_EXPORTER)
    if binary is None:
        print(f"bench: {POSTGRES_EXPORTER} not installed (apt-get install "
              "prometheus-postgres-exporter)", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    with EmbeddedPostgres(max_connections=max(sizes) + 100) as pg:
        pg.execute("create role app login password 'app'")
        p_port, e_port = free_port(), free_port()
        pgw = subprocess.Popen(
            [sys.executable, "-m", "pgwarden", "exporter", "--dsn", pg.dsn, "--listen",
             f"127.0.0.1:{p_port}", "--min-interval", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        dsn = (f"postgresql://postgres:{urllib.parse.quote(pg.password)}@127.0.0.1:{pg.port}"
               "/postgres?sslmode=disable")
        pge = subprocess.Popen(
            [binary, f"--web.listen-address=127.0.0.1:{e_port}", "--log.level=error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**env, "DATA_SOURCE_NAME": dsn})
        held: list[psycopg.Connection[Any]] = []
        try:
            p_url, e_url = f"http://127.0.0.1:{p_port}/metrics", f"http://127.0.0.1:{e_port}/metrics"
            wait_ready(p_url, "pgwarden_up 1.0", pgw)
            wait_ready(e_url, "pg_up 1", pge)
            for n in sizes:
                held += open_sessions(pg, n - len(held), len(held), threads=4, user="app",
                                      password="app")
                time.sleep(0.3)
                p_ms, p_text = scrape_ms(p_url, args.runs)
                e_ms, e_text = scrape_ms(e_url, args.runs)
                used = gauge(p_text, "pgwarden_slots_used")
                assert used is not None and used >= n, (used, n)
                p_server = gauge(p_text, "pgwarden_scrape_duration_seconds") or 0.0
                e_server = gauge(e_text, "pg_exporter_last_scrape_duration_seconds") or 0.0
                rows.append({
                    "sessions": n,
                    "pgwarden_ms": round(p_ms, 2),
                    "postgres_exporter_ms": round(e_ms, 2),
                    "ratio": round(p_ms / e_ms, 2),
                    "pgwarden_server_side_ms": round(p_server * 1000, 2),
                    "postgres_exporter_server_side_ms": round(e_server * 1000, 2),
                    "pgwarden_samples": samples(p_text),
                    "postgres_exporter_samples": samples(e_text),
                })
        finally:
            for c in held:
                c.close()
            for proc in (pgw, pge):
                proc.terminate()
                proc.wait(30)
    first = rows[0]
    print(f"{'sessions':>8} {'pgwarden ms':>12} {'pg_exporter ms':>15} {'ratio':>7} "
          f"{'pgw server ms':>14} {'pge server ms':>14} {'pgw samples':>12} {'pge samples':>12}"
          f" {'growth':>16}")
    for r in rows:
        growth = r["pgwarden_ms"] / first["pgwarden_ms"]
        scale = r["sessions"] / first["sessions"]
        r["growth_vs_first"] = round(growth, 2)
        print(f"{r['sessions']:>8} {r['pgwarden_ms']:>12.2f} {r['postgres_exporter_ms']:>15.2f} "
              f"{r['ratio']:>6.2f}x {r['pgwarden_server_side_ms']:>14.2f} "
              f"{r['postgres_exporter_server_side_ms']:>14.2f} {r['pgwarden_samples']:>12} "
              f"{r['postgres_exporter_samples']:>12} {growth:>6.2f}x for {scale:.0f}x")
    last = rows[-1]
    fast = last["pgwarden_ms"] < 50
    ratio_ok = all(r["ratio"] <= 1.0 for r in rows)
    linear = last["growth_vs_first"] <= (last["sessions"] / first["sessions"]) * 1.5
    print(f"target: scrape < 50 ms at {last['sessions']} sessions: "
          f"{'met' if fast else 'NOT met'} ({last['pgwarden_ms']:.1f} ms); <= 1.0x "
          f"postgres_exporter at every size: {'met' if ratio_ok else 'NOT met'}; linear growth: "
          f"{'met' if linear else 'NOT met'}")
    out = Path(__file__).parent / "results" / "exporter.json"
    out.write_text(json.dumps({"rows": rows, "runs": args.runs, "target_fast": fast,
                               "target_ratio": ratio_ok, "target_linear": linear,
                               "python": sys.version.split()[0]}, indent=2) + "\n")
    return 0 if fast and ratio_ok and linear else 1


if __name__ == "__main__":
    sys.exit(main())
