"""Pool throughput and checkout cost, pgwarden side by side with the pools people use.

On one embedded PostgreSQL (loopback only), in one run, interleaved rounds:

- ``SELECT 1`` throughput with 32 workers (threads, or tasks for asyncio pools) sharing a pool of
  10 connections, for a fixed time per round;
- uncontended checkout + return cost (one worker, no query), microseconds per pair.

Contenders: pgwarden ``ConnectionPool`` and ``AsyncConnectionPool`` with leak detection on
(default, ``leak_threshold=60``) and off (``leak_threshold=None``), psycopg_pool sync and async,
SQLAlchemy's QueuePool (psycopg driver) and asyncpg's pool for reference.

Targets (issue #3), leak detection on: throughput >= 1.0x psycopg_pool's, checkout+return no
slower than psycopg_pool's.

Usage: python bench/throughput.py [--quick] [--rounds 9] [--seconds 1.5]
Writes bench/results/throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _pool_common import environment, print_table, write_results
from pgwarden.embedded import EmbeddedPostgres
from pgwarden.pool import AsyncConnectionPool, ConnectionPool

POOL = 10
WORKERS = 32


# -- sync contenders: (acquire-and-query callable, checkout-return callable, close) ----------

def sync_contenders(pg: EmbeddedPostgres) -> dict[str, Callable[[], Any]]:
    import psycopg_pool
    import sqlalchemy

    def same_api(new_pool: Callable[[], Any]) -> Callable[[], Any]:
        """pgwarden's pool is a drop-in for psycopg_pool's: one harness serves both."""
        def make() -> Any:
            p = new_pool()
            p.wait(30)

            def query() -> None:
                with p.connection() as c:
                    c.execute("select 1").fetchone()

            def pair() -> None:
                p.putconn(p.getconn())

            return query, pair, p.close
        return make

    def pgw(leak: float | None) -> Callable[[], Any]:
        return same_api(lambda: ConnectionPool(pg.dsn, min_size=POOL, max_size=POOL,
                                               leak_threshold=leak, name="bench"))

    pp = same_api(lambda: psycopg_pool.ConnectionPool(pg.dsn, min_size=POOL, max_size=POOL,
                                                      open=True))

    def sa() -> Any:
        eng = sqlalchemy.create_engine(
            pg.url.replace("postgresql://", "postgresql+psycopg://"),
            pool_size=POOL, max_overflow=0, pool_timeout=30)
        stmt = sqlalchemy.text("select 1")

        def query() -> None:
            with eng.connect() as c:
                c.execute(stmt).fetchone()

        pool = eng.pool

        def pair() -> None:
            pool.connect().close()

        for _ in range(POOL):
            pair()
        return query, pair, eng.dispose

    return {
        "pgwarden sync (leak on)": pgw(60.0),
        "pgwarden sync (leak off)": pgw(None),
        "psycopg_pool sync": pp,
        "sqlalchemy QueuePool": sa,
    }


def run_sync(make: Callable[[], Any], seconds: float) -> float:
    query, _pair, close = make()
    try:
        for _ in range(200):
            query()
        stop = time.monotonic() + seconds
        counts = [0] * WORKERS
        start = threading.Barrier(WORKERS + 1)

        def worker(i: int) -> None:
            start.wait()
            n = 0
            while n < 1_000_000 and (n % 32 or time.monotonic() < stop):
                query()
                n += 1
            counts[i] = n

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(WORKERS)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        start.wait()
        for t in threads:
            t.join()
        return sum(counts) / (time.perf_counter() - t0)
    finally:
        close()


def pairs_sync(makers: dict[str, Callable[[], Any]], chunks: int, chunk: int
               ) -> dict[str, list[float]]:
    """Uncontended checkout+return, all pools open at once, chunks interleaved in shuffled
    order so that machine noise hits every contender alike. Microseconds per pair."""
    opened = {name: make() for name, make in makers.items()}
    out: dict[str, list[float]] = {name: [] for name in makers}
    try:
        for _, pair, _ in opened.values():
            for _ in range(1000):
                pair()
        rnd = random.Random(0)
        for _ in range(chunks):
            order = list(opened)
            rnd.shuffle(order)
            for name in order:
                pair = opened[name][1]
                t0 = time.perf_counter()
                for _ in range(chunk):
                    pair()
                out[name].append((time.perf_counter() - t0) / chunk * 1e6)
    finally:
        for _, _, close in opened.values():
            close()
    return out


# -- async contenders --------------------------------------------------------------------------

async def async_make(name: str, pg: EmbeddedPostgres) -> Any:
    if name.startswith("pgwarden async") or name == "psycopg_pool async":
        if name == "psycopg_pool async":
            import psycopg_pool

            p: Any = psycopg_pool.AsyncConnectionPool(pg.dsn, min_size=POOL, max_size=POOL,
                                                      open=False)
        else:
            p = AsyncConnectionPool(pg.dsn, min_size=POOL, max_size=POOL, name="abench",
                                    leak_threshold=60.0 if "on" in name else None)
        await p.open(wait=True)  # the same API from here on: pgwarden's is a drop-in

        async def query() -> None:
            async with p.connection() as c:
                await (await c.execute("select 1")).fetchone()

        async def pair() -> None:
            await p.putconn(await p.getconn())

        return query, pair, p.close
    import asyncpg

    p3 = await asyncpg.create_pool(pg.url, min_size=POOL, max_size=POOL)

    async def query3() -> None:
        async with p3.acquire() as c:
            await c.fetchval("select 1")

    async def pair3() -> None:
        await p3.release(await p3.acquire())

    return query3, pair3, p3.close


ASYNC_NAMES = ["pgwarden async (leak on)", "pgwarden async (leak off)", "psycopg_pool async",
               "asyncpg pool"]


def run_async(name: str, pg: EmbeddedPostgres, seconds: float) -> float:
    async def main() -> float:
        query, _pair, close = await async_make(name, pg)
        try:
            for _ in range(200):
                await query()
            stop = time.monotonic() + seconds
            counts = [0] * WORKERS

            async def worker(i: int) -> None:
                n = 0
                while n < 1_000_000 and (n % 32 or time.monotonic() < stop):
                    await query()
                    n += 1
                counts[i] = n

            t0 = time.perf_counter()
            await asyncio.gather(*(worker(i) for i in range(WORKERS)))
            return sum(counts) / (time.perf_counter() - t0)
        finally:
            await close()

    return asyncio.run(main())


def pairs_async(pg: EmbeddedPostgres, chunks: int, chunk: int) -> dict[str, list[float]]:
    """As :func:`pairs_sync`, for the asyncio pools (one event loop)."""
    async def main() -> dict[str, list[float]]:
        opened = {name: await async_make(name, pg) for name in ASYNC_NAMES}
        out: dict[str, list[float]] = {name: [] for name in ASYNC_NAMES}
        try:
            for _, pair, _ in opened.values():
                for _ in range(200):
                    await pair()
            rnd = random.Random(0)
            for _ in range(chunks):
                order = list(opened)
                rnd.shuffle(order)
                for name in order:
                    pair = opened[name][1]
                    n = chunk // 10 if name == "asyncpg pool" else chunk
                    t0 = time.perf_counter()
                    for _ in range(n):
                        await pair()
                    out[name].append((time.perf_counter() - t0) / n * 1e6)
        finally:
            for _, _, close in opened.values():
                await close()
        return out

    return asyncio.run(main())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 round of 1 s")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--pairs", type=int, default=30000, help="checkout+return pairs per pool")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.pairs = 1, 1.0, 5000
    warnings.simplefilter("ignore")
    results: dict[str, dict[str, list[float]]] = {}
    with EmbeddedPostgres(max_connections=120) as pg:
        sync = sync_contenders(pg)
        order_rng = random.Random(1)
        for rnd in range(args.rounds):
            # every round runs every contender once, in a fresh random order, so that drifts in
            # machine load hit them alike; ratios are taken per round (paired), then the median
            names = [*sync, *ASYNC_NAMES]
            order_rng.shuffle(names)
            for name in names:
                qps = (run_sync(sync[name], args.seconds) if name in sync
                       else run_async(name, pg, args.seconds))
                results.setdefault(name, {"qps": [], "us": []})["qps"].append(qps)
                print(f"round {rnd + 1}: {name}: {qps:,.0f} q/s", file=sys.stderr)
        chunks = max(5, args.pairs // 1000)
        for name, us in {**pairs_sync(sync, chunks, 1000), **pairs_async(pg, chunks, 1000)}.items():
            results[name]["us"] = us
            print(f"checkout+return: {name}: {statistics.median(us):.2f} us", file=sys.stderr)

    canonical = [n for n in (*sync, *ASYNC_NAMES) if n in results]
    med = {n: (statistics.median(results[n]["qps"]), statistics.median(results[n]["us"]))
           for n in canonical}
    ref_name = {"sync": "psycopg_pool sync", "async": "psycopg_pool async"}
    ratios: dict[str, tuple[float, float]] = {}
    rows = []
    for name, (qps, us) in med.items():
        kind = "async" if ("async" in name or "asyncpg" in name) else "sync"
        ref = results[ref_name[kind]]
        # paired: this contender's round r against psycopg_pool's round r (and chunk c)
        q_ratio = statistics.median(
            a / b for a, b in zip(results[name]["qps"], ref["qps"], strict=True))
        u_ratio = statistics.median(
            a / b for a, b in zip(results[name]["us"], ref["us"], strict=True))
        ratios[name] = (q_ratio, u_ratio)
        rows.append([name, f"{qps:,.0f}", f"{q_ratio:.2f}x", f"{us:.2f}", f"{u_ratio:.2f}x"])
    print(f"\nSELECT 1 with {WORKERS} workers on a pool of {POOL}; uncontended checkout+return "
          f"(throughput: median of {args.rounds} rounds of {args.seconds:g} s, contenders in a "
          "random order each round; checkout+return: median of interleaved chunks of 1000 "
          "pairs; ratios vs psycopg_pool of the same kind: median of the per-round ratios)\n")
    print_table(["pool", "queries/s", "vs psycopg_pool", "checkout+return us",
                 "vs psycopg_pool"], rows)
    leak_cost = {
        kind: {
            "throughput_on_over_off": med[f"pgwarden {kind} (leak on)"][0]
            / med[f"pgwarden {kind} (leak off)"][0],
            "checkout_us_on_minus_off": med[f"pgwarden {kind} (leak on)"][1]
            - med[f"pgwarden {kind} (leak off)"][1],
        }
        for kind in ("sync", "async")
    }
    for kind, c in leak_cost.items():
        print(f"leak detection cost ({kind}): throughput on/off = "
              f"{c['throughput_on_over_off']:.2f}x, checkout+return +"
              f"{c['checkout_us_on_minus_off']:.2f} us")
    out = {
        "command": "python bench/throughput.py" + (" --quick" if args.quick else ""),
        "environment": environment(),
        "workers": WORKERS,
        "pool_size": POOL,
        "rounds": args.rounds,
        "seconds_per_round": args.seconds,
        "results": {n: {"qps_median": q, "checkout_return_us_median": u,
                        "qps_ratio_vs_psycopg_pool": ratios[n][0],
                        "checkout_return_ratio_vs_psycopg_pool": ratios[n][1],
                        "qps_runs": results[n]["qps"], "us_runs": results[n]["us"]}
                    for n, (q, u) in med.items()},
        "leak_detection_cost": leak_cost,
    }
    write_results("throughput", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
