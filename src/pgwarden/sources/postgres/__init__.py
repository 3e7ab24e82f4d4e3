"""The server side's one look at PostgreSQL: sessions, settings, headroom.

``take(conn)`` returns a complete :class:`Snapshot`; the doctor's rules, the guard's policy and the
status view are pure functions of it. ``take_summary(conn, notable)`` returns a summary (counts
of every backend, records for the :class:`Notable` ones, briefs of a few more): the exporter's,
on which the doctor's rules find the same.
"""

from __future__ import annotations

from .records import (
    ActivitySummary,
    ApplicationCounts,
    ClientBrief,
    Notable,
    Server,
    Session,
    SessionFacts,
    SessionGroup,
    Settings,
    Snapshot,
    group_sessions,
    hidden_hint,
)
from .snapshot import (
    application_counts,
    login_roles,
    new_sessions,
    read_server,
    read_settings,
    role_secrets,
    take,
    take_summary,
)

__all__ = [
    "ActivitySummary",
    "ApplicationCounts",
    "ClientBrief",
    "Notable",
    "Server",
    "Session",
    "SessionFacts",
    "SessionGroup",
    "Settings",
    "Snapshot",
    "application_counts",
    "group_sessions",
    "hidden_hint",
    "login_roles",
    "new_sessions",
    "read_server",
    "read_settings",
    "role_secrets",
    "take",
    "take_summary",
]
