"""What the pool metrics add to a checkout: pgwarden's sync and asyncio pools, side by side, in
one run, with and without the metrics.

On one embedded PostgreSQL (loopback only), uncontended checkout + return (``getconn`` +
``putconn``, leak detection on: the default), microseconds per pair, in chunks of 2000 pairs;
the configurations of one pool alternate chunk by chunk in a shuffled order so that machine
noise hits them alike; the median chunk of each is reported:

- ``none``: no collector registered, nothing scraping;
- ``collector``: the pools' collector registered on a registry (``register_pool_metrics``);
- ``collector + scrapes``: and a thread scraping that registry (``generate_latest``) every
  0.1 s (150 times Prometheus' default rate);
- ``multiprocess publisher``: in a child process with ``PROMETHEUS_MULTIPROC_DIR`` set, the
  multiprocess publisher (``publish_pool_metrics``) writing every 0.1 s (10 times its
  default), against ``none`` in the same child.

Also: one scrape of the pools' collector and one multiprocess publish, with 1 and 20 pools.

Target (issue #10): the metrics add <= 1 us to a checkout, with and without the collector.

Usage: python bench/pool_metrics.py [--quick] [--chunks 40]
Writes bench/results/pool_metrics.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _pool_common import environment, print_table, write_results
from pgwarden.embedded import EmbeddedPostgres
from pgwarden.pool import AsyncConnectionPool, ConnectionPool

CHUNK = 2000
SCRAPE_EVERY = 0.1


class Scraper:
    """A thread scraping a registry every ``SCRAPE_EVERY`` seconds while running."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import generate_latest

        self._generate = generate_latest
        self.registry = registry
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SCRAPE_EVERY):
            self._generate(self.registry)
            self.scrapes += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Configs:
    """Switches the process between the configurations measured in it."""

    def __init__(self, multiprocess: bool) -> None:
        self.multiprocess = multiprocess
        self._collector: Any = None
        self._registry: Any = None
        self._scraper: Scraper | None = None
        self._publisher: Any = None
        self.names = (["none", "multiprocess publisher"] if multiprocess
                      else ["none", "collector", "collector + scrapes"])

    def enter(self, name: str) -> None:
        if name == "collector" or name == "collector + scrapes":
            from prometheus_client import CollectorRegistry

            from pgwarden.metrics import register_pool_metrics

            self._registry = CollectorRegistry()
            self._collector = register_pool_metrics(self._registry)
            if name == "collector + scrapes":
                self._scraper = Scraper(self._registry)
        elif name == "multiprocess publisher":
            from pgwarden.metrics import publish_pool_metrics

            self._publisher = publish_pool_metrics(interval=SCRAPE_EVERY)

    def leave(self) -> None:
        if self._scraper is not None:
            self._scraper.stop()
            self._scraper = None
        if self._collector is not None:
            self._registry.unregister(self._collector)
            self._collector = self._registry = None
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None


