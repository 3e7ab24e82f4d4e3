"""How a :class:`~pgwarden.top.model.Frame` is drawn: the usage bar, the columns and cells of
the sessions table (shared by the live view and ``--once``), and the one-frame rich renderable.

Colours are rich's: none off a terminal or with ``NO_COLOR``; the usage bar also uses one
character per state so that it reads without colour.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .model import Frame, Row

__all__ = ["COLUMNS", "cells", "fmt_age", "header", "render_frame", "usage_bar"]

#: The sessions table's columns, in order. ``holder`` is filled from the applications' holders
#: (``--holders``).
COLUMNS = ("pid", "application", "user", "database", "client", "state", "state age",
           "xact age", "query age", "wait", "blocked by", "holder", "query")

#: Bar character and style of each state (others: ``+``).
_BAR = {
    "active": ("#", "green"),
    "idle in transaction": ("%", "yellow"),
    "idle in transaction (aborted)": ("!", "red"),
    "idle": ("=", "blue"),
    "(hidden)": ("?", "bright_black"),
}


def fmt_age(seconds: float | None) -> str:
    """``4.2s``, ``12s``, ``3m05s``, ``2h03m``; ``-`` for none."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def usage_bar(frame: Frame, width: int = 50) -> Text:
    """``[###%%%====......] 12/27 usable (44%)``: one character per slot share, by state."""
    usable = max(frame.usable_slots, 1)
    bar = Text("[")
    drawn = 0
    for state, n in frame.by_state:
        ch, style = _BAR.get(state, ("+", "magenta"))
        cells_n = min(width - drawn, round(n * width / usable))
        if n and cells_n == 0 and drawn < width:
            cells_n = 1
        bar.append(ch * cells_n, style=style)
        drawn += cells_n
    bar.append("." * max(0, width - drawn), style="bright_black")
    bar.append("] ")
    style = "bold red" if frame.usage >= 0.95 else "yellow" if frame.usage >= 0.8 else "green"
    bar.append(f"{frame.used_slots}/{frame.usable_slots} usable ({frame.usage:.0%})", style=style)
    legend = "  ".join(f"{_BAR.get(s, ('+', ''))[0]} {s} {n}" for s, n in frame.by_state)
    if legend:
        bar.append("   " + legend)
    return bar


def header(frame: Frame, *, paused: bool = False, interval: float | None = None) -> Text:
    """The lines above the table: server, role, usage bar, view, hint."""
    text = Text.assemble(("pgwarden top", "bold"), f"  PostgreSQL {frame.version.split()[0]}"
                         f"  role {frame.role}  {frame.taken_at:%H:%M:%S}")
    if interval is not None:
        text.append(f"  every {interval:g}s")
    if paused:
        text.append("  PAUSED", style="bold yellow")
    text.append("\n")
    text.append_text(usage_bar(frame))
    view = frame.view
    order = "desc" if view.descending else "asc"
    shown = f"\n{len(frame.rows)} of {frame.total} sessions  sort {view.sort} {order}"
    filters = " ".join(f"{k}~{v}" for k, v in view.filters.items())
    text.append(shown + (f"  filter {filters}" if filters else "")
                + ("  idle hidden" if view.hide_idle else ""))
    if frame.hint:
        text.append("\n" + frame.hint, style="yellow")
    for note in frame.notes:
        text.append("\n" + note, style="yellow" if note.startswith("--holders") else "")
    return text


def cells(row: Row, *, query_chars: int = 80) -> tuple[str, ...]:
    """The row's cells in :data:`COLUMNS` order (plain strings)."""
    return (
        str(row.pid), row.application or "(none)", row.user or "?", row.database or "?",
        row.client or "?", row.state or "?", fmt_age(row.state_age), fmt_age(row.xact_age),
        fmt_age(row.query_age), row.wait, ",".join(map(str, row.blocked_by)), row.holder,
        row.query[:query_chars],
    )


#: Widest a column gets in ``--once`` before its cells are cut with an ellipsis (the query
#: column takes what is left).
_CAPS = {"application": 24, "user": 16, "database": 16, "client": 21, "state": 29, "wait": 24,
         "blocked by": 16, "holder": 72}


def render_frame(frame: Frame) -> RenderableType:
    """One frame as a rich renderable (``pgwarden top --once``): every column but ``query`` as
    wide as its content (up to a cap), the query cut to what is left."""
    rows = [cells(row) for row in frame.rows]
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for i, col in enumerate(COLUMNS):
        widest = max([len(col), *(len(r[i]) for r in rows)])
        right = col == "pid" or col.endswith("age")
        if col == "query":
            table.add_column(col, no_wrap=True, overflow="ellipsis", min_width=10, ratio=1)
        else:
            table.add_column(col, no_wrap=True, overflow="ellipsis",
                             min_width=min(widest, _CAPS.get(col, widest)),
                             max_width=_CAPS.get(col), justify="right" if right else "left")
    for r in rows:
        table.add_row(*(escape(c) for c in r))
    return Group(header(frame), table)
