"""Read what the exporter serves, as a scraper would: the text format, parsed by
prometheus_client's own parser."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pgwarden.conninfo import resolve
from pgwarden.embedded import EmbeddedPostgres
from pgwarden.metrics import Caps, ServerCollector, TargetScraper

Values = dict[str, dict[frozenset[tuple[str, str]], float]]

APP_PASSWORD = "app-pw"
MON_PASSWORD = "mon-pw"
NOMON_PASSWORD = "nomon-pw"


def add_roles(cluster: EmbeddedPostgres) -> EmbeddedPostgres:
    """``app`` (plain), ``exp_mon`` (pg_monitor, as docs/exporter.md advises) and ``exp_nomon``
    (no pg_monitor)."""
    cluster.execute(f"create role app login password '{APP_PASSWORD}'")
    cluster.execute(f"create role exp_mon login password '{MON_PASSWORD}'")
    cluster.execute("grant pg_monitor to exp_mon")
    cluster.execute(f"create role exp_nomon login password '{NOMON_PASSWORD}'")
    return cluster


def app() -> dict[str, Any]:
    return {"user": "app", "password": APP_PASSWORD}


def mon_dsn(cluster: EmbeddedPostgres) -> str:
    return cluster.conninfo(user="exp_mon", password=MON_PASSWORD)


def scraper(dsn: str, **kwargs: Any) -> TargetScraper:
    caps = kwargs.pop("caps", None) or Caps()
    return TargetScraper(resolve(dsn, command="exporter"), caps=caps,
                         min_interval=kwargs.pop("min_interval", 0.0), **kwargs)


def exposition(*scrapers: TargetScraper) -> str:
    """What ``/metrics`` serves for these scrapers (one collector on a fresh registry)."""
    registry = CollectorRegistry()
    registry.register(ServerCollector(list(scrapers)))
    return generate_latest(registry).decode()


def parse(text: str) -> Values:
    """``{sample name: {frozenset(labels): value}}``."""
    out: Values = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out


def scrape(*scrapers: TargetScraper) -> Values:
    return parse(exposition(*scrapers))


def value(values: Values, name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels`` (0 if none; fails if several)."""
    found = [v for k, v in values.get(name, {}).items() if set(labels.items()) <= k]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else 0.0


def total(values: Values, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for k, v in values.get(name, {}).items() if set(labels.items()) <= k)


def label_values(values: Values, name: str, label: str) -> set[str]:
    return {dict(k)[label] for k in values.get(name, {}) if label in dict(k)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = predicate()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)


def http_get(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return str(resp.read().decode())


def pgwarden(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "pgwarden", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


def start_pgwarden(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "DATABASE_URL"}
    return subprocess.Popen([sys.executable, "-m", "pgwarden", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def prometheus_query(base: str, promql: str) -> list[dict[str, Any]]:
    """The result of an instant PromQL query on a Prometheus server at ``base``."""
    body = json.loads(http_get(f"{base}/api/v1/query?query={urllib.parse.quote(promql)}"))
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@contextlib.contextmanager
def real_prometheus(tmp_path: Path, job: str, target: str,
                    metrics_path: str = "/metrics") -> Iterator[str]:
    """A real Prometheus server (the Debian package) on a free loopback port scraping
    ``target`` (``HOST:PORT``) every second as job ``job``; yields its base URL. Skips where
    prometheus is not installed (``.ci/run`` installs it)."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus not installed (Debian package prometheus; .ci/run installs it)")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: {job}\n    metrics_path: {metrics_path}\n"
        f"    static_configs:\n      - targets: ['{target}']\n")
    port = free_port()
    server = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(30)
