"""The budget report as JSON-ready dicts (shape: docs/budget.md) and as text."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .rules import BudgetReport, ServiceLine

__all__ = ["as_dict", "render"]

_STYLE = {"fits": "green", "tight": "yellow", "over": "bold red"}


def _line(s: ServiceLine) -> dict[str, Any]:
    return {
        "name": s.name,
        "declared": s.declared,
        "replicas": s.replicas,
        "processes": s.processes,
        "pools": [{"kind": p.kind, "driver": p.driver, **p.settings} for p in s.pools],
        "per_process": s.per_process,
        "worst_case": s.worst_case,
        "fixed": s.fixed,
        "observed_peak": s.observed_peak,
        "allocated": s.allocated,
        "overflows": s.overflows,
        "suggested": [{"kind": p.kind, "driver": p.driver, **p.suggested}
                      for p in s.suggestions],
    }


def as_dict(report: BudgetReport) -> dict[str, Any]:
    """``{"verdict", "status", "source", "server", "total_worst_case", "usage", "overflowing",
    "sizing_fits", "suggested_total", "services", "observation", "pgbouncer"}``."""
    sl = report.slots
    obs = report.observation
    pgb = report.pgbouncer
    return {
        "verdict": report.verdict,
        "status": report.status,
        "source": report.source,
        "server": {
            "max_connections": sl.max_connections,
            "superuser_reserved_connections": sl.superuser_reserved_connections,
            "reserved_connections": sl.reserved_connections,
            "usable_slots": sl.usable,
            "headroom": sl.headroom,
            "available": sl.available,
            "from": sl.source,
        },
        "total_worst_case": report.total_worst_case,
        "usage": round(report.usage, 4) if sl.available else None,
        "overflowing": list(report.overflowing),
        "sizing_fits": report.sizing_fits,
        "suggested_total": sum(s.allocated for s in report.services),
        "services": [_line(s) for s in report.services],
        "observation": None if obs is None else {
            "seconds": obs.seconds, "polls": obs.polls, "total_peak": obs.total_peak,
            "peaks": dict(obs.peaks), "hidden_peak": obs.hidden_peak, "hint": obs.hint},
        "pgbouncer": {
            "pool_mode": pgb.pool_mode,
            "server_slots": pgb.server_slots,
            "default_pool_size": pgb.default_pool_size,
            "reserve_pool_size": pgb.reserve_pool_size,
            "max_db_connections": pgb.max_db_connections,
            "max_client_conn": pgb.max_client_conn,
            "client_connections": pgb.client_connections,
            "databases": dict(pgb.databases),
            "fits": pgb.fits,
        },
    }


def _pools_text(s: ServiceLine) -> str:
    if not s.declared:
        return "(not in the budget: observed)"
    return ", ".join(p.describe() for p in s.pools)


def render(console: Console, report: BudgetReport) -> None:
    """The report as text: the verdict, one row per service, the sizes that fit, PgBouncer."""
    sl = report.slots
    style = _STYLE[report.verdict]
    head = f"[bold]pgwarden budget[/] [{style}]{report.verdict.upper()}[/]"
    if report.source:
        head += f"  {escape(report.source)}"
    console.print(head)
    reserved = sl.superuser_reserved_connections + sl.reserved_connections
    console.print(f"server ({sl.source}): max_connections {sl.max_connections} - reserved "
                  f"{reserved} = {sl.usable} usable slots; headroom {sl.headroom} -> "
                  f"{sl.available} available")
    sampled = report.observation is not None
    table = Table(show_edge=False, pad_edge=False)
    for col in ("service", "replicas x processes", "pools (per process)", "worst case",
                *(("observed peak",) if sampled else ()), "fits with"):
        table.add_column(col, overflow="fold",
                         justify="right" if col in ("worst case", "observed peak") else "left")
    for s in report.services:
        fit = ""
        if s.suggestions:
            fit = f"{s.allocated}: " + "; ".join(p.describe() for p in s.suggestions)
        elif s.overflows:
            fit = "no size fits"
        name = escape(s.name) + (" [bold red](overflows)[/]" if s.overflows else "")
        row = [name, f"{s.replicas} x {s.processes}", escape(_pools_text(s)), str(s.worst_case)]
        if sampled:
            row.append("-" if s.observed_peak is None else str(s.observed_peak))
        row.append(fit)
        table.add_row(*row)
    console.print(table)
    usage = f"{report.usage:.0%}" if sl.available else "no slots available"
    console.print(f"[{style}]total worst case {report.total_worst_case} of {sl.available} "
                  f"available ({usage}): {report.verdict}[/]")
    if report.observation is not None:
        o = report.observation
        console.print(f"observed over {o.seconds:g} s ({o.polls} looks): at most "
                      f"{o.total_peak} client sessions at once")
        if o.hint:
            console.print(f"[yellow]{escape(o.hint)} (counted by their application_name; "
                          "their state is unknown)[/]")
    if report.verdict == "over":
        if report.sizing_fits:
            total = sum(s.allocated for s in report.services)
            console.print(f"sizes that fit (above, 'fits with'): {total} of {sl.available} "
                          f"available; overflowing: {', '.join(report.overflowing)}")
        else:
            console.print("[bold red]no pool sizes fit[/]: even one connection per pool per "
                          "process exceeds the available slots")
    if (report.verdict == "over" or not report.sizing_fits) and not report.pgbouncer.fits:
        p = report.pgbouncer
        console.print(
            f"[bold red]no PgBouncer fits[/]: {p.server_slots} server slots remain after the "
            f"headroom and the {report.fixed_total} connections that stay direct (fixed "
            "consumers, undeclared applications), and PgBouncer needs at least one per "
            "database; lower the headroom or the fixed consumers, or raise max_connections")
    elif report.verdict == "over" or not report.sizing_fits:
        p = report.pgbouncer
        console.print(
            f"[bold]PgBouncer that fits[/] (pool_mode = {p.pool_mode}): max_client_conn = "
            f"{p.max_client_conn} (the services' {p.client_connections} client connections), "
            f"default_pool_size = {p.default_pool_size}, reserve_pool_size = "
            f"{p.reserve_pool_size}, max_db_connections = {p.max_db_connections} (of "
            f"{p.server_slots} server slots); write it with `pgwarden pgbouncer init`")