def measure_sync(dsn: str, configs: Configs, chunks: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {n: [] for n in configs.names}
    with ConnectionPool(dsn, min_size=1, max_size=1, name="bench-sync") as pool:
        pool.wait()

        def pairs(n: int) -> float:
            getconn, putconn = pool.getconn, pool.putconn
            t0 = time.perf_counter()
            for _ in range(n):
                putconn(getconn())
            return (time.perf_counter() - t0) / n * 1e6

        pairs(CHUNK)  # warm-up
        rnd = random.Random(0)
        for _ in range(chunks):
            order = list(configs.names)
            rnd.shuffle(order)
            for name in order:
                configs.enter(name)
                try:
                    out[name].append(pairs(CHUNK))
                finally:
                    configs.leave()
    return out


def measure_async(dsn: str, configs: Configs, chunks: int) -> dict[str, list[float]]:
    async def main() -> dict[str, list[float]]:
        out: dict[str, list[float]] = {n: [] for n in configs.names}
        async with AsyncConnectionPool(dsn, min_size=1, max_size=1, name="bench-async") as pool:
            await pool.wait()

            async def pairs(n: int) -> float:
                getconn, putconn = pool.getconn, pool.putconn
                t0 = time.perf_counter()
                for _ in range(n):
                    await putconn(await getconn())
                return (time.perf_counter() - t0) / n * 1e6

            await pairs(CHUNK)
            rnd = random.Random(1)
            for _ in range(chunks):
                order = list(configs.names)
                rnd.shuffle(order)
                for name in order:
                    configs.enter(name)
                    try:
                        out[name].append(await pairs(CHUNK))
                    finally:
                        configs.leave()
        return out

    return asyncio.run(main())


def _per_call_us(fn: Callable[[], Any], n: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def scrape_costs(dsn: str) -> dict[str, float]:
    """One scrape of the pools' collector with 1 and 20 pools (each with a checkout)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from pgwarden.metrics import register_pool_metrics

    out = {}
    for n in (1, 20):
        pools = [ConnectionPool(dsn, min_size=1, max_size=1, name=f"scrape-{i}")
                 for i in range(n)]
        try:
            held = []
            for p in pools:
                p.wait()
                held.append(p.getconn())
            registry = CollectorRegistry()
            register_pool_metrics(registry)
            out[f"scrape_us_{n}_pools"] = _per_call_us(lambda r=registry: generate_latest(r),
                                                       200)
            for p, c in zip(pools, held, strict=True):
                p.putconn(c)
        finally:
            for p in pools:
                p.close()
    return out


def publish_costs(dsn: str) -> dict[str, float]:
    """One multiprocess publish with 1 and 20 pools (in the multiprocess child)."""
    from pgwarden.metrics import publish_pool_metrics

    out = {}
    publisher = publish_pool_metrics(interval=3600)
    for n in (1, 20):
        pools = [ConnectionPool(dsn, min_size=1, max_size=1, name=f"publish-{i}")
                 for i in range(n)]
        try:
            held = []
            for p in pools:
                p.wait()
                held.append(p.getconn())

            total = 0.0
            for _ in range(200):
                for i, (p, c) in enumerate(zip(pools, held, strict=True)):  # counters move
                    p.putconn(c)
                    held[i] = p.getconn()
                t0 = time.perf_counter()
                publisher.publish()
                total += time.perf_counter() - t0
            out[f"publish_us_{n}_pools"] = total / 200 * 1e6
            for p, c in zip(pools, held, strict=True):
                p.putconn(c)
        finally:
            for p in pools:
                p.close()
    publisher.close()
    return out


def child(dsn: str, chunks: int) -> None:
    """The multiprocess configurations, in a process started with PROMETHEUS_MULTIPROC_DIR."""
    configs = Configs(multiprocess=True)
    result = {"sync": measure_sync(dsn, configs, chunks),
              "async": measure_async(dsn, configs, chunks),
              "costs": publish_costs(dsn)}
    print(json.dumps(result))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 chunks per configuration")
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--child", metavar="DSN", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.chunks = 10
    if args.child:
        child(args.child, args.chunks)
        return 0
    with EmbeddedPostgres(max_connections=60) as pg:
        configs = Configs(multiprocess=False)
        runs = {"sync": measure_sync(pg.dsn, configs, args.chunks),
                "async": measure_async(pg.dsn, configs, args.chunks)}
        costs = scrape_costs(pg.dsn)
        with tempfile.TemporaryDirectory() as mpdir:
            env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": mpdir}
            res = subprocess.run([sys.executable, __file__, "--child", pg.dsn, "--chunks",
                                  str(args.chunks)], capture_output=True, text=True, env=env,
                                 check=True, timeout=1800)
            mp = json.loads(res.stdout)
        costs.update(mp.pop("costs"))
    rows = []
    results: dict[str, Any] = {}
    for kind in ("sync", "async"):
        for where, data in (("", runs[kind]), (" (multiprocess child)", mp[kind])):
            base = statistics.median(data["none"])
            for name, us in data.items():
                med = statistics.median(us)
                # paired: chunk c of this configuration against chunk c of none
                diff = statistics.median(a - b for a, b in zip(us, data["none"], strict=True))
                label = f"{name}{where}"
                results[f"{kind}: {label}"] = {"us_median": med, "us_minus_none": diff,
                                               "us_chunks": us}
                rows.append([f"pgwarden {kind}", label, f"{med:.2f}",
                             "-" if name == "none" else f"{diff:+.2f}",
                             f"{base:.2f}"])
    print(f"\nuncontended checkout+return, leak detection on, median of {args.chunks} "
          f"interleaved chunks of {CHUNK} pairs per configuration; difference: median of the "
          "paired per-chunk differences against none\n")
    print_table(["pool", "configuration", "checkout+return us", "vs none us", "none us"], rows)
    worst = max(abs(v["us_minus_none"]) for v in results.values())
    print(f"\nlargest difference: {worst:.2f} us (target <= 1 us): "
          f"{'met' if worst <= 1.0 else 'NOT met'}")
    print("one scrape of the pools' collector: "
          f"{costs['scrape_us_1_pools']:.0f} us with 1 pool, "
          f"{costs['scrape_us_20_pools']:.0f} us with 20; one multiprocess publish: "
          f"{costs['publish_us_1_pools']:.0f} us with 1 pool, "
          f"{costs['publish_us_20_pools']:.0f} us with 20")
    write_results("pool_metrics", {
        "command": "python bench/pool_metrics.py" + (" --quick" if args.quick else ""),
        "environment": environment(),
        "chunk_pairs": CHUNK,
        "chunks": args.chunks,
        "scrape_every_seconds": SCRAPE_EVERY,
        "results": results,
        "largest_difference_us": worst,
        "costs_us": costs,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
