"""Helpers shared by bench/recovery.py and bench/throughput.py."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def environment() -> dict[str, Any]:
    """Versions and machine facts to store next to the numbers."""
    versions = {}
    for dist in ("pgwarden", "psycopg", "psycopg-pool", "sqlalchemy", "asyncpg"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": versions,
    }


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A GitHub-flavoured markdown table on stdout."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def write_results(name: str, out: dict[str, Any]) -> None:
    """Write ``bench/results/<name>.json`` and say where."""
    path = Path(__file__).resolve().parent / "results" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {path}")
